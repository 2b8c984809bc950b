"""Two overlapping runs of the nightly deployment, on a real server and process worker: the second waits for a
concurrency slot (the deployment's limit of 1, collision strategy ENQUEUE) and both complete, one after the other,
instead of the second failing on the run folder's lease."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import yaml

from tests.services import BIN, ROOT, background, pause_schedules

pytestmark = pytest.mark.server


def test_two_overlapping_deployment_runs_both_complete_one_after_the_other(prefect_server, tmp_path):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.deployments import run_deployment

    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({
        "name": "overlap", "seeds": str(ROOT / "data/demo_seeds.jsonl"), "output_root": str(tmp_path / "runs"),
        "rounds": 1, "shard_size": 48, "llm": {"backend": "scripted", "model": "demo"}}))
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_WORKER_QUERY_SECONDS": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    deploy = subprocess.run([str(BIN / "evol"), "deploy", "--config-uri", str(config)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    pause_schedules(prefect_server, "evol-run/nightly")  # only the two runs below, at 02:00 UTC too

    with SyncPrefectClient(api=prefect_server) as client, \
            background([str(BIN / "prefect"), "worker", "start", "--pool", "default"], env, tmp_path / "worker.log",
                       cwd=tmp_path):
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
            ids = [run_deployment("evol-run/nightly", timeout=0).id for _ in range(2)]
        deadline = time.monotonic() + 400
        while True:
            runs = [client.read_flow_run(i) for i in ids]
            if all(r.state.is_final() for r in runs) or time.monotonic() > deadline:
                break
            time.sleep(1)
        worker_log = (tmp_path / "worker.log").read_text()
        assert [r.state.type.value for r in runs] == ["COMPLETED", "COMPLETED"], worker_log[-3000:]
        histories = [[s.name for s in sorted(client.read_flow_run_states(i), key=lambda s: s.timestamp)] for i in ids]
    first, second = sorted(runs, key=lambda r: r.start_time)
    assert first.end_time <= second.start_time  # one after the other
    assert any("AwaitingConcurrencySlot" in names for names in histories), histories  # the later one queued
    assert "LeaseHeld" not in worker_log
