"""`evol run`'s progress bars: a round's bar counts this run's shard tasks (reused ones once the run has taken them),
not the markers an earlier run left, and its time starts with the round."""

from __future__ import annotations

import io
import json
import threading
import time

from rich.console import Console

import tasks.evolve.shard
from flows.cli_run import _watch_progress
from tasks.reporting.monitor import RoundBar, RoundProgress, live_rounds, publish_round, reset_live_rounds, round_bars
from tests.flow_script import load_seeds


def test_bars_show_each_rounds_own_shards_and_time():
    reset_live_rounds("bars")
    assert round_bars("bars", 2) == [RoundBar(0, None, None), RoundBar(0, None, None)]
    first = RoundProgress(1, 2, started=1000.0)
    publish_round("bars", first)
    first.started = 1031.0  # the engine was ready 31 s in: rate and ETA count from there, the bar's time does not
    assert round_bars("bars", 2, now=1040.0) == [RoundBar(0, 2, 40.0), RoundBar(0, None, None)]
    first.done, first.ended = 2, 1090.0
    second = RoundProgress(2, 2, started=1090.0)
    publish_round("bars", second)
    second.done = 1
    assert round_bars("bars", 2, now=1122.0) == [RoundBar(2, 2, 90.0), RoundBar(1, 2, 32.0)]
    reset_live_rounds("bars")  # the next run of the same name starts with empty bars
    assert round_bars("bars", 2, now=1122.0) == [RoundBar(0, None, None), RoundBar(0, None, None)]


def test_the_terminal_shows_a_bar_per_round_with_its_count_and_time():
    reset_live_rounds("shown")
    first = RoundProgress(1, 2, started=1000.0, done=2, ended=1032.0)
    publish_round("shown", first)
    out = io.StringIO()
    stop = threading.Event()
    stop.set()
    _watch_progress("shown", 2, stop, Console(file=out, width=80, force_terminal=False))
    lines = [line.split() for line in out.getvalue().splitlines() if line.startswith("round")]
    assert [(w[0], w[1], w[-2], w[-1]) for w in lines[-2:]] == [("round", "1", "2/2", "0:00:32"),
                                                                 ("round", "2", "0/?", "-:--:--")]


def _config(tmp, seeds: list[dict]) -> dict:
    path = tmp / "seeds.jsonl"
    path.write_text("\n".join(json.dumps(s) for s in seeds) + "\n")
    return {"name": "bars", "seeds": str(path), "output_root": str(tmp / "runs"), "rounds": 2, "shard_size": 10,
            "random_seed": 3, "llm": {"backend": "scripted", "model": "demo"},
            "orchestration": {"retries": 0, "retry_delay_s": 0}}


def _run_watched(config: dict, monkeypatch) -> tuple[list[tuple[int, str, list[RoundBar], float]], str]:
    """Run the flow; while each shard is computed (before its candidates are committed) note the bars."""
    from flows.evol_instruct import evol_instruct
    from tasks.core.config import parse_run_config
    from tasks.core.context import run_layout

    parsed = parse_run_config(config)
    run_id = run_layout(parsed).run_id
    computed = []
    compute = tasks.evolve.shard.evolve_shard

    def watched(pool, candidates_uri, round_index, *args, **kwargs):
        computed.append((round_index, candidates_uri.rsplit("/", 1)[-1], round_bars(run_id, 2), time.time()))
        return compute(pool, candidates_uri, round_index, *args, **kwargs)

    monkeypatch.setattr(tasks.evolve.shard, "evolve_shard", watched)
    evol_instruct(parsed)
    monkeypatch.setattr(tasks.evolve.shard, "evolve_shard", compute)
    return computed, run_id


def test_rerun_after_editing_one_seed_counts_only_this_runs_shards(prefect_harness, tmp_path, monkeypatch):
    seeds = load_seeds()
    first, run_id = _run_watched(_config(tmp_path, seeds), monkeypatch)
    assert sorted((k, name) for k, name, _, _ in first) == [
        (1, "shard-00000.parquet"), (1, "shard-00001.parquet"), (2, "shard-00000.parquet"), (2, "shard-00001.parquet")]
    rounds = live_rounds(run_id)
    for k, _, bars, seen in first:
        assert bars[k - 1].completed < bars[k - 1].total == 2
        if k == 1:  # round 2 has not started: no count, no total, no time
            assert bars[1] == RoundBar(0, None, None)
            assert seen <= rounds[1].ended <= rounds[2].round_started
        else:  # round 1 is over, its time frozen; round 2's counts from round 2's start
            assert bars[0] == RoundBar(2, 2, rounds[1].ended - rounds[1].round_started)
            assert bars[1].seconds <= seen - rounds[2].round_started
    end = round_bars(run_id, 2)
    assert [(b.completed, b.total) for b in end] == [(2, 2), (2, 2)]
    assert end[1].seconds == rounds[2].ended - rounds[2].round_started

    seeds[3]["instruction"] += " Use at most three sentences."  # in shard 0 of each round
    again, _ = _run_watched(_config(tmp_path, seeds), monkeypatch)
    # Both rounds' shard 0 is recomputed; every candidates shard still has the first run's marker meanwhile.
    assert [(k, name) for k, name, _, _ in again] == [(1, "shard-00000.parquet"), (2, "shard-00000.parquet")]
    (_, _, during_1, _), (_, _, during_2, _) = again
    assert during_1[0].completed <= 1 and during_1[0].total == 2 and during_1[1] == RoundBar(0, None, None)
    assert (during_2[0].completed, during_2[0].total) == (2, 2)
    assert during_2[1].completed <= 1 and during_2[1].total == 2
    rounds = live_rounds(run_id)
    assert rounds[1].ended <= rounds[2].round_started
    assert [(b.completed, b.total) for b in round_bars(run_id, 2)] == [(2, 2), (2, 2)]
