"""The OpenAI-compatible client: retries, timeouts and per-item errors against a local stdlib server, then a real
``vllm serve`` of the bundled model (``vllm``)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import SecretStr

from tasks.core.config import LLMEnvSettings
from tasks.llm.base import BackendError, SamplingParams
from tasks.llm.openai_backend import OpenAIBackend
from tests.conftest import free_port
from tests.services import background, wait_healthy

SECRET = "sk-test-Zq81secret"
PARAMS = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=16)
HEALTH_TIMEOUT_S = 420  # vllm serve starts in about a minute on 2 idle cores; far slower when they are shared
GATE_WAIT_S = 30  # the most a gated request waits for the others (a bound, never reached when the client works)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class FakeServer:
    """An OpenAI-compatible server on 127.0.0.1 whose answer depends on the prompt's first word: ``ok``,
    ``flaky`` (429 on the first try), ``slow`` (answers only once the test ends), ``broken`` (500 that echoes
    the Authorization header), ``bad`` (400), ``garbled`` (200 with a body that is not JSON), ``judge``
    (``Not Equal`` with first-token log-probabilities), ``gate-N`` (answers once N requests have been in
    flight together, or after ``GATE_WAIT_S``)."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        self.auth: list[str] = []
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.peak = threading.Condition()
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def reply(self, status: int, payload: dict | str, headers: dict[str, str] | None = None) -> None:
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self.reply(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with server.peak:
                    server.bodies.append(body)
                    server.auth.append(self.headers.get("Authorization", ""))
                    n = server.attempts[prompt] = server.attempts.get(prompt, 0) + 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.peak.notify_all()
                try:
                    self.answer(prompt, n)
                finally:
                    with server.peak:
                        server.in_flight -= 1

            def answer(self, prompt: str, attempt: int) -> None:
                kind = prompt.split()[0]
                soon = {"Retry-After-Ms": "5"}  # the client waits what the server asks
                if kind == "flaky" and attempt == 1:
                    return self.reply(429, {"error": "slow down"}, soon)
                if kind == "slow":  # held until the test is over: only the client's timeout ends the request
                    server.closing.wait(GATE_WAIT_S)
                    return  # nobody reads an answer any more (writing one would only log a broken pipe)
                if kind == "broken":
                    return self.reply(500, f"internal error, request had {self.headers.get('Authorization')}", soon)
                if kind == "garbled":
                    return self.reply(200, "{not json")
                if kind == "bad":
                    return self.reply(400, {"error": {"message": "max_tokens is too large"}})
                if kind.startswith("gate-"):
                    with server.peak:
                        server.peak.wait_for(lambda: server.max_in_flight >= int(kind[5:]), timeout=GATE_WAIT_S)
                text, logprobs = f"echo: {prompt}", None
                if kind == "judge":
                    text, logprobs = "Not Equal", {"content": [{"token": "Not", "logprob": -0.1, "bytes": None,
                                                                "top_logprobs": [{"token": "Not", "logprob": -0.1},
                                                                                 {"token": "Equal", "logprob": -2.6}]}]}
                stop_reason = "###" if kind == "stopped" else None  # vLLM's server names the stop string it hit
                self.reply(200, {
                    "id": "x", "object": "chat.completion", "created": 0, "model": "fake-model",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "logprobs": logprobs, "finish_reason": "stop", "stop_reason": stop_reason}],
                    "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 2, "total_tokens": 0},
                })

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = FakeServer()
    yield s
    s.close()


def make_backend(url: str, timeout: float = 5.0, concurrency: int = 8, retries: int = 2,
                 model: str = "default", structured_outputs: bool = True) -> OpenAIBackend:
    settings = LLMEnvSettings(base_url=url, api_key=SecretStr(SECRET), request_timeout_s=timeout,
                              max_concurrency=concurrency, max_retries=retries)
    return OpenAIBackend(model, settings, structured_outputs=structured_outputs)


def test_429_is_retried_then_succeeds(server):
    backend = make_backend(server.url)
    [result] = backend.generate([user("flaky one")], PARAMS)
    assert server.attempts == {"flaky one": 2}
    assert (result.text, result.finish_reason, result.prompt_tokens, result.completion_tokens, result.error) == (
        "echo: flaky one", "stop", 2, 2, None)


