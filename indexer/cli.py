"""Indexer commands: ``register``, ``probe``, ``index``, ``show`` (exported as ``COMMANDS``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from neuronatlas.core.errors import InvalidArgument

from .accuracy import describe as describe_accuracy
from .transforms import INTERPOLATIONS, parse_resize, user_keys

KINDS = ("cifar_resnet", "torchvision", "timm", "torchscript", "python")


def _settings(ctx: click.Context):
    from neuronatlas.cli import settings_from

    return settings_from(ctx)


TRANSFORM_HELP = (
    "Input transform (default per --kind, see README): --input-size N alone resizes to N x N "
    "without a crop; --resize N (shorter side) / HxW / none and --crop N / none replace the "
    "default's steps."
)


def source_options(f):
    """Options that describe a model source (shared by ``register`` and ``index``)."""
    opts = [
        click.option(
            "--source",
            "source_json",
            default=None,
            help='Source as JSON, e.g. \'{"kind": "timm", "name": "resnet18"}\' (the options '
            "below override its keys).",
        ),
        click.option("--kind", type=click.Choice(KINDS), default=None, help="Model source kind."),
        click.option(
            "--depth", type=int, default=None, help="cifar_resnet depth (20, 32, 44, 56)."
        ),
        click.option("--name", "arch_name", default=None, help="torchvision / timm model name."),
        click.option(
            "--weights",
            default=None,
            help="Local weights file (or a torchvision weights enum name).",
        ),
        click.option(
            "--random-init",
            is_flag=True,
            default=None,
            help="Index a randomly initialised cifar_resnet / torchvision / timm model on "
            "purpose (these kinds otherwise need --weights).",
        ),
        click.option("--path", "script_path", default=None, help="TorchScript file."),
        click.option(
            "--factory",
            default=None,
            help="Function returning an nn.Module: package.module:fn (also found in the "
            "current directory) or path/to/file.py:fn.",
        ),
        click.option(
            "--input-size",
            type=int,
            default=None,
            help="The model's input size N. " + TRANSFORM_HELP,
        ),
        click.option(
            "--resize", default=None, help="Resize: N (shorter side), HxW (exact) or none."
        ),
        click.option("--crop", default=None, help="Centre crop N x N, or none."),
        click.option(
            "--mean",
            nargs=3,
            type=float,
            default=None,
            help="Normalisation mean, three values (R G B).",
        ),
        click.option(
            "--std", nargs=3, type=float, default=None, help="Normalisation std, three values."
        ),
        click.option(
            "--interpolation",
            type=click.Choice(INTERPOLATIONS),
            default=None,
            help="Resize interpolation (default per kind).",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


SOURCE_OPTIONS = (
    "source_json",
    "kind",
    "depth",
    "arch_name",
    "weights",
    "random_init",
    "script_path",
    "factory",
    "input_size",
    "resize",
    "crop",
    "mean",
    "std",
    "interpolation",
)


def source_from_options(
    source_json: str | None = None,
    kind: str | None = None,
    depth: int | None = None,
    arch_name: str | None = None,
    weights: str | None = None,
    random_init: bool | None = None,
    script_path: str | None = None,
    factory: str | None = None,
    input_size: int | None = None,
    resize: str | None = None,
    crop: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    interpolation: str | None = None,
) -> dict[str, Any] | None:
    """A source dict from the CLI options, or None if none was given."""
    if source_json:
        try:
            src = json.loads(source_json)
        except json.JSONDecodeError as e:
            raise InvalidArgument(f"--source is not valid JSON: {e}", field="source") from None
        if not isinstance(src, dict):
            raise InvalidArgument("--source must be a JSON object", field="source")
        if kind:
            src["kind"] = kind
    elif kind:
        src = {"kind": kind}
    else:
        given = [
            name
            for name, val in (
                ("--depth", depth),
                ("--name", arch_name),
                ("--weights", weights),
                ("--random-init", random_init or None),
                ("--path", script_path),
                ("--factory", factory),
                ("--input-size", input_size),
                ("--resize", resize),
                ("--crop", crop),
                ("--mean", mean),
                ("--std", std),
                ("--interpolation", interpolation),
            )
            if val is not None
        ]
        if given:  # silently indexing the registered source instead would mislead
            raise click.UsageError(
                f"{', '.join(given)} describe a model source: give them with --kind (or "
                "--source JSON); to change a registered model, register it again with "
                "--replace"
            )
        return None
    for key, val in (
        ("depth", depth),
        ("name", arch_name),
        ("weights", weights),
        ("random_init", random_init or None),
        ("path", script_path),
        ("factory", factory),
        ("input_size", input_size),
        ("interpolation", interpolation),
    ):
        if val is not None:
            src[key] = val
    if resize is not None:
        r = parse_resize(resize)
        src["resize"] = list(r) if isinstance(r, tuple) else r
    if crop is not None:
        if crop.strip().lower() == "none":
            src["crop"] = None
        else:
            try:
                src["crop"] = int(crop)
            except ValueError:
                raise InvalidArgument(
                    f"--crop must be a number of pixels or none, not {crop!r}", field="crop"
                ) from None
    for key, vals in (("mean", mean), ("std", std)):
        if vals:
            src[key] = [float(v) for v in vals]
    return src


def transform_line(transform: dict[str, Any], source: dict[str, Any]) -> str:
    """``transform: <description> (<where it came from>)`` for the CLI."""
    if not transform:
        return "transform: not recorded (register the model again)"
    keys = user_keys(source)
    origin = (
        f"{source.get('kind', '?')} default"
        if not keys
        else f"from {', '.join(keys)}; {source.get('kind', '?')} defaults for the rest"
    )
    return f"transform: {transform.get('description', transform)} ({origin})"


@click.command("register")
@click.argument("model_id")
@source_options
@click.option("--display-name", default="", help="Human-readable name.")
@click.option("--training-data", default="", help="Training data / task, free text.")
@click.option("--tag", "tags", multiple=True, help="Catalogue tag (repeatable).")
@click.option("--replace", is_flag=True, help="Replace an entry registered with another source.")
@click.pass_context
def register_cmd(
    ctx, model_id, display_name, training_data, tags, replace, **source_opts: Any
) -> None:
    """Register a model in the catalogue (loads it once and runs it on one input-sized batch
    to check the weights and the input transform, which it prints)."""
    from neuronatlas.core.store import open_store

    from .api import register_model

    source = source_from_options(**source_opts)
    if source is None:
        raise click.UsageError("give --kind (with its options) or --source JSON")
    with open_store(_settings(ctx)) as store:
        entry = register_model(
            store,
            model_id,
            source,
            display_name=display_name,
            training_data=training_data,
            tags=list(tags),
            replace=replace,
        )
    click.echo(
        f"{entry.model_id}: {entry.architecture}, weights sha256 {entry.weights_sha256[:12]}, "
        f"status {entry.status.value}"
    )
    click.echo("  " + transform_line(entry.transform, entry.source))


def _probe_name(folder: Path, limit: int | None) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).strip("-.") or "probe"
    return f"{base}-n{limit}" if limit else base


@click.command("probe")
@click.argument("name")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option(
    "--limit",
    type=int,
    default=None,
    help="Keep a deterministic class-balanced subset of N images.",
)
@click.option(
    "--replace", is_flag=True, help="Replace a probe set registered under NAME with other content."
)
@click.pass_context
def probe_cmd(ctx, name, folder, limit, replace):
    """Register a folder of images (class folders or flat) as probe set NAME."""
    from .probes import register_probe_set

    settings = _settings(ctx)
    probe = register_probe_set(settings.paths, name, folder, limit, replace=replace, progress=True)
    click.echo(
        f"{probe.id}: {len(probe)} images from {probe.root}, "
        f"{len(probe.skipped)} unreadable skipped"
    )
    for rel in probe.skipped[:10]:
        click.echo(f"  skipped {rel}", err=True)


@click.command("index")
@click.argument("model_id")
@source_options
@click.option(
    "--probe", "probe", required=True, help="Registered probe-set name, or a folder of images."
)
@click.option(
    "--vocab",
    "vocabs",
    multiple=True,
    help="Vocabulary file, optionally NAME=FILE (repeatable; default name: the file stem).",
)
@click.option(
    "--layers",
    "layers",
    multiple=True,
    help="Layer names or glob patterns (repeatable or comma-separated).",
)
@click.option("--k", type=int, default=20, show_default=True, help="Top images per neuron.")
@click.option(
    "--limit",
    type=int,
    default=None,
    help="Use a class-balanced subset of N probe images (folder only).",
)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option(
    "--aggregation",
    type=click.Choice(["mean", "max"]),
    default="mean",
    show_default=True,
    help="Spatial aggregation of conv maps.",
)
@click.option(
    "--tokens",
    type=click.Choice(["cls", "mean"]),
    default="cls",
    show_default=True,
    help="Token aggregation of transformer blocks.",
)
@click.option("--weighted", is_flag=True, help="Activation-weighted neuron vectors.")
@click.option(
    "--samples",
    type=click.Choice(["topk", "percentile"]),
    default="topk",
    show_default=True,
    help="Images that describe a neuron: its k highest activations, or (MAMMI-style) up to k "
    "sampled from those at or above --percentile, class-balanced over class folders.",
)
@click.option(
    "--percentile",
    type=click.FloatRange(0, 100, max_open=True),
    default=93.0,
    show_default=True,
    help="With --samples percentile: the activation percentile images must reach.",
)
@click.option(
    "--class-map",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON list of class names in output order, or {index: class name}: maps the model's "
    "outputs to the probe set's class folders for the accuracy check (default: output i = "
    "i-th folder when the counts agree).",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
def index_cmd(
    ctx,
    model_id,
    probe,
    vocabs,
    layers,
    k,
    limit,
    batch_size,
    aggregation,
    tokens,
    weighted,
    samples,
    percentile,
    class_map,
    progress,
    **source_opts: Any,
):
    """Index (or re-index, or resume) MODEL_ID: registered already, or registered here from
    the source options. The summary gives the input transform and, for a probe set of class
    folders, the model's top-1 accuracy on it (a WARNING when near chance)."""
    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.core.store import open_store

    from .accuracy import load_class_map
    from .api import register_model
    from .pipeline import IndexOptions, index_model
    from .probes import load_probe_set, open_probe_set

    settings = _settings(ctx)
    source = source_from_options(**source_opts)
    classes = load_class_map(class_map) if class_map else None
    vocabularies: dict[str, Path] = {}
    for v in vocabs:
        name, sep, file = v.partition("=")
        path = Path(file if sep else v).expanduser()
        vocabularies[name if sep else path.stem] = path
    layer_list = [
        name.strip() for item in layers for name in item.split(",") if name.strip()
    ] or None
    folder = Path(probe).expanduser()
    if folder.is_dir():
        probe_set = open_probe_set(
            settings.paths, _probe_name(folder, limit), folder, limit, progress=progress
        )
    elif limit is not None:
        raise InvalidArgument(
            "--limit applies to a probe folder, not a registered probe set", field="limit"
        )
    else:
        probe_set = load_probe_set(settings.paths, probe)
    if probe_set.skipped:
        click.echo(
            f"probe set {probe_set.id}: {len(probe_set.skipped)} unreadable images skipped",
            err=True,
        )
    opt = IndexOptions(
        layers=layer_list,
        k=k,
        batch_size=batch_size,
        conv_aggregation=aggregation,
        token_aggregation=tokens,
        weighted=weighted,
        samples=samples,
        percentile=percentile,
        progress=progress,
        device=settings.device,
        class_map=classes,
    )
    embedder = load_embedder(settings.embedder, settings.device)
    with open_store(settings) as store:
        if source is not None:
            register_model(store, model_id, source)
        entry = index_model(store, embedder, model_id, probe_set, settings.paths, vocabularies, opt)
    click.echo(
        f"{entry.model_id}: indexed {entry.neuron_count} neurons in {len(entry.layers)} layers "
        f"(generation {entry.generation}, {entry.index_wall_s:.1f} s)"
    )
    click.echo("  " + transform_line(entry.transform, entry.source))
    acc = entry.probe_accuracy
    why = entry.extra.get("index", {}).get("accuracy_not_measured", "")
    click.echo(f"  probe accuracy: {describe_accuracy(acc)}" + (f" ({why})" if why else ""))
    if acc.get("warning"):
        click.echo(f"WARNING: {acc['warning']}", err=True)


@click.command("show")
@click.argument("neuron")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default="grid.png",
    show_default=True,
    help="PNG file to write.",
)
@click.pass_context
def show_cmd(ctx, neuron, out):
    """Draw NEURON (MODEL/LAYER/UNIT): its top probe images, activations and labels."""
    from neuronatlas.core.records import parse_neuron_key
    from neuronatlas.core.store import open_store

    from .grid import show_neuron

    model_id, layer, unit = parse_neuron_key(neuron)
    settings = _settings(ctx)
    with open_store(settings) as store:
        path = show_neuron(store, settings.paths, model_id, layer, unit, Path(out))
    click.echo(str(path))


COMMANDS = [register_cmd, probe_cmd, index_cmd, show_cmd]
