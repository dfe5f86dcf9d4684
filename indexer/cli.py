"""Indexer commands: ``register``, ``probe``, ``index``, ``show`` (exported as ``COMMANDS``)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from neuronatlas.core.errors import InvalidArgument
from neuronatlas.service.cli import client_options

from .accuracy import describe as describe_accuracy
from .transforms import INTERPOLATIONS, TRANSFORM_KEYS, parse_resize, user_keys

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
    *TRANSFORM_KEYS,
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


#: source keys holding a file that ``register --server`` uploads, and the artifact kind
UPLOADED_KEYS = {"weights": "weights", "path": "torchscript"}


def upload_source_files(client: Any, source: dict[str, Any]) -> dict[str, Any]:
    """``source`` with each local file it names (``weights``, ``path``) uploaded to the
    server as an artifact and replaced by its ``artifact:<sha256>`` reference; other values
    (a weights enum name, a path only the server has) are left as they are."""
    out = dict(source)
    for key, kind in UPLOADED_KEYS.items():
        value = out.get(key)
        if not isinstance(value, str) or value.startswith("artifact:"):
            continue
        path = Path(value).expanduser()
        if path.is_file():
            art = client.upload_artifact(path, kind)
            click.echo(f"uploaded {path.name} ({art.size} bytes) as {art.ref}", err=True)
            out[key] = art.ref
    return out


@click.command("register")
@click.argument("model_id")
@source_options
@click.option("--display-name", default="", help="Human-readable name.")
@click.option("--training-data", default="", help="Training data / task, free text.")
@click.option("--tag", "tags", multiple=True, help="Catalogue tag (repeatable).")
@click.option("--notes", default="", help="Free-form notes.")
@click.option(
    "--replace",
    is_flag=True,
    help="Replace an entry registered with another source (e.g. one whose first index failed).",
)
@client_options
@click.pass_context
def register_cmd(
    ctx, client, model_id, display_name, training_data, tags, notes, replace, **source_opts: Any
) -> None:
    """Register a model in the catalogue (loads it once and runs it on one input-sized batch
    to check the weights and the input transform, which it prints). With --server the server
    does that (RegisterModel, write token): local weights / TorchScript files are uploaded
    first, paths the server has are passed as they are."""
    source = source_from_options(**source_opts)
    if source is None:
        raise click.UsageError("give --kind (with its options) or --source JSON")
    if client is not None:
        entry = client.register_model(
            model_id,
            upload_source_files(client, source),
            display_name=display_name,
            training_data=training_data,
            tags=list(tags),
            notes=notes,
            replace=replace,
        )
    else:
        from neuronatlas.core.store import open_store

        from .api import register_model
        from .sources import artifact_resolver

        settings = _settings(ctx)
        with open_store(settings) as store:
            entry = register_model(
                store,
                model_id,
                source,
                display_name=display_name,
                training_data=training_data,
                tags=list(tags),
                notes=notes,
                replace=replace,
                resolve=artifact_resolver(settings.paths),
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


def component_options(f):
    """Concept components and class importance (``components.py``, ``importance.py``)."""
    opts = [
        click.option(
            "--components",
            "component_kinds",
            multiple=True,
            help="Also extract concept components of these kinds (repeatable or "
            "comma-separated): nmf, cluster (spherical k-means), cav (needs --cav-dir).",
        ),
        click.option(
            "--component-layers",
            multiple=True,
            help="Layers (names / globs among the indexed ones) that get components; default: "
            "every indexed layer.",
        ),
        click.option(
            "--rank",
            "component_rank",
            type=click.IntRange(min=1),
            default=None,
            help="Components per layer for nmf and cluster; default min(16, max(2, channels/8)).",
        ),
        click.option(
            "--component-images",
            type=click.IntRange(min=1),
            default=2000,
            show_default=True,
            help="Probe images (class-balanced, seeded) components and importance are fitted on.",
        ),
        click.option(
            "--component-positions",
            type=click.IntRange(min=1),
            default=64,
            show_default=True,
            help="Spatial positions sampled per image for nmf / cluster.",
        ),
        click.option(
            "--cav-dir",
            type=click.Path(file_okay=False),
            default=None,
            help="CAV examples: a folder of <concept>/ image folders and a negatives/ folder.",
        ),
        click.option(
            "--cav-negatives",
            default="negatives",
            show_default=True,
            help="The negatives folder: a name inside --cav-dir, or a path.",
        ),
        click.option(
            "--importance/--no-importance",
            "importance",
            default=None,
            help="Class importance (gradient x activation per output class) of every neuron "
            "and component; default: on with --components.",
        ),
        click.option("--component-seed", type=int, default=0, show_default=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


COMPONENT_OPTIONS = (
    "component_kinds",
    "component_layers",
    "component_rank",
    "component_images",
    "component_positions",
    "cav_dir",
    "cav_negatives",
    "importance",
    "component_seed",
)


def components_from_options(opts: dict[str, Any]):
    """``ComponentOptions`` from (and popped out of) the index command's keyword options."""
    from .components import ComponentOptions

    o = {k: opts.pop(k) for k in COMPONENT_OPTIONS if k in opts}

    def split(values) -> list[str]:
        return [v.strip() for item in values or () for v in str(item).split(",") if v.strip()]

    return ComponentOptions(
        kinds=split(o.get("component_kinds")),
        layers=split(o.get("component_layers")) or None,
        rank=o.get("component_rank"),
        images=int(o.get("component_images") or 2000),
        positions=int(o.get("component_positions") or 64),
        seed=int(o.get("component_seed") or 0),
        cav_dir=o.get("cav_dir"),
        cav_negatives=o.get("cav_negatives") or "negatives",
        importance=o.get("importance"),
    )


