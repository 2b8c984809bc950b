"""Diversity-aware selection (Deita, Liu et al. 2023): rows in the order of their complexity x quality, a row taken
only when its embedding's cosine similarity to every row already taken is below a threshold, until the budget.

numpy over blocks of rows in rank order: a block's similarities to the rows taken before it are one matrix product,
then the rows of the block are decided in order against each other (a row taken bars the rows of the block that are
too close to it). Each row not taken gets its nearest taken row, one matrix product per block."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BLOCK = 1024


@dataclass(frozen=True)
class Selection:
    """``taken``: row indices in the order they were taken; ``nearest[i]``/``similarity[i]``: for a row not taken,
    the taken row closest to it and their cosine similarity (-1 and nan for a taken row, or when none was taken)."""

    taken: np.ndarray
    nearest: np.ndarray
    similarity: np.ndarray


def unit_rows(vectors: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Float32 rows scaled to length 1 (a zero row stays zero); ``in_place``: scale a float32 array itself."""
    x = np.asarray(vectors, dtype=np.float32) if in_place else np.array(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.where(norms > 0, norms, 1.0)
    return x


def rank_order(complexity: np.ndarray, quality: np.ndarray, ids: list[str]) -> np.ndarray:
    """Row indices by complexity x quality, highest first (a missing score counts 0); ties by id."""
    product = np.nan_to_num(np.asarray(complexity, float), nan=0.0) * np.nan_to_num(np.asarray(quality, float), nan=0.0)
    by_id = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    return by_id[np.argsort(-product[by_id], kind="stable")]


def diversity_select(embeddings: np.ndarray, threshold: float, budget: int | None,
                     in_place: bool = False) -> Selection:
    """Take rows in the given order (their rank) while their similarity to every taken row is below ``threshold``,
    until ``budget`` rows (None: no limit); ``in_place``: the embeddings (float32) may be scaled where they are."""
    x = unit_rows(embeddings, in_place)
    n = x.shape[0]
    budget = n if budget is None else min(budget, n)
    chosen = np.empty((budget, x.shape[1]), np.float32)
    taken: list[int] = []
    for start in range(0, n, BLOCK):
        if len(taken) >= budget:
            break
        block = x[start:start + BLOCK]
        barred = np.zeros(block.shape[0], bool)
        if taken:
            barred = (block @ chosen[:len(taken)].T).max(axis=1) >= threshold
        open_rows = np.flatnonzero(~barred)
        inner = block[open_rows] @ block[open_rows].T >= threshold
        blocked = np.zeros(open_rows.size, bool)
        for j in range(open_rows.size):
            if blocked[j]:
                continue
            chosen[len(taken)] = block[open_rows[j]]
            taken.append(start + int(open_rows[j]))
            if len(taken) >= budget:
                break
            blocked |= inner[j]
    nearest, similarity = nearest_taken(x, np.asarray(taken, np.int64))
    return Selection(np.asarray(taken, np.int64), nearest, similarity)


def nearest_taken(x: np.ndarray, taken: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row not in ``taken``, the taken row most similar to it and the similarity."""
    nearest = np.full(x.shape[0], -1, np.int64)
    similarity = np.full(x.shape[0], np.nan)
    rest = np.setdiff1d(np.arange(x.shape[0]), taken)
    if taken.size == 0 or rest.size == 0:
        return nearest, similarity
    kept = x[taken]
    for start in range(0, rest.size, BLOCK):
        rows = rest[start:start + BLOCK]
        sims = x[rows] @ kept.T
        best = sims.argmax(axis=1)
        nearest[rows] = taken[best]
        similarity[rows] = sims[np.arange(rows.size), best]
    return nearest, similarity


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float> column of equal-length vectors as an (n, d) float32 matrix; ``ValueError`` for a missing one."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if column.null_count:
        raise ValueError(f"{column.null_count} row(s) have no embedding (score.embeddings must be on)")
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    flat = flat if flat.dtype == np.float32 and flat.flags.writeable else flat.astype(np.float32)
    return flat.reshape(len(column), -1) if len(column) else np.zeros((0, 0), np.float32)


def select_table(table: pa.Table, scores: pa.Table, threshold: float,
                 budget: int | None) -> tuple[pa.Table, pa.Table, pa.Array]:
    """``table``'s rows taken by diversity-aware selection (in rank order), the rows not taken (in rank order) and,
    for each of those, the id of the nearest taken row. ``scores`` holds each row's id, ``complexity``,
    ``quality`` and ``embedding`` (``storage.schema.SCORE_SCHEMA``)."""
    where = pc.index_in(table["id"], scores["id"])
    if where.null_count:
        raise ValueError(f"{where.null_count} row(s) of the mix have no score row")
    order = rank_order(scores["complexity"].take(where).to_numpy(zero_copy_only=False),
                       scores["quality"].take(where).to_numpy(zero_copy_only=False), table["id"].to_pylist())
    matrix = embedding_matrix(scores["embedding"].take(where.take(pa.array(order))))  # a fresh matrix, rank order
    picked = diversity_select(matrix, threshold, budget, in_place=True)
    del matrix
    rest = np.flatnonzero(picked.nearest >= 0) if picked.taken.size else np.arange(order.size)
    nearest_ids = table["id"].take(pa.array(order[picked.nearest[rest]], pa.int64())) if picked.taken.size else \
        pa.nulls(rest.size, pa.string())
    return table.take(pa.array(order[picked.taken])), table.take(pa.array(order[rest])), nearest_ids
