"""Service commands: ``serve``, the query commands ``search``, ``neuron``, ``labels``,
``models``, ``stats``, ``verify`` (``compare`` and ``audit`` are in ``compare_cli.py``) and the
catalogue changes ``models update`` and ``delete``; ``client_options`` gives the indexer's
``register`` and ``show`` their ``--server``.

Every query command talks to one ``QueryBackend`` (``neuronatlas.core.backend``), chosen once:
a server's typed client when ``--server HOST:PORT`` (or ``NEURONATLAS_SERVER``) is given,
otherwise an ``Atlas`` over the configured store in this process. Both answer the same calls
with the same core results. Output: readable tables, or ``--json`` for scripts.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from neuronatlas.core import queries as Q
from neuronatlas.core.backend import QueryBackend, all_models
from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.records import KINDS, ModelEntry, NeuronRecord, parse_component_key
from neuronatlas.core.store.base import Hit, LabelScope, SearchFilter
from neuronatlas.service.cli_common import CONNECTION_ARGS, pop_connection, server_options


# -- the backend: a server (Client) or the store itself (Atlas) ------------------------------
def open_backend(
    ctx: click.Context,
    server: str | None,
    token: str | None = None,
    tls: bool | str = False,
    timeout: float = 30.0,
) -> QueryBackend:
    """The typed client of ``server``, or an Atlas over the configured store (embedder loaded
    on the first text/image query or audit)."""
    if server:
        from neuronatlas.service.client import Client

        return Client(server, token=token, tls=tls, timeout=timeout)
    from neuronatlas.cli import settings_from
    from neuronatlas.core.store import open_store

    settings = settings_from(ctx)

    def load() -> Embedder:
        from neuronatlas.core.embedder import load_embedder

        return load_embedder(settings.embedder, settings.device)

    return Q.Atlas(open_store(settings), load, backend=settings.backend, home=settings.paths)


def backend_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--server/--token/--tls/--ca-cert/--timeout, and a ``backend`` argument for the command
    (closed when it returns)."""

    @server_options(
        "Query this NeuronAtlas server (env NEURONATLAS_SERVER); default: open the store directly.",
        timeout=30.0,
    )
    @click.pass_context
    @functools.wraps(fn)
    def wrapper(ctx: click.Context, **kwargs: Any) -> Any:
        if isinstance(ctx.command, click.Group) and ctx.invoked_subcommand is not None:
            # a group (``models``) with a sub-command: the sub-command connects itself
            given = [
                name
                for name in (*CONNECTION_ARGS, *(k for k in kwargs if k not in CONNECTION_ARGS))
                if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
            ]
            if given:
                raise click.UsageError(
                    f"give {', '.join('--' + g.replace('_', '-') for g in given)} after "
                    f"the sub-command ({ctx.invoked_subcommand})"
                )
            return None
        server, token, tls, timeout = pop_connection(kwargs)
        backend = open_backend(ctx, server, token, tls, timeout)
        try:
            return fn(backend=backend, **kwargs)
        finally:
            backend.close()

    return wrapper


def client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--server/--token/--tls/--ca-cert/--timeout for a command that works on a server when
    given one (``register``, ``show``): it gets ``client``, the typed client or None, closed
    when it returns."""

    @server_options(
        "Work on this NeuronAtlas server (env NEURONATLAS_SERVER); default: the local store.",
        timeout=60.0,
    )
    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        server, token, tls, timeout = pop_connection(kwargs)
        if not server:
            return fn(client=None, **kwargs)
        from neuronatlas.service.client import Client

        with Client(server, token=token, tls=tls, timeout=timeout) as client:
            return fn(client=client, **kwargs)

    return wrapper


def connection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``backend_options`` plus --json (an ``as_json`` argument)."""
    return backend_options(
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)
    )


# -- output ------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if math.isfinite(v) else str(v)
    return str(v)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _emit(as_json: bool, data: Any, text: Callable[[], str]) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else text())


