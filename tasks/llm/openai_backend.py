"""A client for ``vllm serve`` or any OpenAI-compatible server over the ``openai`` package: bounded concurrency
(``AsyncOpenAI`` on the process's streaming loop and a semaphore, for a batch and for streamed rows alike), per-item
errors, the key kept out of every message, embeddings (``/embeddings``). Retries, back-off and Retry-After are the
package's."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from tasks.core.config import LLMEnvSettings, SamplingParams
from tasks.llm.aio import gather_on_loop
from tasks.llm.base import TOP_LOGPROBS, BackendError, Completion, Conversation, forced_choice, is_prefilled

EMBED_BATCH = 64  # texts per ``/embeddings`` request


class OpenAIBackend:
    """Sends each conversation to ``{base_url}/chat/completions``; ``model="default"`` uses the server's first model.

    At most ``settings.max_concurrency`` requests are in flight. The client retries 408/409/429/5xx, timeouts and
    connection errors ``settings.max_retries`` times (exponential back-off with jitter, Retry-After honoured); an
    item that still fails gets an ``error`` completion. ``BackendError`` when no server answered any item.

    A forced choice (``SamplingParams.choices``) is sent as vLLM's ``structured_outputs: {"choice": [...]}`` with
    ``logprobs``/``top_logprobs`` when ``structured_outputs`` is on (a vLLM server); an answer that is not exactly
    one of the choices (a server that ignored the field) comes back with ``constrained=False``. A prefilled
    conversation is sent with vLLM's ``continue_final_message: true, add_generation_prompt: false``.
    """

    def __init__(self, model: str = "default", settings: LLMEnvSettings | None = None,
                 structured_outputs: bool = True):
        self.settings = settings or LLMEnvSettings()
        self.base_url = self.settings.base_url.rstrip("/")
        self._model = None if model == "default" else model
        self.structured_outputs = structured_outputs
        self._aclient: openai.AsyncOpenAI | None = None  # the client and its slots, made on the streaming loop
        self._slots: asyncio.Semaphore | None = None
        self._reached = False  # a server answered once: an unreachable item is then the item's error

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self._model!r}, base_url={self.base_url!r})"

    def _client_args(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "api_key": self.settings.api_key.get_secret_value(),
                "timeout": self.settings.request_timeout_s, "max_retries": self.settings.max_retries}

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
            with openai.OpenAI(**{**self._client_args(), "max_retries": 0}) as client:
                ids = [m.id for m in client.models.list()]
        except (openai.OpenAIError, ValueError) as err:  # ValueError: a body that is not JSON
            raise BackendError(self._redact(f"OpenAI-compatible server at {self.base_url} is not usable: "
                                            f"{_describe(err)}")) from None
        if not ids:
            raise BackendError(f"OpenAI-compatible server at {self.base_url} offers no model")
        return ids

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[Completion]:
        """Complete every conversation, in order, on the process's streaming loop (call it from any other thread,
        inside a running event loop too). ``BackendError`` when no item got an answer from a server."""
        if not conversations:
            return []
        model = self.model_name
        results = gather_on_loop(self._complete(model, c, params) for c in conversations)
        if all(unreachable for _, unreachable in results):
            raise BackendError(f"OpenAI-compatible server at {self.base_url} unreachable: {results[0][0].error}")
        return [completion for completion, _ in results]

    async def acomplete(self, conversation: Conversation, params: SamplingParams) -> Completion:
        """One completion (call it on the process's streaming loop: ``tasks.llm.aio``). ``BackendError`` when the
        server can't be reached and never answered."""
        model = self._model or await asyncio.to_thread(lambda: self.model_name)
        completion, unreachable = await self._complete(model, conversation, params)
        if unreachable and not self._reached:
            raise BackendError(f"OpenAI-compatible server at {self.base_url} unreachable: {completion.error}")
        return completion

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One embedding per text, in order, from ``{base_url}/embeddings`` (``client.embeddings.create``, floats) on
        this backend's model: requests of ``EMBED_BATCH`` texts, sent together within ``settings.max_concurrency``;
        an empty text is sent as one space (the API refuses an empty one). ``BackendError`` with the server's answer
        when a request still fails after the client's retries, or answers with another number of vectors."""
        if not texts:
            return []
        model = self.model_name
        batches = [texts[i:i + EMBED_BATCH] for i in range(0, len(texts), EMBED_BATCH)]
        vectors: list[list[float]] = []
        for i, result in enumerate(gather_on_loop(self._embed(model, batch) for batch in batches)):
            if isinstance(result, str):
                first = i * EMBED_BATCH + 1
                raise BackendError(f"OpenAI-compatible server at {self.base_url}: the embeddings of texts {first}-"
                                   f"{first + len(batches[i]) - 1} from model {model!r} failed: {result}")
            vectors += result
        return vectors

    async def _embed(self, model: str, texts: list[str]) -> list[list[float]] | str:
        """The embeddings of one request's texts in their order (by each vector's ``index``), or why not."""
        client, slots = self._connection()
        async with slots:
            try:
                response = await client.embeddings.create(model=model, input=[t or " " for t in texts],
                                                          encoding_format="float")
            except (openai.OpenAIError, ValueError) as err:
                return self._redact(_describe(err))
        self._reached = True
        data = sorted(response.data, key=lambda d: d.index)
        if [d.index for d in data] != list(range(len(texts))):
            return f"{len(data)} vector(s) with indices {[d.index for d in data][:8]} for {len(texts)} text(s)"
        return [[float(v) for v in d.embedding] for d in data]

    def _connection(self) -> tuple[openai.AsyncOpenAI, asyncio.Semaphore]:
        """The client and the slots of the process's requests, made on the streaming loop on first use."""
        if self._aclient is None or self._slots is None:
            self._aclient = openai.AsyncOpenAI(**self._client_args())
            self._slots = asyncio.Semaphore(self.settings.max_concurrency)
        return self._aclient, self._slots

    async def _complete(self, model: str, conversation: Conversation,
                        params: SamplingParams) -> tuple[Completion, bool]:
        """One completion, and whether the item failed without any answer from a server. At most
        ``settings.max_concurrency`` requests of the process are in flight, whatever batch or shard they come from."""
        client, slots = self._connection()
        async with slots:
            try:
                response = await client.chat.completions.create(**self._request(model, conversation, params))
            except (openai.OpenAIError, ValueError) as err:
                return Completion(error=self._redact(_describe(err)), finish_reason="error"), _unreachable(err)
        self._reached = True
        return _parse(response, params.choices if self.structured_outputs else None), False

    def _request(self, model: str, conversation: Conversation, params: SamplingParams) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` for one conversation (vLLM's fields in
        ``extra_body``)."""
        request: dict[str, Any] = {"model": model, "messages": conversation, "temperature": params.temperature,
                                   "top_p": params.top_p, "max_tokens": params.max_tokens}
        if params.seed is not None:
            request["seed"] = params.seed
        if params.stop:
            request["stop"] = list(params.stop)
        extra: dict[str, Any] = {}
        if is_prefilled(conversation):
            extra.update(add_generation_prompt=False, continue_final_message=True)
        if params.choices is not None and self.structured_outputs:
            extra["structured_outputs"] = {"choice": list(params.choices)}
            request.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        if extra:
            request["extra_body"] = extra
        return request


def _unreachable(err: Exception) -> bool:
    """No server answered (a connection that failed, not one that timed out waiting for an answer)."""
    return isinstance(err, openai.APIConnectionError) and not isinstance(err, openai.APITimeoutError)


def _describe(err: Exception) -> str:
    """An error in one line: ``HTTP <status>: <body>`` for an answer, ``<kind>: <message>`` otherwise."""
    if isinstance(err, openai.APIStatusError):
        return f"HTTP {err.status_code}: {err.response.text[:300]}"
    return f"{type(err).__name__}: {err}"


def _parse(response: ChatCompletion, choices: tuple[str, ...] | None) -> Completion:
    """The completion in a response; under a forced choice, whether the answer is one and its margin."""
    try:
        choice = response.choices[0]
        text = choice.message.content or ""
        constrained = choices is not None and text in choices
        decided: dict[str, Any] = {}
        content = choice.logprobs.content if choice.logprobs else None
        if constrained and choices is not None:
            first = {t.token: float(t.logprob) for t in content[0].top_logprobs or []} if content else None
            decided = forced_choice(first, text, choices)
        usage = response.usage
        return Completion(text=text, finish_reason=choice.finish_reason,
                          prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                          completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                          constrained=constrained, **decided,
                          at_stop_string=isinstance(getattr(choice, "stop_reason", None), str))  # vLLM's field
    except (IndexError, TypeError, AttributeError, ValueError) as err:
        return Completion(error=f"unexpected response shape: {type(err).__name__}: {err}", finish_reason="error")