@click.command("index")
@click.argument("model_id")
@source_options
@component_options
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
@click.option(
    "--replace",
    is_flag=True,
    help="Register the given source over an entry registered with another one (e.g. a "
    "failed or stale registration) before indexing.",
)
@click.option(
    "--no-wait",
    is_flag=True,
    help="With --server: print the operation's name and return (follow it with `jobs wait`).",
)
@client_options
@click.pass_context
def index_cmd(
    ctx,
    client,
    replace,
    no_wait,
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
    folders, the model's top-1 accuracy on it (a WARNING when near chance). With --server the
    server indexes it (IndexModel, a write token) while it keeps serving: --probe names a probe
    set registered there, local weights and vocabulary files are uploaded first, and the
    command follows the operation with a progress bar (Ctrl-C stops following, not the job)."""
    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.core.store import open_store

    from .accuracy import load_class_map
    from .api import register_model
    from .pipeline import IndexOptions, index_model
    from .probes import load_probe_set, open_probe_set

    settings = _settings(ctx)
    components = components_from_options(source_opts)
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
    if replace and source is None:
        raise click.UsageError("--replace needs the model's source (--kind ... or --source)")
    if client is not None:
        options = {
            "batch_size": batch_size,
            "conv_aggregation": aggregation,
            "token_aggregation": tokens,
            "weighted": weighted,
            "samples": samples,
            "percentile": percentile,
        }
        if classes:
            options["class_map"] = {str(i): name for i, name in classes.items()}
        if components != type(components)():
            options["components"] = asdict(components)
        _index_on_server(
            client,
            model_id,
            source,
            replace,
            probe,
            limit,
            vocabularies,
            layer_list,
            k,
            options,
            no_wait,
            progress,
        )
        return
    if no_wait:
        raise click.UsageError("--no-wait goes with --server")
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
        components=components,
    )
    embedder = load_embedder(settings.embedder, settings.device)
    with open_store(settings) as store:
        if source is not None:
            from .sources import artifact_resolver

            register_model(
                store,
                model_id,
                source,
                replace=replace,
                resolve=artifact_resolver(settings.paths),
            )
        entry = index_model(store, embedder, model_id, probe_set, settings.paths, vocabularies, opt)
    _index_summary(entry)


def _index_on_server(
    client,
    model_id,
    source,
    replace,
    probe,
    limit,
    vocabularies,
    layers,
    k,
    options,
    no_wait,
    progress,
) -> None:
    """``index --server``: upload what the server lacks, queue IndexModel, follow it."""
    import uuid

    from neuronatlas.core.jobs import JobState
    from neuronatlas.service.jobs_cli import follow, outcome_line

    if limit is not None:
        raise click.UsageError("--limit applies to a local probe folder, not with --server")
    if Path(probe).expanduser().is_dir():
        raise click.UsageError(
            "with --server, --probe names a probe set registered on the server "
            "(`neuronatlas probe NAME FOLDER --server ...` or RegisterProbeSet)"
        )
    if source is not None:
        source = upload_source_files(client, source)
    vocab_refs = {}
    for name, path in vocabularies.items():
        if path.is_file():  # a local file: upload it; anything else is a path on the server
            art = client.upload_artifact(path, "other")
            click.echo(f"uploaded {path.name} ({art.size} bytes) as {art.ref}", err=True)
            vocab_refs[name] = art.ref
        else:
            vocab_refs[name] = str(path)
    op = client.index_model(
        model_id,
        probe,
        source=source,
        replace=replace,
        vocabularies=vocab_refs,
        layers=layers or [],
        k=k,
        options=options,
        request_id=uuid.uuid4().hex,
    )
    if no_wait:
        click.echo(op.name)
        return
    click.echo(f"{op.name}: {op.state.value} (Ctrl-C stops following, not the job)", err=True)
    try:
        op = follow(client, op, progress)
    except KeyboardInterrupt:
        click.echo(
            f"\n{op.name} goes on; follow it with `neuronatlas jobs wait {op.name}`", err=True
        )
        raise
    if op.state is not JobState.SUCCEEDED or op.model is None:
        raise click.ClickException(outcome_line(op))
    _index_summary(op.model)


def _index_summary(entry) -> None:
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
    comp = entry.extra.get("components")
    if comp:
        counts: dict[str, int] = {}
        for per_kind in comp.get("per_layer_counts", {}).values():
            for kind, n in per_kind.items():
                counts[kind] = counts.get(kind, 0) + n
        click.echo(
            "  components: "
            + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
            + f" in {len(comp.get('per_layer_counts', {}))} layers"
        )
    imp = entry.extra.get("importance")
    if imp:
        if "per_class" in imp:
            click.echo(f"  class importance: {len(imp['classes'])} classes")
        else:
            click.echo(f"  class importance not computed: {imp.get('not_computed')}", err=True)


@click.command("show")
@click.argument("neuron")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default="grid.png",
    show_default=True,
    help="PNG file to write.",
)
@client_options
@click.pass_context
def show_cmd(ctx, client, neuron, out):
    """Draw NEURON (MODEL/LAYER/UNIT): its top probe images, activations and labels. With
    --server the images are the server's thumbnails (GetNeuron with include_thumbnails)."""
    from neuronatlas.core.records import parse_neuron_key

    from .grid import render_grid, show_neuron

    model_id, layer, unit = parse_neuron_key(neuron)
    if client is not None:
        record, thumbnails = client.get_neuron_thumbnails(model_id, layer, unit)
        path = render_grid(record, None, Path(out), thumbnails=thumbnails)
    else:
        from neuronatlas.core.store import open_store

        settings = _settings(ctx)
        with open_store(settings) as store:
            path = show_neuron(store, settings.paths, model_id, layer, unit, Path(out))
    click.echo(str(path))


COMMANDS = [register_cmd, probe_cmd, index_cmd, show_cmd]
