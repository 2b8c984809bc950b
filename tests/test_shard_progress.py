"""Progress inside a shard: rows, rows/s, tok/s and ETA while rows stream, in the round's progress artifact and
the shard's log, against a real Prefect server. The responder holds each row's evolution at a gate that the test
opens 50 rows at a time, each time the progress shows the rows let through so far: no sleeps, no timing."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import deque

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId, LogFilter, LogFilterFlowRunId

import flows.evol_instruct as evol_flow
from tasks.core.config import parse_run_config
from tasks.evolve.progress import ShardProgress
from tasks.llm.scripted import (
    ScriptedBackend,
    demo_responder,
    is_evolution_prompt,
    last_user_text,
    register_scripted_backend,
)
from tasks.runtime.cancel import drain_prefect_workers
from tests.services import prefect_api

ROWS, STEP = 200, 50


class Gate:
    """Lets ``n`` more waiting rows through each time ``open(n)`` is called, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._permits = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.opened = 0

    async def passage(self) -> None:
        with self._lock:
            if self._permits:
                self._permits -= 1
                return
            future = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
        await future

    def open(self, n: int) -> None:
        with self._lock:
            self.opened += n
            self._permits += n
            while self._permits and self._waiters:
                future = self._waiters.popleft()
                self._permits -= 1
                future.get_loop().call_soon_threadsafe(future.set_result, None)


def gated_responder(gate: Gate):
    """The demo model, each evolution held at the gate (answers and judgements are not)."""
    def respond(conversation, params):
        answer = demo_responder(conversation, params)
        if not is_evolution_prompt(last_user_text(conversation)):
            return answer

        async def held() -> str:
            await gate.passage()
            return answer
        return held()
    return respond


def test_shard_progress_line_every_tenth_of_the_rows_or_every_few_seconds():
    progress = ShardProgress(1, 2, total=200, every_s=5.0, started=0.0)
    lines = [progress.record({"status": "evolved", "completion_tokens": 10}, now=0.1 * (i + 1)) for i in range(30)]
    assert [i + 1 for i, line in enumerate(lines) if line] == [20]
    assert lines[19] == "round 1 shard 3: 20/200 rows, 20 passed, 10.0 rows/s, 100.0 tok/s, ETA 18 s"
    assert progress.record({"status": "rejected", "completion_tokens": 0}, now=7.1) == \
        "round 1 shard 3: 31/200 rows, 30 passed, 4.4 rows/s, 42.3 tok/s, ETA 39 s"  # 5 s after the last line
    for _ in range(31, 199):
        progress.record({"status": "rejected"}, now=7.2)
    assert progress.record({"status": "rejected"}, now=100.0) is None  # the last row: the summary line says it
    assert progress.snapshot() == (200, 30, 300)


def seeds_file(tmp_path):
    import json

    path = tmp_path / "seeds.jsonl"
    path.write_text("\n".join(json.dumps({"instruction": f"Explain in a short paragraph why the number {i} is "
                                                         f"interesting to a curious student of arithmetic."})
                              for i in range(ROWS)) + "\n")
    return path


def test_a_slow_shard_shows_its_rows_in_the_progress_artifact_and_its_log_before_it_finishes(prefect_server,
                                                                                          tmp_path):
    gate = Gate()
    register_scripted_backend(ScriptedBackend(gated_responder(gate)), "gated")
    config = parse_run_config({
        "name": "gated", "seeds": str(seeds_file(tmp_path)), "output_root": str(tmp_path / "runs"), "rounds": 1,
        "shard_size": ROWS, "llm": {"backend": "scripted", "model": "gated"},
        "orchestration": {"retries": 0, "retry_delay_s": 0, "progress_interval_s": 0.2}})
    seen: list[tuple[float, str, str]] = []  # progress sent, description sent, description the server then held
    real_update = evol_flow.update_progress_artifact

    def recording_update(artifact_id, progress, description=None):
        real_update(artifact_id, progress, description=description)
        with get_client(sync_client=True) as client:
            (held,) = client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[artifact_id])))
        seen.append((progress, description, held.description))
        rows = int(re.search(r"(\d+)/200 rows", description).group(1))
        if rows == gate.opened < ROWS:  # every row let through is done: let the next ones through
            gate.open(STEP)

    gate.open(STEP)
    with prefect_api(prefect_server), pytest.MonkeyPatch.context() as mp:
        mp.setattr(evol_flow, "update_progress_artifact", recording_update)
        state = evol_flow.evol_instruct(config, return_state=True)
        drain_prefect_workers(60.0)  # this server's logs and events now, before they are read
        assert state.is_completed()
        logs = asyncio.run(shard_logs(state.state_details.flow_run_id))

    assert all(sent == held for _, sent, held in seen)  # the server held each update as it was sent
    during = [(p, d) for p, d, _ in seen if d.startswith("round 1: 0/1 shards")]
    rows_during = [int(re.search(r"(\d+)/200 rows", d).group(1)) for _, d in during]
    # the shard still running each time (a tick may also catch all 200 rows done while the shard commits)
    assert [r for r in rows_during if r % STEP == 0 and 0 < r < ROWS] == [50, 100, 150]
    assert rows_during == sorted(rows_during) and [p for p, _ in during] == [r / 2 for r in rows_during]
    rated = [d for _, d in during if not d.startswith("round 1: 0/1 shards, 0/200")]
    assert rated and all(re.search(r" rows/s, [\d.]+ tok/s, \d+ s, ETA \d+ s; backend scripted gated ready in", d)
                         for d in rated)
    assert seen[-1][1].startswith("round 1: 1/1 shards, 200/200 rows, ") and seen[-1][0] == 100.0
    lines = [int(m.group(1)) for m in (re.match(r"round 1 shard 1: (\d+)/200 rows, \d+ passed, [\d.]+ rows/s, "
                                                r"[\d.]+ tok/s, ETA \d+ s$", log) for log in logs) if m]
    assert len(lines) >= 3 and lines == sorted(lines) and max(lines) < ROWS
    assert logs.index(next(m for m in logs if m.startswith("round 1 shard 1/1: 200 rows"))) > \
        logs.index(next(m for m in logs if m.startswith(f"round 1 shard 1: {lines[2]}/200 rows")))


async def shard_logs(flow_run_id) -> list[str]:
    """The run's log lines (its own and its round's), in order, once the shard's summary line has arrived."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import LogSort

    async with get_client() as client:
        deadline = time.monotonic() + 60
        while True:
            rounds = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
            ids = [flow_run_id, *(r.id for r in rounds)]
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)),
                                          sort=LogSort.TIMESTAMP_ASC)
            messages = [log.message for log in logs]
            if any(m.startswith("round 1 shard 1/1: ") for m in messages) or time.monotonic() > deadline:
                return messages
            await asyncio.sleep(0.2)
