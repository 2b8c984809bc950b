"""Embeddings from the ``openai`` backend (``client.embeddings.create``) against a small local OpenAI-compatible server
(``/v1/models``, ``/v1/chat/completions``, ``/v1/embeddings``): in order across requests, errors named, and a scored
run whose scores and embeddings come from that server selects exactly the rows its crafted vectors call for; then a
real ``vllm serve`` of the bundled model on the pooling runner (``vllm``)."""

from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import SecretStr

from flows.evol_instruct import evol_instruct
from storage import read_shard
from tasks.core.config import LLMEnvSettings, parse_run_config
from tasks.llm.base import BackendError
from tasks.llm.openai_backend import EMBED_BATCH, OpenAIBackend
from tasks.mix.select import select_table, unit_rows
from tests.conftest import free_port
from tests.services import background, wait_healthy

SECRET = "sk-embed-Qx7secret"

# instruction -> (the score both of its scoring prompts get, its embedding); rank = score x score
ROWS = {
    "Describe the water cycle for a ten-year-old reader.": (6, [1.0, 0.0, 0.0]),
    "Summarise how rain forms over the ocean in plain words.": (5, [0.99, 0.14, 0.0]),  # 0.99 to the first: barred
    "Write a haiku about a lighthouse keeper at dawn.": (4, [0.0, 1.0, 0.0]),
    "Compose a short poem about a harbour beacon before sunrise.": (3, [0.0, 0.95, 0.31]),  # 0.95 to the third
    "List three prime numbers greater than one hundred.": (2, [0.0, 0.0, 1.0]),
    "Name a European capital city on a river and the river.": (1, [1.0, 0.5, 0.3]),  # 0.86 to the first
}


