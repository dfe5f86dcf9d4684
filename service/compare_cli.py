"""``neuronatlas compare`` and ``neuronatlas audit``: work directly on the configured store."""

from __future__ import annotations

from pathlib import Path

import click


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
@click.option("--no-cache", is_flag=True, help="Recompute even if a cached result exists.")
@click.pass_context
def compare_cmd(ctx, model_a, model_b, out, layers, tau, semantic_only, pairs, no_cache):
    """Compare two indexed models: semantic view (neuron vectors) and CKA (activations)."""
    from neuronatlas.cli import settings_from
    from neuronatlas.core.compare import compare_models, comparison_summary
    from neuronatlas.core.plots import comparison_figures
    from neuronatlas.core.store import open_store

    settings = settings_from(ctx)
    with open_store(settings) as store:
        cmp = compare_models(
            store,
            model_a,
            model_b,
            _split(layers) or None,
            home=settings.home,
            tau=tau,
            activation=not semantic_only,
            limit=pairs,
            use_cache=not no_cache,
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = comparison_summary(cmp, pairs=pairs)
    (out / "summary.txt").write_text(text)
    with open(out / "pairs.tsv", "w") as fh:
        fh.write("similarity\ta_layer\ta_unit\ta_label\tb_layer\tb_unit\tb_label\n")
        fh.writelines(
            f"{p.similarity:.5f}\t{p.a_layer}\t{p.a_unit}\t{p.a_label}\t"
            f"{p.b_layer}\t{p.b_unit}\t{p.b_label}\n"
            for p in cmp.page(0, cmp.pairs_total)
        )
    figures = comparison_figures(cmp, out)
    click.echo(text)
    click.echo(
        "wrote " + ", ".join(str(p) for p in [out / "summary.txt", out / "pairs.tsv", *figures])
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
@click.pass_context
def audit_cmd(ctx, model, valid, spurious, threshold, out):
    """Audit a model: share of its neurons aligned with valid vs spurious concepts."""
    from neuronatlas.cli import settings_from
    from neuronatlas.core.audit import audit_model, audit_summary
    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.core.plots import audit_figure
    from neuronatlas.core.store import open_store

    settings = settings_from(ctx)
    embedder = load_embedder(settings.embedder, settings.device)
    with open_store(settings) as store:
        result = audit_model(
            store,
            embedder,
            model,
            _split(valid),
            _split(spurious),
            threshold=threshold,
            cache_dir=settings.cache_dir / "labels",
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = audit_summary(result)
    (out / "audit.txt").write_text(text)
    png = audit_figure(result, out / "audit.png")
    click.echo(text)
    click.echo(f"wrote {out / 'audit.txt'}, {png}")


COMMANDS = [compare_cmd, audit_cmd]
