"""Build the backend a run's ``LLMConfig`` asks for."""

from __future__ import annotations

from tasks.core.config import EnvSettings, LLMConfig
from tasks.llm.base import LLMBackend


def get_backend(llm_config: LLMConfig, env: EnvSettings | None = None) -> LLMBackend:
    """The backend for ``llm_config``: ``vllm`` (local engine, ``default`` = the bundled model), ``openai``,
    or ``scripted`` (tests and benchmarks: a responder registered under ``model``, or ``demo``)."""
    env = env or EnvSettings()
    if llm_config.backend == "vllm":
        from tasks.llm.models import resolve_model
        from tasks.llm.vllm_backend import VLLMBackend

        return VLLMBackend(resolve_model(llm_config.model, env.llm.models_dir), llm_config.engine_args)
    if llm_config.backend == "openai":
        from tasks.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(llm_config.model, env.llm)
    if llm_config.backend == "scripted":
        from tasks.llm.scripted import scripted_backend

        return scripted_backend(llm_config.model)
    raise ValueError(f"unknown LLM backend {llm_config.backend!r} (expected 'vllm', 'openai' or 'scripted')")
