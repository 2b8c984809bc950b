"""The hand-written near dedup this project used before rensa (MinHash, LSH banding, union-find in numpy), kept
for bench/bench_dedup.py to compare against."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.core.text import normalize_text


@lru_cache(maxsize=64)
def optimal_lsh_params(
    threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """LSH (bands, rows), bands * rows <= num_perm, minimising the weighted false positive area (below
    ``threshold``) plus false negative area (above it) under the S-curve ``1 - (1 - s**rows)**bands``."""
    combos = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=np.float64)
    b, r = combos[:, :1], combos[:, 1:]
    below, above = np.linspace(0.0, threshold, 1025), np.linspace(threshold, 1.0, 1025)
    fp = np.trapezoid(1.0 - (1.0 - below**r) ** b, below, axis=1)
    fn = np.trapezoid((1.0 - above**r) ** b, above, axis=1)
    best = int(np.argmin(fp_weight * fp + fn_weight * fn))
    return int(combos[best, 0]), int(combos[best, 1])


def _string_buffers(texts: pa.LargeStringArray) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of all texts back to back, and each text's offsets (n + 1), starting at 0."""
    _, offsets, data = texts.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int64)[texts.offset: texts.offset + len(texts) + 1]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return data[offsets[0]: offsets[-1]], offsets - offsets[0]


def _normalized_ascii(data: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``normalize_text`` on ASCII texts, vectorised: lower case, whitespace runs folded, ends trimmed."""
    lowered = data | (((data - np.uint8(65)) < np.uint8(26)).view(np.uint8) << np.uint8(5))
    np.putmask(lowered, (data - np.uint8(9)) < np.uint8(5), np.uint8(32))  # \t \n \v \f \r fold like spaces
    ws, size, nonempty = lowered == np.uint8(32), lowered.size, offsets[1:] > offsets[:-1]
    first, last = np.zeros(size + 1, dtype=bool), np.zeros(size + 1, dtype=bool)
    first[offsets[:-1][nonempty]] = True
    last[offsets[1:][nonempty] - 1] = True
    prev_ws, next_ws = np.zeros(size, dtype=bool), np.zeros(size, dtype=bool)
    prev_ws[1:], next_ws[:-1] = ws[:-1], ws[1:]
    prev_ws &= ~first[:size]
    next_ws &= ~last[:size]
    # Runs never cross texts, so the k-th run start and the k-th run end belong together.
    run_start, run_end = np.flatnonzero(ws & ~prev_ws), np.flatnonzero(ws & ~next_ws)
    inner = ~first[run_start] & ~last[run_end]
    if inner.all() and np.array_equal(run_start, run_end):
        return lowered, offsets  # single inner spaces only: nothing to fold or trim
    keep = ~ws
    keep[run_start[inner]] = True
    kept_before = np.zeros(size + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    return lowered[keep], kept_before[offsets]


def _normalized_points(texts: pa.LargeStringArray) -> tuple[np.ndarray, np.ndarray]:
    """Code points of ``normalize_text`` of each text (uint32, back to back) and their offsets (n + 1)."""
    norm = [normalize_text(t) for t in texts.to_pylist()]
    points = np.frombuffer("".join(norm).encode("utf-32-le"), dtype=np.uint32)
    return points, np.concatenate([[0], np.cumsum([len(t) for t in norm], dtype=np.int64)])


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finaliser, in place: spreads the polynomial hash over all 32 bits."""
    for shift, mul in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
        h ^= h >> np.uint32(shift)
        h *= np.uint32(mul)
    h ^= h >> np.uint32(16)
    return h


def _shingle_matrix(points: np.ndarray, offsets: np.ndarray, k: int) -> np.ndarray:
    """Shingle hashes as an (L, n) matrix: column t holds text t's shingles, padded by repeating one."""
    starts, lengths, total = offsets[:-1], np.diff(offsets), points.size
    padded = np.zeros(total + k, dtype=np.uint32)
    padded[:total] = points
    h = padded[: total + 1].copy()
    short, whole = lengths < k, np.full(len(lengths), 0x9E3779B9, dtype=np.uint32)  # "" is one shingle too
    for j in range(1, k + 1):
        if short.any():
            ends_here = lengths == j
            whole[ends_here] = h[starts[ends_here]]  # texts shorter than k: the whole text is the shingle
        if j < k:
            h *= np.uint32(0x9E3779B1)
            h += padded[j: j + total + 1]
    _fmix32(h)
    counts = np.maximum(lengths - k + 1, 1)
    index_type = np.int32 if total < 2**31 - 1 else np.int64
    index = np.minimum(np.arange(int(counts.max()), dtype=index_type)[:, None], (counts - 1).astype(index_type))
    index += starts.astype(index_type)
    matrix = np.take(h, index)
    if short.any():
        matrix[:, short] = _fmix32(whole)[short]
    # x -> a * x maps 0 to 0 under every permutation; keep 0 out of the shingle hashes.
    return np.maximum(matrix, 1, out=matrix)


def _permutations(num_perm: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2**32, num_perm, dtype=np.uint64) | np.uint64(1)).astype(np.uint32)