def _top_label(rec: NeuronRecord) -> str:
    best = rec.top_label
    return f"{best.label} ({best.score:.3f})" if best else ""


def _hit_dict(h: Hit) -> dict[str, Any]:
    r = h.record
    return {
        "neuron": r.key,
        "model_id": r.model_id,
        "layer": r.layer,
        "unit": r.unit,
        "kind": r.kind,
        "score": h.score,
        "depth": r.depth,
        "clarity": r.clarity,
        "top_labels": [{"label": lab.label, "score": lab.score} for lab in Q.top_labels(r)],
    }


def _hits_out(hits: list[Hit], as_json: bool) -> None:
    _emit(as_json, [_hit_dict(h) for h in hits], lambda: _hits_table(hits))


def _hits_table(hits: list[Hit]) -> str:
    rows = [
        [i + 1, h.record.key, h.score, h.record.depth, h.record.clarity, _top_label(h.record)]
        for i, h in enumerate(hits)
    ]
    if not hits:
        return "no neurons"
    return table(["#", "neuron", "score", "depth", "clarity", "top label"], rows)


def _many_hits_out(texts: Sequence[str], hits: list[list[Hit]], as_json: bool) -> None:
    """Each text's hits under its own heading (JSON: a list of {"query", "hits"})."""
    pairs = list(zip(texts, hits, strict=True))
    _emit(
        as_json,
        [{"query": t, "hits": [_hit_dict(h) for h in hs]} for t, hs in pairs],
        lambda: "\n\n".join(f"== {t}\n{_hits_table(hs)}" for t, hs in pairs),
    )


def _filter(
    models: tuple[str, ...],
    layers: tuple[str, ...],
    depth_min: float | None,
    depth_max: float | None,
    min_clarity: float | None,
    label: str | None = None,
    match: str | None = None,
    kinds: tuple[str, ...] = (),
) -> SearchFilter | None:
    flt = SearchFilter(
        model_ids=tuple(models) or None,
        layers=tuple(layers) or None,
        depth_min=depth_min,
        depth_max=depth_max,
        min_clarity=min_clarity,
        label=label,
        label_scope=LabelScope(match) if match else None,
        kinds=kind_filter(kinds),
    )
    return None if flt == SearchFilter() else flt


def kind_filter(kinds: tuple[str, ...]) -> tuple[str, ...] | None:
    """``--kind`` values: none -> None (neurons only), ``all`` -> every kind."""
    if not kinds:
        return None
    if "all" in kinds:
        return KINDS
    return tuple(dict.fromkeys(kinds))


_KIND_HELP = (
    "Only records of this kind (repeatable): neuron, nmf, cluster, cav, or all. "
    "Default: neurons only."
)


_MATCH_HELP = (
    "Which of a neuron's labels must be LABEL: top1 (its best label), set (its adaptive label "
    "set: labels within 95 % of the best score), top5 (any vocabulary's top 5)."
)


def filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(
        [
            click.option("--model", "models", multiple=True, help="Only this model (repeatable)."),
            click.option(
                "--layer", "layers", multiple=True, help="Only this layer name (repeatable)."
            ),
            click.option(
                "--depth-min", type=float, default=None, help="Lowest relative depth (0-1)."
            ),
            click.option(
                "--depth-max", type=float, default=None, help="Highest relative depth (0-1)."
            ),
            click.option("--min-clarity", type=float, default=None, help="Lowest clarity score."),
            click.option(
                "--kind",
                "kinds",
                multiple=True,
                type=click.Choice([*KINDS, "all"]),
                help=_KIND_HELP,
            ),
        ]
    ):
        fn = opt(fn)
    return fn


