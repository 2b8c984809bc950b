"""LLM backends: one protocol, vLLM (offline or async engine), an OpenAI-compatible client, a scripted fake.

The backends are loaded on first access, so importing ``tasks.llm`` stays cheap (no vLLM, no HTTP client).
"""

from __future__ import annotations

import importlib
from typing import Any

from tasks.llm.base import BackendError, Completion, Conversation, LLMBackend, Message, SamplingParams

_LAZY = {
    "get_backend": "tasks.llm.factory",
    "prepare_default_model": "tasks.llm.models",
    "resolve_model": "tasks.llm.models",
    "OpenAIBackend": "tasks.llm.openai_backend",
    "ScriptedBackend": "tasks.llm.scripted",
    "VLLMBackend": "tasks.llm.vllm_backend",
    "get_vllm_engine": "tasks.llm.vllm_backend",
}

__all__ = ["BackendError", "Completion", "Conversation", "LLMBackend", "Message", "SamplingParams", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tasks.llm' has no attribute {name!r}")
