"""Shard workers on a local Dask cluster against the embedded thread runner, on a real Prefect server.

    python bench/bench_cluster.py [--shards 10 100 1000] [--scale-rows 192] [--item-s 0.02]

Prints one JSON line per measurement:
- ``overhead``: one round of N tiny shards (instant ``demo`` backend, 4 rows each) through the thread runner
  (2 threads in one process) and through the DaskTaskRunner on 2 `evol worker` processes;
- ``scale``: one round of ``--scale-rows`` rows (12 a shard) with a CPU-bound backend (``--item-s`` CPU seconds
  per LLM call) on 1 worker, then on 2 workers (one CPU each): rows/s and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=log.open("w"))


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def make_seeds(path: Path, rows: int) -> None:
    with path.open("w") as f:
        for i in range(rows):
            f.write(json.dumps({"instruction": f"Explain topic number {i} in three sentences for a student.",
                                "input": "", "output": f"Topic {i} is explained here in full detail."}) + "\n")


def one_round(tmp: Path, label: str, rows: int, shard_size: int, model: str, cluster: str | None) -> float:
    """Seconds for round 1 of a fresh run (ingest excluded)."""
    from flows.evol_instruct import evol_round
    from flows.runners import round_task_runner
    from tasks.core.config import parse_run_config
    from tasks.ingest.seeds import ingest_run_seeds
    from tasks.runtime.resolve import build_context

    seeds = tmp / f"seeds-{label}.jsonl"
    make_seeds(seeds, rows)
    config = parse_run_config({
        "name": f"bench-{label}", "seeds": str(seeds), "output_root": str(tmp / label), "rounds": 1,
        "shard_size": shard_size, "llm": {"backend": "scripted", "model": model}, "dedup": {"near": False},
        "orchestration": {"max_parallel_shards": 2, "retries": 0, "cluster": cluster or "embedded"}})
    ctx = build_context(config)
    pool = ingest_run_seeds(config, ctx.layout, ctx.ingest_key).refs
    round_flow = evol_round.with_options(task_runner=round_task_runner(config.orchestration))
    started = time.perf_counter()
    round_flow(ctx, 1, pool, pool, sum(r.rows for r in pool))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--scale-rows", type=int, default=192)
    parser.add_argument("--item-s", type=float, default=0.02)
    args = parser.parse_args()

    from prefect.settings import PREFECT_API_URL, temporary_settings

    import bench.cluster_backend  # noqa: F401  (burn-demo in this process too)

    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(tmp / "prefect"), "PREFECT_API_URL": "",
               "EVOL_BENCH_ITEM_S": str(args.item_s)}
        api_port, sched_port = free_port(), free_port()
        try:
            procs.append(start([str(Path(sys.executable).parent / "evol"), "server", "--host", "127.0.0.1",
                                "--port", str(api_port)], env, tmp / "server.log"))
            api = f"http://127.0.0.1:{api_port}/api"
            procs.append(start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", str(sched_port),
                                "--no-dashboard"], env, tmp / "scheduler.log"))
            address = f"tcp://127.0.0.1:{sched_port}"
            for _ in range(240):
                try:
                    if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            from distributed import Client

            client = Client(address, timeout=120)
            cpus = sorted(os.sched_getaffinity(0))

            def add_worker(i: int) -> None:
                procs.append(start([sys.executable, "-m", "flows.cli", "worker", address, "--name", f"w{i}",
                                    "--cpus", str(cpus[i % len(cpus)]), "--preload", "bench.cluster_backend"],
                                   env, tmp / f"w{i}.log"))
                client.wait_for_workers(i + 1, timeout=180)

            with temporary_settings(updates={PREFECT_API_URL: api}):
                add_worker(0)
                scale = {1: one_round(tmp, "scale-1", args.scale_rows, 12, "burn-demo", address)}
                add_worker(1)
                scale[2] = one_round(tmp, "scale-2", args.scale_rows, 12, "burn-demo", address)
                print(json.dumps({"bench": "scale", "rows": args.scale_rows, "item_cpu_s": args.item_s,
                                  "rows_per_s_1_worker": round(args.scale_rows / scale[1], 2),
                                  "rows_per_s_2_workers": round(args.scale_rows / scale[2], 2),
                                  "ratio": round(scale[1] / scale[2], 2)}), flush=True)
                for shards in args.shards:
                    threads = one_round(tmp, f"threads-{shards}", shards * 4, 4, "demo", None)
                    dask = one_round(tmp, f"dask-{shards}", shards * 4, 4, "demo", address)
                    print(json.dumps({"bench": "overhead", "shards": shards, "threads_round_s": round(threads, 2),
                                      "dask_round_s": round(dask, 2),
                                      "threads_per_shard_s": round(threads / shards, 4),
                                      "dask_per_shard_s": round(dask / shards, 4),
                                      "ratio_dask_to_threads": round(dask / threads, 2)}), flush=True)
            client.close()
            from flows.local_api import _drain_to

            _drain_to(api)  # the queued logs and events reach the server before it stops (no hang at exit)
        finally:
            stop(procs)


if __name__ == "__main__":
    main()
