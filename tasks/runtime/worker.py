"""One shard worker of a cluster: a Dask worker process with one thread, pinned to its GPU (or CPUs), that keeps its
LLM engine warm for its whole life (the engine and the run's backends are cached per process).

``worker_plan`` says what `evol worker` starts; ``dask_setup`` is the worker-side hook (Dask ``--preload``) that
logs what the worker holds and, with ``EVOL_WORKER_WARM`` naming a run config, starts its engine before any shard."""

from __future__ import annotations

import os
import sys
from typing import Any

from pydantic import BaseModel

from tasks.llm.vllm_engine import cpu_env_defaults, cpu_id_ranges

WARM_ENV = "EVOL_WORKER_WARM"


class WorkerPlan(BaseModel):
    argv: list[str]
    env: dict[str, str]
    cpus: list[int] | None = None


def parse_cpus(spec: str) -> list[int]:
    """``"0-3,6"`` -> ``[0, 1, 2, 3, 6]`` (the syntax of taskset and VLLM_CPU_OMP_THREADS_BIND)."""
    cpus: set[int] = set()
    for part in spec.split(","):
        first, sep, last = part.strip().partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise ValueError(f"CPU list {spec!r}: expected ids and ranges like 0-3,6")
        lo, hi = int(first), int(last) if sep else int(first)
        if hi < lo:
            raise ValueError(f"CPU list {spec!r}: range {part!r} runs backwards")
        cpus.update(range(lo, hi + 1))
    return sorted(cpus)


def worker_plan(scheduler: str, name: str | None = None, cpus: str | None = None, gpu: str | None = None,
                preload: list[str] | None = None, warm_config: str | None = None, nanny: bool = True,
                base_env: dict[str, str] | None = None) -> WorkerPlan:
    """A Dask worker that takes one shard at a time (one process, one thread).

    ``gpu``: the device ids it sees (``CUDA_VISIBLE_DEVICES``; "0" or "0,1" for a TP-2 engine). ``cpus``: the CPUs
    it is pinned to, and vLLM's CPU threads with it. ``preload``: modules run in the worker at start (``dask_setup``),
    e.g. one that registers a custom backend. The nanny restarts a worker that dies (an OOM kill, a crashed engine)."""
    env = dict(os.environ if base_env is None else base_env)
    # vLLM starts its engine core in a child process: a daemonic worker process may not have children.
    env["DASK_DISTRIBUTED__WORKER__DAEMON"] = "False"
    pinned = parse_cpus(cpus) if cpus else None
    if pinned:
        for key, value in cpu_env_defaults(pinned).items():  # a value the user set (KV cache size) stays
            env.setdefault(key, value)
        env.update({"OMP_NUM_THREADS": str(len(pinned)), "VLLM_CPU_OMP_THREADS_BIND": cpu_id_ranges(pinned)})
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if warm_config:
        env[WARM_ENV] = warm_config
    argv = [sys.executable, "-m", "distributed.cli.dask_worker", scheduler, "--nworkers", "1", "--nthreads", "1",
            "--no-dashboard", "--nanny" if nanny else "--no-nanny"]
    if name:
        argv += ["--name", name]
    for module in ["tasks.worker", *(preload or [])]:
        argv += ["--preload", module]
    return WorkerPlan(argv=argv, env=env, cpus=pinned)


def warm_engine(config_path: str) -> list[str]:
    """Build the stage backends of the run config at ``config_path`` and start their engines (vLLM) in this process;
    a later shard of a run with the same settings finds them built. Returns the engines started."""
    from tasks.core.config_file import load_run_config
    from tasks.core.context import EvolveSpec
    from tasks.evolve.shard import evolve_runtime

    _pack, backends = evolve_runtime(EvolveSpec.of(load_run_config(config_path)))
    return backends.start()


def dask_setup(worker: Any) -> None:
    """Dask's preload hook, run in the worker process at its start."""
    import logging

    logger = logging.getLogger("evol.worker")
    logger.info("evol worker %s pid %d: CUDA_VISIBLE_DEVICES=%s VLLM_CPU_OMP_THREADS_BIND=%s", worker.name, os.getpid(),
                os.environ.get("CUDA_VISIBLE_DEVICES", "-"), os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "-"))
    if os.environ.get(WARM_ENV):
        logger.info("evol worker %s: engines started: %s", worker.name, warm_engine(os.environ[WARM_ENV]))
