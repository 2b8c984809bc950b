"""Near-duplicate detection over already normalised text (the ``content_key`` column): byte shingles, MinHash
and LSH banding in numpy, clusters by scipy's connected components."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

_MIX = np.uint64(0x9E3779B97F4A7C15)
_MASKS = np.array([(1 << 8 * c) - 1 for c in range(9)], np.uint64)  # the low c bytes of a 64-bit word


@lru_cache(maxsize=64)
def optimal_lsh_params(
    threshold: float, num_perm: int, fp_weight: float = 0.25, fn_weight: float = 0.75
) -> tuple[int, int]:
    """LSH (bands, rows) with bands * rows == num_perm, minimising the weighted false positive area (below
    ``threshold``) plus false negative area (above it) under the S-curve ``1 - (1 - s**rows)**bands``. A false
    positive costs a verification, a false negative a kept duplicate: the default weights favour recall."""
    combos = np.array([(b, num_perm // b) for b in range(1, num_perm + 1) if num_perm % b == 0], dtype=np.float64)
    b, r = combos[:, :1], combos[:, 1:]
    below, above = np.linspace(0.0, threshold, 1025), np.linspace(threshold, 1.0, 1025)
    fp = np.trapezoid(1.0 - (1.0 - below**r) ** b, below, axis=1)
    fn = np.trapezoid((1.0 - above**r) ** b, above, axis=1)
    best = int(np.argmin(fp_weight * fp + fn_weight * fn))
    return int(combos[best, 0]), int(combos[best, 1])


def utf8_buffers(texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The texts' UTF-8 bytes back to back, zero-padded, and each text's start and length in them."""
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    arr = texts.cast(pa.large_string()) if isinstance(texts, pa.Array) else pa.array(texts, type=pa.large_string())
    _, offset_buf, data_buf = pc.fill_null(arr, "").buffers()
    offsets = np.frombuffer(offset_buf, np.int64)[arr.offset: arr.offset + len(arr) + 1]
    padded = np.zeros(int(offsets[-1] - offsets[0]) + 16, np.uint8)
    if data_buf:
        padded[:-16] = np.frombuffer(data_buf, np.uint8)[offsets[0]: offsets[-1]]
    return padded, offsets[:-1] - offsets[0], np.diff(offsets)


def shingle_hashes(padded: np.ndarray, at: np.ndarray, width: np.ndarray, k: int) -> np.ndarray:
    """32-bit hashes of the byte strings starting ``at`` (any shape), ``width`` bytes long (broadcast), ``k`` at most:
    the shingles MinHash sees. The bytes are read as little-endian 64-bit words in place, at every byte offset."""
    hashes = np.zeros(at.shape, np.uint64) + width.astype(np.uint64)
    for j in range(0, k, 8):
        words = np.ndarray((padded.size - 15,), "<u8", padded, offset=j, strides=(1,))
        hashes ^= words[at] & _MASKS[np.clip(width - j, 0, 8)]
        hashes *= _MIX
    hashes ^= hashes >> np.uint64(29)
    hashes *= _MIX
    return (hashes >> np.uint64(32)).astype(np.uint32)


