"""Embeddings from vLLM's pooling runner (``runner="pooling", convert="embed"``) on a generative model: one pooling
engine per model and arguments per process, beside the generating one (the bundled model gives 576 dimensions)."""

from __future__ import annotations

import threading
from typing import Any

from tasks.llm.vllm_engine import EngineCache

POOLING = EngineCache("pooling")


def _build(model: str, kwargs: dict[str, Any]) -> tuple[Any, threading.Lock]:
    import vllm

    return vllm.LLM(model=model, **kwargs), threading.Lock()


def embed_texts(model: str, engine_args: dict[str, Any] | None, texts: list[str]) -> list[list[float]]:
    """One unit-length embedding per text, in order; a text longer than the model's context is cut to it."""
    if not texts:
        return []
    entry = POOLING.get(model, engine_args, _build, runner="pooling", convert="embed")
    llm, lock = entry
    with lock:
        tokenizer, max_len = llm.get_tokenizer(), llm.llm_engine.model_config.max_model_len
        prompts = [{"prompt_token_ids": tokenizer.encode(t or " ")[: max_len - 1]} for t in texts]
        try:
            outputs = llm.embed(prompts, use_tqdm=False)
        except Exception as err:
            POOLING.raise_if_dead(err, entry)
            raise
    return [list(out.outputs.embedding) for out in outputs]


def pooling_engines() -> list[Any]:
    """Every pooling engine of the process, the cache emptied (to shut them down)."""
    return POOLING.pop_all()
