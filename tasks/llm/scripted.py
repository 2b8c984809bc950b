"""A scripted backend: a Python function answers each conversation. For fast tests of the logic around the model."""

from __future__ import annotations

import hashlib
import inspect
import math
import re
import threading
from collections.abc import Callable
from typing import Any

from tasks.llm.base import BackendError, Completion, Conversation, SamplingParams

Responder = Callable[[Conversation, SamplingParams], Any]  # Completion | str, or an awaitable of one
Embedder = Callable[[str], list[float]]
FAKE_DIMENSIONS = 64


def fake_embedding(text: str) -> list[float]:
    """A deterministic unit vector for logic tests: each word, lower-cased, adds one to a dimension its hash picks,
    so texts that share words point the same way."""
    vector = [0.0] * FAKE_DIMENSIONS
    for word in re.findall(r"\w+", text.lower()) or [""]:
        vector[int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "big") % FAKE_DIMENSIONS] += 1.0
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector]


class ScriptedBackend:
    """Answers with ``responder(conversation, params)``; a plain string becomes a ``stop`` completion.

    ``constrained=True`` plays a backend with constrained decoding: under a forced choice an answer must be one
    of the choices (anything else fails the item) and is marked ``constrained`` with ``margin``. ``embed`` gives
    ``embedder(text)`` for each text (default: ``fake_embedding``).
    """

    def __init__(self, responder: Responder, model_name: str = "scripted", constrained: bool = False,
                 margin: float | None = None, embedder: Embedder = fake_embedding):
        self.responder = responder
        self.embedder = embedder
        self.model_name = model_name
        self.constrained = constrained
        self.margin = margin
        self.calls = 0
        self.items = 0
        self._lock = threading.Lock()

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[Completion]:
        """Answer every conversation in order; a responder that raises fails only its item."""
        self._count(len(conversations))
        out = []
        for conv in conversations:
            try:
                result = self.responder(conv, params)
            except Exception as err:  # one bad item never fails the batch
                result = Completion(error=f"{type(err).__name__}: {err}", finish_reason="error")
            out.append(self._completion(conv, params, result))
        return out

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One embedding per text, in order."""
        return [self.embedder(t) for t in texts]

    async def acomplete(self, conversation: Conversation, params: SamplingParams) -> Completion:
        """Answer one conversation (a call of one item); a responder may return an awaitable to hold the row."""
        self._count(1)
        try:
            result = self.responder(conversation, params)
            if inspect.isawaitable(result):
                result = await result
        except Exception as err:
            result = Completion(error=f"{type(err).__name__}: {err}", finish_reason="error")
        return self._completion(conversation, params, result)

    def _count(self, items: int) -> None:
        with self._lock:
            self.calls += 1
            self.items += items

    def _completion(self, conv: Conversation, params: SamplingParams, result: Completion | str) -> Completion:
        if isinstance(result, str):
            prompt_tokens = sum(len(m["content"].split()) for m in conv)
            result = Completion(text=result, finish_reason="stop", prompt_tokens=prompt_tokens,
                                completion_tokens=max(1, len(result.split())))
        if self.constrained and params.choices is not None and result.ok:
            if result.text not in params.choices:
                return Completion(error=f"scripted answer {result.text!r} is not one of {params.choices}",
                                  finish_reason="error")
            return result.model_copy(update={"constrained": True, "choice_margin": self.margin})
        return result

GIVEN = "#Given Prompt#:"
# The headings an evolution prompt shows its instruction under (in-breadth, in-depth, complicate-input).
GIVEN_HEADINGS = ("#Given Prompt#:", "#The Given Prompt#:", "The Given Prompt:")
ADDITIONS = {
    "constraint": "Answer in no more than 100 words and cite one concrete example.",
    "depth": "Also explain the underlying principles and discuss two edge cases.",
    "specific": "Use the specific case of a small public library in Lisbon.",
    "steps": "Show each intermediate step of your reasoning explicitly before the final answer.",
    "input": "Use this data as part of the input: | item | value |\n| a | 3 |\n| b | 7 |",
}


# A response rewrite (response evolution): the sentence the demo adds, by a word of the respect the prompt names.
RESPONSE_GIVEN, RESPONSE_ADDITIONS = "#The Given Response#:", {
    "helpful": "To act on it, start with the first step and check each result.",
    "relevant": "This answers exactly what was asked.", "deeper": "It holds because each step follows from the last.",
    "creative": "Think of it as a recipe whose steps can be tasted.",
    "detailed": "In figures: three steps, each taking under a minute.",
}


def is_evolution_prompt(text: str) -> bool:
    """Whether a prompt asks to evolve an instruction (it shows one under a given-prompt heading)."""
    return any(heading in text for heading in GIVEN_HEADINGS)


def given_prompt(text: str) -> str:
    """The instruction an evolution prompt shows under its last given-prompt heading (after any worked example)."""
    at, heading = max((text.rfind(h), h) for h in GIVEN_HEADINGS)
    body = text[at + len(heading):]
    for end in ("#Rewritten Prompt#:", "#Created Prompt#:", "Rewritten Prompt ("):
        body = body.split(end, 1)[0]
    return body.strip()


def last_user_text(conversation: Conversation) -> str:
    """The content of the conversation's last user message (a prefilled assistant turn may follow it)."""
    return next(m["content"] for m in reversed(conversation) if m["role"] == "user")


