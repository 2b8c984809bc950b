"""An engine's processes die with the process that started them, even when it is killed (tasks/llm/engine_reaper.py):
a fork child and its own child as stand-ins for vLLM's engine core and worker, then the real engine."""

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
import json, multiprocessing, subprocess, sys, time
from tasks.llm.engine_reaper import note_descendants, start_watcher

def engine(pids):  # like vLLM's engine core: a forked child with a child of its own
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    pids.put(worker.pid)
    time.sleep(3600)

if __name__ == "__main__":
    watcher = start_watcher()
    ctx = multiprocessing.get_context("fork")
    pids = ctx.Queue()
    core = ctx.Process(target=engine, args=(pids,))
    core.start()
    worker = pids.get(timeout=60)
    detached = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True)
    noted = note_descendants()
    print("PIDS", json.dumps({"watcher": watcher, "core": core.pid, "worker": worker, "detached": detached.pid,
                      "noted": noted}), flush=True)
    sys.stdin.read()  # held until the test kills it
"""

ENGINE_OWNER = """
import json, os, sys
from tasks.llm.engine_reaper import descendants
from tasks.llm.vllm_backend import get_vllm_engine

get_vllm_engine(sys.argv[1], {"max_model_len": 512})
print("PIDS", json.dumps(sorted(descendants(os.getpid()))), flush=True)
sys.stdin.read()
"""


def _running(pid: int) -> bool:
    return (stat := _stat(pid)) is not None and bool(alive({(pid, stat[2])}))


def _start_owner(code: str, *args: str) -> tuple[subprocess.Popen, dict]:
    owner = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    for line in owner.stdout:  # vLLM's own lines come first
        if line.startswith("PIDS "):
            return owner, json.loads(line[5:])
    raise AssertionError(f"the owner script ended without its pids (exit {owner.wait()})")


def test_a_killed_owner_takes_its_engine_processes_and_only_them_with_it():
    owner, pids = _start_owner(OWNER)
    try:
        assert pids["noted"] == 2  # the engine core and its worker; the detached process is in a session of its own
        assert all(_running(pids[name]) for name in ("watcher", "core", "worker", "detached"))
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        wait_until(lambda: not _running(pids["core"]) and not _running(pids["worker"]), 60,
                   "the engine core and its worker end")
        wait_until(lambda: not _running(pids["watcher"]), 60, "the watcher ends once it has reaped")
        assert _running(pids["detached"])  # started to outlive its parent: left alone
    finally:
        for name in ("core", "worker", "detached", "watcher"):
            if pids.get(name) and _running(pids[name]):
                os.kill(pids[name], signal.SIGKILL)
        if owner.poll() is None:
            owner.kill()


def test_the_watcher_finds_children_by_itself_and_leaves_a_reused_pid_alone(monkeypatch):
    """Without a note from the owner: the watcher's own look at the owner's tree, and (pid, start time) pairs."""
    import tasks.llm.engine_reaper as reaper

    owner = subprocess.Popen(["bash", "-c", "sleep 3600 & sleep 3600 & wait"], start_new_session=True)
    real_select = reaper.select.select
    children: set = set()

    def owner_dies_after_the_first_look(*args):  # the watcher has looked once before it first waits
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        return real_select(*args)

    try:
        wait_until(lambda: len(descendants(owner.pid)) == 2, 60, "the owner's two children start")
        children = descendants(owner.pid)
        monkeypatch.setattr(reaper.select, "select", owner_dies_after_the_first_look)
        assert watch(owner.pid, poll_s=0.2) == children
        pid, started = next(iter(children))
        assert alive({(pid, started + 1)}) == set()  # the same pid under another start time is not ours
    finally:
        monkeypatch.undo()
        if owner.poll() is None:
            owner.kill()
        for pid, _ in children:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.vllm
def test_a_killed_run_leaves_no_vllm_engine_process(model_dir):
    owner, engine_pids = _start_owner(ENGINE_OWNER, str(model_dir))
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
