"""Benchmark of near dedup, exact dedup and the text rules on synthetic rows; prints one JSON line.

    python bench/bench_dedup.py --rows 1000000

Rows are ~100-character instructions (10% exact or near copies) and ~200-character answers. Each stage
reports rows/s (wall), wall and CPU seconds (all threads), and the line ends with the peak RSS and the
1-minute load average: on a shared machine, CPU seconds are the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections import Counter

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tasks.core.config import EliminationConfig  # noqa: E402
from tasks.dedup import exact_dedup_table  # noqa: E402
from tasks.eliminate import text_rule_reasons  # noqa: E402
from tasks.near_dedup import find_near_duplicates  # noqa: E402

VOCAB = (
    "write explain describe compare list summarize design create analyze evaluate a the of for with and in on "
    "python function data table model network system process method theory history science music market city "
    "energy climate language program algorithm student teacher story poem letter report plan budget policy "
    "three five ten short detailed simple complex modern ancient global local recursive efficient secure"
).split()


def sentences(rng: np.random.Generator, n: int, words: int) -> list[str]:
    """n random sentences of ``words`` words from the vocabulary (about 7 characters a word)."""
    out: list[str] = []
    for start in range(0, n, 50_000):  # in blocks: a (rows, words) array of str is large
        picks = rng.integers(0, len(VOCAB), size=(min(50_000, n - start), words)).tolist()
        out.extend(" ".join(VOCAB[i] for i in row) + "." for row in picks)
    return out


def synthetic(n: int, seed: int = 0) -> tuple[list[str], list[str], pa.Table]:
    """Ids, ~100-character instructions (5% exact and 5% near copies) and a candidates table."""
    rng = np.random.default_rng(seed)
    texts = sentences(rng, n, 14)
    copies = rng.choice(n, size=n // 10, replace=False)
    for k, i in enumerate(copies.tolist()):
        source = texts[(i * 7919) % n]
        texts[i] = source.upper() if k % 2 else source.replace(" ", " new ", 1)
    ids = [f"r{i:08d}" for i in range(n)]
    responses = sentences(rng, n, 30)
    for i in rng.choice(n, size=n // 50, replace=False).tolist():
        responses[i] = "I'm sorry, I can't help with that."
    for i in rng.choice(n, size=n // 50, replace=False).tolist():
        responses[i] = "The, and of it!"
    candidates = pa.table({
        "instruction": texts,
        "input": [""] * n,
        "id": ids,
        "response": responses,
        "finish_reason": ["stop"] * n,
        "response_finish_reason": ["stop"] * n,
        "error": pa.nulls(n, pa.string()),
    })
    return ids, texts, candidates


def timed(fn, *args, **kwargs) -> tuple[float, float, object]:
    """Wall seconds, CPU seconds (all threads of this process) and the result of ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ids, texts, candidates = synthetic(args.rows, args.seed)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    near_s, near_cpu, near = timed(find_near_duplicates, ids, texts)
    rss_near = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    exact_s, exact_cpu, (kept, dropped) = timed(exact_dedup_table, candidates)
    scaffolding = ["given prompt", "rewritten prompt", "#rewritten prompt#", "created prompt"]
    rules_s, rules_cpu, reasons = timed(text_rule_reasons, candidates, EliminationConfig(), scaffolding)
    counts = Counter(str(reason) for reason in reasons)
    print(json.dumps({
        "rows": args.rows,
        "cpus": len(os.sched_getaffinity(0)),
        "near_dedup_rows_per_s": round(args.rows / near_s),
        "near_dedup_s": round(near_s, 3),
        "near_dedup_cpu_s": round(near_cpu, 3),
        "near_duplicates": len(near),
        "exact_dedup_rows_per_s": round(args.rows / exact_s),
        "exact_dedup_s": round(exact_s, 3),
        "exact_dedup_cpu_s": round(exact_cpu, 3),
        "exact_dropped": dropped.num_rows,
        "text_rules_rows_per_s": round(args.rows / rules_s),
        "text_rules_s": round(rules_s, 3),
        "text_rules_cpu_s": round(rules_cpu, 3),
        "text_rule_counts": counts,
        "rss_after_data_mb": round(rss_data / 1024),
        "peak_rss_after_near_mb": round(rss_near / 1024),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
