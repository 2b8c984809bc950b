"""Benchmark of the content key, near dedup (three ways) and the text rules on synthetic rows; prints one JSON line.

    python bench/bench_dedup.py --rows 1000000

Rows are ~100-character instructions (10% exact or near copies) and ~200-character answers. Near dedup runs
on the same content keys and the same byte shingles three ways: the numpy MinHash the pipeline uses
(``tasks/mix/near_dedup.py``), rensa (Rust) and datasketch, each with LSH banding, verification of the pairs by
their signatures and scipy's connected components. Each stage reports rows/s
(wall), wall and CPU seconds (all threads), and the line ends with the peak RSS and the 1-minute load
average: on a shared machine, CPU seconds are the steadier figure.
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
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tasks.core.config import EliminationConfig  # noqa: E402
from tasks.core.text import content_keys  # noqa: E402
from tasks.judge.rules import text_rule_reasons  # noqa: E402
from tasks.mix.near_dedup import find_near_duplicates, optimal_lsh_params, shingle_hashes, utf8_buffers  # noqa: E402

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


def flat_shingles(keys: pa.Array, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The byte ``k``-gram hashes ``tasks.mix.near_dedup`` uses, back to back (uint64), and the row offsets (n + 1)."""
    padded, starts, lengths = utf8_buffers(keys)
    counts = np.maximum(lengths - k + 1, 1)
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    tokens = np.empty(offsets[-1], np.uint64)
    for first in range(0, len(counts), 1 << 14):  # in blocks of rows: small temporaries
        rows = slice(first, first + (1 << 14))
        lo, hi = offsets[first], offsets[min(first + (1 << 14), len(counts))]
        at = np.arange(lo, hi) + np.repeat(starts[rows] - offsets[:-1][rows], counts[rows])
        tokens[lo:hi] = shingle_hashes(padded, at, np.repeat(np.minimum(lengths[rows], k), counts[rows]), k)
    return tokens, offsets.astype(np.uint64)


def clusters(ids: list[str], a: np.ndarray, b: np.ndarray) -> dict[str, str]:
    """``{dropped id: kept id}`` from verified pairs of rows: connected components, each keeping its first row."""
    _, labels = connected_components(coo_matrix((np.ones(a.size), (a, b)), shape=(len(ids),) * 2), directed=False)
    first = np.full(len(ids), len(ids))
    np.minimum.at(first, labels, np.arange(len(ids)))
    return {ids[i]: ids[first[labels[i]]] for i in np.flatnonzero(first[labels] != np.arange(len(ids))).tolist()}


def rensa_near_duplicates(ids: list[str], keys: pa.Array, threshold: float = 0.8, shingle_size: int = 5,
                          num_perm: int = 128, seed: int = 0) -> dict[str, str]:
    """``find_near_duplicates`` with rensa's MinHash and LSH (``RMinHashLSH``) over the same byte shingles.

    rensa flags the rows that share a band with another; only their signatures leave Rust (``to_rows``, as
    Python lists), to find and verify the pairs."""
    import rensa

    tokens, offsets = flat_shingles(keys, shingle_size)
    bands, rows = optimal_lsh_params(threshold, num_perm)
    digests = rensa.RMinHash.digest_matrix_from_flat_token_hashes(tokens, offsets, num_perm, seed)
    lsh = rensa.RMinHashLSH(threshold, num_perm, bands)
    shared = np.flatnonzero(lsh.query_duplicate_flags_matrix_one_shot(digests))
    if shared.size < 2:
        return {}
    counts = (offsets[1:] - offsets[:-1])[shared].astype(np.int64)
    sub = np.zeros(shared.size + 1, np.uint64)
    np.cumsum(counts, out=sub[1:])
    index = np.arange(int(sub[-1])) + np.repeat(offsets[shared].astype(np.int64) - sub[:-1].astype(np.int64), counts)
    sigs = np.array(rensa.RMinHash.digest_matrix_from_flat_token_hashes(tokens[index], sub, num_perm, seed).to_rows(),
                    dtype=np.uint32)
    pairs = []
    for i in range(bands):
        key = np.zeros(shared.size, np.uint64)
        for j in range(i * rows, (i + 1) * rows):
            key = (key ^ sigs[:, j].astype(np.uint64)) * np.uint64(0x9E3779B97F4A7C15)
        order = np.argsort(key, kind="stable")
        opens = np.concatenate([[True], key[order][1:] != key[order][:-1]])
        first = order[np.flatnonzero(opens)[np.cumsum(opens) - 1]]
        pairs.append(np.stack([first[~opens], order[~opens]]))
    a, b = np.unique(np.concatenate(pairs, axis=1), axis=1)
    similar = np.count_nonzero(sigs[a] == sigs[b], axis=1) >= int(np.ceil(threshold * num_perm - 1e-9))
    return clusters(ids, shared[a[similar]], shared[b[similar]])


