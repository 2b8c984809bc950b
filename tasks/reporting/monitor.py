"""Live monitoring of a run: artifact keys per run, a log line per shard, a round's progress, the
low-evolution warning, flow-run names. Pure functions; the flow publishes what they return. The rounds of the
run in progress in this process are kept by run id, for the terminal's progress bars (``round_bars``)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tasks.core.summaries import RoundSummary, ShardSummary


def artifact_key(run_id: str, *parts: object) -> str:
    """A Prefect artifact key for one run (lowercase letters, digits and dashes only), so runs never share
    an artifact's history: ``artifact_key("Demo_v2", "round", 1) == "demo-v2-round-1"``."""
    text = "-".join(str(p) for p in (run_id, *parts))
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")


def flow_run_name_for(run_id: str, when: datetime | None = None) -> str:
    """A flow run's name: the run's name and the start time, e.g. ``demo-2026-11-28-1716``."""
    when = when or datetime.now()
    return f"{run_id}-{when:%Y-%m-%d-%H%M%S}"


def tokens_per_second(summary: ShardSummary) -> float:
    """Completion tokens per second of a computed shard (0 for a reused one)."""
    return summary.completion_tokens / summary.seconds if summary.seconds > 0 else 0.0


def shard_log_line(summary: ShardSummary, shard_index: int, shards: int) -> str:
    """One line per finished shard: rows, evolved, rejections by reason, tokens, tok/s, seconds."""
    rejected = ", ".join(f"{reason}={n}" for reason, n in summary.rejected.items()) or "none"
    if summary.reused:
        return (f"round {summary.round} shard {shard_index + 1}/{shards}: reused, {summary.pool_in} rows, "
                f"{summary.passed} evolved, rejected {rejected}")
    tokens = summary.prompt_tokens + summary.completion_tokens
    return (f"round {summary.round} shard {shard_index + 1}/{shards}: {summary.pool_in} rows, {summary.passed} "
            f"evolved, rejected {rejected}; {tokens} tokens ({summary.completion_tokens} generated), "
            f"{tokens_per_second(summary):.1f} tok/s, {summary.seconds:.1f} s")


@dataclass
class RoundProgress:
    """A round's shards as they finish, and the rows of the shards still running (``set_live``): counts for the
    progress artifact and its description."""

    round_index: int
    shards: int
    started: float = field(default_factory=time.time)
    done: int = 0
    rows: int = 0  # the rows of finished shards (reused ones included)
    evolved: int = 0  # passed elimination in their shard; the round's dedup may drop a few more
    generated_tokens: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    note: str = ""  # the engine start: "starting ...", then "... ready in N s"
    round_started: float | None = None  # the round's start (``started`` moves to the engine being ready)
    ended: float | None = None  # the round finished (its shards and its dedup)
    total_rows: int | None = None  # the round's pool rows, when known: rows and ETA count rows, not shards
    computed_rows: int = 0  # rows of finished shards computed by this run (the rate's numerator; reused: none)
    live: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # running shard -> rows, passed, tokens

    def __post_init__(self) -> None:
        if self.round_started is None:
            self.round_started = self.started

    def add(self, summary: ShardSummary, shard_index: int | None = None) -> None:
        """Count one finished shard (and stop counting its live rows)."""
        self.finish(shard_index)
        self.rows += summary.pool_in
        self.computed_rows += 0 if summary.reused else summary.pool_in
        self.evolved += summary.passed
        self.generated_tokens += 0 if summary.reused else summary.completion_tokens
        for reason, n in summary.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + n

    def finish(self, shard_index: int | None = None) -> None:
        """Count one shard as done (``add`` counts its rows; a failed shard has none); its live rows are over."""
        self.live.pop(shard_index, None)
        self.done += 1

    def set_live(self, shard_index: int, rows: int, passed: int, generated_tokens: int) -> bool:
        """Record a running shard's rows so far; whether that changed anything."""
        changed = self.live.get(shard_index) != (rows, passed, generated_tokens)
        self.live[shard_index] = (rows, passed, generated_tokens)
        return changed

    def set_running(self, running: dict[int, tuple[int, int, int]]) -> bool:
        """Record the rows so far of running shards (shard -> rows, passed, tokens); whether anything changed."""
        changed = [self.set_live(i, *counts) for i, counts in running.items()]
        return any(changed)

    def _live_sum(self, i: int) -> int:
        return sum(v[i] for v in self.live.values())

    @property
    def rows_done(self) -> int:
        """Rows with their candidate made: finished shards' and running shards' so far."""
        return self.rows + self._live_sum(0)

    @property
    def percent(self) -> float:
        if self.total_rows:
            return 100.0 * min(self.rows_done, self.total_rows) / self.total_rows
        return 100.0 * self.done / self.shards if self.shards else 100.0

    def description(self, now: float | None = None) -> str:
        """The progress artifact's description: shards, rows, passed, rows/s, tok/s, wall seconds, ETA, the engine
        start."""
        wall = max((now or time.time()) - self.started, 1e-9)
        rows, rate = self.rows_done, (self.computed_rows + self._live_sum(0)) / wall
        if self.total_rows is not None:
            eta = (self.total_rows - rows) / rate if rate > 0 else None
            rows_text = f"{rows}/{self.total_rows} rows, "
        else:
            eta = wall / self.done * (self.shards - self.done) if self.done else None
            rows_text = f"{rows} rows, "
        return (f"round {self.round_index}: {self.done}/{self.shards} shards, {rows_text}"
                f"{self.evolved + self._live_sum(1)} passed elimination, {rate:.1f} rows/s, "
                f"{(self.generated_tokens + self._live_sum(2)) / wall:.1f} tok/s, {wall:.0f} s"
                + (f", ETA {eta:.0f} s" if eta is not None and self.done < self.shards else "")
                + (f"; {self.note}" if self.note else ""))