def test_a_stop_string_ending_is_read_from_vllms_stop_reason(server):
    stopped, ended = make_backend(server.url).generate([user("stopped here"), user("ended here")], PARAMS)
    assert (stopped.at_stop_string, ended.at_stop_string) == (True, False)
    assert stopped.finish_reason == ended.finish_reason == "stop"


def test_batch_in_order_with_bounded_concurrency_model_and_key(server):
    backend = make_backend(server.url, concurrency=3)
    prompts = [f"gate-3 item {i}" for i in range(10)]  # the first three answer only when all three are in flight
    results = backend.generate([user(p) for p in prompts], PARAMS)
    assert [r.text for r in results] == [f"echo: {p}" for p in prompts]
    assert server.max_in_flight == 3  # reached (else the gate would have timed out with fewer), never exceeded
    assert backend.model_name == "fake-model"
    assert {b["model"] for b in server.bodies} == {"fake-model"}
    assert server.bodies[0]["max_tokens"] == 16 and server.bodies[0]["temperature"] == 0.0
    assert "seed" not in server.bodies[0] and "stop" not in server.bodies[0]
    assert set(server.auth) == {f"Bearer {SECRET}"}


def test_seed_and_stop_are_sent(server):
    make_backend(server.url).generate([user("ok")], SamplingParams(seed=3, stop=("###",)))
    assert (server.bodies[0]["seed"], server.bodies[0]["stop"]) == (3, ["###"])


def test_forced_choice_and_prefill_are_sent_as_vllm_request_fields(server):
    prefilled = [{"role": "user", "content": "ok rewrite"}, {"role": "assistant", "content": "#Rewritten Prompt#:"}]
    choice = SamplingParams(max_tokens=8, choices=("Equal", "Not Equal"))
    [judged, continued] = make_backend(server.url, concurrency=1).generate([user("ok judge"), prefilled], choice)
    first, second = server.bodies
    assert first["structured_outputs"] == {"choice": ["Equal", "Not Equal"]}
    assert (first["logprobs"], first["top_logprobs"]) == (True, 20)
    assert "continue_final_message" not in first and "add_generation_prompt" not in first
    assert (second["continue_final_message"], second["add_generation_prompt"]) == (True, False)
    # this server ignores the field and answers in prose: the answer is not marked constrained
    assert judged.ok and judged.text == "echo: ok judge" and not judged.constrained and judged.choice_margin is None
    assert continued.ok and continued.text == "echo: #Rewritten Prompt#:"
    make_backend(server.url, structured_outputs=False).generate([user("ok plain")], choice)
    assert not {"structured_outputs", "logprobs", "top_logprobs"} & set(server.bodies[-1])


def test_constrained_answer_and_margin_are_read_from_the_response(server):
    choice = SamplingParams(max_tokens=8, choices=("Equal", "Not Equal"))
    [done] = make_backend(server.url).generate([user("judge this")], choice)
    assert done.constrained and done.text == "Not Equal" and done.choice_margin == pytest.approx(2.5)
    assert (done.prompt_tokens, done.completion_tokens) == (2, 2)
    [free] = make_backend(server.url).generate([user("judge this")], PARAMS)
    assert free.text == "Not Equal" and not free.constrained and free.choice_margin is None


def test_timeout_gives_item_error_after_retries(server):
    backend = make_backend(server.url, timeout=2.0, retries=1)  # ample for "ok fine" on a busy machine
    results = backend.generate([user("slow one"), user("ok fine")], PARAMS)
    assert server.attempts["slow one"] == 2
    assert results[0].error == "APITimeoutError: Request timed out."
    assert (results[0].text, results[0].finish_reason) == ("", "error")
    assert results[1].ok and results[1].text == "echo: ok fine"


def test_500_that_never_recovers_and_400_not_retried(server, caplog):
    backend = make_backend(server.url, retries=2)
    with caplog.at_level(logging.DEBUG):
        results = backend.generate([user("broken thing"), user("bad request"), user("ok"), user("garbled")], PARAMS)
    assert server.attempts["broken thing"] == 3 and server.attempts["bad request"] == 1
    assert results[0].error == "HTTP 500: internal error, request had Bearer ***"
    assert results[1].error == 'HTTP 400: {"error": {"message": "max_tokens is too large"}}'
    assert results[2].ok and results[3].error.startswith("JSONDecodeError: Expecting property name")
    assert caplog.text.count("Retrying request in ") == 2  # the retries are logged ...
    for text in (results[0].error, results[1].error, caplog.text, repr(backend), repr(backend.settings)):
        assert SECRET not in text  # ... and the key is never in an error, a log line or a repr