def _chunks(sorted_lengths: np.ndarray, budget: int = 400_000) -> list[tuple[int, int]]:
    """Slices of length-sorted rows whose padded shingle matrices hold about ``budget`` values each."""
    chunks, i = [], 0
    while i < len(sorted_lengths):
        end = min(len(sorted_lengths), i + max(1, budget // max(1, int(sorted_lengths[i]))))
        while end - i > 1 and int(sorted_lengths[end - 1]) * (end - i) > 2 * budget:
            end = i + (end - i) // 2
        chunks.append((i, end))
        i = end
    return chunks


def _workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _signatures(
    texts: Sequence[str] | pa.Array | pa.ChunkedArray, shingle_size: int, num_perm: int, seed: int, bands: int,
    rows: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by length (``order``), then per sorted position the MinHash signature
    (n, num_perm) uint32 and the LSH band keys (bands, n) uint64."""
    if shingle_size < 1 or num_perm < 1:
        raise ValueError("shingle_size and num_perm must be >= 1")
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    arr = texts.cast(pa.large_string()) if isinstance(texts, pa.Array) else pa.array(texts, type=pa.large_string())
    arr = pc.fill_null(arr, "")
    lengths = np.diff(_string_buffers(arr)[1])
    order = np.argsort(lengths, kind="stable")
    multipliers = _permutations(num_perm, seed)
    band_mix = np.stack([_permutations(rows, seed + 1), _permutations(rows, seed + 2)])
    sigs = np.empty((len(arr), num_perm), dtype=np.uint32)
    keys = np.empty((bands, len(arr)), dtype=np.uint64)

    def block(positions: np.ndarray, points: np.ndarray, offsets: np.ndarray) -> None:
        matrix = _shingle_matrix(points, offsets, shingle_size)
        scratch = np.empty_like(matrix)
        sig = np.empty((num_perm, matrix.shape[1]), dtype=np.uint32)
        for i, a in enumerate(multipliers):
            np.multiply(matrix, a, out=scratch)
            np.minimum.reduce(scratch, axis=0, out=sig[i])
        sigs[positions] = sig.T
        # Two random linear hashes (32-bit arithmetic is fast) of each band's values make its 64-bit key;
        # a rare false bucket share is caught by verification.
        band_values = sig[: bands * rows].reshape(bands, rows, -1)
        high, low = np.zeros((2, bands, band_values.shape[2]), dtype=np.uint32)
        for j in range(rows):
            high += band_values[:, j] * band_mix[0, j]
            low += band_values[:, j] * band_mix[1, j]
        keys[:, positions] = (high.astype(np.uint64) << np.uint64(32)) | low

    def run(chunk: tuple[int, int]) -> None:
        raw = arr.take(pa.array(order[chunk[0]: chunk[1]]))
        data, offsets = _string_buffers(raw)
        positions = np.arange(*chunk)
        # Non-ASCII text (case rules) and \x1c-\x1f (str.strip drops them) go through normalize_text itself.
        if data.size == 0 or (data.max() < 0x80 and not ((data - np.uint8(0x1C)) < np.uint8(4)).any()):
            return block(slice(*chunk), *_normalized_ascii(data, offsets))
        odd = np.flatnonzero((data >= 0x80) | ((data - np.uint8(0x1C)) < np.uint8(4)))
        python_rows = np.unique(np.searchsorted(offsets, odd, side="right") - 1)
        plain = np.setdiff1d(np.arange(len(raw)), python_rows)
        if plain.size:
            block(positions[plain], *_normalized_ascii(*_string_buffers(raw.take(pa.array(plain)))))
        block(positions[python_rows], *_normalized_points(raw.take(pa.array(python_rows))))

    with ThreadPoolExecutor(_workers()) as pool:
        list(pool.map(run, _chunks(lengths[order])))
    return order, sigs, keys


def minhash_signatures(
    texts: Sequence[str] | pa.Array, shingle_size: int = 5, num_perm: int = 128, seed: int = 0
) -> np.ndarray:
    """MinHash signatures (n, num_perm) uint32 over character shingles of the normalised texts, in input order."""
    order, sigs, _ = _signatures(texts, shingle_size, num_perm, seed, 1, 1)
    out = np.empty_like(sigs)
    out[order] = sigs
    return out


def _band_pairs(key: np.ndarray) -> np.ndarray:
    """Positions sharing a bucket in one band: each member with the bucket's first and with its neighbour."""
    order = np.argsort(key)
    sorted_key = key[order]
    same = sorted_key[1:] == sorted_key[:-1]
    opens = np.concatenate([[True], ~same])
    first, member = np.flatnonzero(opens)[np.cumsum(opens) - 1], ~opens
    return np.concatenate([np.stack([order[:-1][same], order[1:][same]]),
                           np.stack([order[first[member]], order[member]])], axis=1)


def _component_roots(n: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Union-find over the edges: each row's root is the smallest row index of its component."""
    parent = np.arange(n, dtype=np.int64)
    while True:
        while True:  # pointer jumping: every row points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        root_lo, root_hi = parent[lo], parent[hi]
        split = root_lo != root_hi
        if not split.any():
            return parent
        np.minimum.at(parent, np.maximum(root_lo[split], root_hi[split]), np.minimum(root_lo[split], root_hi[split]))


def find_near_duplicates(
    ids: Sequence[str], texts: Sequence[str], threshold: float = 0.8, shingle_size: int = 5,
    num_perm: int = 128, seed: int = 0,
) -> dict[str, str]:
    """Near duplicates by MinHash + LSH: ``{dropped id: id of the kept row}``.

    Character ``shingle_size``-grams of the normalised texts (a shorter text is one shingle), MinHash
    with ``num_perm`` permutations, LSH banding tuned to ``threshold``; candidate pairs are kept when
    their estimated Jaccard similarity is >= ``threshold``. Clusters (chains included) keep their first
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
    order, sigs, keys = _signatures(texts, shingle_size, num_perm, seed, bands, rows)
    with ThreadPoolExecutor(_workers()) as pool:
        pairs = np.concatenate(list(pool.map(_band_pairs, keys)), axis=1)
    del keys
    code = np.unique(np.minimum(pairs[0], pairs[1]) * n + np.maximum(pairs[0], pairs[1]))
    a, b = code // n, code % n
    need = math.ceil(threshold * num_perm - 1e-9)
    similar = np.zeros(len(code), dtype=bool)
    for start in range(0, len(code), 1 << 16):
        part = slice(start, start + (1 << 16))
        similar[part] = np.count_nonzero(sigs[a[part]] == sigs[b[part]], axis=1) >= need
    roots = _component_roots(n, order[a[similar]], order[b[similar]])
    dropped = np.flatnonzero(roots != np.arange(n))
    return {ids[i]: ids[r] for i, r in zip(dropped.tolist(), roots[dropped].tolist(), strict=True) if ids[i] != ids[r]}
