"""The vLLM offline backend: one engine per worker process, a whole batch per ``llm.chat`` call.

The engine core runs in a spawned process: a script that creates one needs an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from tasks.llm import vllm_async, vllm_embed
from tasks.llm.aio import gather_on_loop, run_on_loop
from tasks.llm.base import Completion, Conversation, SamplingParams, is_prefilled
from tasks.llm.vllm_engine import EngineCache
from tasks.llm.vllm_io import chat_kwargs, completion_of, error_completion, prompt_problem, to_vllm_sampling_params

logger = logging.getLogger(__name__)

ENGINES = EngineCache("offline")


def engine_constructions() -> int:
    """How many ``vllm.LLM`` engines this process has built (each cache miss builds one)."""
    return ENGINES.constructions


def _build(model: str, kwargs: dict[str, Any]) -> tuple[Any, threading.Lock]:
    import vllm

    return vllm.LLM(model=model, **kwargs), threading.Lock()


def get_vllm_engine(model: str, engine_args: dict[str, Any] | None = None) -> tuple[Any, threading.Lock]:
    """The process-wide ``vllm.LLM`` for ``model`` and ``engine_args`` with its lock, built on first use.

    vLLM's import and the engine's start write to the run's log file, not the terminal (``tasks.core.runlog``)."""
    return ENGINES.get(model, engine_args, _build)


def shutdown_engines() -> None:
    """Stop every cached engine's processes now (end of a test session or benchmark); the next use builds anew."""
    vllm_async.shutdown_async_engines()
    for llm, lock in ENGINES.pop_all() + vllm_embed.pooling_engines():
        with lock:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            try:
                if core is not None:
                    core.shutdown()
            except Exception as err:  # shutting down is best effort: the processes also die with this one
                logger.warning("vLLM engine shutdown failed: %s", err)


def chat_in_groups(llm: Any, conversations: list[Conversation], vparams: Any) -> list[Any]:
    """``llm.chat``'s output for each conversation, in order. ``llm.chat`` renders a whole call one way, so the open
    conversations and the prefilled ones go in two calls; ``vparams`` is one ``vllm.SamplingParams`` or a list."""
    outputs: list[Any] = [None] * len(conversations)
    for prefilled in (False, True):
        group = [i for i, c in enumerate(conversations) if is_prefilled(c) == prefilled]
        if group:
            params = [vparams[i] for i in group] if isinstance(vparams, list) else vparams
            done = llm.chat([conversations[i] for i in group], params, use_tqdm=False,
                            **chat_kwargs(conversations[group[0]]))
            for i, out in zip(group, done, strict=True):
                outputs[i] = out
    return outputs


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

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One embedding per text from vLLM's pooling runner on this model (``tasks.llm.vllm_embed``)."""
        return vllm_embed.embed_texts(self.model, self.engine_args, texts)

    async def acomplete(self, conversation: Conversation, params: SamplingParams) -> Completion:
        """One completion from the async engine (call it on the streaming loop: ``tasks.llm.aio``)."""
        engine = await vllm_async.get_async_engine(self.model, self.engine_args)
        return await vllm_async.complete(engine, conversation, params)

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[Completion]:
        """Complete every conversation in one engine call; an item that can't run gets an ``error`` completion."""
        if not conversations:
            return []
        if self.streaming:
            to_vllm_sampling_params(params)  # refuse what vLLM can't run before any request is sent
            return gather_on_loop(self.acomplete(c, params) for c in conversations)
        entry = get_vllm_engine(self.model, self.engine_args)
        llm, lock = entry
        vparams = to_vllm_sampling_params(params)
        with lock:
            tokenizer, max_len = llm.get_tokenizer(), llm.llm_engine.model_config.max_model_len
            reasons = [prompt_problem(tokenizer, max_len, c) for c in conversations]
            results: list[Completion | None] = [error_completion(r) if r else None for r in reasons]
            todo = [i for i, r in enumerate(reasons) if r is None]
            try:
                outputs = chat_in_groups(llm, [conversations[i] for i in todo], vparams)
                for i, out in zip(todo, outputs, strict=True):
                    results[i] = completion_of(out, params.choices)
            except Exception as err:
                ENGINES.raise_if_dead(err, entry)
                logger.warning("batch of %d failed (%s); retrying item by item", len(todo), err)
                for i in todo:
                    try:
                        results[i] = completion_of(chat_in_groups(llm, [conversations[i]], vparams)[0], params.choices)
                    except Exception as item_err:
                        ENGINES.raise_if_dead(item_err, entry)
                        results[i] = error_completion(f"{type(item_err).__name__}: {item_err}")
        return [r if r is not None else error_completion("no output") for r in results]
