"""A CPU-bound stand-in for an engine, loaded in cluster workers (``evol worker --preload bench.cluster_backend``)
and in the bench process: ``burn-demo`` answers like ``demo`` after spinning ``EVOL_BENCH_ITEM_S`` CPU seconds per
conversation, so a worker's throughput is bounded by its core as an engine's is by its GPU."""

from __future__ import annotations

import os
import time

from tasks.llm.scripted import ScriptedBackend, demo_responder, register_scripted_backend

NAME = "burn-demo"


def burn_responder(conversation, params):
    """The demo answer after ``EVOL_BENCH_ITEM_S`` seconds of CPU work in this thread."""
    until = time.thread_time() + float(os.environ.get("EVOL_BENCH_ITEM_S", "0"))
    x = 0
    while time.thread_time() < until:
        x += 1
    return demo_responder(conversation, params)


register_scripted_backend(ScriptedBackend(burn_responder, model_name="scripted-demo"), NAME)


def dask_setup(worker) -> None:
    """Dask's preload hook: importing this module registered the backend."""
