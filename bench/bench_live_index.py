"""Search latency while the server indexes a model: idle vs during an IndexModel operation.

Builds (once, cached under bench/_work/live_index/) a home with a class-balanced CIFAR-10 probe
set and an embedded store holding resnet20 and resnet32 (tiny random CLIP, Broden labels).
Starts `neuronatlas serve --index-workers 1` on it in a subprocess, then from this process (one
client, sequential calls):

1. idle: the query set (vector queries from stored neuron vectors, top 10; and the same number
   grouped per model) answered ``--rounds`` times;
2. during indexing: IndexModel of resnet56 (from scratch, on the same probe set) is queued and
   the same query set is answered over and over until the operation is done.

Latency is per call (client side, gRPC on loopback). The load average (`uptime`) is taken
before the idle phase, in the middle of the indexing and at the end. Writes a markdown table
to bench/results/live_index.md. Run it alone (no tests or other benches at the same time):

    python bench/bench_live_index.py                 # 1,000 probe images
    python bench/bench_live_index.py --images 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NEURONATLAS_SHARED_DATA", ROOT.parent / "shared" / "data"))
WORK = ROOT / "bench" / "_work" / "live_index"
RESULTS = ROOT / "bench" / "results" / "live_index.md"
EMBEDDER = "open_clip:na-tiny:random:0"


def weights(depth: int) -> Path:
    hits = sorted((DATA / "models").glob(f"cifar10-resnet{depth}-*.th"))
    if not hits:
        raise SystemExit(f"no resnet{depth} checkpoint in {DATA / 'models'}")
    return hits[0]


def prepare(images: int) -> Path:
    """The home: probe set ``cifar<images>``, resnet20 + resnet32 indexed (cached)."""
    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.indexer.api import build_index

    home = WORK / f"home-{images}"
    done = home / "ready"
    if done.exists():
        return home
    home.mkdir(parents=True, exist_ok=True)
    embedder = load_embedder(EMBEDDER, device="cpu")
    with EdgeStore(home / "store") as store:
        for depth in (20, 32):
            t0 = time.perf_counter()
            build_index(
                store,
                embedder,
                model_id=f"resnet{depth}",
                source={"kind": "cifar_resnet", "depth": depth, "weights": str(weights(depth))},
                probe_dir=DATA / "cifar10-test",
                probe_name=f"cifar{images}",
                home=home,
                vocabularies={"broden": DATA / "concepts" / "broden_labels_clean.txt"},
                k=20,
                probe_limit=images,
                progress=False,
            )
            print(f"indexed resnet{depth} in {time.perf_counter() - t0:.1f} s", flush=True)
    done.write_text("ok\n")
    return home


def load_average() -> str:
    out = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    return out.rsplit("load average:", 1)[-1].strip() if "load average" in out else "?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(home: Path, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "NEURONATLAS_HOME": str(home),
        "NEURONATLAS_EMBEDDER": EMBEDDER,
        "NEURONATLAS_DEVICE": "cpu",
    }
    for var in (
        "NEURONATLAS_BACKEND",
        "NEURONATLAS_URL",
        "NEURONATLAS_CONFIG",
        "NEURONATLAS_TOKENS",
    ):
        env.pop(var, None)
    log = (WORK / "serve.log").open("w")  # a file: a pipe nobody reads would fill and block
    return subprocess.Popen(
        [sys.executable, "-m", "neuronatlas.cli", "serve", "--address", f"127.0.0.1:{port}",
         "--index-workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )  # fmt: skip


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "n": len(a),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1000, help="probe images (class-balanced)")
    ap.add_argument("--queries", type=int, default=100, help="distinct query vectors")
    ap.add_argument("--rounds", type=int, default=3, help="idle passes over the query set")
    ap.add_argument("--depth", type=int, default=56, help="the ResNet indexed during the run")
    args = ap.parse_args()

    from neuronatlas.core.jobs import JobState
    from neuronatlas.core.queries import VectorQuery
    from neuronatlas.service.client import Client

    home = prepare(args.images)
    port = free_port()
    proc = start_server(home, port)
    client = Client(f"127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise SystemExit((WORK / "serve.log").read_text()[-3000:])
            try:
                if client.health() == "SERVING":
                    break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.3)
            if time.monotonic() > deadline:
                raise SystemExit("the server did not come up")
        # the query set: stored neuron vectors of both models (fixed seed)
        rng = np.random.default_rng(0)
        refs = []
        for model in ("resnet20", "resnet32"):
            entry = client.get_model(model)
            for _ in range(args.queries // 2):
                layer = entry.layers[int(rng.integers(len(entry.layers)))]
                refs.append((model, layer.name, int(rng.integers(layer.neurons))))
        queries = [VectorQuery(client.get_neuron(*ref, with_vector=True).vector) for ref in refs]

        def one_pass(out: dict[str, list[float]], stop: threading.Event | None = None) -> None:
            for q in queries:
                for mode, per_model in (("top 10", 0), ("per model", 1)):
                    if stop is not None and stop.is_set():
                        return
                    t0 = time.perf_counter()
                    page = client.search_neurons(q, top_k=10, per_model=per_model)
                    out[mode].append((time.perf_counter() - t0) * 1000)
                    assert page.items

        one_pass({"top 10": [], "per model": []})  # warm-up (connections, caches)
        load_idle = load_average()
        idle: dict[str, list[float]] = {"top 10": [], "per model": []}
        t_idle = time.perf_counter()
        for _ in range(args.rounds):
            one_pass(idle)
        t_idle = time.perf_counter() - t_idle

        busy: dict[str, list[float]] = {"top 10": [], "per model": []}
        op = client.index_model(
            f"resnet{args.depth}",
            f"cifar{args.images}",
            source={
                "kind": "cifar_resnet",
                "depth": args.depth,
                "weights": str(weights(args.depth)),
            },
            vocabularies={"broden": str(DATA / "concepts" / "broden_labels_clean.txt")},
            k=20,
        )
        t_busy = time.perf_counter()
        stages: list[str] = []
        load_mid = ["?"]

        def watch() -> None:
            nonlocal op
            half = False
            while not op.done:
                op = client.wait_operation(op.name, timeout=1.0)
                if op.stage not in stages:
                    stages.append(op.stage)
                if not half and op.stage == "forward" and op.images_done >= op.images_total // 2:
                    load_mid[0], half = load_average(), True

        watcher = threading.Thread(target=watch)
        watcher.start()
        stop = threading.Event()
        threading.Thread(target=lambda: (watcher.join(), stop.set()), daemon=True).start()
        passes = 0
        while not stop.is_set():
            one_pass(busy, stop)
            passes += 1
        t_busy = time.perf_counter() - t_busy
        watcher.join()
        load_end = load_average()
        if op.state is not JobState.SUCCEEDED:
            raise SystemExit(f"the operation ended {op.state.value}: {op.error}")
        after: dict[str, list[float]] = {"top 10": [], "per model": []}
        one_pass(after)
    finally:
        client.close()
        proc.terminate()
        proc.wait(60)

    rows = []
    for phase, data in (
        ("idle", idle),
        ("during IndexModel", busy),
        ("after (new model live)", after),
    ):
        for mode in ("top 10", "per model"):
            p = percentiles(data[mode])
            rows.append(
                f"| {phase} | {mode} | {p['n']} | {p['p50']:.2f} | {p['p90']:.2f} | "
                f"{p['p99']:.2f} | {p['max']:.1f} |"
            )
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M')} — resnet{args.depth} indexed on {args.images} probe images",
        "",
        f"`python bench/bench_live_index.py --images {args.images} --queries {args.queries} "
        f"--rounds {args.rounds} --depth {args.depth}` on {platform.machine()}, "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()}; server: "
        "`neuronatlas serve --index-workers 1` (embedded store, tiny random CLIP) in a "
        "subprocess; one client, sequential calls, gRPC on loopback; the same "
        f"{len(queries)} stored-neuron vectors in every phase.",
        "",
        "| phase | query | calls | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"- load average (1, 5, 15 min): before the idle phase {load_idle}; in the middle of "
        f"the forward pass {load_mid[0]}; at the end {load_end}",
        f"- idle phase {t_idle:.1f} s; IndexModel of resnet{args.depth} {t_busy:.1f} s "
        f"(operation elapsed {op.elapsed_s:.1f} s, stages {' → '.join(stages)}), "
        f"{passes} passes over the query set meanwhile; 0 failed calls",
        f"- the new model: {op.model.neuron_count if op.model else '?'} neurons, "
        f"generation {op.model.generation if op.model else '?'}",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    head = "# Search latency while the server indexes a model\n\n" if not RESULTS.exists() else ""
    with RESULTS.open("a") as f:
        f.write(head + text + "\n")


if __name__ == "__main__":
    main()
