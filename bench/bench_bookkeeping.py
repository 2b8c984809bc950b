"""Bookkeeping at scale with no model: ingest, shard I/O and cross-shard exact dedup; prints one JSON line.

    python bench/bench_bookkeeping.py --rows 1000000 [--shard-size 100000]

Complements ``bench_dedup.py`` (near dedup, in-table exact dedup, the text rules). Rows are the same
synthetic ~100-character instructions; peak memory is the process's maximum resident set.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dedup import sentences  # noqa: E402

from storage import list_committed_shards, read_shard  # noqa: E402
from tasks.dedup import find_exact_duplicates  # noqa: E402
from tasks.ingest import ingest_seeds  # noqa: E402


def peak_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shard-size", type=int, default=100_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    texts = sentences(rng, args.rows, 14)
    out: dict[str, object] = {"bench": "bookkeeping", "rows": args.rows, "shard_size": args.shard_size}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "seeds.jsonl"
        with src.open("w") as f:
            for i, text in enumerate(texts):
                f.write(json.dumps({"instruction": f"{text} ({i})", "input": "", "output": "ok"}) + "\n")
        del texts
        started = time.perf_counter()
        summary = ingest_seeds(str(src), f"{tmp}/seeds", shard_size=args.shard_size)
        ingest_s = time.perf_counter() - started
        out.update(ingest_rows_per_s=round(summary.read / ingest_s), ingest_s=round(ingest_s, 2),
                   peak_rss_after_ingest_mb=peak_mb())

        shards = list_committed_shards(f"{tmp}/seeds")
        started = time.perf_counter()
        rows = sum(read_shard(u).num_rows for u in shards)
        read_s = time.perf_counter() - started
        out.update(shard_read_rows_per_s=round(rows / read_s), shards=len(shards))

        # Candidates: upper-cased copies of half the shards, marked evolved; references: all the shards.
        # Every candidate duplicates a reference: the cross-shard dedup of a round, at full size.
        import pyarrow as pa
        import pyarrow.compute as pc

        from storage import write_shard

        half = len(shards) // 2 or 1
        candidates = []
        started = time.perf_counter()
        for i, uri in enumerate(shards[:half]):
            table = read_shard(uri)
            table = table.set_column(table.schema.get_field_index("status"), "status",
                                     pa.array(["evolved"] * table.num_rows))
            table = table.set_column(table.schema.get_field_index("instruction"), "instruction",
                                     pc.utf8_upper(table["instruction"]))
            uri = f"{tmp}/candidates/shard-{i:05d}.parquet"
            write_shard(uri, table)
            candidates.append(uri)
        write_s = time.perf_counter() - started
        written = sum(read_shard(u).num_rows for u in candidates)
        out.update(shard_write_rows_per_s=round(written / write_s))
        started = time.perf_counter()
        dups = find_exact_duplicates(candidates, shards)
        exact_s = time.perf_counter() - started
        out.update(cross_shard_exact_dedup_rows_per_s=round((rows + written) / exact_s),
                   cross_shard_exact_dedup_s=round(exact_s, 2), duplicates_found=dups.num_rows,
                   candidates=written)
    out.update(peak_rss_mb=peak_mb(), load_avg_1m=round(os.getloadavg()[0], 2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
