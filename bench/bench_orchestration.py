"""Orchestration overhead: one round through Prefect with an instant scripted backend, for 10/100/1000 shards.

    python bench/bench_orchestration.py [--shards 10 100 1000] [--rows-per-shard 4]

Prints one JSON line per shard count: seconds for the round flow, seconds per mapped shard task, and the
same work done without Prefect (the pure functions in a loop) as the reference, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def make_seeds(path: Path, rows: int) -> None:
    """``rows`` distinct synthetic seed instructions."""
    with path.open("w") as f:
        for i in range(rows):
            f.write(json.dumps({"instruction": f"Explain topic number {i} in three sentences for a student.",
                                "input": "", "output": f"Topic {i} is explained here in full detail."}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rows-per-shard", type=int, default=4)
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from flows.evol_instruct import evol_round
    from prompts import load_pack
    from tasks.core.config import parse_run_config
    from tasks.evolve.shard import evolve_shard
    from tasks.ingest.seeds import ingest_run_seeds
    from tasks.llm.scripted import scripted_backend
    from tasks.round.finish import finish_round
    from tasks.runtime.resolve import build_context

    with prefect_test_harness(server_startup_timeout=180), tempfile.TemporaryDirectory() as tmp:
        for shards in args.shards:
            rows = shards * args.rows_per_shard
            seeds = Path(tmp) / f"seeds-{shards}.jsonl"
            make_seeds(seeds, rows)
            results = {}
            for mode in ("prefect", "plain"):
                config = parse_run_config({
                    "name": f"bench-{mode}", "seeds": str(seeds), "output_root": f"{tmp}/{mode}-{shards}",
                    "rounds": 1, "shard_size": args.rows_per_shard, "llm": {"backend": "scripted", "model": "demo"},
                    "dedup": {"near": False}, "orchestration": {"max_parallel_shards": 2, "retries": 0}})
                ctx = build_context(config)
                pool = ingest_run_seeds(config, ctx.layout, ctx.ingest_key).refs
                started = time.perf_counter()
                if mode == "prefect":
                    evol_round(ctx, 1, pool, pool, sum(r.rows for r in pool))
                else:
                    backend, pack = scripted_backend("demo"), load_pack("general")
                    summaries = [evolve_shard(ref, ctx.layout.shard(1, "candidates", i), 1, ctx.evolve, backend, pack)
                                 for i, ref in enumerate(pool)]
                    finish_round(ctx.layout, 1, summaries, pool, pool, started=time.time())
                results[mode] = time.perf_counter() - started
            print(json.dumps({
                "bench": "orchestration", "shards": shards, "rows": rows,
                "round_s": round(results["prefect"], 2), "per_shard_s": round(results["prefect"] / shards, 4),
                "plain_round_s": round(results["plain"], 2),
                "overhead_per_shard_s": round((results["prefect"] - results["plain"]) / shards, 4),
                "ratio_prefect_to_plain": round(results["prefect"] / results["plain"], 2),
            }), flush=True)


if __name__ == "__main__":
    main()