# -- commands -----------------------------------------------------------------------------------
@click.command()
@click.option(
    "--address",
    envvar="NEURONATLAS_ADDRESS",
    default="127.0.0.1:50051",
    show_default=True,
    help="host:port to listen on (port 0 = any free port).",
)
@click.option(
    "--tokens-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File of 'scope:token' lines (scopes read, write, worker, admin); also env "
    "NEURONATLAS_TOKENS(_FILE).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="PEM certificate.",
)
@click.option(
    "--tls-key", type=click.Path(dir_okay=False, exists=True), default=None, help="PEM private key."
)
@click.option(
    "--tls-client-ca",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Require client certificates signed by this CA (mutual TLS).",
)
@click.option(
    "--workers", type=click.IntRange(1, 256), default=16, show_default=True, help="RPC threads."
)
@click.option(
    "--no-embedder", is_flag=True, help="Serve vector and neuron queries only (no CLIP model)."
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0.0),
    default=5.0,
    show_default=True,
    help="On SIGTERM / Ctrl-C, seconds running calls get to finish before the server stops.",
)
@click.option(
    "--index-workers",
    type=click.IntRange(0, 64),
    default=None,
    help="Indexing threads running IndexModel operations (setting index_workers, env "
    "NEURONATLAS_INDEX_WORKERS, default 1; 0: queue only, for `neuronatlas worker` processes "
    "on a remote store).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on http://<host of --address>:PORT/metrics (setting "
    "metrics_port, env NEURONATLAS_METRICS_PORT; default 0: off).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines as text or JSON objects, with each call's request id (setting log_format, "
    "env NEURONATLAS_LOG_FORMAT; default text).",
)
@click.pass_context
def serve(
    ctx: click.Context,
    address: str,
    tokens_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_client_ca: str | None,
    workers: int,
    no_embedder: bool,
    grace: float,
    index_workers: int | None,
    metrics_port: int | None,
    log_format: str | None,
) -> None:
    """Run the gRPC service (health checking and reflection included) until SIGTERM/Ctrl-C."""
    from neuronatlas.cli import settings_from
    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.core.errors import InvalidArgument
    from neuronatlas.core.store import open_store
    from neuronatlas.service.auth import TokenSet
    from neuronatlas.service.logs import configure_logging
    from neuronatlas.service.server import TlsConfig, build_server, check_bindable

    settings = settings_from(ctx)
    configure_logging(log_format or settings.log_format)
    metrics_port = settings.metrics_port if metrics_port is None else metrics_port
    if index_workers is None:
        index_workers = settings.index_workers
    if bool(tls_cert) != bool(tls_key):
        raise InvalidArgument("--tls-cert and --tls-key go together", field="tls")
    if tls_client_ca and not tls_cert:
        raise InvalidArgument("--tls-client-ca needs --tls-cert and --tls-key", field="tls")
    tokens = TokenSet.load(tokens_file)
    tls = (
        TlsConfig(Path(tls_cert), Path(tls_key), Path(tls_client_ca) if tls_client_ca else None)
        if tls_cert and tls_key
        else None
    )
    if tls is not None:
        tls.check()  # a bad certificate or address fails now, before the store and CLIP load
    if not address.startswith(("unix:", "unix-abstract:")):
        check_bindable(address)
    embedder = None if no_embedder else load_embedder(settings.embedder, settings.device)
    atlas = Q.Atlas(open_store(settings), embedder, backend=settings.backend, home=settings.paths)
    try:
        if embedder is not None:
            atlas.embedder()  # fail now, not on the first query, if it does not match the store
        server = build_server(
            atlas,
            address,
            tokens=tokens,
            tls=tls,
            max_workers=workers,
            close_atlas=True,
            grace=grace,
            page_token_key=settings.page_token_key or None,
            max_upload_bytes=settings.max_upload_bytes,
            allow_python_sources=settings.allow_python_sources,
            index_workers=0 if no_embedder else index_workers,
            index_device=settings.device,
            metrics_port=metrics_port,
        )
    except BaseException:
        atlas.close()
        raise
    server.start()
    if not tokens:
        logging.getLogger("neuronatlas.service").warning(
            "no tokens configured: the service is open to anyone"
        )
    click.echo(f"neuronatlas serving on {server.address}", err=True)
    if server.metrics is not None:
        click.echo(
            f"metrics on http://{server.metrics_host}:{server.metrics_port}/metrics", err=True
        )
    server.wait()