def demo_responder(conversation: Conversation, params: SamplingParams) -> str:
    """A deterministic stand-in for a capable model, reading the prompt packs' scaffolding."""
    text = last_user_text(conversation)
    if params.choices is not None and "Yes" in params.choices:
        return "Yes"
    if params.choices is not None and all(c.isdigit() for c in params.choices):  # a score: from the text's bytes
        return params.choices[sum(text.encode()) % len(params.choices)]
    if RESPONSE_GIVEN in text:  # a response rewrite: the given response and one sentence for the respect asked
        given = text.rsplit(RESPONSE_GIVEN, 1)[1].split("#Rewritten Response#:", 1)[0].strip()
        method = text.rsplit("#The Given Prompt#:", 1)[0]
        return f"{given} {next((v for k, v in RESPONSE_ADDITIONS.items() if k in method), '')}".strip()
    if GIVEN in text and "#Created Prompt#" in text:
        words = given_prompt(text).split()
        return "Devise an uncommon variant of this task: " + " ".join(reversed(words[:12]))
    if is_evolution_prompt(text):
        method = text.lower()
        key = next((k for k, hint in (("constraint", "constraint"), ("depth", "depth"), ("specific", "specific"),
                                      ("steps", "step"), ("input", "input")) if hint in method), "constraint")
        return f"{given_prompt(text)} {ADDITIONS[key]}"
    if "Not Equal" in text and "Equal" in text:
        return "Not Equal"
    first_line = text.strip().splitlines()[0]
    return (f"Here is a complete answer to the request '{first_line[:60]}'. First, we identify what is asked; "
            "then we work through the details one at a time, and finally we check the result against the request.")


_REGISTRY: dict[str, ScriptedBackend] = {}


def register_scripted_backend(backend: ScriptedBackend, name: str = "scripted") -> None:
    """Make ``backend`` what a run with ``llm: {backend: scripted, model: NAME}`` uses in this process."""
    _REGISTRY[name] = backend


def scripted_backend(name: str) -> ScriptedBackend:
    """The scripted backend registered as ``name``; ``demo`` is always there (the demo responder)."""
    if name == "demo" and name not in _REGISTRY:
        _REGISTRY[name] = ScriptedBackend(demo_responder, model_name="scripted-demo")
    if name not in _REGISTRY:
        known = ", ".join(sorted({"demo", *_REGISTRY}))
        raise BackendError(f"no scripted backend registered as {name!r} (registered: {known}); scripted backends "
                           f"are for tests and benchmarks: register one with register_scripted_backend, or use 'demo'")
    return _REGISTRY[name]
