"""A retried deployment run that takes its folder over from its own dead attempt is never marked Crashed.

As a worker sees it: the deployment's flow (``evol-run``, with ``evol-instruct`` as its subflow) is SIGKILLed
inside a shard, the worker marks the top flow run Crashed, someone presses Retry. The retry keeps the flow run
ids (Prefect attaches ``evol-instruct`` again to the subflow run the dead attempt left Running), finds the dead
attempt's lease and recovers: only the dead attempt's round and its task runs turn Crashed.

On a server of its own: the runs here are what recovery finds, with no crash automation marking the dead attempt's
flow runs at a time of its own (tests/test_crash_retry.py has the automation).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pytest

from tasks.runtime.recovery import flow_run_tree, root_flow_run_id
from tests.test_crash_recovery import BIN, write_config

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parent.parent
RUN_DEPLOYMENT_FLOW = "import sys; from flows.evol_run import evol_run; evol_run(config_uri=sys.argv[1])"


def state_types(client, flow_run_id: UUID) -> list[str]:
    """Every state a flow run took, in order."""
    return [s.type.value for s in sorted(client.read_flow_run_states(flow_run_id), key=lambda s: s.timestamp)]


def test_a_retry_taking_over_from_its_dead_attempt_is_never_marked_crashed(own_prefect_server, tmp_path):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.states import Crashed

    env = {**os.environ, "PREFECT_API_URL": own_prefect_server}
    root = tmp_path / "runs"
    config = write_config(tmp_path, root)
    trace = tmp_path / "kill.txt"
    kill_env = {**env, "EVOL_FAULT_KILL_AT": "14", "EVOL_FAULT_TRACE": str(trace)}
    killed = subprocess.run([sys.executable, "-c", RUN_DEPLOYMENT_FLOW, str(config)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=kill_env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "round=1/candidates" in trace.read_text(), trace.read_text()  # killed inside a shard task of round 1
    inner = UUID(json.loads((root / "crash" / "_lease.json").read_text())["flow_run_id"])

    with SyncPrefectClient(api=own_prefect_server) as client:
        top = root_flow_run_id(client, inner)
        before = flow_run_tree(client, top)
        assert [(r.name, r.state.type.value) for r in before][2:] == [("round-1", "RUNNING")]
        assert [r.id for r in before][:2] == [top, inner] and before[1].state.type.value == "RUNNING"
        client.set_flow_run_state(top, Crashed(message="the worker saw its process exit with -9"), force=True)

        retry = subprocess.run([str(BIN / "prefect"), "flow-run", "retry", str(top), "--entrypoint",
                                "flows/evol_run.py:evol_run"], cwd=ROOT, capture_output=True, text=True, env=env,
                               timeout=300)
        output = retry.stdout + retry.stderr
        assert retry.returncode == 0, output[-3000:]
        assert f"dead run's flow run {inner}: marked 1 flow run(s) and " in output
        assert "Crashed; this run is its retry: its 2 live flow run(s) go on" in output

        after = flow_run_tree(client, top)
        assert [r.id for r in after][:2] == [top, inner]  # the retry is the same flow runs
        assert [r.state.type.value for r in after][:2] == ["COMPLETED", "COMPLETED"]
        rounds = {r.id: (r.name, r.state.type.value) for r in after[2:]}
        assert rounds.pop(before[2].id) == ("round-1", "CRASHED")  # the dead attempt's round
        assert sorted(rounds.values()) == [("round-1", "COMPLETED"), ("round-2", "COMPLETED")]

        top_states = state_types(client, top)
        retried_at = len(top_states) - 1 - top_states[::-1].index("SCHEDULED")  # the retry's AwaitingRetry
        assert top_states[:retried_at].count("CRASHED") == 1  # the worker's, before the retry
        assert "CRASHED" not in top_states[retried_at:] and top_states[-1] == "COMPLETED"
        assert "CRASHED" not in state_types(client, inner)  # the dead attempt's subflow ran on in its retry
        # the top-level run shows an artifact of its own, linking to those of its subflows
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        (links,) = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[top])))
        assert links.key == "crash-run" and "crash-summary" in links.data and "crash-round-2-samples" in links.data
    assert not (root / "crash" / "_lease.json").exists()