_LIVE_ROUNDS: dict[str, dict[int, RoundProgress]] = {}  # run id -> round -> its progress, in this process


def reset_live_rounds(run_id: str) -> None:
    """Forget the rounds an earlier run of ``run_id`` showed in this process (a run calls it at its start)."""
    _LIVE_ROUNDS[run_id] = {}


def publish_round(run_id: str, progress: RoundProgress) -> None:
    """Show a round that has started: its progress object is updated in place as its shard tasks finish."""
    _LIVE_ROUNDS.setdefault(run_id, {})[progress.round_index] = progress


def live_rounds(run_id: str) -> dict[int, RoundProgress]:
    """The rounds of ``run_id`` that have started in this process, by round number."""
    return dict(_LIVE_ROUNDS.get(run_id, {}))


@dataclass(frozen=True)
class RoundBar:
    """What a round's progress bar shows: this run's finished shard tasks (reused ones included), out of the
    round's shards (None before the round starts), and the seconds since the round's start (None before it)."""

    completed: int
    total: int | None
    seconds: float | None


def round_bars(run_id: str, rounds: int, now: float | None = None) -> list[RoundBar]:
    """One bar per round of the run in progress in this process, from its rounds' own progress (not from the
    markers in the run folder, which an earlier run's shards also have)."""
    live = live_rounds(run_id)
    now = time.time() if now is None else now
    bars = []
    for k in range(1, rounds + 1):
        p = live.get(k)
        if p is None:
            bars.append(RoundBar(0, None, None))
        else:
            bars.append(RoundBar(p.done, p.shards, max((p.ended or now) - p.round_started, 0.0)))
    return bars


def low_evolution_warning(summary: RoundSummary, min_share: float) -> str | None:
    """A warning when a round evolved less than ``min_share`` of its pool (None when it did enough)."""
    if summary.pool_in == 0 or summary.evolved / summary.pool_in >= min_share:
        return None
    reasons = ", ".join(f"{r}={n}" for r, n in sorted(summary.rejected.items(), key=lambda kv: -kv[1])[:3])
    return (f"round {summary.round} evolved only {summary.evolved} of {summary.pool_in} rows "
            f"({summary.evolved / summary.pool_in:.1%}, below {min_share:.0%}); top rejections: {reasons or 'none'}. "
            "Check the model, the prompt pack and the elimination settings")


def empty_export_warning(rows: int, rounds: int, include_seeds: bool) -> str | None:
    """A warning when the export holds no row (None when it holds some)."""
    if rows:
        return None
    if rounds == 0 and not include_seeds:
        return ("the export holds 0 rows: rounds: 0 with mix.include_seeds: false leaves nothing to export; "
                "set rounds above 0 or mix.include_seeds: true")
    return ("the export holds 0 rows: no row survived the rounds and the mix"
            + ("" if include_seeds else " (mix.include_seeds is false)") + "; check the rejections in the card")


def run_name_of(parameters: dict[str, Any]) -> str:
    """The run's name from a flow run's parameters (the config as a RunConfig or as its dict)."""
    from tasks.core.config import RunConfig
    from tasks.core.context import run_name

    config = parameters["config"]
    return run_name(config if isinstance(config, RunConfig) else RunConfig.model_validate(config))
