"""Benchmark of diversity-aware selection (``tasks/mix/select.py``): choose ``--budget`` of ``--rows`` rows with
``--dim``-dimensional embeddings by complexity x quality and a cosine threshold; prints one JSON line.

    python bench/bench_select.py --rows 100000 --budget 10000 --dim 576

The embeddings are clustered (each row a noisy copy of one of rows/4 centres: the copies of one centre lie within
the threshold of each other, so the greedy pass bars some), the scores drawn at random. The timed part is the
mix's whole selection over Arrow tables: the join of the scores to the rows by id, the ranking, the greedy
selection, and the nearest selected row of every row not taken. The line gives the wall and CPU seconds, the
rows taken, the cores the process may use and the peak RSS, before the selection (the synthetic data) and at the
end (target: under 60 s on 2 cores, under 2 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tasks.mix.select import select_table  # noqa: E402


def synthetic(rows: int, dim: int, seed: int) -> tuple[pa.Table, pa.Table]:
    """The mix's rows (ids) and their score rows (complexity, quality, embedding), in another order."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, rows // 4), dim)).astype(np.float32)
    vectors = centres[rng.integers(0, centres.shape[0], rows)]
    for start in range(0, rows, 10_000):  # noise of a quarter of a centre's length, a block at a time
        block = vectors[start:start + 10_000]
        block += 0.25 * rng.standard_normal(block.shape, dtype=np.float32)
    ids = np.char.add("row-", np.arange(rows).astype(str))
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim).cast(pa.list_(pa.float32()))
    scores = pa.table({"id": pa.array(ids), "complexity": rng.uniform(1, 6, rows), "quality": rng.uniform(1, 6, rows),
                       "embedding": embedding})
    return pa.table({"id": pa.array(ids[rng.permutation(rows)])}), scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=576)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table, scores = synthetic(args.rows, args.dim, args.seed)
    data_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall, cpu = time.perf_counter(), time.process_time()
    kept, dropped, nearest = select_table(table, scores, args.threshold, args.budget)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"rows": args.rows, "dim": args.dim, "budget": args.budget, "threshold": args.threshold,
                      "taken": kept.num_rows, "not_selected": dropped.num_rows,
                      "named_nearest": len(nearest) - nearest.null_count, "wall_s": round(wall, 2),
                      "cpu_s": round(cpu, 2), "cores": len(os.sched_getaffinity(0)),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "peak_rss_before_mb": round(data_rss),
                      "load_1min": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
