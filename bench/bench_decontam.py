"""Benchmark of decontamination (``mix.decontaminate``): synthetic final rows against a synthetic benchmark file;
prints one JSON line.

    python bench/bench_decontam.py --rows 100000 --items 10000 --cores 2

Rows are instructions of 40 to 160 words (mean 100) over a 20,000-word vocabulary; benchmark items 20 to 80 words,
written as a JSONL file. ``--planted`` rows (default 1%) carry 13 consecutive words of a benchmark item, in upper
case and with punctuation, inside their own text; random rows share no 13-gram with an item, so the rows found must
be exactly the planted ones (checked). Timed: reading the file (``read_benchmarks``), hashing the items' grams and
matching the rows (``contaminated_rows``, as the mix runs it), each with wall and CPU seconds; the line ends with
the peak RSS and the 1-minute load average. ``--cores`` pins the process to that many cores (Arrow's pool too).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tasks.core.data_config import BenchmarkFile  # noqa: E402
from tasks.mix.benchmarks import read_benchmarks  # noqa: E402
from tasks.mix.decontaminate import contaminated_rows  # noqa: E402


def texts(rng: np.random.Generator, vocab: list[str], n: int, low: int, high: int) -> list[list[str]]:
    lengths = rng.integers(low, high + 1, n)
    picks = rng.integers(0, len(vocab), int(lengths.sum()))
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [[vocab[i] for i in picks[a:b]] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]


def timed(call):
    wall, cpu = time.perf_counter(), time.process_time()
    out = call()
    return out, round(time.perf_counter() - wall, 3), round(time.process_time() - cpu, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--n", type=int, default=13)
    parser.add_argument("--planted", type=float, default=0.01, help="share of rows carrying a benchmark 13-gram")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
        pa.set_cpu_count(args.cores)
    rng = np.random.default_rng(args.seed)
    vocab = [f"w{i}" + "abcdefghij"[i % 10] * (i % 7) for i in range(20_000)]
    items = texts(rng, vocab, args.items, 20, 80)
    rows = texts(rng, vocab, args.rows, 40, 160)
    planted = rng.choice(args.rows, int(args.rows * args.planted), replace=False)
    for r in planted.tolist():
        item = items[r % args.items]
        at = int(rng.integers(0, len(item) - args.n + 1))
        gram = [w.upper() + ("," if k % 3 else "") for k, w in enumerate(item[at: at + args.n])]
        rows[r][10: 10] = gram
    row_texts = pa.array([" ".join(r) for r in rows], pa.string())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps({"question": " ".join(i) + "?"}) + "\n" for i in items)
        benchmarks, read_wall, read_cpu = timed(lambda: read_benchmarks((BenchmarkFile(path=path, field="question"),)))
    (found, named), wall, cpu = timed(lambda: contaminated_rows(row_texts, benchmarks, args.n))
    if sorted(found.tolist()) != sorted(planted.tolist()):
        raise SystemExit(f"found {found.size} rows, planted {planted.size}: not the same rows")
    wrong = [n for r, n in zip(found.tolist(), named, strict=True) if not n.endswith(f"#{r % args.items}")]
    print(json.dumps({
        "rows": args.rows, "items": args.items, "n": args.n, "cores": args.cores,
        "row_words": int(sum(len(r) for r in rows)), "planted": int(planted.size), "found": int(found.size),
        "misnamed": len(wrong), "read_wall_s": read_wall, "read_cpu_s": read_cpu, "match_wall_s": wall,
        "match_cpu_s": cpu, "total_wall_s": round(read_wall + wall, 3), "rows_per_s": round(args.rows / wall),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_1min": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
