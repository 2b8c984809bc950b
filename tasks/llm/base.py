"""The backend protocol: a batch of conversations and sampling parameters in, completions out, in order."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from tasks.core.config import SamplingParams

Message = dict[str, str]
Conversation = list[Message]

__all__ = ["BackendError", "Completion", "Conversation", "LLMBackend", "Message", "SamplingParams"]


class Completion(BaseModel):
    """One completion. ``error`` is set (and ``text`` empty) when this item failed alone."""

    model_config = ConfigDict(frozen=True)

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class BackendError(RuntimeError):
    """The backend as a whole is unusable (engine failed to start, server unreachable)."""


@runtime_checkable
class LLMBackend(Protocol):
    """What every backend offers."""

    model_name: str

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[Completion]:
        """Complete every conversation; the i-th completion answers the i-th conversation."""
        ...