@click.command()
@click.argument("texts", metavar="[TEXT]...", nargs=-1)
@click.option(
    "--image",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Query with an image file.",
)
@click.option(
    "--like", default=None, metavar="MODEL/LAYER/UNIT", help="Neurons similar to this neuron."
)
@filter_options
@click.option(
    "--label", default=None, help="Only neurons carrying exactly this label (see --match)."
)
@click.option(
    "--match",
    type=click.Choice([s.value for s in LabelScope]),
    default=None,
    help=_MATCH_HELP + " Default: set. Needs --label.",
)
@click.option(
    "--top-k", type=int, default=10, show_default=True, help="Results (models with --per-model)."
)
@click.option("--per-model", type=int, default=0, help="Best N neurons of each model.")
@connection_options
def search(
    backend: QueryBackend,
    as_json: bool,
    texts: tuple[str, ...],
    image: str | None,
    like: str | None,
    models: tuple[str, ...],
    layers: tuple[str, ...],
    depth_min: float | None,
    depth_max: float | None,
    min_clarity: float | None,
    kinds: tuple[str, ...],
    label: str | None,
    match: str | None,
    top_k: int,
    per_model: int,
) -> None:
    """Neurons matching TEXT (or --image / --like), best first. Several TEXTs are searched
    together (one call; their texts embedded in one batch), each with the same options."""
    from neuronatlas.core.errors import InvalidArgument

    given = [q for q in (texts, image, like) if q]
    if len(given) != 1:
        raise InvalidArgument("give exactly one of TEXT, --image or --like", field="query")
    flt = _filter(models, layers, depth_min, depth_max, min_clarity, label, match, kinds)
    if len(texts) > 1:
        pages = backend.search_many(
            [Q.Search(Q.TextQuery(t), flt, top_k=top_k, per_model=per_model) for t in texts]
        )
        _many_hits_out(texts, [p.items for p in pages], as_json)
        return
    if texts:
        query: Q.Query = Q.TextQuery(texts[0])
    elif image:
        query = Q.ImageQuery(Path(image).read_bytes())
    else:
        query = Q.NeuronQuery(*parse_component_key(str(like)))
    _hits_out(backend.search_neurons(query, flt, top_k=top_k, per_model=per_model).items, as_json)


@click.command()
@click.argument("ref", metavar="MODEL/LAYER/UNIT")
@click.option(
    "--vector", "with_vector", is_flag=True, help="Include the embedding vector (JSON only)."
)
@connection_options
def neuron(backend: QueryBackend, as_json: bool, ref: str, with_vector: bool) -> None:
    """Everything stored about one neuron."""
    model_id, layer, unit, kind = parse_component_key(ref)
    rec = backend.get_neuron(model_id, layer, unit, with_vector=with_vector, kind=kind)

    def text() -> str:
        lines = [
            f"neuron      {rec.key}",
            f"layer       {rec.layer} (index {rec.layer_index}, depth {rec.depth:.2f})",
            f"clarity     {rec.clarity:.3f}   polysemanticity {rec.polysemanticity:.3f} "
            f"(SemanticLens {rec.polysemanticity_sl:.3f})   redundancy {rec.redundancy:.3f}",
            "stats       " + "  ".join(f"{k}={v:.3g}" for k, v in rec.stats.items()),
            "label set   " + ", ".join(rec.label_set),
        ]
        if rec.component:
            lines.append(
                "component   " + "  ".join(f"{k}={_fmt(v)}" for k, v in rec.component.items())
            )
        if rec.top_classes:
            lines.append(
                "drives      "
                + ", ".join(f"{c.class_name} ({c.importance:+.3g})" for c in rec.top_classes[:5])
            )
        for vocab, labels in rec.labels.items():
            lines.append(f"{vocab:<11} " + ", ".join(f"{l.label} ({l.score:.3f})" for l in labels))
        lines += [
            "",
            table(
                ["#", "top sample", "activation"],
                [[i + 1, s.sample_id, s.activation] for i, s in enumerate(rec.top_samples)],
            ),
        ]
        return "\n".join(lines)

    data = {
        "neuron": rec.key,
        "model_id": rec.model_id,
        "layer": rec.layer,
        "unit": rec.unit,
        "layer_index": rec.layer_index,
        "depth": rec.depth,
        "clarity": rec.clarity,
        "polysemanticity": rec.polysemanticity,
        "polysemanticity_sl": rec.polysemanticity_sl,
        "redundancy": rec.redundancy,
        "stats": rec.stats,
        "labels": {
            v: [{"label": l.label, "score": l.score} for l in ls] for v, ls in rec.labels.items()
        },
        "label_set": rec.label_set,
        "top_samples": [s.to_dict() for s in rec.top_samples],
        "generation": rec.generation,
        "kind": rec.kind,
        "component": rec.component,
        "top_classes": [
            {"class": c.class_name, "importance": c.importance} for c in rec.top_classes
        ],
    }
    if with_vector:
        data["vector"] = [float(x) for x in rec.vector]
    _emit(as_json, data, text)


