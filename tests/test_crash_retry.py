"""A killed run left Running in Prefect is marked Crashed by the next run of its folder, then retried."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from uuid import UUID

import pytest

from tasks.runtime.recovery import flow_run_tree
from tests.test_crash_recovery import BIN, evol_run, write_config

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parent.parent


def task_runs_of(client, flow_run_ids: list[UUID]) -> list:
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    return client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=flow_run_ids)))


def test_killed_run_is_marked_crashed_by_the_next_run_then_prefect_retry_completes_it(prefect_server, tmp_path):
    from prefect.client.orchestration import SyncPrefectClient

    env = {"PREFECT_API_URL": prefect_server}
    root = tmp_path / "runs"
    config = write_config(tmp_path, root)
    trace = tmp_path / "kill.txt"
    killed = evol_run(config, {**env, "EVOL_FAULT_KILL_AT": "14", "EVOL_FAULT_TRACE": str(trace)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "round=1/candidates" in trace.read_text(), trace.read_text()  # killed inside a shard task of round 1
    lease = json.loads((root / "crash" / "_lease.json").read_text())
    dead = UUID(lease["flow_run_id"])
    assert lease["prefect_api"] == prefect_server

    with SyncPrefectClient(api=prefect_server) as client:
        before = flow_run_tree(client, dead)
        assert [r.state.type.value for r in before] == ["RUNNING", "RUNNING"]  # the run and its round 1

        rerun = evol_run(config, env)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert f"dead run's flow run {dead}: marked 2 flow run(s)" in rerun.stdout + rerun.stderr
        after = flow_run_tree(client, dead)
        assert [r.id for r in after] == [r.id for r in before]
        assert [r.state.type.value for r in after] == ["CRASHED", "CRASHED"]
        assert all(f"pid {lease['pid']} on {lease['host']}" in r.state.message for r in after)
        left = [t for t in task_runs_of(client, [r.id for r in after])
                if t.state is None or t.state.type.value in ("RUNNING", "PENDING", "SCHEDULED")]
        assert left == []

        retry = subprocess.run([str(BIN / "prefect"), "flow-run", "retry", str(dead), "--entrypoint",
                                "flows/evol_instruct.py:evol_instruct"], cwd=ROOT, capture_output=True, text=True,
                               env={**os.environ, **env}, timeout=300)
        assert retry.returncode == 0, retry.stdout[-3000:] + retry.stderr[-3000:]
        retried = flow_run_tree(client, dead)
        assert retried[0].state.type.value == "COMPLETED"
        states = {r.id: r.state.type.value for r in retried[1:]}
        assert states.pop(before[1].id) == "CRASHED"  # the dead attempt's round 1 stays as it was
        assert sorted(states.values()) == ["COMPLETED", "COMPLETED"]  # the retry's rounds 1 and 2
        left = [t for t in task_runs_of(client, [r.id for r in retried])
                if t.state is None or t.state.type.value in ("RUNNING", "PENDING", "SCHEDULED")]
        assert left == []
    assert not (root / "crash" / "_lease.json").exists()
