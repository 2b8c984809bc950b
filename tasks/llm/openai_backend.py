"""A client for ``vllm serve`` or any OpenAI-compatible server: bounded concurrency, retries, per-item errors."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
from typing import Any

import httpx

from tasks.core.config import LLMEnvSettings
from tasks.llm.base import (
    TOP_LOGPROBS,
    BackendError,
    Completion,
    Conversation,
    SamplingParams,
    choice_margin,
    is_prefilled,
)

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


class _ItemFailed(Exception):
    """One request failed for good; ``unreachable`` when no server ever answered it."""

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


class OpenAIBackend:
    """Sends each conversation to ``{base_url}/chat/completions``; ``model="default"`` uses the server's first model.

    Retries 408/409/429/5xx, timeouts and connection errors ``max_retries`` times with exponential back-off; an
    item that still fails gets an ``error`` completion. ``BackendError`` only when no request reached the server.

    A forced choice (``SamplingParams.choices``) is sent as vLLM's ``structured_outputs: {"choice": [...]}`` with
    ``logprobs``/``top_logprobs`` when ``structured_outputs`` is on (a vLLM server); an answer that is not exactly
    one of the choices (a server that ignored the field) comes back with ``constrained=False``. A prefilled
    conversation is sent with vLLM's ``continue_final_message: true, add_generation_prompt: false``.
    """

    def __init__(self, model: str = "default", settings: LLMEnvSettings | None = None, max_retries: int = 3,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0, structured_outputs: bool = True):
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.settings = settings or LLMEnvSettings()
        self.base_url = self.settings.base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._model = None if model == "default" else model
        self.structured_outputs = structured_outputs

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self._model!r}, base_url={self.base_url!r})"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.api_key.get_secret_value()}"}

    def _redact(self, text: str) -> str:
        key = self.settings.api_key.get_secret_value()
        return text.replace(key, "***") if key else text

    @property
    def model_name(self) -> str:
        """The served model's id (asked from ``/models`` once when the model is ``"default"``)."""
        if self._model is None:
            self._model = self.health_check()[0]
        return self._model

    def health_check(self) -> list[str]:
        """The ids of the models the server offers; ``BackendError`` when it can't be reached."""
        try:
            resp = httpx.get(f"{self.base_url}/models", headers=self._headers(),
                             timeout=self.settings.request_timeout_s)
            resp.raise_for_status()
            ids = [m["id"] for m in resp.json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as err:
            raise BackendError(self._redact(f"OpenAI-compatible server at {self.base_url} is not usable: "
                                            f"{type(err).__name__}: {err}")) from None
        if not ids:
            raise BackendError(f"OpenAI-compatible server at {self.base_url} offers no model")
        return ids

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[Completion]:
        """Complete every conversation, in order. Works from any thread; inside a running loop it uses a helper
        thread."""
        if not conversations:
            return []
        model = self.model_name
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._generate_all(model, conversations, params))
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self._generate_all(model, conversations, params)).result()

    async def _generate_all(self, model: str, conversations: list[Conversation],
                            params: SamplingParams) -> list[Completion]:
        limit = max(1, self.settings.max_concurrency)
        semaphore = asyncio.Semaphore(limit)
        limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
        async with httpx.AsyncClient(base_url=self.base_url, headers=self._headers(), limits=limits,
                                     timeout=self.settings.request_timeout_s) as client:
            results = await asyncio.gather(
                *(self._one(client, semaphore, self._body(model, conv, params, self.structured_outputs),
                            params.choices if self.structured_outputs else None)
                  for conv in conversations)
            )
        completions = [c for c, _ in results]
        if all(unreachable for _, unreachable in results):
            raise BackendError(f"OpenAI-compatible server at {self.base_url} unreachable: {completions[0].error}")
        return completions

    @staticmethod
    def _body(model: str, conversation: Conversation, params: SamplingParams,
              structured_outputs: bool = True) -> dict[str, Any]:
        """The request body for one conversation."""
        body: dict[str, Any] = {"model": model, "messages": conversation, "temperature": params.temperature,
                                "top_p": params.top_p, "max_tokens": params.max_tokens}
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if is_prefilled(conversation):
            body["add_generation_prompt"] = False
            body["continue_final_message"] = True
        if params.choices is not None and structured_outputs:
            body["structured_outputs"] = {"choice": list(params.choices)}
            body["logprobs"] = True
            body["top_logprobs"] = TOP_LOGPROBS
        return body

    async def _one(self, client: httpx.AsyncClient, semaphore: asyncio.Semaphore, body: dict[str, Any],
                   choices: tuple[str, ...] | None = None) -> tuple[Completion, bool]:
        async with semaphore:
            try:
                return self._parse(await self._post_with_retries(client, body), choices), False
            except _ItemFailed as err:
                return Completion(error=self._redact(str(err)), finish_reason="error"), err.unreachable

    async def _post_with_retries(self, client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
        reached = False
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                resp = await client.post("/chat/completions", json=body)
            except (httpx.TimeoutException, httpx.TransportError) as err:
                reached = reached or not isinstance(err, (httpx.ConnectError, httpx.ConnectTimeout))
                problem = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            else:
                reached = True
                if resp.status_code == 200:
                    try:
                        return resp.json()
                    except ValueError:
                        raise _ItemFailed(f"invalid JSON from server: {resp.text[:200]!r}") from None
                problem = f"HTTP {resp.status_code}: {resp.text[:300]}"
                if resp.status_code not in RETRY_STATUS:
                    raise _ItemFailed(problem)
                retry_after = _retry_after(resp)
            if attempt < self.max_retries:
                delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * (1 + 0.1 * random.random())
                delay = max(delay, min(retry_after or 0.0, self.max_backoff_s))
                logger.info("request failed (%s), retry %d/%d in %.2fs", self._redact(problem), attempt + 1,
                            self.max_retries, delay)
                await asyncio.sleep(delay)
        raise _ItemFailed(f"failed after {self.max_retries + 1} attempts: {problem}", unreachable=not reached)

    @staticmethod
    def _parse(data: dict[str, Any], choices: tuple[str, ...] | None = None) -> Completion:
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            usage = data.get("usage") or {}
            constrained = choices is not None and text in choices
            margin = None
            content = (choice.get("logprobs") or {}).get("content") or []
            if constrained and content:
                first = {t["token"]: float(t["logprob"]) for t in content[0].get("top_logprobs") or []}
                margin = choice_margin(first, text, choices) if first else None
            return Completion(text=text, finish_reason=choice.get("finish_reason"),
                              prompt_tokens=int(usage.get("prompt_tokens") or 0),
                              completion_tokens=int(usage.get("completion_tokens") or 0),
                              constrained=constrained, choice_margin=margin)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as err:
            return Completion(error=f"unexpected response shape: {type(err).__name__}: {err}", finish_reason="error")


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers["retry-after"])
    except (KeyError, ValueError):
        return None
