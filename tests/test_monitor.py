"""Live monitoring: per-run artifact keys, a log line and a progress update per shard, the low-evolution warning."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)

import flows.evol_instruct as evol_flow
from storage import ShardRef
from tasks.core.context import stage_key as content_key
from tasks.core.summaries import RoundSummary, ShardSummary
from tasks.export.plots import PLOTS
from tasks.llm.scripted import ScriptedBackend, register_scripted_backend
from tasks.reporting.monitor import (
    RoundProgress,
    artifact_key,
    flow_run_name_for,
    low_evolution_warning,
    shard_log_line,
)
from tasks.reporting.samples import trim
from tests.flow_script import PlannedScript
from tests.test_flow import make_config


def shard(passed: int, rows: int = 10, seconds: float = 2.0, reused: bool = False) -> ShardSummary:
    ref = ShardRef(uri="memory://x/shard-00000.parquet", rows=rows, sha256="0" * 64)
    return ShardSummary(round=1, pool_uri="memory://p", candidates=ref, pool_in=rows, passed=passed,
                        rejected={"empty_evolution": rows - passed} if rows > passed else {}, operations={},
                        prompt_tokens=300, completion_tokens=500, seconds=seconds, reused=reused)


def round_summary(pool_in: int, evolved: int) -> RoundSummary:
    return RoundSummary(round=2, shards=1, pool_in=pool_in, evolved=evolved, carried=pool_in - evolved,
                        rejected={"duplicate": 3, "empty_evolution": pool_in - evolved - 3}, operations={},
                        prompt_tokens=0, completion_tokens=0, wall_seconds=1.0, shard_seconds=1.0)


def test_artifact_keys_carry_the_run_and_keep_to_prefects_alphabet():
    assert artifact_key("Demo_v2.1", "round", 3) == "demo-v2-1-round-3"
    assert artifact_key("my run", "summary") == "my-run-summary"
    assert re.fullmatch(r"[a-z0-9-]+", artifact_key("ÄÖ__x..Y", "round", 1, "progress"))
    assert artifact_key("a", "round", 1) != artifact_key("b", "round", 1)


def test_flow_run_name_has_the_run_and_the_date():
    assert flow_run_name_for("demo", datetime(2026, 11, 28, 17, 5, 9)) == "demo-2026-11-28-170509"


def test_shard_log_line_names_rows_evolved_rejections_tokens_rate_and_seconds():
    line = shard_log_line(shard(passed=6), 2, 5)
    assert line == ("round 1 shard 3/5: 10 rows, 6 evolved, rejected empty_evolution=4; 800 tokens (500 generated), "
                    "250.0 tok/s, 2.0 s")
    assert shard_log_line(shard(passed=10, reused=True, seconds=0.0), 0, 1) == \
        "round 1 shard 1/1: reused, 10 rows, 10 evolved, rejected none"


def test_round_progress_counts_shards_and_gives_rate_and_eta():
    progress = RoundProgress(1, 4, started=100.0)
    progress.add(shard(passed=6))
    progress.add(shard(passed=10, reused=True))
    assert (progress.done, progress.rows, progress.evolved, progress.percent) == (2, 20, 16, 50.0)
    assert progress.rejected == {"empty_evolution": 4}
    assert progress.description(now=110.0) == \
        "round 1: 2/4 shards, 20 rows, 16 passed elimination, 1.0 rows/s, 50.0 tok/s, 10 s, ETA 10 s"


def test_round_progress_counts_the_rows_of_running_shards_and_an_eta_by_rows():
    progress = RoundProgress(1, 4, started=100.0, total_rows=40)
    progress.add(shard(passed=10, reused=True), 0)  # reused rows count as done, not in the rate
    assert progress.set_live(1, 5, 3, 250) and not progress.set_live(1, 5, 3, 250)
    assert (progress.rows_done, progress.percent) == (15, 37.5)
    assert progress.description(now=110.0) == \
        "round 1: 1/4 shards, 15/40 rows, 13 passed elimination, 0.5 rows/s, 25.0 tok/s, 10 s, ETA 50 s"
    progress.add(shard(passed=6), 1)  # the finished shard's summary replaces its live rows
    assert (progress.live, progress.rows_done, progress.evolved) == ({}, 20, 16)


def test_low_evolution_warning_below_the_share_only():
    assert low_evolution_warning(round_summary(100, 5), 0.05) is None
    warning = low_evolution_warning(round_summary(100, 4), 0.05)
    assert warning.startswith("round 2 evolved only 4 of 100 rows (4.0%, below 5%); top rejections: "
                              "empty_evolution=93, duplicate=3")
    assert low_evolution_warning(round_summary(0, 0), 0.05) is None


def test_min_evolved_share_is_in_no_stage_key(tmp_path):
    _, low = make_config(tmp_path, str(tmp_path / "r"), orchestration={"min_evolved_share": 0.5})
    _, default = make_config(tmp_path, str(tmp_path / "r"))
    from tasks.core.context import EvolveSpec

    assert content_key(EvolveSpec.of(low).model_dump()) == content_key(EvolveSpec.of(default).model_dump())
    assert low.model_dump(exclude={"orchestration"}) == default.model_dump(exclude={"orchestration"})


async def _run_records(flow_run_id, key_prefix: str, engine_starts: int, shard_lines: int = 8):
    """The run's artifacts, logs (its own and its rounds') and task runs, once every record has arrived:
    logs and task-run states reach the API late, so this polls until the expected ones are final."""
    async with get_client() as client:
        for _ in range(120):
            rounds = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
            ids = [flow_run_id, *(r.id for r in rounds)]
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
            task_runs = await client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=ids)))
            final = [t for t in task_runs if t.state is not None and t.state.is_final()]
            shards = [t for t in final if t.name.startswith("evolve-r")]
            engines = [t for t in final if t.name.startswith("start-engines")]
            lines = [log for log in logs if re.match(r"round \d shard \d/\d: ", log.message)]
            if len(shards) == len(lines) == shard_lines and len(engines) == engine_starts:
                break
            await asyncio.sleep(0.5)
        artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(like_=f"{key_prefix}%")))
        return artifacts, logs, task_runs


@dataclass
class MonitoredRun:
    seeds: list[dict]
    config: object
    state: object
    updates: list[tuple[float, str]]
    artifacts: dict[str, object]
    logs: list
    task_runs: list


@pytest.fixture(scope="module")
def monitored(prefect_harness, tmp_path_factory):
    """One scripted run (20 seeds, shards of 5, 2 rounds) with every progress update recorded."""
    tmp = tmp_path_factory.mktemp("monitor")
    seeds, config = make_config(tmp, str(tmp / "runs"), name="Monitor_Run",
                                orchestration={"retries": 0, "retry_delay_s": 0, "min_evolved_share": 0.32})
    register_scripted_backend(ScriptedBackend(PlannedScript(seeds)), "Monitor_Run")
    updates: list[tuple[float, str]] = []
    real_update = evol_flow.update_progress_artifact

    def recording_update(artifact_id, progress, description=None):
        updates.append((progress, description))
        return real_update(artifact_id, progress, description=description)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evol_flow, "update_progress_artifact", recording_update)
        state = evol_flow.evol_instruct(config, return_state=True)
    assert state.is_completed()
    artifacts, logs, task_runs = asyncio.run(_run_records(state.state_details.flow_run_id, "monitor-run-", 1))
    return MonitoredRun(seeds, config, state, updates, {a.key: a for a in artifacts}, logs, task_runs)


def test_flow_publishes_progress_per_shard_per_run_keys_and_the_low_evolution_warning(monitored):
    updates = monitored.updates
    # round 1 first starts its engine (one update when it is ready); then one update per shard, 4 shards a round;
    # the percent counts rows, those of the shards still running included, so it only grows within a round
    shards_done = [re.match(r"round (\d): (\d)/4 shards", d).groups() for _, d in updates]
    assert shards_done == [("1", "0"), ("1", "1"), ("1", "2"), ("1", "3"), ("1", "4"),
                           ("2", "1"), ("2", "2"), ("2", "3"), ("2", "4")]
    for percents in ([p for p, _ in updates[:5]], [p for p, _ in updates[5:]]):
        assert percents == sorted(percents) and percents[-1] == 100.0
    assert updates[0][0] == 0.0
    # shards pass 8 and 9 rows; the round's dedup then drops 2 (6 and 7 evolved)
    assert updates[4][1].startswith("round 1: 4/4 shards, 20/20 rows, 8 passed elimination")
    assert updates[8][1].startswith("round 2: 4/4 shards, 20/20 rows, 9 passed elimination")

    by_key = monitored.artifacts
    assert set(by_key) == {"monitor-run-round-1", "monitor-run-round-2", "monitor-run-round-1-progress",
                           "monitor-run-round-2-progress", "monitor-run-round-1-samples",
                           "monitor-run-round-2-samples", "monitor-run-round-1-rows", "monitor-run-round-2-rows",
                           "monitor-run-summary"}
    assert by_key["monitor-run-round-1-progress"].data == 100.0
    assert by_key["monitor-run-round-1-progress"].description.startswith("round 1: 4/4 shards, 20/20 rows, 8 passed")
    messages = [log.message for log in monitored.logs]
    shard_lines = sorted(m for m in messages if re.match(r"round \d shard \d/4: 5 rows, \d evolved", m))
    assert len(shard_lines) == 8 and all("tok/s" in m for m in shard_lines), shard_lines
    assert "round 1 shard 2/4: 5 rows, 0 evolved, rejected equality_unparseable=1, no_information_gain=1, " \
           "scaffolding_copied=1, sorry_short_response=2; " in " ".join(shard_lines)
    warnings = [(log.level, log.message) for log in monitored.logs if "evolved only" in log.message]
    assert warnings == [(30, "round 1 evolved only 6 of 20 rows (30.0%, below 32%); top rejections: "
                             "empty_evolution=4, duplicate=2, scaffolding_copied=2. Check the model, the prompt "
                             "pack and the elimination settings")]


def test_the_engine_start_is_one_step_before_the_first_rounds_shards(monitored):
    starts = [t for t in monitored.task_runs if t.name.startswith("start-engines")]
    assert [(t.name, t.state.type.value) for t in starts] == [("start-engines-r1", "COMPLETED")]
    first_shard = min(t.start_time for t in monitored.task_runs if t.name.startswith("evolve-r1-"))
    assert starts[0].end_time <= first_shard
    messages = [log.message for log in monitored.logs]
    assert [m for m in messages if "starting scripted" in m] == ["round 1: starting scripted Monitor_Run"]
    ready = [m for m in messages if "ready in" in m]
    assert len(ready) == 1 and re.fullmatch(r"round 1: backend scripted Monitor_Run ready in \d+\.\d s", ready[0])
    # the progress shows the start: the artifact's description while starting, then how long it took
    assert re.fullmatch(r"round 1: 0/4 shards, .*; backend scripted Monitor_Run ready in \d+\.\d s",
                        monitored.updates[0][1])
    assert monitored.artifacts["monitor-run-round-2-progress"].description.count("ready in") == 0


def test_a_rerun_that_reuses_every_shard_starts_no_engine(monitored):
    state = evol_flow.evol_instruct(monitored.config, return_state=True)
    assert state.is_completed() and all(r.reused for r in state.result().rounds)
    _, logs, task_runs = asyncio.run(_run_records(state.state_details.flow_run_id, "monitor-run-", 0))
    assert len([t for t in task_runs if t.name.startswith("evolve-r")]) == 8
    assert [t.name for t in task_runs if t.name.startswith("start-engines")] == []
    assert not [log.message for log in logs if "starting scripted" in log.message]


ANSWER = ("A full answer: point0 point1 point2 point3 point4 point5 point6 point7 … int24 point25 point26 point27 "
          "point28 point29.")
MORE = "… y which one you would recommend to a beginner."  # the end of every evolution's added sentence


def test_round_samples_artifact_holds_evolved_and_rejected_rows_with_their_parents(monitored):
    """Round 1's sample: the first 5 evolved rows by id, then one rejected row per reason (reasons in order)."""
    def row(status, operation, parent, evolution, response, reason=""):
        return {"status": status, "reason": reason, "operation": operation, "parent": parent,
                "evolution": evolution, "response": response}

    farmer = ("A farmer must cross a river with a wolf, a goat, and a cabbage, taking one at a time. How can he do "
              "it safely?")
    bloops = ("If all bloops are razzies and all razzies are lazzies, are all bloops definitely lazzies? Explain "
              "briefly.")
    photo = "Rewrite the following explanation so that a ten-year-old could easily u … "
    expected = [
        row("evolved", "concretizing", "What is the next number in the sequence 2, 6, 12, 20, 30, and why?",
            f"What is the next number in the sequence 2, 6, 12, 20, 30, and why? Addi {MORE}", ANSWER),
        row("evolved", "increase_reasoning_steps", farmer,
            f"A farmer must cross a river with a wolf, a goat, and a cabbage, taking {MORE}", ANSWER),
        row("evolved", "in_breadth", "Alice is taller than Ben, and Ben is taller than Carla. Who is the shortest of "
            "the three?", f"Alice is taller than Ben, and Ben is taller than Carla. Who is the shor {MORE}", ANSWER),
        row("evolved", "add_constraints", bloops,
            f"If all bloops are razzies and all razzies are lazzies, are all bloops d {MORE}", ANSWER),
        row("evolved", "add_constraints", "Write a haiku about a lighthouse.",
            f"Write a haiku about a lighthouse. Additionally, compare two alternative {MORE}", ANSWER),
        row("rejected", "complicate_input", "Write an out-of-office auto-reply for someone on vacation until June 10.",
            farmer.upper(), ANSWER, "duplicate"),
        row("rejected", "in_breadth", "Rewrite this sentence in the passive voice: 'The committee approved the new "
            "budget on Monday.'", "", "", "empty_evolution"),
        row("rejected", "add_constraints", "Create a catchy slogan for a community bike-sharing program.",
            f"Create a catchy slogan for a community bike-sharing program. Additional {MORE}", ANSWER,
            "equality_unparseable"),
        row("rejected", "deepening", f"{photo}glucose while releasing oxygen as a byproduct.",
            f"{photo}hile releasing oxygen as a byproduct. and then", "", "evolution_truncated"),
        row("rejected", "increase_reasoning_steps", "Correct the grammar and spelling in this sentence: 'Their going "
            "too the libary tomorow to return there books.'", "", "", "llm_error"),
    ]
    # the table: short cells (it fits a 1280-pixel window); each row in full in the linked markdown artifact
    artifact = monitored.artifacts["monitor-run-round-1-samples"]
    assert artifact.type == "table"
    assert re.search(r"; each row in full: \[monitor-run-round-1-rows\]\(http://127\.0\.0\.1:\d+/artifacts/key/"
                     r"monitor-run-round-1-rows\)$", artifact.description), artifact.description
    table = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert table == [{"#": n, "outcome": e["reason"] or "evolved", "operation": e["operation"],
                      **{k: trim(e[k], 16) for k in ("parent", "evolution")}}
                     for n, e in enumerate(expected, 1)]
    assert max(len(r[k]) for r in table for k in ("parent", "evolution")) == 16  # the response: in the full row
    full = monitored.artifacts["monitor-run-round-1-rows"].data
    sections = re.split(r"^## \d+\. ", full, flags=re.M)[1:]
    blocks = [(sec.splitlines()[0], re.findall(r"^(`{3,})text\n(.*?)\n\1$", sec, flags=re.M | re.S))
              for sec in sections]
    assert [(heading, [trim(text, 120) for _, text in found]) for heading, found in blocks] == \
        [(f"{e['reason'] or 'evolved'} · {e['operation']}", [e["parent"], e["evolution"], e["response"]])
         for e in expected]
    round2 = monitored.artifacts["monitor-run-round-2-samples"].data
    round2 = json.loads(round2) if isinstance(round2, str) else round2
    assert [r["outcome"] for r in round2] == ["evolved"] * 5 + [
        "duplicate", "empty_evolution", "equality_unparseable", "evolution_truncated", "no_information_gain"]


def test_plots_are_pngs_next_to_the_card_which_shows_them_and_so_does_the_summary(monitored):
    files = monitored.state.result().export.files
    card_dir = Path(files["card"]).parent
    card = Path(files["card"]).read_text()
    summary = monitored.artifacts["monitor-run-summary"].data
    for name, title in PLOTS.items():
        path = card_dir / "plots" / name
        assert files[f"plot_{name.removesuffix('.png')}"] == str(path)
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 300 and height > 200, (name, width, height)
        assert f"![{title}](plots/{name})" in card
        # the UI's Markdown renderer shows a data: image as is: the summary embeds the file's exact bytes
        assert f"![{title}](data:image/png;base64,{base64.b64encode(data).decode()})" in summary
    assert "| seeds | 13.4 |\n| round 1 | 31 |\n| round 2 | 44.1 |" in card
