"""Loaded in cluster workers (``evol worker --preload tests.worker_support``) and in the test process: a scripted
backend ``slow-demo`` that answers like ``demo`` but takes ``EVOL_TEST_ITEM_S`` seconds per conversation and appends
one line per conversation to ``$EVOL_TEST_WORKER_LOG/<pid>.log``, so a test sees which process did the work and
when a worker is in the middle of a shard."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tasks.llm.scripted import ScriptedBackend, demo_responder, register_scripted_backend

NAME = "slow-demo"


def slow_responder(conversation, params):
    """The demo answer, slowly, with a trace line."""
    log_dir = os.environ.get("EVOL_TEST_WORKER_LOG")
    if log_dir:
        with (Path(log_dir) / f"{os.getpid()}.log").open("a") as f:
            f.write("item\n")
    time.sleep(float(os.environ.get("EVOL_TEST_ITEM_S", "0")))
    return demo_responder(conversation, params)


register_scripted_backend(ScriptedBackend(slow_responder, model_name="scripted-demo"), NAME)


def dask_setup(worker) -> None:
    """Dask's preload hook: importing this module registered the backend."""
