"""Bookkeeping at scale with no model: ingest, shard I/O and cross-shard exact dedup; prints one JSON line.

    python bench/bench_bookkeeping.py --rows 1000000 [--shard-size 100000]

Ingest runs twice on the same JSONL file, each in a fresh process so that its peak resident memory is
its own: row by row (every record parsed and validated in Python, the path for blocks with bad rows
or extra fields) and vectorised (blocks parsed by Arrow, validated column-wise, ids hashed by DuckDB,
duplicates found with numpy, shards written by a thread while the next block is read). Both write the same
shards (``ingest_paths_identical`` compares them). Complements ``bench_dedup.py`` (near dedup, in-table exact
dedup, the text rules). Rows are the same synthetic ~100-character instructions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dedup import sentences  # noqa: E402

from storage import list_committed_shards, read_shard  # noqa: E402
from storage.shards import read_shard_unverified  # noqa: E402
from tasks.ingest.seeds import ingest_seeds  # noqa: E402
from tasks.round.dedup import find_exact_duplicates  # noqa: E402


def peak_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def ingest_in_child(src: str, dest: str, shard_size: int, vectorised: bool) -> dict[str, float]:
    """Ingest in a fresh interpreter: rows/s and that process's peak RSS."""
    cmd = [sys.executable, __file__, "--ingest-only", src, dest, "--shard-size", str(shard_size)]
    out = subprocess.run(cmd + ([] if vectorised else ["--per-row"]), check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def ingest_only(src: str, dest: str, shard_size: int, vectorised: bool) -> None:
    started = time.perf_counter()
    summary = ingest_seeds(src, dest, shard_size=shard_size, vectorised=vectorised)
    seconds = time.perf_counter() - started
    assert summary.accepted == summary.read, summary
    print(json.dumps({"rows_per_s": round(summary.read / seconds), "s": round(seconds, 2), "peak_rss_mb": peak_mb()}))


def finish_round(tmp: str, pool_uris: list[str], reference_uris: list[str]) -> dict[str, float]:
    """A round's bookkeeping after its shards: one candidate per pool row (half evolved, every tenth of those
    an exact copy of a reference, the other half rejected), then ``finish_round``: dedup, the evolved, rejected
    and next pool shards, the invariant."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from storage import RunLayout, ShardRef, write_shard
    from storage.shards import read_marker
    from tasks.evolve.shard import summarize
    from tasks.round.finish import finish_round as finish

    layout = RunLayout(f"{tmp}/runs", "bench")
    pool = [ShardRef.of(read_marker(u)) for u in pool_uris]
    summaries = []
    for i, ref in enumerate(pool):
        table = read_shard(ref.uri)
        n = table.num_rows
        evolved = np.arange(n) % 2 == 0
        copied = np.arange(n) % 20 == 0
        instruction = pc.if_else(pa.array(copied), table["instruction"], pc.utf8_upper(table["instruction"]))
        columns = {"id": pc.binary_join_element_wise(table["id"], "c", ""), "parent_id": table["id"],
                   "round": pa.array(np.ones(n, dtype=np.int32)), "instruction": instruction,
                   "content_key": pc.if_else(pa.array(copied), table["content_key"],
                                             pc.binary_join_element_wise(table["content_key"], "!", "")),
                   "status": pa.array(np.where(evolved, "evolved", "rejected")),
                   "reject_reason": pa.array(np.where(evolved, None, "empty_evolution")),
                   "operation": pa.array(np.where(evolved, "deepen", "concretize")),
                   "prompt_tokens": pa.array(np.full(n, 100)), "completion_tokens": pa.array(np.full(n, 50))}
        for name, column in columns.items():
            table = table.set_column(table.schema.get_field_index(name), name, column)
        ref_c = ShardRef.of(write_shard(layout.shard(1, "candidates", i), table))
        summaries.append(summarize(1, ref.uri, ref_c, table, 0.0))
    started = time.perf_counter()
    references = [ShardRef.of(read_marker(u)) for u in reference_uris]
    summary = finish(layout, 1, summaries, pool, references, started=0.0)
    seconds = time.perf_counter() - started
    return {"finish_round_rows_per_s": round(summary.pool_in / seconds), "finish_round_s": round(seconds, 2),
            "finish_round_evolved": summary.evolved, "finish_round_duplicates": summary.rejected.get("duplicate", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shard-size", type=int, default=100_000)
    parser.add_argument("--ingest-only", nargs=2, metavar=("SRC", "DEST"), help=argparse.SUPPRESS)
    parser.add_argument("--per-row", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ingest_only:
        ingest_only(*args.ingest_only, args.shard_size, vectorised=not args.per_row)
        return
    rng = np.random.default_rng(0)
    texts = sentences(rng, args.rows, 14)
    out: dict[str, object] = {"bench": "bookkeeping", "rows": args.rows, "shard_size": args.shard_size}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "seeds.jsonl"
        with src.open("w") as f:
            for i, text in enumerate(texts):
                f.write(json.dumps({"instruction": f"{text} ({i})", "input": "", "output": "ok"}) + "\n")
        del texts
        per_row = ingest_in_child(str(src), f"{tmp}/seeds-per-row", args.shard_size, vectorised=False)
        vectorised = ingest_in_child(str(src), f"{tmp}/seeds", args.shard_size, vectorised=True)
        out.update(ingest_per_row_rows_per_s=per_row["rows_per_s"], ingest_per_row_peak_rss_mb=per_row["peak_rss_mb"],
                   ingest_vectorised_rows_per_s=vectorised["rows_per_s"],
                   ingest_vectorised_peak_rss_mb=vectorised["peak_rss_mb"],
                   ingest_speedup=round(vectorised["rows_per_s"] / per_row["rows_per_s"], 2))
        per_row_shards, shards = (list_committed_shards(f"{tmp}/{d}") for d in ("seeds-per-row", "seeds"))
        out.update(ingest_paths_identical=len(per_row_shards) == len(shards) and all(
            read_shard(a).equals(read_shard(b)) for a, b in zip(per_row_shards, shards, strict=True)))

        # Verified reads (size and SHA-256 against the marker) against plain reads, alternated, best of 3.
        timings: dict[str, list[float]] = {"verified": [], "unverified": []}
        for _ in range(3):
            for kind, reader in (("verified", read_shard), ("unverified", read_shard_unverified)):
                started = time.perf_counter()
                rows = sum(reader(u).num_rows for u in shards)
                timings[kind].append(time.perf_counter() - started)
        verified_s, plain_s = min(timings["verified"]), min(timings["unverified"])
        out.update(shard_read_rows_per_s=round(rows / verified_s),
                   shard_read_unverified_rows_per_s=round(rows / plain_s),
                   shard_read_verification_cost=round(verified_s / plain_s, 2), shards=len(shards))

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
        out.update(finish_round(tmp, shards[:half], shards))
    out.update(peak_rss_mb=peak_mb(), load_avg_1m=round(os.getloadavg()[0], 2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
