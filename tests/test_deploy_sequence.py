"""The README's deployment sequence, command by command, against a real server and a real process worker."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import time
from datetime import timedelta

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.services import BIN, ROOT, assert_export, background, pause_schedules, prefect_server

pytestmark = pytest.mark.server

SEQUENCE = [
    "export PREFECT_API_URL=http://127.0.0.1:4200/api",
    "evol server --host 127.0.0.1 --port 4200",
    "evol deploy",
    "prefect worker start --pool default --limit 1",
    "prefect deployment ls",
    "prefect flow-run ls --state SCHEDULED",
    "prefect deployment run evol-run/nightly --param config_uri=configs/demo.yaml --watch",
]


def readme_sequence() -> list[str]:
    """The commands of the README's block under "Deployments and schedules", comments dropped."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Deployments and schedules", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines() if line.strip()]


def command(line: str, port: int, config_uri: str) -> list[str]:
    """A README line as this test runs it: its own port, the venv's executables, a small config."""
    args = [a.replace(":4200", f":{port}").replace("config_uri=configs/demo.yaml", f"config_uri={config_uri}")
            for a in shlex.split(line)]
    args = [str(port) if a == "4200" else a for a in args]
    return [str(BIN / args[0]), *args[1:]]


async def scheduled_runs(api_url: str, deployment: str) -> list:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    async with PrefectClient(api=api_url) as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.SCHEDULED]))))


def test_readme_deployment_sequence(tmp_path):
    assert readme_sequence() == SEQUENCE
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({
        "name": "deployed", "seeds": str(ROOT / "data/demo_seeds.jsonl"), "output_root": str(tmp_path / "runs"),
        "rounds": 1, "shard_size": 48, "llm": {"backend": "scripted", "model": "demo"}}))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PREFECT_WORKER_QUERY_SECONDS": "2", "COLUMNS": "250"}
    name, _, value = SEQUENCE[0].removeprefix("export ").partition("=")
    env[name] = value.replace(":4200", f":{port}")
    assert env["PREFECT_API_URL"] == api_url
    steps = [[]] + [command(line, port, str(config)) for line in SEQUENCE[1:]]

    def run(cmd: list[str], timeout: float = 300) -> str:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{shlex.join(cmd)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        return done.stdout

    with prefect_server(steps[1], env, api_url, tmp_path / "server.log"):
        # the UI asks the API where PREFECT_API_URL says: its own port (else "Oops. Something went wrong")
        assert httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=10).json()["api_url"] == api_url
        out = run(steps[2])
        assert "work pool default: created (process)" in out and "work pool gpu: created (process)" in out
        listing = run(steps[4])
        assert "evol-run/nightly" in listing and "train/gpu" in listing
        deadline = time.time() + 90
        while not (runs := asyncio.run(scheduled_runs(api_url, "nightly"))) and time.time() < deadline:
            time.sleep(2)
        # the scheduler's work: the next three nights at 02:00 UTC
        assert len(runs) == 3, [r.name for r in runs]
        starts = sorted(r.expected_start_time for r in runs)
        assert all((s.hour, s.minute) == (2, 0) for s in starts)
        assert [b - a for a, b in zip(starts, starts[1:], strict=False)] == [timedelta(days=1)] * 2
        assert all(r.auto_scheduled for r in runs)
        scheduled = run(steps[5])
        assert sum(r.name in scheduled for r in runs) == 3
        # The worker starts after the listing (the README starts it before), and the nights are paused first: a
        # test that runs at 02:00 UTC would otherwise see tonight's run leave the listing and run on its worker.
        pause_schedules(api_url, "evol-run/nightly")
        assert asyncio.run(scheduled_runs(api_url, "nightly")) == []
        with background(steps[3], env, tmp_path / "worker.log", cwd=tmp_path) as worker:
            watched = run(steps[6], timeout=400)
            assert "Completed" in watched, watched[-2000:]
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
    assert_export(str(tmp_path / "runs"), seeds=96)
    assert "set_code_directory" in (tmp_path / "worker.log").read_text()
