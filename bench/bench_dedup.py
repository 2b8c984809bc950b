"""Benchmark of the content key, near dedup (three ways) and the text rules on synthetic rows; prints one JSON line.

    python bench/bench_dedup.py --rows 1000000

Rows are ~100-character instructions (10% exact or near copies) and ~200-character answers. Near dedup runs
on the same content keys with rensa (what the pipeline uses), with the hand-written numpy MinHash this
project had before (``bench/near_dedup_handwritten.py``) and with datasketch. Each stage reports rows/s
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import near_dedup_handwritten  # noqa: E402
from tasks.core.config import EliminationConfig  # noqa: E402
from tasks.core.text import content_keys  # noqa: E402
from tasks.eliminate import text_rule_reasons  # noqa: E402
from tasks.near_dedup import find_near_duplicates, shingle_hashes  # noqa: E402

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


def datasketch_near_duplicates(ids: list[str], keys: pa.Array, threshold: float = 0.8, shingle_size: int = 5,
                               num_perm: int = 128, seed: int = 0) -> dict[str, str]:
    """``find_near_duplicates`` with datasketch's MinHash and MinHashLSH over the same byte shingles."""
    from datasketch import MinHash, MinHashLSH
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    tokens, offsets = shingle_hashes(keys.cast(pa.large_string()), shingle_size)
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
    _, labels = connected_components(coo_matrix((np.ones(a.size), (a, b)), shape=(len(ids),) * 2), directed=False)
    first = np.full(len(ids), len(ids))
    np.minimum.at(first, labels, np.arange(len(ids)))
    return {ids[i]: ids[first[labels[i]]] for i in np.flatnonzero(first[labels] != np.arange(len(ids))).tolist()}


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
    hand_s, hand_cpu, hand = timed(near_dedup_handwritten.find_near_duplicates, ids, keys)
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
        "handwritten_near_rows_per_s": round(args.rows / hand_s),
        "handwritten_near_cpu_s": round(hand_cpu, 3),
        "handwritten_near_duplicates": len(hand),
        "datasketch_near_rows_per_s": round(args.rows / sketch_s),
        "datasketch_near_cpu_s": round(sketch_cpu, 3),
        "datasketch_near_duplicates": len(sketch),
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
