"""Indexer commands: ``register``, ``probe``, ``index``, ``show`` (exported as ``COMMANDS``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from neuronatlas.core.errors import InvalidArgument

KINDS = ("cifar_resnet", "torchvision", "timm", "torchscript", "python")


def _settings(ctx: click.Context):
    from neuronatlas.cli import settings_from

    return settings_from(ctx)


def source_options(f):
    """Options that describe a model source (shared by ``register`` and ``index``)."""
    opts = [
        click.option(
            "--source",
            "source_json",
            default=None,
            help='Source as JSON, e.g. \'{"kind": "timm", "name": "resnet18"}\'.',
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
        click.option("--path", "script_path", default=None, help="TorchScript file."),
        click.option(
            "--factory", default=None, help="package.module:function returning an nn.Module."
        ),
        click.option(
            "--input-size", type=int, default=None, help="Input resolution (overrides the default)."
        ),
        click.option("--mean", default=None, help="Normalisation mean, comma-separated."),
        click.option("--std", default=None, help="Normalisation std, comma-separated."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def source_from_options(
    source_json, kind, depth, arch_name, weights, script_path, factory, input_size, mean, std
) -> dict[str, Any] | None:
    """A source dict from the CLI options, or None if none was given."""
    if source_json:
        try:
            src = json.loads(source_json)
        except json.JSONDecodeError as e:
            raise InvalidArgument(f"--source is not valid JSON: {e}", field="source") from None
        if not isinstance(src, dict):
            raise InvalidArgument("--source must be a JSON object", field="source")
    elif kind:
        src = {"kind": kind}
    else:
        return None
    for key, val in (
        ("depth", depth),
        ("name", arch_name),
        ("weights", weights),
        ("path", script_path),
        ("factory", factory),
        ("input_size", input_size),
    ):
        if val is not None:
            src[key] = val
    for key, val in (("mean", mean), ("std", std)):
        if val:
            try:
                src[key] = [float(v) for v in val.split(",")]
            except ValueError:
                raise InvalidArgument(
                    f"--{key} must be comma-separated numbers", field=key
                ) from None
    return src


@click.command("register")
@click.argument("model_id")
@source_options
@click.option("--display-name", default="", help="Human-readable name.")
@click.option("--training-data", default="", help="Training data / task, free text.")
@click.option("--tag", "tags", multiple=True, help="Catalogue tag (repeatable).")
@click.option("--replace", is_flag=True, help="Replace an entry registered with another source.")
@click.pass_context
def register_cmd(
    ctx,
    model_id,
    source_json,
    kind,
    depth,
    arch_name,
    weights,
    script_path,
    factory,
    input_size,
    mean,
    std,
    display_name,
    training_data,
    tags,
    replace,
):
    """Register a model in the catalogue (loads it once to check the weights)."""
    from neuronatlas.core.store import open_store

    from .api import register_model

    source = source_from_options(
        source_json, kind, depth, arch_name, weights, script_path, factory, input_size, mean, std
    )
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
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
def index_cmd(
    ctx,
    model_id,
    source_json,
    kind,
    depth,
    arch_name,
    weights,
    script_path,
    factory,
    input_size,
    mean,
    std,
    probe,
    vocabs,
    layers,
    k,
    limit,
    batch_size,
    aggregation,
    tokens,
    weighted,
    progress,
):
    """Index (or re-index, or resume) MODEL_ID: registered already, or registered here from
    the source options."""
    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.core.store import open_store

    from .api import register_model
    from .pipeline import IndexOptions, index_model
    from .probes import load_probe_set, open_probe_set

    settings = _settings(ctx)
    source = source_from_options(
        source_json, kind, depth, arch_name, weights, script_path, factory, input_size, mean, std
    )
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
        progress=progress,
        device=settings.device,
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
