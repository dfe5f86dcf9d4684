"""``neuronatlas compare`` and ``neuronatlas audit``: reports (text and PNG figures) from the
configured store, or from a server with ``--server`` (same ``QueryBackend`` as the query
commands)."""

from __future__ import annotations

from pathlib import Path

import click

from neuronatlas.core.backend import QueryBackend
from neuronatlas.service.cli import backend_options


def _split(values: tuple[str, ...]) -> list[str]:
    """Repeated options, each possibly comma-separated, in order, without blanks."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


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
@backend_options
def audit_cmd(
    backend: QueryBackend,
    model: str,
    valid: tuple[str, ...],
    spurious: tuple[str, ...],
    threshold: float | None,
    out: str,
) -> None:
    """Audit a model: share of its neurons aligned with valid vs spurious concepts."""
    from neuronatlas.core.audit import audit_summary
    from neuronatlas.core.plots import audit_figure

    result = backend.audit_model(model, _split(valid), _split(spurious), threshold=threshold)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    text = audit_summary(result)
    (folder / "audit.txt").write_text(text)
    png = audit_figure(result, folder / "audit.png")
    click.echo(text)
    click.echo(f"wrote {folder / 'audit.txt'}, {png}")


COMMANDS: list[click.Command] = [compare_cmd, audit_cmd]
