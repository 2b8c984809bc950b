"""The score distributions of a scored run (``score:``) for its dataset card and plots: rows per score bin, complexity
and quality, over every scored row and over the exported rows.

The bins are the six choices: a score (an expectation between 1 and 6, or the chosen score) counts at its nearest
whole number, a half upward, so a chosen score falls in its own bin; a row without that score counts as ``none``."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from storage import ShardRef, StorageSettings, duck_connect, read_parquet_sql
from tasks.core.options import SCORE_CHOICES

SCORE_KINDS = ("complexity", "quality")
BIN_LABELS = (*SCORE_CHOICES, "none")


class ScoreBins(BaseModel):
    """Rows per bin (``BIN_LABELS``: the scores 1..6, then ``none``) of each kind that some row has a score of, over
    every scored row (``scored``: the seeds and every round's evolutions) and over the exported rows (``final``)."""

    model_config = ConfigDict(frozen=True)

    scored: dict[str, list[int]]
    final: dict[str, list[int]]

    @property
    def kinds(self) -> list[str]:
        return list(self.scored)

    def rows(self, which: str = "scored") -> int:
        """How many rows the bins of ``which`` (``scored`` or ``final``) count."""
        counts = getattr(self, which)
        return sum(next(iter(counts.values()))) if counts else 0


def bin_counts(values: np.ndarray) -> list[int]:
    """Rows per bin of ``BIN_LABELS`` for float scores (nan: no score)."""
    values = np.asarray(values, dtype=float)
    missing = np.isnan(values)
    first, last = int(SCORE_CHOICES[0]), int(SCORE_CHOICES[-1])
    whole = np.clip(np.floor(values[~missing] + 0.5), first, last).astype(np.int64) - first
    return [*np.bincount(whole, minlength=len(SCORE_CHOICES)).tolist(), int(missing.sum())]


def score_bins(scores: list[ShardRef], final_uri: str, settings: StorageSettings | None = None) -> ScoreBins:
    """The score bins of a run from its score shards and its final shard (the rows joined by id)."""
    uris = [r.uri for r in scores]
    if not uris:
        return ScoreBins(scored={}, final={})
    con = duck_connect(*uris, final_uri, settings=settings)
    columns = con.execute(
        f"SELECT s.complexity, s.quality, f.id IS NOT NULL AS exported FROM {read_parquet_sql(uris)} s "
        f"LEFT JOIN (SELECT id FROM {read_parquet_sql([final_uri])}) f USING (id) ORDER BY s.id").fetchnumpy()
    exported = np.asarray(columns["exported"], dtype=bool)
    scored: dict[str, list[int]] = {}
    final: dict[str, list[int]] = {}
    for kind in SCORE_KINDS:
        values = np.ma.filled(np.ma.asarray(columns[kind], dtype=float), np.nan)
        if np.isnan(values).all():
            continue  # not scored (``score.<kind>: false``), or every item failed: no bins to show
        scored[kind], final[kind] = bin_counts(values), bin_counts(values[exported])
    return ScoreBins(scored=scored, final=final)
