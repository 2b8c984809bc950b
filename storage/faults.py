"""Kill points for crash tests: ``EVOL_FAULT_KILL_AT=N`` SIGKILLs this process at the N-th checkpoint
(``EVOL_FAULT_SIGNAL=SIGTERM``: that signal instead, as ``kill`` or ``docker stop`` sends).

Checkpoints sit between the steps of every commit (temp file written, file published, marker written),
so a test can stop a run at any of them and check that a rerun loses nothing. Unset (always, outside
tests), a checkpoint costs one dictionary look-up."""

from __future__ import annotations

import os
import signal
import threading

_lock = threading.Lock()
_count = 0


def checkpoint(label: str) -> None:
    """Count a checkpoint; kill the process at the one ``EVOL_FAULT_KILL_AT`` names."""
    target = os.environ.get("EVOL_FAULT_KILL_AT")
    if not target:
        return
    global _count
    with _lock:
        _count += 1
        hit = _count == int(target)
    if hit:
        trace = os.environ.get("EVOL_FAULT_TRACE")
        if trace:
            with open(trace, "a") as f:
                f.write(f"{_count} {label}\n")
        os.kill(os.getpid(), getattr(signal, os.environ.get("EVOL_FAULT_SIGNAL", "SIGKILL")))
