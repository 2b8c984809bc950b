"""A killed ``evol run`` on a server is marked Crashed by the server itself (the crash automation `evol run` put there,
fed by the run's heartbeats), nobody rerunning anything; then a retry from the API, as the UI's Retry button sends
it, runs on a process worker, reuses the shards the killed run committed and exports what a clean run exports."""

from __future__ import annotations

import json
import os
import signal
import time
from uuid import UUID

import pytest

from tasks.runtime.crash_detection import CRASH_MESSAGE
from tasks.runtime.recovery import UNFINISHED, flow_run_tree
from tests.held_run import held_config, held_evol_run, task_runs_of, wait_for_running_shard, wait_until
from tests.services import BIN, ROOT, background
from tests.test_crash_recovery import EXPORTS, evol_run

pytestmark = [pytest.mark.server, pytest.mark.waits]  # about 90 s of it waits for the server to see the kill


def test_a_killed_run_is_marked_crashed_by_the_server_and_a_retry_from_the_api_reuses_its_shards(prefect_server,
                                                                                                  tmp_path):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import StateType
    from prefect.states import State

    from storage import list_committed_shards

    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    clean = evol_run(held_config(tmp_path, tmp_path / "clean"), {"PREFECT_API_URL": prefect_server})
    assert clean.returncode == 0, clean.stderr[-3000:]

    root = tmp_path / "runs"
    run = root / "crash"
    with SyncPrefectClient(api=prefect_server) as client:
        with held_evol_run(held_config(tmp_path, root), run, env, tmp_path / "killed.out") as proc:
            top = UUID(json.loads((run / "_lease.json").read_text())["flow_run_id"])
            in_flight = wait_for_running_shard(client, top)
            committed = list_committed_shards(str(run / "round=1" / "candidates"))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = time.monotonic()
        assert len(committed) == 1  # the held run was inside round 1's second shard

        flow_run = client.read_flow_run(top)
        assert client.read_deployment(flow_run.deployment_id).name == "cli"  # a run the UI can retry
        dead = flow_run_tree(client, top)
        assert [r.state.type.value for r in dead] == ["RUNNING", "RUNNING"]  # the run and its round 1

        def all_crashed() -> bool:
            return all(client.read_flow_run(r.id).state.type == StateType.CRASHED for r in dead)

        wait_until(all_crashed, 300, "the killed run's flow runs Crashed")
        crashed_after = time.monotonic() - killed_at
        print(f"marked Crashed by the server {crashed_after:.0f} s after the kill")
        assert crashed_after < 180  # the target is 120 s (60 to 95 s by design); a busy machine gets slack
        assert all(client.read_flow_run(r.id).state.message == CRASH_MESSAGE for r in dead)
        # the shard in flight: its task run turns Crashed on the server too (evol server's sweep, every 20 s)
        swept = wait_until(lambda: client.read_task_run(in_flight).state.type == StateType.CRASHED, 120,
                           "the killed run's task run in flight Crashed")
        print(f"its task run in flight Crashed {swept:.0f} s after its flow runs")
        assert client.read_task_run(in_flight).state.message.startswith("its flow run crashed (its process died)")

        worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "2",
                      "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        with background([str(BIN / "prefect"), "worker", "start", "--pool", flow_run.work_pool_name], worker_env,
                        tmp_path / "worker.log", cwd=tmp_path):
            retry = client.set_flow_run_state(top, State(type=StateType.SCHEDULED, name="AwaitingRetry",
                                                         message="Retry from the UI"), force=False)
            assert retry.status.value == "ACCEPT", retry.details
            wait_until(lambda: client.read_flow_run(top).state.is_final(), 400, "the retry")
        worker_log = (tmp_path / "worker.log").read_text()
        assert client.read_flow_run(top).state.type == StateType.COMPLETED, worker_log[-3000:]
        after = flow_run_tree(client, top)
        rounds = {r.id: (r.name, r.state.type.value) for r in after[1:]}
        assert rounds.pop(dead[1].id) == ("round-1", "CRASHED")  # the dead attempt's round stays as it was
        assert sorted(rounds.values()) == [("round-1", "COMPLETED"), ("round-2", "COMPLETED")]
        task_runs = task_runs_of(client, [r.id for r in after])
        assert not [t for t in task_runs if t.state is None or t.state.type in UNFINISHED]
        # the shard in flight stays as the server marked it: the retry's recovery changes only what is unfinished
        lost = client.read_task_run(in_flight)
        assert lost.state.type == StateType.CRASHED
        assert lost.state.message.startswith("its flow run crashed (its process died)")

    summary = json.loads((run / "round=1" / "_round.json").read_text())["summary"]
    assert (summary["shards"], summary["shards_reused"]) == (10, 1)  # the killed run's committed shard
    for name in EXPORTS:
        assert (run / "export" / name).read_bytes() == (tmp_path / "clean" / "crash" / "export" / name).read_bytes()
    assert not (run / "_lease.json").exists()
