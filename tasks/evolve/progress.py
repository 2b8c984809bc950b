"""Progress inside a shard: rows done, passed, tokens and the rate, counted as each row's candidate is made.

A shard task keeps one ``ShardProgress`` on this process's board, under its candidates shard's URI, while its
rows stream: the round flow of the same process reads it between finished shards for the round's progress
artifact, and the shard logs a line every tenth of its rows or every ``every_s`` seconds. A shard on a cluster
worker logs the same lines; the round there shows the shards as they finish.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ShardProgress:
    """One shard's rows as their candidates are made (thread-safe: rows finish on the streaming loop)."""

    round_index: int
    shard_index: int
    total: int
    every_s: float = 5.0  # a log line at least this often while rows finish
    started: float = field(default_factory=time.monotonic)
    rows: int = 0
    passed: int = 0
    generated_tokens: int = 0
    _logged_rows: int = 0
    _logged_at: float = field(default=0.0)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._logged_at = self.started

    @property
    def step(self) -> int:
        """The rows between two row-driven log lines: a tenth of the shard, at least 10 rows."""
        return max(10, math.ceil(self.total / 10))

    def record(self, candidate: dict[str, Any], now: float | None = None) -> str | None:
        """Count one row's candidate; the shard's log line when one is due (a tenth more rows, or ``every_s``
        seconds since the last line), else None. The last row gives none: the shard's summary line follows."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.rows += 1
            self.passed += candidate.get("status") == "evolved"
            self.generated_tokens += candidate.get("completion_tokens") or 0
            due = self.rows < self.total and (self.rows - self._logged_rows >= self.step
                                              or now - self._logged_at >= self.every_s)
            if not due:
                return None
            self._logged_rows, self._logged_at = self.rows, now
            return self.line(now)

    def snapshot(self) -> tuple[int, int, int]:
        """Rows done, rows passed, generated tokens: one consistent reading."""
        with self._lock:
            return self.rows, self.passed, self.generated_tokens

    def line(self, now: float | None = None) -> str:
        """``round 1 shard 3: 40/200 rows, 31 passed, 8.0 rows/s, 412.5 tok/s, ETA 20 s``."""
        wall = max((time.monotonic() if now is None else now) - self.started, 1e-9)
        rate = self.rows / wall
        eta = f", ETA {(self.total - self.rows) / rate:.0f} s" if self.rows else ""
        return (f"round {self.round_index} shard {self.shard_index + 1}: {self.rows}/{self.total} rows, "
                f"{self.passed} passed, {rate:.1f} rows/s, {self.generated_tokens / wall:.1f} tok/s{eta}")


_BOARD: dict[str, ShardProgress] = {}  # candidates shard URI -> its progress, for shards running in this process
_BOARD_LOCK = threading.Lock()


def track_shard(candidates_uri: str, progress: ShardProgress) -> ShardProgress:
    """Put a shard's progress on the board (a retry of the shard starts it again from zero)."""
    with _BOARD_LOCK:
        _BOARD[candidates_uri] = progress
    return progress


def shard_progress(candidates_uri: str) -> ShardProgress | None:
    """The progress of a shard running in this process (None: not started here, or already taken)."""
    with _BOARD_LOCK:
        return _BOARD.get(candidates_uri)


def forget_shard(candidates_uri: str) -> None:
    """Take a shard off the board once its round has counted its summary."""
    with _BOARD_LOCK:
        _BOARD.pop(candidates_uri, None)


def running_rows(candidate_uris: list[str]) -> dict[int, tuple[int, int, int]]:
    """Rows done, passed and generated tokens so far of the shards among ``candidate_uris`` (by position) running
    in this process; a shard running elsewhere (a cluster worker) is not on this process's board."""
    found = {i: shard_progress(uri) for i, uri in enumerate(candidate_uris)}
    return {i: shard.snapshot() for i, shard in found.items() if shard is not None}
