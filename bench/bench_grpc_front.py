"""Which gRPC front end: server CPU per SearchNeurons call, sync server vs grpc.aio.

Serves the store that ``bench/bench_grpc.py`` built (``--neurons`` N, cached under
bench/_work/) three ways, each in its own process, and drives each with the same vector
queries (32 concurrent clients, then 1 client):

- ``product``: the NeuronAtlas server as shipped (``build_server``: since issue 13 a grpc.aio
  server whose bridge runs this call inline on the event loop, with the interceptors; it
  was a sync gRPC server with a thread pool when this benchmark chose between the two);
- ``sync-bare``: a sync gRPC server with only SearchNeurons registered, no interceptors;
- ``aio-bare``: a ``grpc.aio`` server with only SearchNeurons, whose handler calls the same
  servicer method inline on the event loop (no thread hand-off);
- ``aio-engine``: the floor of any Python server over this store: a ``grpc.aio`` handler that
  parses the request, makes the engine call the store makes for it (Qdrant Edge's ``query``:
  the same vector, limit, ef, rescoring and payload fields) and answers with the bytes of a
  real answer serialised once at start, so none of NeuronAtlas's Python runs per call;
- ``aio-empty``: the same handler without the engine call: gRPC's and asyncio's own cost of a
  unary call.

The two bare servers differ only in the front end, so their gap is what moving to grpc.aio
saves; ``aio-empty`` and ``aio-engine`` split a call's CPU into gRPC, engine and (product minus
aio-engine) ours. Server CPU ms/query = the server process's CPU time over the measured calls /
calls (client and server share the host).

    python bench/bench_grpc.py --neurons 100000 --requests 10   # builds the store once
    python bench/bench_grpc_front.py --neurons 100000
    python bench/bench_grpc_front.py --neurons 1000000 --workdir /tmp/g1m \\
        --ef-cycle 128,96,64 --rounds 9 --requests 1500      # search_ef, paired within seconds
    python bench/bench_grpc_front.py --neurons 1000000 --workdir /tmp/g1m \\
        --ab a6548aa --restarts 6 --rounds 10 --requests 800   # this checkout against a commit
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bench_grpc as B

ROOT = Path(__file__).resolve().parent

EMBEDDER = "open_clip:ViT-B-32:random:0"
VARIANTS = ("product", "sync-bare", "aio-bare", "aio-engine", "aio-empty")


def serve(variant: str, store: str, port_file: str) -> None:
    import grpc

    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.core.queries import Atlas
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.service.server import build_server
    from neuronatlas.service.servicer import NeuronAtlasServicer
    from neuronatlas.v1 import neuronatlas_pb2 as pb

    atlas = Atlas(EdgeStore(store), load_embedder(EMBEDDER, "cpu"))
    server = build_server(atlas, "127.0.0.1:0")
    if variant.startswith("product-ef:"):  # the shipped server; SIGUSR1: the next ef
        efs = [int(x) for x in variant.split(":", 1)[1].split(",")]
        atlas.store.search_ef = efs[0]

        def next_ef(*_) -> None:
            efs.append(efs.pop(0))
            atlas.store.search_ef = efs[0]

        signal.signal(signal.SIGUSR1, next_ef)
        variant = "product"
    if variant == "product":
        import neuronatlas

        print(f"{variant}: NeuronAtlas from {Path(neuronatlas.__file__).parent}", file=sys.stderr)
        server.start()
        Path(port_file).write_text(str(server.port))
        server.wait()
        return
    servicer = NeuronAtlasServicer(atlas, server.page_tokens)

    def handler(behaviour):
        return grpc.method_handlers_generic_handler(
            "neuronatlas.v1.NeuronAtlasService",
            {
                "SearchNeurons": grpc.unary_unary_rpc_method_handler(
                    behaviour,
                    request_deserializer=pb.SearchNeuronsRequest.FromString,
                    response_serializer=pb.SearchNeuronsResponse.SerializeToString,
                )
            },
        )

    if variant == "sync-bare":
        from concurrent import futures

        bare = grpc.server(futures.ThreadPoolExecutor(16))
        bare.add_generic_rpc_handlers((handler(servicer.SearchNeurons),))
        port = bare.add_insecure_port("127.0.0.1:0")
        bare.start()
        Path(port_file).write_text(str(port))
        bare.wait_for_termination()
        return

    async def search(request, context):
        return servicer.SearchNeurons(request, context)

    if variant in ("aio-engine", "aio-empty"):
        canned, engine_query = floor_handler(atlas, servicer)
        engine = variant == "aio-engine"

        async def floor(raw: bytes, context) -> bytes:
            request = pb.SearchNeuronsRequest.FromString(raw)
            if engine:
                engine_query(request.vector.values)
            return canned

        generic = grpc.method_handlers_generic_handler(
            "neuronatlas.v1.NeuronAtlasService",
            {"SearchNeurons": grpc.unary_unary_rpc_method_handler(floor)},
        )
    else:
        generic = handler(search)

    async def main() -> None:
        aio = grpc.aio.server()
        aio.add_generic_rpc_handlers((generic,))
        port = aio.add_insecure_port("127.0.0.1:0")
        await aio.start()
        Path(port_file).write_text(str(port))
        await aio.wait_for_termination()

    asyncio.run(main())


class _NoDeadline:
    """The one part of a servicer context that a search reads."""

    def time_remaining(self) -> None:
        return None


def floor_handler(atlas, servicer):
    """(the serialised answer to one query, a function making the engine call the store
    makes for an unfiltered top-10 vector search): what ``aio-engine`` / ``aio-empty`` run."""
    from qdrant_edge import (
        PayloadSelector,
        QuantizationSearchParams,
        Query,
        QueryRequest,
        SearchParams,
    )

    from neuronatlas.core.store.base import HIT_FIELDS
    from neuronatlas.core.store.edge import RESCORE_MIN, _edge_filter

    store = atlas.store
    request = search_requests(1, seed=7)[0]
    seen = []  # the engine query the store makes for it (its filter: usually none)
    n_query = store._n_query
    store._n_query = lambda specs, **kw: seen.append(specs[0]) or n_query(specs, **kw)
    try:
        canned = servicer.SearchNeurons(request, _NoDeadline()).SerializeToString()
    finally:
        store._n_query = n_query
    conds = seen[0].conds
    params = SearchParams(
        hnsw_ef=store.search_ef,
        quantization=QuantizationSearchParams(
            rescore=True, oversampling=max(store.quantization_oversampling, RESCORE_MIN / 10)
        ),
    )
    fields = PayloadSelector.Include(list(HIT_FIELDS))
    shard = store._shard("neurons")

    def engine_query(values) -> None:
        shard.query(
            QueryRequest(
                limit=10,
                query=Query.Nearest(list(values)),
                filter=_edge_filter(conds),
                with_vector=False,
                with_payload=fields,
                params=params,
            )
        )

    return canned, engine_query


@contextlib.contextmanager
def served(
    variant: str, store: Path, work: Path, source: Path | None = None
) -> Iterator[tuple[str, int]]:
    """(address, pid) of ``variant`` serving ``store`` in a process of its own, until the
    block ends; with ``source``, the server imports NeuronAtlas from that tree
    (``source_tree``) instead of this checkout."""
    port_file = work / f"front-port-{os.getpid()}-{store.name}"
    port_file.unlink(missing_ok=True)
    env = dict(os.environ)
    if source is not None:  # ahead of the editable install's finder on the import path
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", variant, str(store), str(port_file)], env=env
    )
    try:
        t0 = time.time()
        while not port_file.exists():
            if proc.poll() is not None or time.time() - t0 > 300:
                raise SystemExit(f"{variant}: server did not start")
            time.sleep(0.2)
        time.sleep(0.3)
        yield f"127.0.0.1:{port_file.read_text()}", proc.pid
    finally:
        proc.kill()
        proc.wait()
        port_file.unlink(missing_ok=True)


def measure(variant: str, store: Path, requests: list, work: Path) -> dict:
    with served(variant, store, work) as (address, pid):
        many, _ = B.run_case(address, requests, 32, server_pid=pid)
        one, _ = B.run_case(address, requests[:500], 1, server_pid=pid)
        return {"many": many, "one": one}


def search_requests(n: int, seed: int) -> list:
    """``n`` top-10 SearchNeurons requests for new synthetic query vectors."""
    from neuronatlas.v1 import neuronatlas_pb2 as pb

    return [
        pb.SearchNeuronsRequest(vector=pb.Vector(values=v), top_k=10)
        for v in B.synthetic_vectors(n, 512, seed=seed)
    ]


def ef_cycle(efs: list[int], store: Path, args: argparse.Namespace) -> str:
    """One shipped server whose ``search_ef`` moves to the next value at a signal: blocks of
    ``--requests`` new queries (32 clients), one per ef, the order rotated every round, so each
    ef is compared with the others within seconds (the host's speed drifts over minutes)."""
    import numpy as np

    variant = "product-ef:" + ",".join(map(str, efs))
    cpu: dict[int, list[float]] = {ef: [] for ef in efs}
    with served(variant, store, args.workdir) as (address, pid):
        at = 0
        for r in range(args.rounds):
            for k in range(len(efs)):
                requests = search_requests(args.requests, seed=1000 + 10 * r + k)
                got, _ = B.run_case(address, requests, 32, server_pid=pid)
                cpu[efs[at]].append(got["server_cpu_ms"])
                os.kill(pid, signal.SIGUSR1)
                at = (at + 1) % len(efs)
            os.kill(pid, signal.SIGUSR1)  # the next round starts one ef later
            at = (at + 1) % len(efs)
            print(f"round {r + 1}: " + ", ".join(f"ef {e} {v[-1]:.2f} ms" for e, v in cpu.items()))
    rows = [
        f"| ef | server CPU ms/query, median | paired difference to ef {efs[0]}, median / mean |",
        "|---|---|---|",
    ]
    for ef, values in cpu.items():
        d = np.array(values) - np.array(cpu[efs[0]])
        rows.append(f"| {ef} | {np.median(values):.2f} | {np.median(d):+.2f} / {d.mean():+.2f} |")
    return "\n".join(rows)


def source_tree(rev: str, work: Path) -> Path:
    """NeuronAtlas as of git revision ``rev``, laid out as installed (``service`` and
    ``indexer`` inside the ``neuronatlas`` package, as pyproject's package-dir maps them), for
    a server's PYTHONPATH."""
    repo = ROOT.parent
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    root = work / f"src-{sha[:12]}"
    if not (root / "neuronatlas").is_dir():
        tmp = work / f"src-{sha[:12]}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", sha, "neuronatlas", "service", "indexer"],
            cwd=repo,
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        for sub in ("service", "indexer"):
            (tmp / sub).rename(tmp / "neuronatlas" / sub)
        tmp.rename(root)
    return root