def datasketch_near_duplicates(ids: list[str], keys: pa.Array, threshold: float = 0.8, shingle_size: int = 5,
                               num_perm: int = 128, seed: int = 0) -> dict[str, str]:
    """``find_near_duplicates`` with datasketch's MinHash and MinHashLSH over the same byte shingles."""
    from datasketch import MinHash, MinHashLSH

    tokens, offsets = flat_shingles(keys, shingle_size)
    bounds, need = offsets.astype(np.int64).tolist(), int(np.ceil(threshold * num_perm - 1e-9))
    lsh, sigs, edges = MinHashLSH(threshold=threshold, num_perm=num_perm), None, []
    for i in range(len(ids)):
        m = MinHash(num_perm=num_perm, seed=seed, hashfunc=int, scheme="affine64")
        m.update_batch(tokens[bounds[i]: bounds[i + 1]])
        if sigs is None:
            sigs = np.empty((len(ids), num_perm), m.hashvalues.dtype)
        sigs[i] = m.hashvalues
        edges += [(j, i) for j in lsh.query(m) if np.count_nonzero(sigs[j] == sigs[i]) >= need]
        lsh.insert(i, m, check_duplication=False)
    a, b = np.array(edges, np.int64).reshape(-1, 2).T
    return clusters(ids, a, b)


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
    key_s, key_cpu, keys = timed(content_keys, candidates["instruction"], candidates["input"])
    near_s, near_cpu, near = timed(find_near_duplicates, ids, keys)
    rss_near = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rensa_s, rensa_cpu, rensa_near = timed(rensa_near_duplicates, ids, keys)
    rss_rensa = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sketch_s, sketch_cpu, sketch = timed(datasketch_near_duplicates, ids, keys)
    scaffolding = ["given prompt", "rewritten prompt", "#rewritten prompt#", "created prompt"]
    rules_s, rules_cpu, reasons = timed(text_rule_reasons, candidates, EliminationConfig(), scaffolding)
    counts = Counter(str(reason) for reason in reasons)
    print(json.dumps({
        "rows": args.rows,
        "cpus": len(os.sched_getaffinity(0)),
        "content_key_rows_per_s": round(args.rows / key_s),
        "content_key_cpu_s": round(key_cpu, 3),
        "exact_duplicate_keys": len(keys) - len(set(keys.to_pylist())),
        "near_dedup_rows_per_s": round(args.rows / near_s),
        "near_dedup_s": round(near_s, 3),
        "near_dedup_cpu_s": round(near_cpu, 3),
        "near_duplicates": len(near),
        "rensa_near_rows_per_s": round(args.rows / rensa_s),
        "rensa_near_cpu_s": round(rensa_cpu, 3),
        "rensa_near_duplicates": len(rensa_near),
        "datasketch_near_rows_per_s": round(args.rows / sketch_s),
        "datasketch_near_cpu_s": round(sketch_cpu, 3),
        "datasketch_near_duplicates": len(sketch),
        "text_rules_rows_per_s": round(args.rows / rules_s),
        "text_rules_s": round(rules_s, 3),
        "text_rules_cpu_s": round(rules_cpu, 3),
        "text_rule_counts": counts,
        "rss_after_data_mb": round(rss_data / 1024),
        "peak_rss_after_near_mb": round(rss_near / 1024),
        "peak_rss_after_rensa_mb": round(rss_rensa / 1024),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