def test_unreachable_server_raises_backend_error():
    backend = make_backend(f"http://127.0.0.1:{free_port()}/v1", retries=1)
    with pytest.raises(BackendError, match="not usable: APIConnectionError") as err:
        backend.generate([user("ok")], PARAMS)  # "default" asks /models first
    assert SECRET not in str(err.value)
    named = make_backend(backend.base_url, retries=0, model="some-model")
    with pytest.raises(BackendError, match="unreachable: APIConnectionError: Connection error") as err:
        named.generate([user("a"), user("b")], PARAMS)
    assert SECRET not in str(err.value)


def test_generate_works_from_a_thread_and_inside_a_running_loop(server):
    backend = make_backend(server.url)
    out: list = []
    t = threading.Thread(target=lambda: out.append(backend.generate([user("ok a")], PARAMS)))
    t.start()
    t.join(timeout=30)

    async def inside_loop():
        return backend.generate([user("ok b")], PARAMS)

    out.append(asyncio.run(inside_loop()))
    assert [r[0].text for r in out] == ["echo: ok a", "echo: ok b"]


def test_empty_batch_makes_no_request(server):
    assert make_backend(server.url).generate([], PARAMS) == []
    assert server.bodies == []


# ---- a real `vllm serve` of the bundled model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory, model_dir):
    from tasks.llm.vllm_engine import cpu_env_defaults

    model, port = model_dir, free_port()
    log_path = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    env = {**cpu_env_defaults(), **os.environ}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
           "--max-model-len", "1024", "--enforce-eager", "--dtype", "float32"]
    with background(cmd, env, log_path) as proc:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log_path, timeout=HEALTH_TIMEOUT_S)
        yield f"http://127.0.0.1:{port}/v1", model


@pytest.mark.vllm
def test_real_vllm_serve_batch_in_order(vllm_server):
    from transformers import AutoTokenizer

    url, model = vllm_server
    backend = OpenAIBackend("default", LLMEnvSettings(base_url=url, request_timeout_s=120, max_retries=1))
    assert backend.model_name == "smollm2"
    convs = [user("Hello" + " there" * i) for i in range(4)]
    results = backend.generate(convs, PARAMS)
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    expected = [len(tokenizer.encode(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
                                      add_special_tokens=False)) for c in convs]
    assert [r.prompt_tokens for r in results] == expected  # distinct lengths, so this checks the order
    for r in results:
        assert r.ok and r.text and r.finish_reason in ("stop", "length")
        assert 1 <= r.completion_tokens <= PARAMS.max_tokens


@pytest.mark.vllm
def test_real_vllm_serve_honours_the_forced_choice_and_the_prefill(vllm_server):
    from transformers import AutoTokenizer

    from prompts import load_pack

    url, model = vllm_server
    backend = OpenAIBackend("default", LLMEnvSettings(base_url=url, request_timeout_s=120, max_retries=1))
    pack = load_pack("general")
    pairs = [("Name three fruits.", "Name three tropical fruits and where each grows."),
             ("What is 2 + 2?", "What is 2 + 2?"), ("Explain rain.", "#")]
    judge = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=8, choices=("Equal", "Not Equal"))
    for r in backend.generate([pack.equality_messages(a, b)[0] for a, b in pairs], judge):
        assert r.ok and r.constrained and r.text in judge.choices
        assert r.choice_margin is not None and r.choice_margin >= 0
    convs = [pack.evolve_messages("add_constraints", s, prefill=True)[0] for s in ("Name a colour.", "Count to 3.")]
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    expected = [len(tokenizer.encode(tokenizer.apply_chat_template(c, continue_final_message=True, tokenize=False),
                                      add_special_tokens=False)) for c in convs]
    results = backend.generate(convs, PARAMS)
    assert [r.prompt_tokens for r in results] == expected  # the label is in the prompt: the turn was continued
    assert all(r.ok and r.completion_tokens >= 1 for r in results)
