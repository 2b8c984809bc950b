"""The backend protocol: a batch of conversations and sampling parameters in, completions out, in order.

A conversation whose last message is the assistant's is *prefilled*: the backend continues that message
instead of opening a new turn, and the completion holds only the continuation. ``SamplingParams.choices``
asks for a forced choice: a backend that can constrain decoding returns exactly one choice with
``constrained=True`` and the log-probability margin of the decision; one that can't returns free text with
``constrained=False``, for the caller to parse strictly.

A backend may also offer ``async def acomplete(conversation, params) -> Completion``: one request, sent as soon as
a row needs it, on the process's streaming loop (``tasks.llm.aio``). The streaming driver uses it where it
exists and sends one-item batches through ``generate`` in a thread otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from tasks.core.config import SamplingParams

Message = dict[str, str]
Conversation = list[Message]

__all__ = ["BackendError", "Completion", "Conversation", "LLMBackend", "Message", "SamplingParams",
           "choice_logprobs", "choice_margin", "forced_choice", "is_prefilled", "TOP_LOGPROBS"]

# How many alternatives a backend asks for at the deciding position of a forced choice.
TOP_LOGPROBS = 20


class Completion(BaseModel):
    """One completion. ``error`` is set (and ``text`` empty) when this item failed alone.

    ``constrained``: the text was produced under a forced choice (it is exactly one of the choices).
    ``choice_margin``: for a forced choice, the log-probability of the chosen answer's best first token minus
    that of the best first token of any other choice (>= 0 for a greedy decision; ``None`` when unknown).
    ``choice_logprobs``: the same position's best log-probability of each choice found among the alternatives
    (``None``: the backend gave none).
    ``at_stop_string``: the engine ended the text at one of the request's stop strings (not at end-of-sequence).
    """

    model_config = ConfigDict(frozen=True)

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    constrained: bool = False
    choice_margin: float | None = None
    choice_logprobs: dict[str, float] | None = None  # forced choice: each choice's best first-token log-probability
    at_stop_string: bool = False

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


def is_prefilled(conversation: Conversation) -> bool:
    """Whether the conversation ends with the assistant's (prefilled) turn, to be continued."""
    return bool(conversation) and conversation[-1].get("role") == "assistant"


def choice_margin(top_logprobs: Mapping[str, float], chosen: str, choices: Sequence[str]) -> float | None:
    """The margin of a forced choice at its first token, from that position's top log-probabilities.

    Each token (text) counts for the choices it begins (surrounding whitespace ignored); a token that begins
    several choices decides nothing and is skipped. The margin is the best log-probability among tokens
    beginning ``chosen`` minus the best among tokens beginning any other choice. When no token of another
    choice is in the list, the lowest listed log-probability bounds it (the margin is then a lower bound).
    ``None`` when no listed token begins ``chosen``.
    """
    best = choice_logprobs(top_logprobs, choices)
    if chosen not in best:
        return None
    others = [lp for c, lp in best.items() if c != chosen]
    other = max(others) if others else min(lp for lp in top_logprobs.values() if math.isfinite(lp))
    return best[chosen] - other


def choice_logprobs(top_logprobs: Mapping[str, float], choices: Sequence[str]) -> dict[str, float]:
    """Each choice's best first-token log-probability among ``top_logprobs`` (tokens, surrounding whitespace
    ignored, that begin exactly one choice; masked-out tokens, -inf, skipped); a choice with no such token is
    left out."""
    best: dict[str, float] = {}
    for token, logprob in top_logprobs.items():
        piece = token.strip()
        if not piece or not math.isfinite(logprob):
            continue
        begun = [c for c in choices if c.startswith(piece)]
        if len(begun) == 1:
            best[begun[0]] = max(best.get(begun[0], float("-inf")), logprob)
    return best


def forced_choice(top_logprobs: Mapping[str, float] | None, chosen: str,
                  choices: Sequence[str]) -> dict[str, float | dict[str, float] | None]:
    """A forced choice's ``choice_margin`` and ``choice_logprobs`` fields from its first position's alternatives."""
    if not top_logprobs:
        return {"choice_margin": None, "choice_logprobs": None}
    return {"choice_margin": choice_margin(top_logprobs, chosen, choices),
            "choice_logprobs": choice_logprobs(top_logprobs, choices)}
