"""vLLM's async engine (``vllm.v1`` ``AsyncLLM``): one per process, on the streaming loop, every request on its own.

Every shard task of a process sends its rows' requests to the one engine as the rows need them; vLLM's scheduler
batches whatever is in flight at each step, so no stage or shard waits for another's longest sequence. Requests
are rendered as ``vllm.LLM.chat`` renders them (the model's chat template, no extra special tokens) and sampled
with the same parameters, so greedy outputs match the offline engine's.
"""

from __future__ import annotations

import atexit
import gc
import itertools
import logging
from typing import Any

from tasks.llm.aio import run_on_loop
from tasks.llm.base import Completion, Conversation, SamplingParams
from tasks.llm.vllm_engine import EngineCache
from tasks.llm.vllm_io import chat_kwargs, completion_of, error_completion, prompt_problem, to_vllm_sampling_params

logger = logging.getLogger(__name__)

ENGINES = EngineCache("async")
_request_ids = itertools.count()


def async_engine_constructions() -> int:
    """How many ``AsyncLLM`` engines this process has built."""
    return ENGINES.constructions


def _build(model: str, kwargs: dict[str, Any]) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=model, **kwargs))
    if not ENGINES.engines:
        atexit.register(shutdown_async_engines)  # else the engine is torn down half-way through exit
    return engine


async def get_async_engine(model: str, engine_args: dict[str, Any] | None = None) -> Any:
    """The process's ``AsyncLLM`` for ``model`` and ``engine_args``, built on first use (on the streaming loop)."""
    return ENGINES.get(model, engine_args, _build, disable_log_stats=True)  # as vllm.LLM does


async def _shutdown_on_loop() -> None:
    for engine in ENGINES.pop_all():
        try:
            engine.shutdown()  # on the loop: its output handler task is cancelled there
        except Exception as err:  # best effort: the processes also die with this one
            logger.warning("vLLM async engine shutdown failed: %s", err)
        # Shut down once: an engine still referenced at interpreter exit (a Prefect frame may hold one) would
        # shut down again from its __del__ after vLLM's modules are gone, and print a traceback.
        engine.shutdown = lambda *args, **kwargs: None
        del engine
    gc.collect()


def shutdown_async_engines() -> None:
    """Stop every cached async engine's processes now (also at exit); the next use builds anew."""
    if ENGINES.engines:
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

    if engine.errored:
        ENGINES.raise_if_dead(engine.dead_error, engine)
    vparams = to_vllm_sampling_params(params)
    vparams.output_kind = RequestOutputKind.FINAL_ONLY  # one output per request, as vllm.LLM asks for
    problem = prompt_problem(engine.get_tokenizer(), engine.model_config.max_model_len, conversation)
    if problem:
        return error_completion(problem)
    final = None
    try:
        prompt = await _render(engine, conversation)
        async for output in engine.generate(prompt, vparams, f"evol-{next(_request_ids)}"):
            final = output
    except Exception as err:  # a cancelled row (asyncio.CancelledError) is no Exception: it propagates
        ENGINES.raise_if_dead(err, engine)
        return error_completion(f"{type(err).__name__}: {err}")
    if final is None:
        return error_completion("no output")
    return completion_of(final, params.choices)
