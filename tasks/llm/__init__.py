"""LLM backends: one protocol, a vLLM offline engine, an OpenAI-compatible client, a scripted fake."""

from tasks.llm.base import Completion, SamplingParams

__all__ = ["Completion", "SamplingParams"]
