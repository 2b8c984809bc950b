"""An engine's processes die with the process that started them, even when it is killed (tasks/llm/engine_reaper.py):
a fork child and its own child as stand-ins for vLLM's engine core and worker, then the real engine, started with a
run's log as `evol run` starts it (its output in the log, not on the terminal)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.llm.engine_reaper import _stat, alive, descendants, watch
from tests.held_run import wait_until

ROOT = Path(__file__).resolve().parent.parent

OWNER = """
import json, multiprocessing, os, subprocess, sys, time
from tasks.llm.engine_reaper import engine_processes

def engine(pids):  # like vLLM's engine core: a forked child with a child of its own
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    pids.put(worker.pid)
    time.sleep(3600)

if __name__ == "__main__":
    sleeper = [sys.executable, "-c", "import time; time.sleep(3600)"]
    helper = subprocess.Popen(sleeper)  # started outside an engine's start: not the watcher's
    ctx = multiprocessing.get_context("fork")
    pids = ctx.Queue()
    with engine_processes():
        core = ctx.Process(target=engine, args=(pids,))
        core.start()
        worker = pids.get(timeout=60)
    detached = subprocess.Popen(sleeper, start_new_session=True)
    from tasks.llm import engine_reaper
    print("PIDS", json.dumps({"watcher": engine_reaper._watcher[1].pid, "core": core.pid, "worker": worker,
                              "helper": helper.pid, "detached": detached.pid}), flush=True)
    if sys.argv[1:] == ["exit"]:
        os._exit(0)  # an end without cleanup (as a cancel ends): the engine's processes still run, and the user's
    sys.stdin.read()  # held until the test kills it
"""

ENGINE_OWNER = """
import json, os, sys
from tasks.core.runlog import RunLog
from tasks.llm.engine_reaper import descendants
from tasks.llm.vllm_backend import get_vllm_engine