@click.group()
def labels() -> None:
    """Describe a neuron with labels, or find neurons by label."""


@labels.command("describe")
@click.argument("ref", metavar="MODEL/LAYER/UNIT")
@click.option(
    "--label",
    "custom",
    multiple=True,
    help="Score these labels instead of the stored ones (repeatable).",
)
@click.option(
    "--labels-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Score the labels of this vocabulary file instead.",
)
@click.option("--top-n", type=int, default=5, show_default=True, help="Labels per vocabulary.")
@connection_options
def labels_describe(
    backend: QueryBackend,
    as_json: bool,
    ref: str,
    custom: tuple[str, ...],
    labels_file: str | None,
    top_n: int,
) -> None:
    """Labels of one neuron: stored vocabularies, or your own labels scored live."""
    names = list(custom)
    if labels_file:
        from neuronatlas.core.labels import load_vocabulary

        names += load_vocabulary(labels_file)
    model_id, layer, unit, kind = parse_component_key(ref)
    d = backend.describe_neuron(model_id, layer, unit, labels=names, top_n=top_n, kind=kind)
    rows = [
        [vocab, i + 1, l.label, l.score] for vocab, ls in d.labels.items() for i, l in enumerate(ls)
    ]
    _emit(
        as_json,
        {
            "neuron": f"{d.model_id}/{d.layer}/{d.unit}",
            "label_set": d.label_set,
            "labels": {
                v: [{"label": l.label, "score": l.score} for l in ls] for v, ls in d.labels.items()
            },
        },
        lambda: (
            table(["vocabulary", "#", "label", "score"], rows)
            + "\nlabel set: "
            + ", ".join(d.label_set)
        ),
    )


@labels.command("find")
@click.argument("label")
@click.option("--prefix", is_flag=True, help="Match labels starting with LABEL.")
@click.option(
    "--match",
    type=click.Choice([s.value for s in LabelScope]),
    default=LabelScope.SET.value,
    show_default=True,
    help=_MATCH_HELP,
)
@filter_options
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
@connection_options
def labels_find(
    backend: QueryBackend,
    as_json: bool,
    label: str,
    prefix: bool,
    match: str,
    models: tuple[str, ...],
    layers: tuple[str, ...],
    depth_min: float | None,
    depth_max: float | None,
    min_clarity: float | None,
    kinds: tuple[str, ...],
    limit: int,
) -> None:
    """Neurons carrying LABEL across models (in their adaptive label set unless --match says
    otherwise), ranked by the label's score."""
    flt = _filter(models, layers, depth_min, depth_max, min_clarity, kinds=kinds)
    hits = backend.find_by_label(label, prefix=prefix, flt=flt, limit=limit, scope=match)
    _hits_out(hits.items, as_json)


