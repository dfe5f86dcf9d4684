"""Which layers hold the neurons, in forward order, and how their outputs become one value per
neuron per image.

Discovery: every ``Conv2d`` and ``Linear`` module plus transformer blocks (a module with an
attention child and an MLP child; the layers inside a block are represented by the block's
output). Selection: exact module names (any module, e.g. ``layer1.0``) or glob patterns over
the discovered layers (``layer3.*.conv2``). TorchScript modules do not run Python hooks, so
they expose one pseudo-layer, ``output`` (the model's output); any model may select it.

Aggregation: conv maps (B, C, H, W) -> spatial ``mean`` (default) or ``max``; token sequences
(B, T, C) -> ``cls`` (token 0, default) or ``mean``; (B, C) as is.

Input: the dry forward pass (``resolve_layers``, and ``check_input`` at registration) runs
the model on zeros of the transform's input size; a model that fails on it raises
``InvalidArgument`` naming that size and the options that change it. ``ActivationTap`` also
keeps the model's output of each batch (for the probe-set accuracy).

Order and depth: the selected layers are ordered by when they first run in a forward pass;
``layer_index`` is that position and relative depth = index / (number of layers - 1)
(0 for a single layer).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from neuronatlas.core.errors import InvalidArgument

from .transforms import OPTIONS_HINT

OUTPUT = "output"
CONV_AGGREGATIONS = ("mean", "max")
TOKEN_AGGREGATIONS = ("cls", "mean")
_ATTN_NAMES = ("attn", "self_attn", "self_attention", "attention")
_MLP_NAMES = ("mlp", "ffn", "feed_forward", "linear1")


@dataclass
class LayerSpec:
    name: str
    kind: str  # conv / linear / block / output / other
    units: int
    index: int
    depth: float
    tokens_first: bool = False  # (T, B, C) token layout


def is_transformer_block(m: nn.Module) -> bool:
    children = {n for n, _ in m.named_children()}
    return bool(children & set(_ATTN_NAMES)) and bool(children & set(_MLP_NAMES))


def _kind(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        return "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    if is_transformer_block(m):
        return "block"
    return "other"


def candidate_layers(model: nn.Module) -> list[str]:
    """Auto-discovered layer names in module registration order."""
    if isinstance(model, torch.jit.ScriptModule):
        return [OUTPUT]
    out: list[str] = []
    covered: list[str] = []  # blocks and attention modules whose insides are skipped
    for name, m in model.named_modules():
        if not name or any(name.startswith(c + ".") for c in covered):
            continue
        kind = _kind(m)
        if isinstance(m, nn.MultiheadAttention):
            covered.append(name)
            continue
        if kind == "block":
            covered.append(name)
        if kind != "other":
            out.append(name)
    return out


def select_layers(model: nn.Module, selection: list[str] | None) -> list[str]:
    """Resolve names / glob patterns; unknown names raise InvalidArgument listing the layers."""
    available = candidate_layers(model)
    if not selection:
        if not available:
            raise InvalidArgument(
                "no Conv2d, Linear or transformer-block layers found; name layers explicitly",
                field="layers",
            )
        return available
    modules = (
        {n for n, _ in model.named_modules() if n}
        if not isinstance(model, torch.jit.ScriptModule)
        else set()
    )
    chosen: list[str] = []
    for item in selection:
        if any(ch in item for ch in "*?["):
            hits = [n for n in available if fnmatch.fnmatchcase(n, item)]
        else:
            hits = [item] if item in modules or item == OUTPUT else []
        if not hits:
            shown = ", ".join(available[:40]) + (
                f", ... ({len(available)} in all)" if len(available) > 40 else ""
            )
            raise InvalidArgument(
                f"unknown layer {item!r}; available layers: {shown}", field="layers"
            )
        chosen += [h for h in hits if h not in chosen]
    return chosen


def pool(
    out: torch.Tensor, conv_agg: str = "mean", token_agg: str = "cls", tokens_first: bool = False
) -> torch.Tensor:
    """One value per neuron per image: (B, units) float32."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    x = out.detach()
    if x.ndim == 4:
        x = x.mean(dim=(2, 3)) if conv_agg == "mean" else x.amax(dim=(2, 3))
    elif x.ndim == 3:
        if tokens_first:
            x = x.transpose(0, 1)
        x = x[:, 0] if token_agg == "cls" else x.mean(dim=1)
    elif x.ndim != 2:
        raise InvalidArgument(
            f"cannot aggregate a layer output of shape {tuple(out.shape)}", field="layers"
        )
    return x.float().cpu()


def check_aggregation(conv_agg: str, token_agg: str) -> None:
    if conv_agg not in CONV_AGGREGATIONS:
        raise InvalidArgument(
            f"conv aggregation must be one of {CONV_AGGREGATIONS}, not {conv_agg!r}",
            field="aggregation",
        )
    if token_agg not in TOKEN_AGGREGATIONS:
        raise InvalidArgument(
            f"token aggregation must be one of {TOKEN_AGGREGATIONS}, not {token_agg!r}",
            field="aggregation",
        )