def ab_rounds(rev: str, store: Path, args: argparse.Namespace) -> str:
    """The shipped server from this checkout (A) and from git revision ``rev`` (B), each on
    its own copy of the store and imported from a tree of its own, both up at once: blocks of
    ``--requests`` new queries (32 clients), one on each, the order swapped every round, so
    that each pair of blocks runs within seconds of each other (the host's speed drifts over
    minutes).

    A server process has a speed of its own too (where its heap and the engine's maps land,
    its hash seed): two processes of the same code on the same data differed by 0.09-0.22 ms
    a query for their whole life (bench/results/grpc.md). So the pair of servers is started ``--restarts`` times, the two copies of the
    store swapped between A and B each time, and the comparison is over the restarts' mean
    differences, not the rounds of one pair."""
    import numpy as np

    copy = store.with_name(store.name + ".ab")
    if not (copy / "bench.json").exists():  # the same data, opened by the other server
        shutil.rmtree(copy, ignore_errors=True)
        subprocess.run(["cp", "-a", "--reflink=auto", str(store), str(copy)], check=True)
    # Both servers start the same way, from a tree of their own on PYTHONPATH (this
    # checkout's: its commit, or a stash commit of its uncommitted changes), and take turns
    # starting first.
    here = subprocess.run(
        ["git", "stash", "create"], cwd=ROOT.parent, check=True, capture_output=True, text=True
    ).stdout.strip()
    sources = {"A": source_tree(here or "HEAD", args.workdir), "B": source_tree(rev, args.workdir)}
    rows, means, wins, n = [], [], 0, 0
    for restart in range(args.restarts):
        pair = (store, copy) if restart % 2 == 0 else (copy, store)
        stores = dict(zip("AB", pair, strict=True))
        cpu: dict[str, list[float]] = {"A": [], "B": []}
        with contextlib.ExitStack() as stack:
            servers = {
                name: stack.enter_context(
                    served("product", stores[name], args.workdir, sources[name])
                )
                for name in ("AB" if restart % 2 == 0 else "BA")
            }
            warm = search_requests(500, seed=999)
            for address, _ in servers.values():  # first reads of each copy's files
                B.run_case(address, warm, 32)
            for r in range(args.rounds):
                for k, name in enumerate("AB" if r % 2 == 0 else "BA"):
                    requests = search_requests(args.requests, 3000 + 1000 * restart + 10 * r + k)
                    address, pid = servers[name]
                    got, _ = B.run_case(address, requests, 32, server_pid=pid)
                    cpu[name].append(got["server_cpu_ms"])
        a, b = np.array(cpu["A"]), np.array(cpu["B"])
        d = a - b
        means.append(float(d.mean()))
        wins, n = wins + int((d < 0).sum()), n + len(d)
        rows.append(
            f"| {restart + 1} | {stores['A'].name} | {np.median(a):.2f} | {np.median(b):.2f} | "
            f"{d.mean():+.3f} | {int((d < 0).sum())} of {len(d)} |"
        )
        print(rows[-1], flush=True)
    m = np.array(means)
    se = m.std(ddof=1) / np.sqrt(len(m)) if len(m) > 1 else float("nan")
    return "\n".join(
        [
            f"A: this checkout; B: {rev}. Server CPU ms/query (32 clients), medians of the "
            "rounds of each restart.",
            "",
            "| restart | A's store | A | B | A - B, mean of rounds | A cheaper |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"**A - B over {len(m)} restarts: median {np.median(m):+.3f} ms a query, mean "
            f"{m.mean():+.3f} (standard error {se:.3f})**; A cheaper in {wins} of {n} rounds. "
            "(The median of the restarts stands when one pair ran while the host was disturbed.)",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--neurons", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=2, help="runs of each variant, interleaved")
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated, of: " + " ".join(VARIANTS)
    )
    ap.add_argument(
        "--ef-cycle",
        help="instead of the variants: one shipped server, these search_ef values (e.g. "
        "128,96,64) in turn, --rounds rounds of one --requests block each",
    )
    ap.add_argument(
        "--ab",
        metavar="REV",
        help="instead of the variants: the shipped server of this checkout against that of "
        "git revision REV, both up at once, --rounds paired blocks of --requests queries, "
        "the pair started --restarts times",
    )
    ap.add_argument("--restarts", type=int, default=4, help="--ab: server pairs started")
    ap.add_argument("--workdir", type=Path, default=B.WORK)
    ap.add_argument("--out", type=Path, default=B.RESULTS)
    ap.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(*args.serve)

    store = args.workdir / f"grpc-{args.neurons}-512"
    if not (store / "bench.json").exists():
        raise SystemExit(f"no store at {store}: run bench/bench_grpc.py --neurons {args.neurons}")
    if args.ef_cycle or args.ab:
        load0 = os.getloadavg()[0]
        if args.ef_cycle:
            title, flags = "search_ef over gRPC", f"--ef-cycle {args.ef_cycle}"
            table = ef_cycle([int(x) for x in args.ef_cycle.split(",")], store, args)
        else:
            title, flags = (
                f"This checkout against {args.ab}",
                f"--ab {args.ab} --restarts {args.restarts}",
            )
            table = ab_rounds(args.ab, store, args)
        text = (
            f"## {title}, {args.neurons:,} neurons\n\nCommand: `python bench/bench_grpc_front.py "
            f"--neurons {args.neurons} {flags} --rounds {args.rounds} --requests "
            f"{args.requests}`; load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at "
            f"the end.\n\n{table}\n"
        )
        print("\n" + text)
        with open(args.out, "a") as f:
            f.write("\n" + text)
        return
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        raise SystemExit(f"unknown variants: {sorted(unknown)}")
    requests = search_requests(args.requests, seed=2)
    load0 = os.getloadavg()[0]
    lines = [
        f"## Front end: sync server vs grpc.aio, and the floor, {args.neurons:,} neurons",
        "",
        f"Command: `python bench/bench_grpc_front.py --neurons {args.neurons} --requests "
        f"{args.requests} --rounds {args.rounds} --variants {args.variants}`; load average at start {load0:.2f}.",
        "",
        "| server | round | 32 clients q/s | server CPU ms/query | 1 client p50 ms | 1 client CPU ms/query |",
        "|---|---|---|---|---|---|",
    ]
    for r in range(args.rounds):
        for variant in variants:
            got = measure(variant, store, requests, args.workdir)
            many, one = got["many"], got["one"]
            lines.append(
                f"| {variant} | {r + 1} | {many['qps']:.0f} | {many['server_cpu_ms']:.2f} | "
                f"{one['p50_ms']:.2f} | {one['server_cpu_ms']:.2f} |"
            )
            print(
                lines[-1],
                f"(system {many['server_sys_ms']:.2f} ms, faults/q major "
                f"{many['major_faults']:.2f} minor {many['minor_faults']:.2f})",
                flush=True,
            )
    lines += ["", f"Load average at the end {os.getloadavg()[0]:.2f}.", ""]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    with open(args.out, "a") as f:
        f.write("\n" + text)


if __name__ == "__main__":
    main()
