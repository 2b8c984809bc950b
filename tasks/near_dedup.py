"""Near-duplicate detection over already normalised text (the ``content_key`` column): byte shingles,
MinHash and LSH by rensa, clusters by scipy's connected components."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import rensa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

_MIX = np.uint64(0x9E3779B97F4A7C15)


@lru_cache(maxsize=64)
def optimal_lsh_params(
    threshold: float, num_perm: int, fp_weight: float = 0.25, fn_weight: float = 0.75
) -> tuple[int, int]:
    """LSH (bands, rows) with bands * rows == num_perm (rensa's bands split the signature evenly), minimising
    the weighted false positive area (below ``threshold``) plus false negative area (above it) under the
    S-curve ``1 - (1 - s**rows)**bands``. A false positive costs a verification, a false negative a kept
    duplicate: the default weights favour recall."""
    combos = np.array([(b, num_perm // b) for b in range(1, num_perm + 1) if num_perm % b == 0], dtype=np.float64)
    b, r = combos[:, :1], combos[:, 1:]
    below, above = np.linspace(0.0, threshold, 1025), np.linspace(threshold, 1.0, 1025)
    fp = np.trapezoid(1.0 - (1.0 - below**r) ** b, below, axis=1)
    fn = np.trapezoid((1.0 - above**r) ** b, above, axis=1)
    best = int(np.argmin(fp_weight * fp + fn_weight * fn))
    return int(combos[best, 0]), int(combos[best, 1])


def _utf8(texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> pa.LargeStringArray:
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    arr = texts.cast(pa.large_string()) if isinstance(texts, pa.Array) else pa.array(texts, type=pa.large_string())
    return pc.fill_null(arr, "")


def shingle_hashes(texts: pa.LargeStringArray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each text's byte ``k``-grams as 64-bit tokens, back to back, and the row offsets (n + 1), both uint64.

    A text shorter than ``k`` bytes (the empty text too) is one token.
    """
    _, offset_buf, data_buf = texts.buffers()
    offsets = np.frombuffer(offset_buf, np.int64)[texts.offset: texts.offset + len(texts) + 1]
    data = np.frombuffer(data_buf, np.uint8)[offsets[0]: offsets[-1]] if data_buf else np.zeros(0, np.uint8)
    offsets, lengths = offsets - offsets[0], np.diff(offsets)
    padded = np.zeros(data.size + k + 8, np.uint8)
    padded[: data.size] = data
    starts = max(data.size - k + 1, 0)
    hashes = np.zeros(starts, np.uint64)
    for j in range(0, k, 8):  # 8 bytes at a time, read in place at every byte offset
        window = np.ndarray((starts,), "<u8", padded, offset=j, strides=(1,))
        hashes ^= window & np.uint64((1 << 8 * min(8, k - j)) - 1)
        hashes *= _MIX
    hashes ^= hashes >> np.uint64(31)
    inside = np.ones(starts, dtype=bool)  # a window that runs past its text's end is no shingle
    for j in range(1, k):
        ends = offsets[1:][lengths >= j] - j
        inside[ends[ends < starts]] = False
    short = lengths < k
    counts = np.where(short, 1, lengths - k + 1)
    out_offsets = np.zeros(len(lengths) + 1, np.uint64)
    np.cumsum(counts, out=out_offsets[1:])
    tokens = np.empty(int(out_offsets[-1]), np.uint64)
    at_short = out_offsets[:-1][short].astype(np.int64)
    fill = np.ones(tokens.size, dtype=bool)
    fill[at_short] = False
    tokens[fill] = hashes[inside]
    tokens[at_short] = [int.from_bytes(hashlib.blake2b(data[a:a + n].tobytes(), digest_size=8).digest(), "little")
                        for a, n in zip(offsets[:-1][short].tolist(), lengths[short].tolist(), strict=True)]
    return tokens, out_offsets


def _digests(tokens: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> rensa.RMinHashDigestMatrix:
    return rensa.RMinHash.digest_matrix_from_flat_token_hashes(tokens, offsets, num_perm, seed)


def minhash_signatures(
    texts: Sequence[str] | pa.Array, shingle_size: int = 5, num_perm: int = 128, seed: int = 0
) -> np.ndarray:
    """MinHash signatures (n, num_perm) uint32 over byte shingles of the texts (normalised already), in order."""
    if shingle_size < 1 or num_perm < 1:
        raise ValueError("shingle_size and num_perm must be >= 1")
    matrix = _digests(*shingle_hashes(_utf8(texts), shingle_size), num_perm, seed)
    return np.array(matrix.to_rows(), dtype=np.uint32).reshape(len(texts), num_perm)


def _rows_of(tokens: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tokens and offsets of ``rows`` only."""
    counts = (offsets[1:] - offsets[:-1])[rows].astype(np.int64)
    sub_offsets = np.zeros(len(rows) + 1, np.uint64)
    np.cumsum(counts, out=sub_offsets[1:])
    index = np.arange(int(sub_offsets[-1]), dtype=np.int64)
    index += np.repeat(offsets[rows].astype(np.int64) - sub_offsets[:-1].astype(np.int64), counts)
    return tokens[index], sub_offsets


def _bucket_pairs(band: np.ndarray) -> np.ndarray:
    """Rows sharing one band's values: each row with the first row of its bucket, as (2, pairs)."""
    key = np.zeros(len(band), np.uint64)
    for j in range(band.shape[1]):
        key = (key ^ band[:, j].astype(np.uint64)) * _MIX  # a rare false bucket share is caught by the verification
    order = np.argsort(key, kind="stable")
    opens = np.concatenate([[True], key[order][1:] != key[order][:-1]])
    first = order[np.flatnonzero(opens)[np.cumsum(opens) - 1]]
    return np.stack([first[~opens], order[~opens]])


def find_near_duplicates(
    ids: Sequence[str], texts: Sequence[str] | pa.Array, threshold: float = 0.8, shingle_size: int = 5,
    num_perm: int = 128, seed: int = 0,
) -> dict[str, str]:
    """Near duplicates by MinHash + LSH: ``{dropped id: id of the kept row}``.

    Byte ``shingle_size``-grams of the texts (normalised already; a shorter text is one shingle), rensa's
    MinHash with ``num_perm`` permutations and LSH banding tuned to ``threshold``; rows sharing a band are
    kept as a pair when their estimated Jaccard similarity is >= ``threshold``. Clusters (chains included)
    keep their first row in input order and every other member maps to it.
    """
    n = len(texts)
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} texts")
    if not 0.0 < threshold <= 1.0:
        raise ValueError("threshold must be in (0, 1]")
    if shingle_size < 1 or num_perm < 1:
        raise ValueError("shingle_size and num_perm must be >= 1")
    if n < 2:
        return {}
    bands, rows = optimal_lsh_params(float(threshold), int(num_perm))
    tokens, offsets = shingle_hashes(_utf8(texts), shingle_size)
    lsh = rensa.RMinHashLSH(float(threshold), int(num_perm), bands)
    # rows that share no band with any other row are done; only the rest need their signatures in Python
    shared = np.flatnonzero(lsh.query_duplicate_flags_matrix_one_shot(_digests(tokens, offsets, num_perm, seed)))
    if shared.size < 2:
        return {}
    sigs = np.array(_digests(*_rows_of(tokens, offsets, shared), num_perm, seed).to_rows(), dtype=np.uint32)
    pairs = np.concatenate([_bucket_pairs(sigs[:, i * rows:(i + 1) * rows]) for i in range(bands)], axis=1)
    a, b = np.divmod(np.unique(pairs[0] * shared.size + pairs[1]), shared.size)
    need, similar = math.ceil(threshold * num_perm - 1e-9), np.zeros(a.size, dtype=bool)
    for start in range(0, a.size, 1 << 16):
        part = slice(start, start + (1 << 16))
        similar[part] = np.count_nonzero(sigs[a[part]] == sigs[b[part]], axis=1) >= need
    graph = coo_matrix((np.ones(int(similar.sum()), np.int8), (a[similar], b[similar])), shape=(shared.size,) * 2)
    _, labels = connected_components(graph, directed=False)
    first = np.full(shared.size, shared.size, np.int64)
    np.minimum.at(first, labels, np.arange(shared.size))  # shared is sorted: the first member in input order
    keep = shared[first[labels]]
    return {ids[i]: ids[k] for i, k in zip(shared.tolist(), keep.tolist(), strict=True) if i != k and ids[i] != ids[k]}