def _chunks(sorted_counts: np.ndarray, budget: int = 400_000) -> list[tuple[int, int]]:
    """Slices of count-sorted rows whose padded shingle matrices hold at most about ``2 * budget`` values."""
    chunks, i = [], 0
    while i < len(sorted_counts):
        least = int(sorted_counts[i])
        end = min(i + max(1, budget // least), int(np.searchsorted(sorted_counts, 2 * least, "right")))
        chunks.append((i, end))
        i = end
    return chunks


def _signatures(
    texts: Sequence[str] | pa.Array | pa.ChunkedArray, shingle_size: int, num_perm: int, seed: int, bands: int,
    rows: int, dtype: type = np.uint32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by shingle count (``order``), then per sorted position the MinHash signature (n, num_perm),
    the low bits that fit ``dtype``, and the LSH band keys (bands, n) uint64 of the whole values. The
    permutations are ``x -> a * x mod 2**32``, odd ``a``, of the 32-bit shingle hashes."""
    if shingle_size < 1 or num_perm < 1:
        raise ValueError("shingle_size and num_perm must be >= 1")
    padded, starts, lengths = utf8_buffers(texts)
    counts = np.maximum(lengths - shingle_size + 1, 1)
    order = np.argsort(counts, kind="stable")
    starts, counts, widths = starts[order], counts[order], np.minimum(lengths[order], shingle_size)
    multipliers = (np.random.default_rng(seed).integers(0, 2**32, num_perm, np.uint64) | 1).astype(np.uint32)
    sigs = np.empty((len(order), num_perm), dtype)
    keys = np.empty((bands, len(order)), np.uint64)
    index_type = np.int32 if padded.size < 2**31 else np.int64

    def run(chunk: tuple[int, int]) -> None:
        part = slice(*chunk)
        index = np.minimum(np.arange(int(counts[chunk[1] - 1]), dtype=index_type)[:, None],
                           (counts[part] - 1).astype(index_type))  # shorter rows repeat their last shingle
        index += starts[part].astype(index_type)
        matrix = shingle_hashes(padded, index, widths[part], shingle_size)
        scratch, sig = np.empty_like(matrix), np.empty((num_perm, matrix.shape[1]), np.uint32)
        for i, a in enumerate(multipliers):
            np.multiply(matrix, a, out=scratch)
            np.minimum.reduce(scratch, axis=0, out=sig[i])
        sigs[part] = sig.T  # cast to dtype: its low bits
        key = np.zeros((bands, sig.shape[1]), np.uint64)
        for j in range(rows):  # a rare false bucket share is caught by the verification
            key ^= sig[j: bands * rows: rows]
            key *= _MIX
        keys[:, part] = key

    workers = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, _chunks(counts)))
    return order, sigs, keys


def minhash_signatures(
    texts: Sequence[str] | pa.Array, shingle_size: int = 5, num_perm: int = 128, seed: int = 0
) -> np.ndarray:
    """MinHash signatures (n, num_perm) uint32 over byte shingles of the texts (normalised already), in order."""
    order, sigs, _ = _signatures(texts, shingle_size, num_perm, seed, 1, 1)
    out = np.empty_like(sigs)
    out[order] = sigs
    return out


def _bucket_pairs(key: np.ndarray) -> np.ndarray:
    """Positions sharing a bucket in one band: each member with the bucket's first and with its neighbour."""
    order = np.argsort(key)
    same = key[order][1:] == key[order][:-1]
    opens = np.concatenate([[True], ~same])
    first = order[np.flatnonzero(opens)[np.cumsum(opens) - 1]]
    return np.concatenate([np.stack([order[:-1][same], order[1:][same]]), np.stack([first[~opens], order[~opens]])],
                          axis=1)


def find_near_duplicates(
    ids: Sequence[str], texts: Sequence[str] | pa.Array | pa.ChunkedArray, threshold: float = 0.8,
    shingle_size: int = 5, num_perm: int = 128, seed: int = 0,
) -> dict[str, str]:
    """Near duplicates by MinHash + LSH: ``{dropped id: id of the kept row}``.

    Byte ``shingle_size``-grams of the texts (normalised already; a shorter text is one shingle), MinHash with
    ``num_perm`` permutations and LSH banding tuned to ``threshold``; rows sharing a band are kept as a pair
    when their estimated Jaccard similarity is >= ``threshold``. Clusters (chains included) keep their first
    row in input order and every other member maps to it.
    """
    n = len(texts)
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} texts")
    if not 0.0 < threshold <= 1.0:
        raise ValueError("threshold must be in (0, 1]")
    if n < 2:
        return {}
    bands, rows = optimal_lsh_params(float(threshold), int(num_perm))
    # 16 bits of each value verify a pair: a false match has probability 2**-16 (b-bit MinHash)
    order, sigs, keys = _signatures(texts, shingle_size, num_perm, seed, bands, rows, np.uint16)
    pairs = np.concatenate([_bucket_pairs(key) for key in keys], axis=1)
    del keys
    a, b = np.divmod(np.unique(np.minimum(pairs[0], pairs[1]) * n + np.maximum(pairs[0], pairs[1])), n)
    need, similar = math.ceil(threshold * num_perm - 1e-9), np.zeros(a.size, dtype=bool)
    for start in range(0, a.size, 1 << 16):
        part = slice(start, start + (1 << 16))
        similar[part] = np.count_nonzero(sigs[a[part]] == sigs[b[part]], axis=1) >= need
    if not similar.any():
        return {}
    # the rows in a verified pair, in input order, and the clusters among them
    nodes, edges = np.unique(np.concatenate([order[a[similar]], order[b[similar]]]), return_inverse=True)
    edges = edges.reshape(2, -1)
    graph = coo_matrix((np.ones(edges.shape[1], np.int8), (edges[0], edges[1])), shape=(nodes.size,) * 2)
    _, labels = connected_components(graph, directed=False)
    keep = nodes[np.unique(labels, return_index=True)[1][labels]]  # nodes are sorted: each cluster's first row
    return {ids[i]: ids[k] for i, k in zip(nodes.tolist(), keep.tolist(), strict=True) if i != k and ids[i] != ids[k]}
