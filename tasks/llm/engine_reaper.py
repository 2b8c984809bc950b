"""vLLM's engine processes die with the process that started them, however it ends.

vLLM runs its engine core (and, with several workers, their processes) in child processes. A parent that ends
normally stops them; one killed with SIGKILL, by the out-of-memory killer or by a worker's cancel after its grace
period leaves them running, holding the model's memory (a GPU's, on a GPU) until someone finds them.

Before this process starts its first engine it starts a watcher, ``python -m tasks.llm.engine_reaper PID``, in a
session of its own (a kill of this process's group does not reach it). This process tells it its descendants
once an engine has started (``note_descendants``), and every ``POLL_S`` seconds the watcher looks itself: it notes
this process's descendants in its session (a child started with a session of its own, such as the cancel's
detached sweeper, is meant to outlive it). When this process ends (a pidfd wakes the watcher at once) the watcher
sends SIGTERM to the descendants it noted that are still there (the same pid and start time: a reused pid is left
alone), SIGKILL to those left after ``GRACE_S``, and exits. An environment mark cannot do this: vLLM's
``setproctitle`` overwrites what ``/proc/PID/environ`` shows, and a forked child shows its parent's first one.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 2.0
GRACE_S = 10.0

_watcher: tuple[int, subprocess.Popen] | None = None  # (owner pid, watcher); a forked child starts its own


def start_watcher() -> int:
    """Start this process's watcher once (again if it died); returns its pid."""
    global _watcher
    if _watcher is not None and _watcher[0] == os.getpid() and _watcher[1].poll() is None:
        return _watcher[1].pid
    proc = subprocess.Popen([sys.executable, "-m", "tasks.llm.engine_reaper", str(os.getpid())],
                            start_new_session=True, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, close_fds=True)
    _watcher = (os.getpid(), proc)
    return proc.pid


def note_descendants() -> int:
    """Tell the watcher this process's descendants now (after an engine started: no wait for its next look);
    returns how many."""
    if _watcher is None or _watcher[0] != os.getpid() or _watcher[1].stdin is None:
        return 0
    procs = descendants(os.getpid())
    try:
        _watcher[1].stdin.write("".join(f"{pid} {started}\n" for pid, started in procs).encode() + b"\n")
        _watcher[1].stdin.flush()
    except OSError:  # the watcher is gone: the next engine start begins a new one
        return 0
    return len(procs)


Proc = tuple[int, int]  # (pid, start time in clock ticks since boot)


def _stat(pid: int | str) -> tuple[int, int, int] | None:
    """(parent pid, session id, start time) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), int(fields[3]), int(fields[19])


def descendants(owner: int) -> set[Proc]:
    """The live descendants of ``owner`` in ``owner``'s session, each as (pid, start time)."""
    own = _stat(owner)
    if own is None:
        return set()
    children: dict[int, list[tuple[int, int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(entry.name)) is not None:
            parent, session, started = stat
            children.setdefault(parent, []).append((int(entry.name), session, started))
    found: set[Proc] = set()
    todo = [owner]
    while todo:
        for pid, session, started in children.get(todo.pop(), []):
            if session == own[1]:
                found.add((pid, started))
                todo.append(pid)
    return found


def alive(procs: set[Proc], session: int | None = None) -> set[Proc]:
    """Those of ``procs`` still running under the same pid and start time (a zombie counts as gone), and in
    ``session`` when given (a child calls ``setsid`` just after it is forked: a look in between saw it in ours)."""
    return {(pid, started) for pid, started in procs if (stat := _stat(pid)) is not None and stat[2] == started
            and (session is None or stat[1] == session) and not _zombie(pid)}


def _zombie(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return text[text.rindex(")") + 2] == "Z"


def watch(owner: int, notes: int | None = None, poll_s: float = POLL_S) -> set[Proc]:
    """Note ``owner``'s descendants every ``poll_s`` seconds, and those it writes to ``notes`` (a pipe: "PID START"
    lines), until it ends; returns the ones noted that are still running."""
    seen: set[Proc] = set()
    try:
        fd: int | None = os.pidfd_open(owner)
    except ProcessLookupError:
        return seen
    except (AttributeError, OSError):
        fd = None
    buffered = b""
    session = own[1] if (own := _stat(owner)) is not None else None
    try:
        while True:
            seen = descendants(owner) | alive(seen, session)
            ready = select.select([f for f in (notes, fd) if f is not None], [], [], poll_s)[0]
            if notes is not None and notes in ready:  # the owner's notes first: they were written before it died
                chunk = os.read(notes, 65536)
                if not chunk:
                    notes = None
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                seen |= {(int(p), int(t)) for p, t in (line.split() for line in lines if line.strip())}
                continue
            if (fd is not None and fd in ready) or (fd is None and _stat(owner) is None):
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
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m tasks.llm.engine_reaper OWNER_PID", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the owner's terminal is for the owner
    reap(watch(int(argv[0]), notes=sys.stdin.fileno()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