class EmbeddingServer:
    """Answers ``/v1/models``, a score for a chat completion (the score of the row whose instruction is in the
    prompt) and ``/v1/embeddings`` (a row's vector for its instruction, else the text's length in one dimension;
    ``fail`` in a text: HTTP 400), the vectors of a request listed in reverse order with their ``index``."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict]] = []
        self.auth: set[str] = set()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def reply(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self.reply(200, {"object": "list", "data": [{"id": "scorer", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append((self.path, body))
                    server.auth.add(self.headers.get("Authorization", ""))
                if self.path.endswith("/embeddings"):
                    return self.embeddings(body)
                prompt = body["messages"][-1]["content"]
                score = next(str(s) for text, (s, _) in ROWS.items() if text in prompt)
                self.reply(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": score},
                                              "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}})

            def embeddings(self, body: dict) -> None:
                if any("fail" in text for text in body["input"]):
                    return self.reply(400, {"error": {"message": "input too long"}})
                vectors = [ROWS[t][1] if t in ROWS else [float(len(t))] for t in body["input"]]
                data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)][::-1]
                self.reply(200, {"object": "list", "model": body["model"], "data": data,
                                 "usage": {"prompt_tokens": 1, "total_tokens": 1}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def requests(self, kind: str) -> list[dict]:
        return [body for path, body in self.bodies if path.endswith(kind)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = EmbeddingServer()
    yield s
    s.close()


def test_embeddings_keep_their_order_across_requests_and_a_failed_request_is_named(server):
    backend = OpenAIBackend("embedder", LLMEnvSettings(base_url=server.url, api_key=SecretStr(SECRET), max_retries=0))
    texts = ["x" * n for n in range(1, 2 * EMBED_BATCH + 7)] + [""]
    assert backend.embed(texts) == [[float(n)] for n in range(1, 2 * EMBED_BATCH + 7)] + [[1.0]]
    sent = server.requests("/embeddings")
    assert sorted(len(b["input"]) for b in sent) == [7, EMBED_BATCH, EMBED_BATCH]  # sent together, in any order
    assert {(b["model"], b["encoding_format"]) for b in sent} == {("embedder", "float")}
    assert [" "] in [b["input"][-1:] for b in sent]  # the empty text went as one space
    assert server.auth == {f"Bearer {SECRET}"} and backend.embed([]) == [] and len(server.bodies) == 3

    with pytest.raises(BackendError, match=rf"the embeddings of texts {EMBED_BATCH + 1}-{EMBED_BATCH + 1} from "
                                           r"model 'embedder' failed: HTTP 400: .*input too long") as err:
        backend.embed(["ok"] * EMBED_BATCH + ["fail here"])
    assert SECRET not in str(err.value)


def test_a_run_scored_and_embedded_by_an_openai_server_selects_the_rows_its_vectors_call_for(prefect_harness,
                                                                                           tmp_path, server,
                                                                                           monkeypatch):
    monkeypatch.setenv("EVOL_LLM__BASE_URL", server.url)
    monkeypatch.setenv("EVOL_LLM__API_KEY", SECRET)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": text, "output": f"An answer to: {text}"}) + "\n"
                             for text in ROWS))
    config = parse_run_config({
        "name": "openai-embedded", "seeds": str(seeds), "output_root": str(tmp_path / "runs"), "rounds": 0,
        "shard_size": 10, "llm": {"backend": "scripted", "model": "demo",
                                  "score": {"backend": "openai", "model": "scorer"}},
        "score": {"embedding_model": "embedder"}, "mix": {"sample_size": 3, "selection": {"threshold": 0.9}},
        "orchestration": {"retries": 0, "retry_delay_s": 0}})
    result = evol_instruct(config)

    # every scoring prompt went to the scoring model, every text to the embedding model, once
    assert {b["model"] for b in server.requests("/chat/completions")} == {"scorer"}
    assert len(server.requests("/chat/completions")) == 12  # complexity and quality of each of the 6 rows
    assert sorted(t for b in server.requests("/embeddings") for t in b["input"]) == sorted(ROWS)
    assert {b["model"] for b in server.requests("/embeddings")} == {"embedder"}

    # the server's vectors are the ones the score shard holds, beside the chosen scores
    instructions = {r["id"]: r["instruction"] for r in read_shard(result.ingest.refs[0].uri).to_pylist()}
    scores = read_shard(result.score.shards[0].scores.uri).to_pylist()
    for row in scores:
        score, vector = ROWS[instructions[row["id"]]]
        assert row["embedding"] == pytest.approx(vector)
        assert (row["complexity"], row["quality"], row["complexity_method"]) == (score, score, "chosen")

    # selection: by score 6, 5, 4, 3, 2, 1; the 5 is too close to the 6 and the 3 to the 4; three rows taken
    by_text = {text: i for i, text in instructions.items()}
    final = read_shard(result.mix.final_uri)
    assert sorted(final["instruction"].to_pylist()) == sorted(list(ROWS)[i] for i in (0, 2, 4))
    dropped = read_shard(result.mix.dropped_uri)
    dropped = dropped.filter(pc.equal(dropped["reject_reason"], "not_selected"))
    texts, nearest = list(ROWS), dropped.select(["instruction", "duplicate_of"]).to_pylist()
    assert sorted((r["instruction"], r["duplicate_of"]) for r in nearest) == sorted(
        [(texts[1], by_text[texts[0]]), (texts[3], by_text[texts[2]]), (texts[5], by_text[texts[0]])])

    card = Path(result.export.files["card"]).read_text()
    assert "| embedding model | `openai:embedder` |" in card


# ---- a real `vllm serve` of the bundled model on the pooling runner ----------------------------------------------


@pytest.fixture(scope="module")
def pooling_server(tmp_path_factory, model_dir):
    """``vllm serve`` of the bundled model on vLLM's pooling runner, as ``score.embedding_model`` would name it."""
    from tasks.llm.vllm_engine import cpu_env_defaults

    port, log_path = free_port(), tmp_path_factory.mktemp("vllm-embed") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", "smollm2-embed", "--runner", "pooling", "--convert", "embed",
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024", "--enforce-eager",
           "--dtype", "float32"]
    with background(cmd, {**cpu_env_defaults(), **os.environ}, log_path) as proc:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log_path, timeout=420)  # far slower on shared cores
        yield f"http://127.0.0.1:{port}/v1"


def test_a_real_vllm_serve_on_the_pooling_runner_embeds_for_selection(pooling_server):
    backend = OpenAIBackend("default", LLMEnvSettings(base_url=pooling_server, request_timeout_s=120, max_retries=1))
    water, code = "Describe the water cycle for a ten-year-old reader.", "def add(a, b):\n    return a + b"
    vectors = backend.embed([water, code, water])
    assert backend.model_name == "smollm2-embed" and [len(v) for v in vectors] == [576] * 3
    x = unit_rows(np.array(vectors))
    assert np.allclose(np.linalg.norm(np.array(vectors), axis=1), 1.0, atol=1e-3)  # the server's are unit length
    same, other = float(x[0] @ x[2]), float(x[0] @ x[1])
    print(f"cosine: same text {same:.6f}, other text {other:.6f}")
    assert same > 0.9999 and other < 0.999
    # those vectors through selection (a: the water text, b: the code, c: the water text again, ranked in that order):
    # the code is taken after the first row, the copy is barred by it
    table = pa.table({"id": ["a", "b", "c"]})
    scores = pa.table({"id": ["a", "b", "c"], "complexity": [6.0, 5.0, 4.0], "quality": [6.0, 5.0, 4.0],
                       "embedding": pa.array(vectors, pa.list_(pa.float32()))})
    kept, dropped, nearest = select_table(table, scores, 0.999, None)
    assert (kept["id"].to_pylist(), dropped["id"].to_pylist(), nearest.to_pylist()) == (["a", "b"], ["c"], ["a"])
