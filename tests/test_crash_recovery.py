"""Killed runs lose nothing: SIGKILL at commit points all through a run, rerun, and get the same export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.flow_script import load_seeds

pytestmark = pytest.mark.server
BIN = Path(sys.executable).parent
EXPORTS = ("data.parquet", "alpaca.json", "messages.jsonl", "README.md")


def write_config(tmp_path: Path, root: Path) -> Path:
    seeds = tmp_path / "seeds.jsonl"
    if not seeds.exists():
        seeds.write_text("\n".join(json.dumps(s) for s in load_seeds()) + "\n")
    config = {"name": "crash", "seeds": str(seeds), "output_root": str(root), "rounds": 2, "shard_size": 10,
              "random_seed": 5, "llm": {"backend": "scripted", "model": "demo"},
              "orchestration": {"retries": 0, "retry_delay_s": 0}}
    path = tmp_path / f"{root.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def evol_run(config: Path, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``evol run CONFIG`` to its end; one still running after ``timeout`` s fails the test with its threads' stacks
    (faulthandler, on SIGABRT) and its output."""
    cmd = [str(BIN / "evol"), "run", str(config), "--no-progress", *args]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONFAULTHANDLER": "1", **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"evol run still running after {timeout} s:\n{out[-3000:]}\n{err[-12000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith(".tmp") or p.name == "_lease.json"]


def test_sigkill_at_commit_points_through_a_whole_run_then_rerun_gives_the_same_export(prefect_server, tmp_path):
    env = {"PREFECT_API_URL": prefect_server}
    clean = evol_run(write_config(tmp_path, tmp_path / "clean"), env)
    assert clean.returncode == 0, clean.stderr[-3000:]

    root = tmp_path / "killed"
    config = write_config(tmp_path, root)
    trace = tmp_path / "kills.txt"
    kills = 0
    for attempt in range(60):
        # process i dies at its (i + 2)-th commit point and the next resumes from what the dead ones committed,
        # so the kills walk through ingest, both rounds (also inside a round's finish), mix and export
        proc = evol_run(config, {**env, "EVOL_FAULT_KILL_AT": str(attempt + 2), "EVOL_FAULT_TRACE": str(trace)})
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        kills += 1
    else:
        pytest.fail("the run never finished")
    # By then the last stages are done before the kill point comes: redo them and kill inside them too (round 1's
    # candidates, which the walk above may pass in one process: it starts with the estimate, config.json, ...).
    redos = [(("--recompute", "round=1"), (3, 6))] + [(("--recompute", "mix", "--recompute", "export"),
                                                      (3, 5, 7, 9, 11, 13))]
    for redo, points in redos:
        for point in points:
            proc = evol_run(config, {**env, "EVOL_FAULT_KILL_AT": str(point), "EVOL_FAULT_TRACE": str(trace)},
                            *redo)
            assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
            kills += 1
    assert evol_run(config, env).returncode == 0
    assert kills >= 20
    points = trace.read_text().splitlines()
    assert len(points) == kills
    spread = {stage for stage in ("round=0/", "round=1/candidates", "round=1/pool", "round=2/", "final/", "export/")
              if any(stage in p for p in points)}
    assert len(spread) == 6, points
    for name in EXPORTS:
        assert (root / "crash" / "export" / name).read_bytes() == \
            (tmp_path / "clean" / "crash" / "export" / name).read_bytes(), name
    assert leftovers(root) == [] and leftovers(tmp_path / "clean") == []


def test_a_killed_run_takes_its_local_prefect_api_with_it(tmp_path):
    config = write_config(tmp_path, tmp_path / "runs")
    env = {**os.environ, "PREFECT_API_URL": "", "PREFECT_HOME": str(tmp_path / "home")}
    env.pop("PREFECT_API_URL")
    proc = subprocess.Popen([str(BIN / "evol"), "run", str(config), "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        servers: list[psutil.Process] = []
        while not servers and time.time() < deadline:
            servers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                       if "uvicorn" in " ".join(c.cmdline())]
            time.sleep(0.2)
        assert servers, "the run started no local Prefect API"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        gone, alive = psutil.wait_procs(servers, timeout=20)
        assert alive == [] and len(gone) == len(servers)
    finally:
        if proc.poll() is None:
            proc.kill()
