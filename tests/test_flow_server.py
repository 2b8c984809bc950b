"""Against a real `prefect server start` on 127.0.0.1, and with s3:// storage on the moto server."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

pytestmark = pytest.mark.server
BIN = Path(sys.executable).parent


def run_cli(config: dict, tmp_path: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, **extra_env}
    return subprocess.run([str(BIN / "evol"), "run", str(path), "--no-progress"], env=env, capture_output=True,
                          text=True, timeout=600)


async def inspect_server(url: str):
    async with PrefectClient(api=url) as client:
        # the server is shared by the session's tests: this run is the top-level one whose config is "srv"
        (parent,) = [f for f in await client.read_flow_runs(limit=200)
                     if f.parent_task_run_id is None and (f.parameters.get("config") or {}).get("name") == "srv"]
        rounds = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])))
        ids = [parent.id] + [r.id for r in rounds]
        task_runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": ids}), limit=200)
        artifacts = [a for a in await client.read_artifacts(limit=200) if a.flow_run_id in ids]
        return parent, rounds, task_runs, artifacts


def test_run_against_a_real_prefect_server(prefect_server, tmp_path):
    config = {"name": "srv", "seeds": str(Path("data/demo_seeds.jsonl").resolve()),
              "output_root": str(tmp_path / "runs"), "rounds": 2, "shard_size": 40,
              "llm": {"backend": "scripted", "model": "demo"}}
    done = run_cli(config, tmp_path, {"PREFECT_API_URL": prefect_server})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert prefect_server in done.stdout
    parent, rounds, task_runs, artifacts = asyncio.run(inspect_server(prefect_server))
    assert parent.state.is_completed()
    assert re.fullmatch(r"srv-\d{4}-\d\d-\d\d-\d{6}", parent.name)
    assert sorted(r.name for r in rounds) == ["round-1", "round-2"]
    evolve_runs = sorted(t.name for t in task_runs if t.name.startswith("evolve-"))
    assert evolve_runs == [f"evolve-r{k}-s{i:05d}" for k in (1, 2) for i in range(3)]  # 96 seeds / 40
    keys = {a.key for a in artifacts}
    assert {"srv-round-1", "srv-round-2", "srv-round-1-progress", "srv-round-2-progress", "srv-summary"} <= keys
    summary = next(a for a in artifacts if a.key == "srv-summary")
    assert "Rejections by reason" in summary.data and "Mean instruction length" in summary.data
    assert "Seeds: 96 read, 96 accepted.\n" in summary.data and "seeds: 96 read, 96 accepted\n" in done.stdout


def test_full_run_on_s3(s3_bucket, s3_settings, tmp_path):
    from storage import list_committed_shards, resolve

    fs, path = resolve(s3_bucket + "/seeds/demo.jsonl", s3_settings)
    fs.put_file("data/demo_seeds.jsonl", path)
    config = {"name": "s3run", "seeds": s3_bucket + "/seeds/demo.jsonl", "output_root": s3_bucket + "/runs",
              "rounds": 1, "shard_size": 50, "llm": {"backend": "scripted", "model": "demo"}}
    env = {"EVOL_STORAGE__ENDPOINT_URL": s3_settings.endpoint_url, "EVOL_STORAGE__KEY": "testing",
           "EVOL_STORAGE__SECRET": "testing", "PREFECT_API_URL": "", "PREFECT_HOME": str(tmp_path / "ph")}
    done = run_cli(config, tmp_path, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = fs.ls(f"{s3_bucket[5:]}/runs")
    assert len(runs) == 1
    run_uri = "s3://" + runs[0]
    assert len(list_committed_shards(run_uri + "/round=1/evolved", s3_settings)) == 2
    alpaca = fs.cat_file(runs[0] + "/export/alpaca.json")
    assert alpaca.startswith(b"[")
    assert "s3://" in done.stdout
    # the private API stops only after the run's logs and events reached it
    assert "Error logging to API" not in done.stderr and "connection attempts failed" not in done.stderr, done.stderr
