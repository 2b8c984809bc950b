"""Loaded in cluster workers (``evol worker --preload tests.worker_support``) and in the test process: a scripted
backend ``slow-demo`` that answers like ``demo`` but takes ``EVOL_TEST_ITEM_S`` seconds per conversation, waits
while the file ``EVOL_TEST_GATE`` names does not exist, and appends one line per conversation to
``$EVOL_TEST_WORKER_LOG/<pid>.log``, so a test sees which process did the work and when a worker is in the middle of
a shard. Also what a test asks the workers (``client.run``): the shard tasks each finished, the engines each built."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tasks.llm.scripted import ScriptedBackend, demo_responder, register_scripted_backend

NAME = "slow-demo"
SHARD_TASK = "evolve_shard_task"  # the Dask key prefix of a shard task (prefect-dask names keys by the task)


def slow_responder(conversation, params):
    """The demo answer, slowly, with a trace line, once the gate is open."""
    log_dir = os.environ.get("EVOL_TEST_WORKER_LOG")
    if log_dir:
        with (Path(log_dir) / f"{os.getpid()}.log").open("a") as f:
            f.write("item\n")
    gate = os.environ.get("EVOL_TEST_GATE")
    while gate and not Path(gate).exists():
        time.sleep(0.02)
    time.sleep(float(os.environ.get("EVOL_TEST_ITEM_S", "0")))
    return demo_responder(conversation, params)


register_scripted_backend(ScriptedBackend(slow_responder, model_name="scripted-demo"), NAME)


def shards_done(dask_worker: Any) -> int:
    """How many shard tasks this worker ran to the end (``executing`` -> ``memory`` in its transition log)."""
    from dask.utils import key_split

    return sum(1 for entry in dask_worker.state.log
               if len(entry) > 3 and entry[1] in ("executing", "long-running") and entry[2] == "memory"
               and isinstance(entry[0], str) and key_split(entry[0]) == SHARD_TASK)


def engines_built() -> dict[str, int]:
    """The vLLM engines this process constructed: offline ``LLM`` and streaming ``AsyncLLM``."""
    from tasks.llm.vllm_async import async_engine_constructions
    from tasks.llm.vllm_backend import engine_constructions

    return {"offline": engine_constructions(), "async": async_engine_constructions()}


def dask_setup(worker) -> None:
    """Dask's preload hook: importing this module registered the backend."""