def _list_models(backend: QueryBackend, as_json: bool) -> None:
    entries = list(all_models(backend))

    def acc(m: ModelEntry) -> str:
        a = m.probe_accuracy
        if not a:
            return "-"
        return f"{a['accuracy']:.1%}" + (" !" if a.get("warning") else "")

    def size(m: ModelEntry) -> str:
        hw = m.transform.get("input_size")
        return f"{hw[0]}x{hw[1]}" if hw else "-"

    rows = [
        [
            m.model_id,
            m.architecture,
            m.status.value,
            len(m.layers),
            m.neuron_count,
            size(m),
            acc(m),
            m.embedder,
        ]
        for m in entries
    ]
    head = [
        "model",
        "architecture",
        "status",
        "layers",
        "neurons",
        "input",
        "probe acc",
        "embedder",
    ]

    def text() -> str:
        if not entries:
            return "no models"
        warnings = [
            f"WARNING {m.model_id}: {m.probe_accuracy['warning']}"
            for m in entries
            if m.probe_accuracy.get("warning")
        ]
        return "\n".join([table(head, rows), *warnings])

    _emit(as_json, [{**m.to_payload(), "neuron_count": m.neuron_count} for m in entries], text)


@click.group("models", invoke_without_command=True)
@connection_options
def models(backend: QueryBackend, as_json: bool) -> None:
    """The model catalogue, with each model's input size and probe-set accuracy (flagged
    "!" and a WARNING line when near chance). ``models update MODEL`` changes a model's
    metadata."""
    _list_models(backend, as_json)


@models.command("update")
@click.argument("model_id")
@click.option("--display-name", default=None, help="Human-readable name ('' = the model id).")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    help="Catalogue tag (repeatable; replaces all tags). See --clear-tags.",
)
@click.option("--clear-tags", is_flag=True, help="Remove every tag.")
@click.option("--notes", default=None, help="Free-form notes.")
@click.option("--training-data", default=None, help="Training data / task, free text.")
@connection_options
def models_update(
    backend: QueryBackend,
    as_json: bool,
    model_id: str,
    display_name: str | None,
    tags: tuple[str, ...],
    clear_tags: bool,
    notes: str | None,
    training_data: str | None,
) -> None:
    """Change MODEL_ID's display name, tags, notes or training data (one catalogue write;
    with --server: UpdateModel, which needs a write token)."""
    if tags and clear_tags:
        raise click.UsageError("--tag and --clear-tags exclude each other")
    new_tags = [] if clear_tags else (list(tags) if tags else None)
    if all(v is None for v in (display_name, new_tags, notes, training_data)):
        raise click.UsageError(
            "give at least one of --display-name, --tag, --clear-tags, --notes, --training-data"
        )
    update = getattr(backend, "update_model", None)
    if update is None:  # pragma: no cover - both backends have it
        raise click.UsageError("this backend cannot change models")
    entry: ModelEntry = update(
        model_id,
        display_name=display_name,
        tags=new_tags,
        notes=notes,
        training_data=training_data,
    )
    data = {
        "model_id": entry.model_id,
        "display_name": entry.display_name,
        "tags": entry.tags,
        "notes": entry.notes,
        "training_data": entry.training_data,
    }
    _emit(
        as_json,
        data,
        lambda: "\n".join(
            [
                f"{entry.model_id}: updated",
                f"  display name   {entry.display_name}",
                f"  tags           {', '.join(entry.tags) or '-'}",
                f"  training data  {entry.training_data or '-'}",
                f"  notes          {entry.notes or '-'}",
            ]
        ),
    )


