"""``evol run`` in a process of its own, held mid-round, and the helpers that start one from a test.

Its scripted ``demo`` backend answers as ``demo`` does until a shard of the folder HOLD_DIR is committed, then holds
every conversation (touching the file HELD) for as long as the process lives. With one shard at a time the run is
then inside its next shard, its requests in flight, until the test kills or cancels it: no sleep decides when. The
answers are demo's, so a rerun without the hold reuses what this run committed.
Usage: python -m tests.held_run HOLD_DIR HELD CONFIG [evol run options]."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import yaml

ROOT = Path(__file__).resolve().parent.parent


def held_config(tmp_path: Path, root: Path) -> Path:
    """tests/test_crash_recovery.py's config with shards of 2 rows (10 in round 1), one at a time."""
    from tests.test_crash_recovery import write_config

    config = write_config(tmp_path, root)
    data = yaml.safe_load(config.read_text())
    data.update(shard_size=2, orchestration={"retries": 0, "retry_delay_s": 0, "max_parallel_shards": 1})
    config.write_text(yaml.safe_dump(data))
    return config


@contextlib.contextmanager
def held_evol_run(config: Path, run: Path, env: dict[str, str], out: Path) -> Iterator[subprocess.Popen]:
    """``evol run CONFIG`` (run folder ``run``) held inside round 1's second shard, its first shard committed; its
    output goes to ``out``. Killed at the end if still alive."""
    held = out.with_suffix(".held")
    with open(out, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "tests.held_run", str(run / "round=1" / "candidates"),
                                 str(held), str(config), "--no-progress"], cwd=ROOT, env=env, stdout=sink,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not held.exists():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def task_runs_of(client, flow_run_ids: list[UUID]) -> list:
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    return client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=flow_run_ids)))


def wait_until(condition, deadline_s: float, what: str) -> float:
    """Poll ``condition`` (a server's state) until it holds; the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < deadline_s, f"{what}: not after {deadline_s} s"
        time.sleep(1)
    return time.monotonic() - start


def wait_for_running_shard(client, top: UUID) -> UUID:
    """The task run of the shard a held run is in, once the server shows it Running (its events arrive a moment after
    the shard starts)."""
    from tasks.runtime.recovery import flow_run_tree

    found: list[UUID] = []

    def running() -> bool:
        tree = flow_run_tree(client, top)
        found[:] = [t.id for t in task_runs_of(client, [r.id for r in tree[1:]]) if t.state.type.value == "RUNNING"]
        return bool(found)

    wait_until(running, 120, "the held shard's task run Running on the server")
    (shard,) = found
    return shard


def main(hold_dir: str, held: str, *run_args: str) -> None:
    from storage import list_committed_shards
    from tasks.llm.scripted import ScriptedBackend, demo_responder, register_scripted_backend

    def held_responder(conversation, params):
        if list_committed_shards(hold_dir):
            Path(held).touch()
            threading.Event().wait()  # until the process ends
        return demo_responder(conversation, params)

    register_scripted_backend(ScriptedBackend(held_responder, model_name="scripted-demo"), "demo")
    from flows.cli import app

    app(["run", *run_args])


if __name__ == "__main__":
    main(*sys.argv[1:])
