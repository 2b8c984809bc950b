"""Live monitoring: per-run artifact keys, a log line and a progress update per shard, the low-evolution warning."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)

import flows.evol_instruct as evol_flow
from storage import ShardRef
from tasks.context import content_key
from tasks.evolve import ShardSummary
from tasks.llm.scripted import ScriptedBackend, register_scripted_backend
from tasks.monitor import RoundProgress, artifact_key, flow_run_name_for, low_evolution_warning, shard_log_line
from tasks.round import RoundSummary
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
        "round 1: 2/4 shards, 20 rows, 16 passed elimination, 50.0 tok/s, 10 s, ETA 10 s"


def test_low_evolution_warning_below_the_share_only():
    assert low_evolution_warning(round_summary(100, 5), 0.05) is None
    warning = low_evolution_warning(round_summary(100, 4), 0.05)
    assert warning.startswith("round 2 evolved only 4 of 100 rows (4.0%, below 5%); top rejections: "
                              "empty_evolution=93, duplicate=3")
    assert low_evolution_warning(round_summary(0, 0), 0.05) is None


def test_min_evolved_share_is_in_no_stage_key(tmp_path):
    _, low = make_config(tmp_path, str(tmp_path / "r"), orchestration={"min_evolved_share": 0.5})
    _, default = make_config(tmp_path, str(tmp_path / "r"))
    from tasks.context import EvolveSpec

    assert content_key(EvolveSpec.of(low).model_dump()) == content_key(EvolveSpec.of(default).model_dump())
    assert low.model_dump(exclude={"orchestration"}) == default.model_dump(exclude={"orchestration"})


async def _artifacts_and_logs(key_prefix: str, flow_run_id):
    async with get_client() as client:
        artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(like_=f"{key_prefix}%")))
        rounds = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        ids = [flow_run_id, *(r.id for r in rounds)]
        for _ in range(60):  # logs reach the API in batches
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
            if sum(" shard " in log.message for log in logs) >= 8:
                break
            await asyncio.sleep(0.5)
        return artifacts, logs


def test_flow_publishes_progress_per_shard_per_run_keys_and_the_low_evolution_warning(prefect_harness, tmp_path,
                                                                                       monkeypatch):
    seeds, config = make_config(tmp_path, str(tmp_path / "runs"), name="Monitor_Run",
                                orchestration={"retries": 0, "retry_delay_s": 0, "min_evolved_share": 0.32})
    register_scripted_backend(ScriptedBackend(PlannedScript(seeds)), "Monitor_Run")
    updates: list[tuple[float, str]] = []
    real_update = evol_flow.update_progress_artifact

    def recording_update(artifact_id, progress, description=None):
        updates.append((progress, description))
        return real_update(artifact_id, progress, description=description)

    monkeypatch.setattr(evol_flow, "update_progress_artifact", recording_update)
    state = evol_flow.evol_instruct(config, return_state=True)
    assert state.is_completed()
    # 20 seeds in shards of 5: 4 shards per round, one update each, in the order they finished
    assert [p for p, _ in updates] == [25.0, 50.0, 75.0, 100.0] * 2
    # shards pass 8 and 9 rows; the round's dedup then drops 2 (6 and 7 evolved)
    assert updates[3][1].startswith("round 1: 4/4 shards, 20 rows, 8 passed elimination")
    assert updates[7][1].startswith("round 2: 4/4 shards, 20 rows, 9 passed elimination")

    artifacts, logs = asyncio.run(_artifacts_and_logs("monitor-run-", state.state_details.flow_run_id))
    by_key = {a.key: a for a in artifacts}
    assert set(by_key) == {"monitor-run-round-1", "monitor-run-round-2", "monitor-run-round-1-progress",
                           "monitor-run-round-2-progress", "monitor-run-summary"}
    assert by_key["monitor-run-round-1-progress"].data == 100.0
    assert by_key["monitor-run-round-1-progress"].description.startswith("round 1: 4/4 shards, 20 rows, 8 passed")
    messages = [log.message for log in logs]
    shard_lines = sorted(m for m in messages if re.match(r"round \d shard \d/4: 5 rows, \d evolved", m))
    assert len(shard_lines) == 8 and all("tok/s" in m for m in shard_lines), shard_lines
    assert "round 1 shard 2/4: 5 rows, 0 evolved, rejected equality_unparseable=1, no_information_gain=1, " \
           "scaffolding_copied=1, sorry_short_response=2; " in " ".join(shard_lines)
    warnings = [(log.level, log.message) for log in logs if "evolved only" in log.message]
    assert warnings == [(30, "round 1 evolved only 6 of 20 rows (30.0%, below 32%); top rejections: "
                             "empty_evolution=4, duplicate=2, scaffolding_copied=2. Check the model, the prompt "
                             "pack and the elimination settings")]