@click.command("delete")
@click.argument("model_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@connection_options
def delete(backend: QueryBackend, as_json: bool, model_id: str, yes: bool) -> None:
    """Delete MODEL_ID and its neurons from the atlas (atomic: queries see it whole or not at
    all; with --server: DeleteModel, which needs an admin token). Asks first unless --yes."""
    entry = backend.get_model(model_id)  # NOT_FOUND before asking
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError(f"deleting {model_id} needs confirmation: pass --yes")
        click.confirm(
            f"Delete model {model_id} ({entry.neuron_count} neurons, status {entry.status.value})?",
            abort=True,
        )
    n = backend.delete_model(model_id)
    _emit(
        as_json,
        {"model_id": model_id, "deleted_neurons": n},
        lambda: f"deleted {model_id} ({n} neuron records)",
    )


@click.command()
@connection_options
def stats(backend: QueryBackend, as_json: bool) -> None:
    """Neuron counts per model and layer, and the store size."""
    s = backend.stats()
    data = {
        "total_neurons": s.total_neurons,
        "size_bytes": s.size_bytes,
        "backend": s.backend,
        "embedder": s.embedder.to_dict() if s.embedder else None,
        "models": [
            {
                "model_id": m.model_id,
                "status": m.status.value,
                "neurons": m.neurons,
                "layers": m.layers,
            }
            for m in s.models
        ],
    }

    def text() -> str:
        rows = [
            [m.model_id, m.status.value, layer, n]
            for m in s.models
            for layer, n in m.layers.items()
        ]
        emb = (
            f"{s.embedder.name} ({s.embedder.weights}, dim {s.embedder.dim})"
            if s.embedder
            else "none"
        )
        head = (
            f"neurons {s.total_neurons}   models {len(s.models)}   "
            f"size {s.size_bytes / 2**20:.1f} MiB   embedder {emb}"
        )
        return head + (
            "\n\n" + table(["model", "status", "layer", "neurons"], rows) if rows else ""
        )

    _emit(as_json, data, text)


@click.command()
@connection_options
def verify(backend: QueryBackend, as_json: bool) -> None:
    """Check the store's integrity: every stored point read back; each indexed model's neuron
    count and content digest against what was recorded when it was indexed. Exit status 1
    when anything is wrong (with --server: the VerifyStore call, which needs an admin token)."""
    report = backend.verify_store()
    data = {
        "ok": report.ok,
        "points_scanned": report.points_scanned,
        "elapsed_s": round(report.elapsed_s, 3),
        "problems": report.problems,
        "notes": report.notes,
        "models": [
            {
                "model_id": m.model_id,
                "status": m.status.value,
                "generation": m.generation,
                "ok": m.ok,
                "expected_neurons": m.expected_neurons,
                "found_neurons": m.found_neurons,
                "expected_digest": m.expected_digest,
                "found_digest": m.found_digest,
                "problems": m.problems,
                "notes": m.notes,
            }
            for m in report.models
        ],
    }

    def count(n: int | None) -> str:
        return "-" if n is None else str(n)

    def text() -> str:
        rows = [
            [
                m.model_id,
                m.status.value,
                m.generation,
                f"{count(m.found_neurons)}/{count(m.expected_neurons)}",
                m.found_digest or "-",
                "ok" if m.ok else "PROBLEM",
            ]
            for m in report.models
        ]
        lines = [
            f"{'store OK' if report.ok else 'store DAMAGED'}: {len(report.models)} models, "
            f"{report.points_scanned} points read in {report.elapsed_s:.2f} s"
        ]
        if rows:
            lines += [
                "",
                table(["model", "status", "gen", "found/recorded", "digest", "result"], rows),
            ]
        details = [f"{m.model_id}: {p}" for m in report.models for p in m.problems]
        details += [f"store: {p}" for p in report.problems]
        if details:
            lines += ["", "problems:"] + [f"  {d}" for d in details]
        notes = [f"{m.model_id}: {n}" for m in report.models for n in m.notes] + report.notes
        if notes:
            lines += ["", "notes:"] + [f"  {n}" for n in notes]
        return "\n".join(lines)

    _emit(as_json, data, text)
    if not report.ok:
        raise SystemExit(1)


from neuronatlas.service import transfer_cli  # noqa: E402 - migrate, backup, restore

COMMANDS: list[click.Command] = [
    serve,
    search,
    neuron,
    labels,
    models,
    stats,
    verify,
    delete,
    *transfer_cli.COMMANDS,
]