RunLog.for_run(sys.argv[2]).start(verbose=False)  # as `evol run` starts without --verbose
get_vllm_engine(sys.argv[1], {"max_model_len": 512})
print("PIDS", json.dumps(sorted(descendants(os.getpid()))), flush=True)
sys.stdin.read()
"""


def _running(pid: int) -> bool:
    return (stat := _stat(pid)) is not None and bool(alive({(pid, stat[2])}))


def _start_owner(code: str, *args: str, stderr=None) -> tuple[subprocess.Popen, dict]:
    """Run ``code`` in a process of its own session (as a terminal starts ``evol run``); its printed pids."""
    owner = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)
    for line in owner.stdout:  # vLLM's own lines come first
        if line.startswith("PIDS "):
            return owner, json.loads(line[5:])
    raise AssertionError(f"the owner script ended without its pids (exit {owner.wait()})")


def test_a_killed_owner_takes_its_engine_processes_and_only_them_with_it():
    owner, pids = _start_owner(OWNER)
    try:
        assert all(_running(pids[name]) for name in ("watcher", "core", "worker", "helper", "detached"))
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        wait_until(lambda: not _running(pids["core"]) and not _running(pids["worker"]), 60,
                   "the engine core and its worker end")
        wait_until(lambda: not _running(pids["watcher"]), 60, "the watcher ends once it has reaped")
        # started outside the engine's start, or to outlive its parent: left alone
        assert _running(pids["helper"]) and _running(pids["detached"])
    finally:
        _kill(pids, owner)


def test_when_the_owner_exits_the_watcher_ends_only_what_the_engine_start_began():
    owner, pids = _start_owner(OWNER, "exit")
    try:
        assert owner.wait(60) == 0
        wait_until(lambda: not _running(pids["watcher"]), 60, "the watcher ends")
        assert not _running(pids["core"]) and not _running(pids["worker"])
        assert _running(pids["helper"]) and _running(pids["detached"])  # the user's own processes go on
    finally:
        _kill(pids, owner)


def _kill(pids: dict, owner: subprocess.Popen) -> None:
    for name in ("core", "worker", "helper", "detached", "watcher"):
        if pids.get(name) and _running(pids[name]):
            os.kill(pids[name], signal.SIGKILL)
    if owner.poll() is None:
        owner.kill()


def test_the_watcher_finds_the_noted_processes_children_by_itself_and_leaves_a_reused_pid_alone():
    """The owner notes one child; the watcher's own look finds the two processes that child started."""
    owner = subprocess.Popen(["bash", "-c", "bash -c 'sleep 3600 & sleep 3600 & wait' & sleep 3600 & wait"],
                             start_new_session=True)
    family: set = set()
    everything: set = set()  # the owner's own sleep too, to end it afterwards: the owner's death leaves it running
    looks = []

    def owner_dies_after_the_second_look(seen):  # the first look comes before the note is read, the second after
        looks.append(seen)
        if len(looks) == 2 and owner.poll() is None:
            owner.kill()
            owner.wait()

    try:
        wait_until(lambda: len(descendants(owner.pid)) == 4, 60, "the owner's children and grandchildren start")
        everything = descendants(owner.pid)
        inner = next(p for p in descendants(owner.pid) if _stat(p[0])[0] == owner.pid and descendants(p[0]))
        family = {inner} | descendants(inner[0])
        read, write = os.pipe()
        os.write(write, f"{inner[0]} {inner[1]}\n".encode())
        assert watch(owner.pid, notes=read, poll_s=0.2, on_look=owner_dies_after_the_second_look) == family
        assert len(family) == 3  # the noted bash and its two sleeps; the owner's other sleep is not the watcher's
        pid, started = inner
        assert alive({(pid, started + 1)}) == set()  # the same pid under another start time is not ours
    finally:
        if owner.poll() is None:
            owner.kill()
        for pid, _ in everything | family:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_an_owner_dead_before_its_watcher_looks_still_has_its_noted_processes_ended():
    """The owner's pidfd and start time come with the watcher's arguments: a death before the watcher ran is seen."""
    owner = subprocess.Popen(["bash", "-c", "sleep 3600 & wait"], start_new_session=True)
    children: set = set()
    try:
        wait_until(lambda: len(descendants(owner.pid)) == 1, 60, "the owner's child starts")
        children = descendants(owner.pid)
        pidfd, started = os.pidfd_open(owner.pid), _stat(owner.pid)[2]
        read, write = os.pipe()
        os.write(write, "".join(f"{pid} {start}\n" for pid, start in children).encode())
        owner.kill()
        owner.wait()
        assert watch(owner.pid, notes=read, poll_s=0.2, owner_fd=pidfd, owner_started=started) == children
    finally:
        for pid, _ in children:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.vllm
def test_a_killed_run_leaves_no_vllm_engine_process_and_the_engine_start_went_to_its_log(model_dir, tmp_path):
    """A run's engine starts as ``evol run`` starts it without --verbose: vLLM's output goes to the run's log, the
    terminal gets none of it. Then the run is killed, and the engine's processes end with it."""
    with open(tmp_path / "terminal.txt", "w") as terminal:
        owner, engine_pids = _start_owner(ENGINE_OWNER, str(model_dir), str(tmp_path / "run"), stderr=terminal)
    try:
        assert engine_pids, "the engine started no process of its own"
        assert all(_running(pid) for pid, _ in engine_pids)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        took = wait_until(lambda: not alive({tuple(p) for p in engine_pids}), 60, "vLLM's engine processes end")
        print(f"{len(engine_pids)} engine process(es) gone {took:.0f} s after the kill")
    finally:
        for pid, _ in engine_pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        if owner.poll() is None:
            owner.kill()
    (log,) = (tmp_path / "run" / "logs").glob("run-*.log")
    text, stderr = log.read_text(), (tmp_path / "terminal.txt").read_text()
    assert "Loading safetensors checkpoint shards" in text and "non-default args" in text, text[-2000:]
    assert "Loading safetensors" not in stderr and "Triton" not in stderr, stderr[-3000:]
    assert "Attempted to load weight" not in text  # vLLM's per-weight dtype warnings are dropped
