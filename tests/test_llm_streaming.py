"""The backends' one-request-at-a-time side (``acomplete``) on the streaming loop: the OpenAI client against the
local fake server, then vLLM's async engine on the bundled model against the offline engine (``vllm``)."""

from __future__ import annotations

import pytest

from prompts import load_pack
from tasks.core.config import RunConfig, SamplingParams, StageSampling
from tasks.core.text import record_id
from tasks.evolve.shard import evolve_rows
from tasks.llm.aio import gather_on_loop
from tasks.llm.base import BackendError
from tasks.llm.vllm_async import async_engine_constructions
from tasks.llm.vllm_backend import VLLMBackend, engine_constructions
from tests.conftest import free_port
from tests.flow_script import load_seeds
from tests.test_llm_openai import PARAMS, SECRET, FakeServer, make_backend, user


@pytest.fixture()
def server():
    s = FakeServer()
    yield s
    s.close()


def stream(backend, conversations, params=PARAMS):
    return gather_on_loop(backend.acomplete(c, params) for c in conversations)


def test_streamed_requests_are_bounded_in_flight_and_come_back_per_item(server):
    backend = make_backend(server.url, concurrency=3)
    prompts = [f"gate-3 item {i}" for i in range(10)]  # the first three answer only when all three are in flight
    results = stream(backend, [user(p) for p in prompts])
    assert [r.text for r in results] == [f"echo: {p}" for p in prompts]
    assert server.max_in_flight == 3  # reached (else the gate would have timed out with fewer), never exceeded
    bad, judge = stream(backend, [user("bad request"), user("judge this")],
                        SamplingParams(temperature=0.0, max_tokens=8, choices=("Equal", "Not Equal")))
    assert not bad.ok and bad.error.startswith("HTTP 400") and SECRET not in bad.error
    assert (judge.text, judge.constrained, judge.choice_margin) == ("Not Equal", True, 2.5)
    assert server.bodies[-1]["structured_outputs"] == {"choice": ["Equal", "Not Equal"]}
    assert stream(backend, [user("ok")]) == backend.generate([user("ok")], PARAMS)


def test_streamed_request_to_a_server_that_never_answered_raises_backend_error():
    backend = make_backend(f"http://127.0.0.1:{free_port()}/v1", retries=0, model="some-model")
    with pytest.raises(BackendError, match="unreachable: APIConnectionError") as err:
        stream(backend, [user("a")])
    assert SECRET not in str(err.value)


# ---- vLLM's async engine on the bundled model -------------------------------------------------------------------

# One sequence per engine step: vLLM on CPU is not batch invariant (a greedy token can flip with the batch a request
# shares: 3 of these 8 rewrites differ alone and in one batch of 8), and streamed rows share steps with other
# rows and stages. The async engine takes one sequence at a time; the offline engine gets one row per call. Alone in
# every step, both paths must give the same tokens. Both engines are shared with other modules of their engine group
# (tests/conftest.py): the offline one with tests/test_llm_vllm.py and tests/test_score_vllm.py, the async one with
# tests/test_vllm_pipeline.py.
OFFLINE_ARGS = {"max_model_len": 1024}
STREAMING_ARGS = {"max_model_len": 1024, "max_num_seqs": 1}
STOPS = ("#Given Prompt#", "#The Given Prompt#", "#Rewritten Prompt#", "#Created Prompt#")


@pytest.fixture(scope="module")
def engines(model_dir):
    """The offline engine and the async engine on the bundled model, each started once (they stop when the last
    module of their engine group ends)."""
    offline = VLLMBackend(str(model_dir), OFFLINE_ARGS)
    streaming = VLLMBackend(str(model_dir), STREAMING_ARGS, streaming=True)
    offline.start()
    streaming.start()
    return offline, streaming


@pytest.mark.vllm
def test_async_engine_rows_match_the_offline_batches_on_greedy_sampling(engines):
    """8 seeds through a round greedily: streamed rows on AsyncLLM give the batch path's candidates exactly (same
    rendering, same sampling, same rules)."""
    offline, streaming = engines
    built = (engine_constructions(), async_engine_constructions())
    greedy = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=48)
    config = RunConfig(seeds="unused", random_seed=5, sampling=StageSampling(
        evolve=greedy.model_copy(update={"stop": STOPS}), respond=greedy))
    seeds = load_seeds(n=8)
    rows = [{"id": record_id(s["instruction"]), "root_id": record_id(s["instruction"]),
             "instruction": s["instruction"], "input": ""} for s in seeds]
    pack = load_pack("general")
    batch = [c for row in rows for c in evolve_rows([row], 1, config, offline, pack)]
    streamed = evolve_rows(rows, 1, config, streaming, pack, streaming=True)
    assert [c["raw_evolution"] for c in streamed] == [c["raw_evolution"] for c in batch]
    assert streamed == batch
    assert sum(c["response"] is not None for c in batch) >= 1  # answers were compared, not only rewrites
    assert (engine_constructions(), async_engine_constructions()) == built  # each engine was started once


@pytest.mark.vllm
def test_async_engine_items_fail_alone_and_a_batch_is_in_order(engines):
    _, streaming = engines
    convs = [user("Hi."), user("word " * 1500), user("Say goodbye to everyone in the room, one by one.")]
    results = streaming.generate(convs, SamplingParams(temperature=0.0, max_tokens=8))
    assert results[0].ok and results[2].ok
    assert results[1].error.startswith("prompt has ") and results[1].error.endswith("max_model_len is 1024")
    [alone] = streaming.generate([convs[2]], SamplingParams(temperature=0.0, max_tokens=8))
    assert results[2].prompt_tokens == alone.prompt_tokens and results[0].prompt_tokens < alone.prompt_tokens
