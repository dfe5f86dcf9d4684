"""``neuronatlas compare``, ``neuronatlas audit`` and ``neuronatlas explain``: reports (text and
PNG figures) from the configured store, or from a server with ``--server`` (same
``QueryBackend`` as the query commands)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from neuronatlas.core.backend import QueryBackend
from neuronatlas.core.records import KINDS, NEURON_KIND
from neuronatlas.service.cli import backend_options, kind_filter


def _split(values: tuple[str, ...]) -> list[str]:
    """Repeated options, each possibly comma-separated, in order, without blanks."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _kind_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--kind: neurons (the default) or the components of one kind."""
    return click.option(
        "--kind", type=click.Choice(KINDS), default=NEURON_KIND, show_default=True, help=help
    )


@click.command("compare")
@click.argument("model_a")
@click.argument("model_b")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Report folder: summary.txt, pairs.tsv and the PNG figures.",
)
@click.option(
    "--layer", "layers", multiple=True, help="Only these layers (repeat or comma-separate)."
)
@click.option(
    "--tau",
    type=float,
    default=None,
    help="Coverage threshold (cosine); default: 95th percentile of the noise floor.",
)
@click.option("--semantic-only", is_flag=True, help="Skip the activation (CKA) view.")
@click.option("--pairs", default=15, show_default=True, help="Matched pairs listed in the summary.")
@click.option(
    "--no-cache",
    is_flag=True,
    help="Recompute even if a cached result exists (local store only; a server keeps its cache).",
)
@_kind_option("Compare the models' neurons, or their components of this kind.")
@backend_options
def compare_cmd(
    backend: QueryBackend,
    model_a: str,
    model_b: str,
    out: str,
    layers: tuple[str, ...],
    tau: float | None,
    semantic_only: bool,
    pairs: int,
    no_cache: bool,
    kind: str,
) -> None:
    """Compare two indexed models: semantic view (neuron vectors) and CKA (activations)."""
    from neuronatlas.core.compare import comparison_summary
    from neuronatlas.core.errors import InvalidArgument
    from neuronatlas.core.plots import comparison_figures
    from neuronatlas.core.queries import Atlas

    if no_cache:
        if not isinstance(backend, Atlas):
            raise InvalidArgument(
                "--no-cache works on a local store; a server answers from its own cache",
                field="no_cache",
            )
        backend.compare_cache = False
    cmp = backend.compare_models(
        model_a,
        model_b,
        _split(layers) or None,
        tau=tau,
        activation=not semantic_only,
        limit=None,  # every pair, for pairs.tsv
        kind=kind,
    )
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    text = comparison_summary(cmp, pairs=pairs)
    (folder / "summary.txt").write_text(text)
    with open(folder / "pairs.tsv", "w") as fh:
        fh.write("similarity\ta_layer\ta_unit\ta_label\tb_layer\tb_unit\tb_label\n")
        fh.writelines(
            f"{p.similarity:.5f}\t{p.a_layer}\t{p.a_unit}\t{p.a_label}\t"
            f"{p.b_layer}\t{p.b_unit}\t{p.b_label}\n"
            for p in cmp.pairs
        )
    figures = comparison_figures(cmp, folder)
    click.echo(text)
    click.echo(
        "wrote "
        + ", ".join(str(p) for p in [folder / "summary.txt", folder / "pairs.tsv", *figures])
    )


@click.command("audit")
@click.argument("model")
@click.option("--valid", multiple=True, help="Valid concept (repeat or comma-separate).")
@click.option("--spurious", multiple=True, help="Spurious concept (repeat or comma-separate).")
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Alignment score threshold; default: calibrated per concept on the noise floor.",
)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Report folder.")
@_kind_option("Audit the model's neurons, or its components of this kind.")
@click.option(
    "--class",
    "class_name",
    default=None,
    metavar="CLASS",
    help="Also weigh every neuron / component by its importance for CLASS: how much of what "
    "the model uses for it is valid or spurious (needs a model indexed with importance).",
)
@backend_options
def audit_cmd(
    backend: QueryBackend,
    model: str,
    valid: tuple[str, ...],
    spurious: tuple[str, ...],
    threshold: float | None,
    out: str,
    kind: str,
    class_name: str | None,
) -> None:
    """Audit a model: share of its neurons aligned with valid vs spurious concepts."""
    from neuronatlas.core.audit import audit_summary
    from neuronatlas.core.plots import audit_figure

    result = backend.audit_model(
        model,
        _split(valid),
        _split(spurious),
        threshold=threshold,
        kind=kind,
        class_name=class_name,
    )
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    text = audit_summary(result)
    (folder / "audit.txt").write_text(text)
    png = audit_figure(result, folder / "audit.png")
    click.echo(text)
    click.echo(f"wrote {folder / 'audit.txt'}, {png}")


@click.command("explain")
@click.argument("model")
@click.argument("class_name", metavar="CLASS")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice([*KINDS, "all"]),
    help="Only these kinds (repeatable); default: every kind the model has.",
)
@click.option(
    "--top",
    "top_n",
    type=click.IntRange(1, 100),
    default=5,
    show_default=True,
    help="Neurons / components per kind.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also draw the concept summary PNG (a row per component: top images, label, importance).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@backend_options
def explain_cmd(
    backend: QueryBackend,
    model: str,
    class_name: str,
    kinds: tuple[str, ...],
    top_n: int,
    out: str | None,
    as_json: bool,
) -> None:
    """What drives CLASS in MODEL: its most important neurons and components (gradient x
    activation of the class logit), with labels, importance and top images."""
    import json

    from neuronatlas.core.explain import explanation_summary, render_explanation

    e = backend.explain_class(model, class_name, kinds=kind_filter(kinds), top_n=top_n)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model_id": e.model_id,
                    "generation": e.generation,
                    "class": e.class_name,
                    "method": e.method,
                    "images": e.images,
                    "components": [
                        {
                            "ref": c.record.key,
                            "kind": c.record.kind,
                            "rank": c.rank,
                            "importance": c.importance,
                            "top_label": c.record.top_label.label if c.record.top_label else "",
                            "clarity": c.record.clarity,
                            "component": c.record.component,
                            "top_samples": [s.sample_id for s in c.record.top_samples],
                        }
                        for c in e.components
                    ],
                },
                indent=2,
            )
        )
    else:
        click.echo(explanation_summary(e), nl=False)
    if out:
        png = render_explanation(e, _probe_root(backend, model), Path(out))
        click.echo(f"wrote {png}", err=as_json)


def _probe_root(backend: QueryBackend, model: str) -> Path | None:
    """The local folder of the probe set the model was indexed with, if this machine has it
    registered (images of a server's model are drawn as grey tiles otherwise)."""
    from neuronatlas.core.errors import NeuronAtlasError

    try:
        from neuronatlas.cli import settings_from
        from neuronatlas.indexer.probes import load_probe_set

        probe_set = backend.get_model(model).probe_set
        if not probe_set:
            return None
        home = settings_from(click.get_current_context()).paths
        root = load_probe_set(home, probe_set.split("@", 1)[0]).root
        return root if root.is_dir() else None
    except (NeuronAtlasError, OSError, ValueError):
        return None


COMMANDS: list[click.Command] = [compare_cmd, audit_cmd, explain_cmd]
