"""`evol runs` and `evol show`: run folders read back from their lease and markers; the run's log file."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from storage.lease import RunLease
from tasks.reporting.run_index import list_runs, run_card
from tests.test_crash_recovery import BIN, evol_run, write_config


def make_run(root: Path, name: str, rounds: int = 2, rounds_done: int = 0, exported_rows: int | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"rounds": rounds}))
    for k in range(rounds_done + 1):
        (run / f"round={k}").mkdir()
        (run / f"round={k}" / "_round.json").write_text("{}")
    if exported_rows is not None:
        (run / "export").mkdir()
        (run / "export" / "_export.json").write_text(json.dumps({"key": "k", "summary": {"rows": exported_rows}}))
        (run / "export" / "README.md").write_text(f"# Evol-Instruct data: {name}\n")
    return run


def test_list_runs_reads_status_rounds_and_rows_from_the_folders(tmp_path):
    make_run(tmp_path, "a-done", rounds_done=2, exported_rows=33)
    make_run(tmp_path, "b-stopped", rounds_done=1)
    dead = make_run(tmp_path, "c-crashed", rounds_done=1)
    (dead / "_lease.json").write_text(json.dumps({"holder": "x", "host": os.uname().nodename, "pid": 2 ** 22 + 7,
                                                  "pid_start": "1", "started": "2026-11-28T10:00:00+00:00",
                                                  "expires": "2999-01-01T00:00:00+00:00"}))
    live = make_run(tmp_path, "d-running")
    (tmp_path / "not-a-run").mkdir()
    with RunLease(str(live)):
        runs = list_runs(str(tmp_path))
    assert [(r.name, r.status, r.rounds_done, r.rounds, r.rows) for r in runs] == [
        ("a-done", "done", 2, 2, 33), ("b-stopped", "stopped", 1, 2, None), ("c-crashed", "crashed", 1, 2, None),
        ("d-running", "running", 0, 2, None)]
    assert runs[2].started == "2026-11-28 10:00:00"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", r.started) for r in runs)
    assert run_card(str(tmp_path / "a-done")) == "# Evol-Instruct data: a-done\n"
    with pytest.raises(FileNotFoundError, match="b-stopped: the run has no dataset card yet"):
        run_card(str(tmp_path / "b-stopped"))


def test_runs_and_show_commands(tmp_path):
    make_run(tmp_path, "demo", rounds_done=2, exported_rows=33)
    make_run(tmp_path, "half", rounds_done=1)
    runner = CliRunner()
    listed = runner.invoke(app, ["runs", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    rows = [line for line in listed.output.splitlines() if "demo" in line or "half" in line]
    assert [re.split(r"\s*│\s*", r.strip("│ "))[:4] for r in rows] == [["demo", "done", "2/2", "33"],
                                                                      ["half", "stopped", "1/2", "-"]]
    shown = runner.invoke(app, ["show", "demo", "--output-root", str(tmp_path)])
    assert shown.exit_code == 0 and shown.output == "# Evol-Instruct data: demo\n"
    missing = runner.invoke(app, ["show", "half", "--output-root", str(tmp_path)])
    assert missing.exit_code == 2 and "has no dataset card yet" in missing.output
    assert runner.invoke(app, ["runs", str(tmp_path / "nowhere")]).exit_code == 2


@pytest.mark.server
def test_evol_run_logs_to_the_run_folder_and_runs_lists_it(prefect_server, tmp_path):
    root = tmp_path / "runs"
    config = write_config(tmp_path, root)
    data = yaml.safe_load(config.read_text())
    # every evolution "copies scaffolding": rounds evolve below the default 5% and the warnings reach the terminal
    data["elimination"] = {"scaffolding_phrases": ["e"]}
    config.write_text(yaml.safe_dump(data))
    done = evol_run(config, {"PREFECT_API_URL": prefect_server})
    assert done.returncode == 0, done.stderr[-3000:]
    terminal = done.stdout + done.stderr
    assert "Finished in state" not in terminal and "shard 1/2" not in terminal
    assert len(re.findall(r"warning: round [12] evolved only \d+ of 20 rows", done.stdout)) == 2, done.stdout
    assert len(re.findall(r"WARNING .*round [12] evolved only", done.stderr)) == 2, done.stderr  # live, from Prefect
    (log,) = (root / "crash" / "logs").glob("run-*.log")
    text = log.read_text()
    assert len(re.findall(r"round [12] shard [12]/2: 10 rows", text)) == 4
    assert "Finished in state Completed" in text
    verbose = evol_run(config, {"PREFECT_API_URL": prefect_server}, "--verbose")
    assert verbose.returncode == 0 and "round 1 shard 1/2: reused" in verbose.stdout + verbose.stderr
    listed = subprocess.run([str(BIN / "evol"), "runs", str(root)], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    assert re.search(r"crash\s*│\s*done\s*│\s*2/2\s*│\s*\d+\s*│", listed.stdout), listed.stdout
    shown = subprocess.run([str(BIN / "evol"), "show", "crash", "--output-root", str(root)], capture_output=True,
                           text=True)
    assert shown.returncode == 0 and shown.stdout == (root / "crash" / "export" / "README.md").read_text()