class ActivationTap:
    """Forward hooks that keep the pooled output of each layer for the current batch (and the
    raw output of the ``keep_raw`` layers, e.g. for component projections, in ``raw``)."""

    def __init__(
        self,
        model: nn.Module,
        layers: list[LayerSpec],
        conv_agg: str = "mean",
        token_agg: str = "cls",
        keep_raw: set[str] | None = None,
    ):
        check_aggregation(conv_agg, token_agg)
        self.model, self.layers = model, layers
        self.conv_agg, self.token_agg = conv_agg, token_agg
        self.keep_raw = set(keep_raw or ())
        self.raw: dict[str, torch.Tensor] = {}
        self.pooled: dict[str, torch.Tensor] = {}
        self.output: torch.Tensor | None = None  # the model's output for the current batch
        self._handles = []
        modules = (
            dict(model.named_modules()) if not isinstance(model, torch.jit.ScriptModule) else {}
        )
        for spec in layers:
            if spec.name != OUTPUT:
                self._handles.append(modules[spec.name].register_forward_hook(self._hook(spec)))

    def _hook(self, spec: LayerSpec):
        def hook(_module, _inputs, output):
            if spec.name not in self.pooled:  # a module run twice contributes its first call
                self.pooled[spec.name] = pool(
                    output, self.conv_agg, self.token_agg, spec.tokens_first
                )
                if spec.name in self.keep_raw:
                    t = output[0] if isinstance(output, (tuple, list)) else output
                    self.raw[spec.name] = t.detach()

        return hook

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.pooled, self.raw = {}, {}
        out = self.model(x)
        first = out[0] if isinstance(out, (tuple, list)) else out
        self.output = first.detach() if isinstance(first, torch.Tensor) else None
        if any(s.name == OUTPUT for s in self.layers):
            spec = next(s for s in self.layers if s.name == OUTPUT)
            self.pooled[OUTPUT] = pool(out, self.conv_agg, self.token_agg, spec.tokens_first)
        return self.pooled

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def input_error(
    err: BaseException, input_shape: tuple[int, ...], batch: int, transform: str = ""
) -> InvalidArgument:
    """The error for a model that fails on the input the transform makes: names the input
    size tried and the options that change it."""
    size = "x".join(str(d) for d in input_shape)
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    made = f" made by {transform}" if transform else ""
    return InvalidArgument(
        f"the model fails on a {size} input (batch of {batch}){made}: "
        f"{type(err).__name__}: {first}. If the model expects another input size or "
        f"normalisation, {OPTIONS_HINT}",
        field="input_size",
    )


def check_input(model: nn.Module, input_shape: tuple[int, ...], transform: str = "") -> None:
    """One forward pass on a zero batch of ``input_shape``; InvalidArgument if it fails."""
    x = torch.zeros((2, *input_shape))
    try:
        with torch.inference_mode():
            model(x)
    except Exception as e:  # noqa: BLE001 - a user's model may raise anything
        raise input_error(e, input_shape, 2, transform) from None


def resolve_layers(
    model: nn.Module,
    selection: list[str] | None,
    input_shape: tuple[int, ...],
    transform: str = "",
) -> list[LayerSpec]:
    """Select layers, then run one dry forward pass to get forward order, unit counts and
    token layouts. A model failing on ``input_shape`` raises :func:`input_error` (``transform``
    describes where the input came from)."""
    names = select_layers(model, selection)
    batch = 3  # odd size, unlikely to equal a token count, to tell (B, T, C) from (T, B, C)
    x = torch.zeros((batch, *input_shape))
    order: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    modules = dict(model.named_modules()) if not isinstance(model, torch.jit.ScriptModule) else {}

    def make(name: str):
        def hook(_m, _i, out):
            if name not in shapes:
                t = out[0] if isinstance(out, (tuple, list)) else out
                shapes[name] = tuple(t.shape)
                order.append(name)

        return hook

    for n in names:
        if n != OUTPUT:
            handles.append(modules[n].register_forward_hook(make(n)))
    try:
        with torch.inference_mode():
            out = model(x)
    except Exception as e:  # noqa: BLE001 - a user's model may raise anything
        raise input_error(e, input_shape, batch, transform) from None
    finally:
        for h in handles:
            h.remove()
    if OUTPUT in names:
        t = out[0] if isinstance(out, (tuple, list)) else out
        shapes[OUTPUT] = tuple(t.shape)
        order.append(OUTPUT)
    unused = [n for n in names if n not in shapes]
    if unused:
        raise InvalidArgument(
            f"layers never run in a forward pass: {', '.join(unused)}", field="layers"
        )
    specs = []
    for i, name in enumerate(order):
        shape = shapes[name]
        tokens_first = len(shape) == 3 and shape[0] != batch and shape[1] == batch
        if len(shape) not in (2, 3, 4):
            raise InvalidArgument(
                f"layer {name} outputs shape {shape}; only 2-4 dimensions are supported",
                field="layers",
            )
        units = shape[1] if len(shape) in (2, 4) else shape[-1]
        kind = _kind(modules[name]) if name in modules else OUTPUT
        specs.append(
            LayerSpec(
                name,
                kind,
                int(units),
                i,
                i / (len(order) - 1) if len(order) > 1 else 0.0,
                tokens_first,
            )
        )
    return specs
