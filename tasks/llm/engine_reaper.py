"""vLLM's engine processes die with the process that started them, however it ends.

vLLM runs its engine core (and, with several workers, their processes) in child processes. A parent that ends
normally stops them; one killed with SIGKILL, by the out-of-memory killer or by a worker's cancel after its grace
period leaves them running, holding the model's memory (a GPU's, on a GPU) until someone finds them.

Before this process starts its first engine it starts a watcher, ``python -m tasks.llm.engine_reaper PID START
PIDFD`` (this process's pid, start time and a pidfd of it, so that a death before the watcher runs is seen), in a
session of its own (a kill of this process's group does not reach it). Around each engine's start
(``engine_processes``) this process tells the watcher the child processes that start meant: those of its
descendants that were not there before. Every ``POLL_S`` seconds the watcher adds their own descendants (a worker
an engine core starts later). Nothing else this process starts is the watcher's business. When this process ends
(a pidfd wakes the watcher at once) the watcher sends SIGTERM to those still there (the same pid and start time: a
reused pid is left alone; one that moved to a session of its own is meant to outlive us), SIGKILL to those left
after ``GRACE_S``, and exits. An environment mark cannot do this: vLLM's ``setproctitle`` overwrites what
``/proc/PID/environ`` shows, and a forked child shows its parent's first one.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

POLL_S = 2.0
GRACE_S = 10.0

Proc = tuple[int, int]  # (pid, start time in clock ticks since boot)

_watcher: tuple[int, subprocess.Popen] | None = None  # (owner pid, watcher); a forked child starts its own


def start_watcher() -> int:
    """Start this process's watcher once (again if it died); returns its pid."""
    global _watcher
    if _watcher is not None and _watcher[0] == os.getpid() and _watcher[1].poll() is None:
        return _watcher[1].pid
    # This process's own pidfd and start time go with it: it may die before the watcher has even started.
    try:
        pidfd = os.pidfd_open(os.getpid())
    except (AttributeError, OSError):
        pidfd = -1
    own = _stat(os.getpid())
    args = [str(os.getpid()), str(own[2] if own else 0), str(pidfd)]
    try:
        proc = subprocess.Popen([sys.executable, "-m", "tasks.llm.engine_reaper", *args], start_new_session=True,
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                close_fds=True, pass_fds=(pidfd,) if pidfd >= 0 else ())
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    _watcher = (os.getpid(), proc)
    return proc.pid


@contextmanager
def engine_processes() -> Iterator[None]:
    """Around an engine's start: the processes it starts are the watcher's to end with this one."""
    start_watcher()
    before = descendants(os.getpid())
    yield
    note(descendants(os.getpid()) - before)


def note(procs: set[Proc]) -> int:
    """Tell the watcher ``procs`` (and, as it looks, their descendants) are to end with this process; how many."""
    if not procs or _watcher is None or _watcher[0] != os.getpid() or _watcher[1].stdin is None:
        return 0
    try:
        _watcher[1].stdin.write("".join(f"{pid} {started}\n" for pid, started in procs).encode())
        _watcher[1].stdin.flush()
    except OSError:  # the watcher is gone: the next engine start begins a new one
        return 0
    return len(procs)


def _stat(pid: int | str) -> tuple[int, int, int, str] | None:
    """(parent pid, session id, start time, state) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), int(fields[3]), int(fields[19]), fields[0]


Tree = dict[int, list[tuple[int, int, int]]]  # parent pid -> its children as (pid, start time, session id)


def _children() -> Tree:
    """Every process's children, from one read of each /proc/PID/stat."""
    tree: Tree = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(entry.name)) is not None:
            tree.setdefault(stat[0], []).append((int(entry.name), stat[2], stat[1]))
    return tree


def descendants(root: int, tree: Tree | None = None) -> set[Proc]:
    """The live descendants of ``root`` in ``root``'s session, each as (pid, start time)."""
    own = _stat(root)
    if own is None:
        return set()
    tree = _children() if tree is None else tree
    found: set[Proc] = set()
    todo = [root]
    while todo:
        for pid, started, session in tree.get(todo.pop(), []):
            if session == own[1]:
                found.add((pid, started))
                todo.append(pid)
    return found


def alive(procs: set[Proc], session: int | None = None) -> set[Proc]:
    """Those of ``procs`` still running under the same pid and start time (a zombie counts as gone), and in
    ``session`` when given (a child calls ``setsid`` just after it is forked: a look in between saw it in ours)."""
    return {(pid, started) for pid, started in procs
            if (stat := _stat(pid)) is not None and stat[2] == started and stat[3] != "Z"
            and (session is None or stat[1] == session)}


def watch(owner: int, notes: int | None = None, poll_s: float = POLL_S,
          on_look: Callable[[set[Proc]], None] | None = None, owner_fd: int | None = None,
          owner_started: int | None = None) -> set[Proc]:
    """Until ``owner`` ends: the processes it writes to ``notes`` (a pipe: "PID START" lines) and, looked for every
    ``poll_s`` seconds, their descendants; returns those still running when it ended. ``owner_fd``: a pidfd of the
    owner (its own, passed down: valid even if it died before this started); else one is opened here, or, without
    pidfds (Linux before 5.3, a seccomp filter), the owner's pid and ``owner_started`` are checked every look.
    ``on_look`` gets what each look found, before the wait that follows it."""
    fd = owner_fd
    if fd is None:
        try:
            fd = os.pidfd_open(owner)
        except (AttributeError, OSError):  # gone already (its notes are still read), or no pidfds
            fd = None
    own = _stat(owner)
    if owner_started is None:
        owner_started = own[2] if own else 0
    session = own[1] if own else None  # an owner gone already: its notes were filtered by its session
    seen: set[Proc] = set()
    buffered = b""
    try:
        while True:
            seen = alive(seen, session)
            tree = _children()
            for pid, _ in list(seen):
                seen |= descendants(pid, tree)
            if on_look is not None:
                on_look(seen)
            gone = fd is None and not alive({(owner, owner_started)})  # gone, a zombie, or its pid taken
            ready = select.select([f for f in (notes, fd) if f is not None], [], [], 0 if gone else poll_s)[0]
            if notes is not None and notes in ready:  # the owner's notes first: they were written before it died
                chunk = os.read(notes, 65536)
                if not chunk:
                    notes = None
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                seen |= {(int(p), int(t)) for p, t in (line.split() for line in lines if line.strip())}
                continue
            if gone or (fd is not None and fd in ready):
                return alive(seen, session)
    finally:
        if fd is not None:
            os.close(fd)


def reap(procs: set[Proc], grace_s: float = GRACE_S) -> tuple[int, int]:
    """SIGTERM those of ``procs`` still running, SIGKILL those left after ``grace_s``: (terminated, killed)."""
    victims = alive(procs)
    for pid, _ in victims:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    left = victims
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = alive(left)
    for pid, _ in left:
        _signal(pid, signal.SIGKILL)
    return len(victims), len(left)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not all(a.lstrip("-").isdigit() for a in argv):
        print("usage: python -m tasks.llm.engine_reaper OWNER_PID OWNER_START_TIME OWNER_PIDFD|-1", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the owner's terminal is for the owner
    owner, started, pidfd = (int(a) for a in argv)
    reap(watch(owner, notes=sys.stdin.fileno(), owner_fd=pidfd if pidfd >= 0 else None, owner_started=started))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
