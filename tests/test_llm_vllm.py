"""The vLLM backend: pure helpers and the factory (fast), then the real engine on the bundled model (``vllm``)."""

from __future__ import annotations

import threading

import pytest

from tasks.core.config import EnvSettings, LLMConfig, LLMEnvSettings
from tasks.llm import vllm_engine, vllm_io
from tasks.llm.base import BackendError, SamplingParams
from tasks.llm.factory import get_backend
from tasks.llm.openai_backend import OpenAIBackend
from tasks.llm.vllm_backend import VLLMBackend, engine_constructions, get_vllm_engine
from tasks.llm.vllm_engine import cpu_env_defaults, cpu_id_ranges, engine_kwargs
from tasks.llm.vllm_io import chat_prompt_tokens

ENGINE_ARGS = {"max_model_len": 1024}
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=16)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_cpu_id_ranges():
    assert cpu_id_ranges({0, 1}) == "0-1"
    assert cpu_id_ranges([5, 0, 1, 2]) == "0-2,5"
    assert cpu_id_ranges({3}) == "3"
    assert cpu_id_ranges({0, 2, 4, 5}) == "0,2,4-5"


def test_cpu_env_defaults():
    assert cpu_env_defaults([0, 1]) == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0-1",
                                        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def test_engine_kwargs_defaults_and_overrides(monkeypatch):
    monkeypatch.setattr(vllm_engine, "_cpu_has_fast_bf16", lambda: False)
    assert engine_kwargs(None, on_cpu=True) == {"max_model_len": 2048, "enforce_eager": True, "dtype": "float32"}
    assert engine_kwargs({"max_model_len": 512, "dtype": "bfloat16"}, on_cpu=True) == {
        "max_model_len": 512, "enforce_eager": True, "dtype": "bfloat16"}
    monkeypatch.setattr(vllm_engine, "_cpu_has_fast_bf16", lambda: True)
    assert engine_kwargs(None, on_cpu=True)["dtype"] == "bfloat16"
    gpu = {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.8}
    assert engine_kwargs(gpu, on_cpu=False) == gpu


@pytest.mark.vllm  # imports vllm: 6 s and more, too slow for the fast loop
def test_sampling_params_translation():
    params = vllm_io.to_vllm_sampling_params(
        SamplingParams(temperature=0.7, top_p=0.9, max_tokens=33, seed=5, stop=("###", "\n\n")), on_cpu=False)
    assert (params.temperature, params.top_p, params.max_tokens, params.seed) == (0.7, 0.9, 33, 5)
    assert params.stop == ["###", "\n\n"]
    assert vllm_io.to_vllm_sampling_params(SamplingParams()).stop == []
    with pytest.raises(BackendError, match="remove `seed`"):
        vllm_io.to_vllm_sampling_params(SamplingParams(seed=5), on_cpu=True)


def test_factory(tmp_path):
    before = engine_constructions()
    local = tmp_path / "some-model"
    local.mkdir()
    env = EnvSettings(llm=LLMEnvSettings(models_dir=str(tmp_path / "models"), base_url="http://127.0.0.1:9/v1"))
    backend = get_backend(LLMConfig(backend="vllm", model=str(local), engine_args={"dtype": "float32"}), env)
    assert isinstance(backend, VLLMBackend)
    assert (backend.model, backend.engine_args, backend.model_name) == (str(local), {"dtype": "float32"}, "some-model")
    assert engine_constructions() == before  # the engine starts on first use, not on construction
    remote = get_backend(LLMConfig(backend="openai", model="served"), env)
    assert isinstance(remote, OpenAIBackend) and remote.model_name == "served"
    assert remote.base_url == "http://127.0.0.1:9/v1"
    with pytest.raises(BackendError, match=r"no scripted backend registered as 'never-registered' \(registered: demo"):
        get_backend(LLMConfig(backend="scripted", model="never-registered"), env)


@pytest.mark.vllm
def test_engine_that_cannot_start_raises_backend_error(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(BackendError, match="vLLM engine failed to start for model .*not-a-model"):
        VLLMBackend(str(empty), ENGINE_ARGS).generate([user("hi")], GREEDY)


@pytest.fixture(scope="module")
def backend(model_dir):
    """One engine for every test here and tests/test_score_vllm.py (their engine group, tests/conftest.py): built
    once, reused through the process-wide cache."""
    b = VLLMBackend(str(model_dir), ENGINE_ARGS)
    b.engine  # noqa: B018 - start it now, so tests time the work and not the start
    return b


@pytest.mark.vllm
def test_batch_comes_back_in_order_with_exact_token_counts(backend):
    """Each result carries the token count of the prompt the engine answered; with 16 distinct lengths, a result out
    of place could not match. (No text is compared across batchings: vLLM's CPU build is not batch invariant.)"""
    convs = [user(f"Question {i}: " + "why is the sky blue? " * i) for i in range(1, 17)]
    results = backend.generate(convs, GREEDY)
    tokenizer = backend.engine.get_tokenizer()
    expected_prompt_tokens = [chat_prompt_tokens(tokenizer, c) for c in convs]
    assert len(set(expected_prompt_tokens)) == 16  # distinct lengths: a shuffled result could not pass
    assert [r.prompt_tokens for r in results] == expected_prompt_tokens
    for r in results:
        assert r.ok and r.finish_reason in ("stop", "length") and r.text
        assert 1 <= r.completion_tokens <= GREEDY.max_tokens
        assert (r.finish_reason == "length") == (r.completion_tokens == GREEDY.max_tokens)


@pytest.mark.vllm
def test_seeded_sampling_is_refused_on_cpu(backend):
    convs = [user("Name three fruits."), user("Write a haiku about rain.")]
    seeded = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=8, seed=7)
    with pytest.raises(BackendError, match="seed is not supported by vLLM on CPU"):
        backend.generate(convs, seeded)


@pytest.mark.vllm
def test_small_max_tokens_gives_length(backend):
    params = SamplingParams(temperature=0.0, max_tokens=4)
    [result] = backend.generate([user("Write a long essay about the history of the Roman Empire.")], params)
    assert result.ok
    assert (result.finish_reason, result.completion_tokens, result.at_stop_string) == ("length", 4, False)


@pytest.mark.vllm
def test_a_stop_string_ending_is_told_apart_from_end_of_sequence(backend):
    """The engine says when a stop string ended the text (the row rules use it: a rewrite cut mid-sentence)."""
    params = SamplingParams(temperature=0.0, max_tokens=32, stop=(" ",))
    [cut] = backend.generate([user("Write one sentence about the sea.")], params)
    assert cut.ok and cut.finish_reason == "stop" and cut.at_stop_string and " " not in cut.text
    [whole] = backend.generate([user("Write one sentence about the sea.")], GREEDY)
    assert not whole.at_stop_string  # no stop string asked for: end of sequence or the length cap


@pytest.mark.vllm
def test_overlong_prompt_fails_alone(backend):
    convs = [user("Say hello."), user("word " * 1500), user("Say goodbye.")]
    results = backend.generate(convs, GREEDY)
    assert results[0].ok and results[2].ok and results[0].text and results[2].text
    bad = results[1]
    assert not bad.ok and bad.text == "" and bad.finish_reason == "error"
    assert bad.error.startswith("prompt has ") and bad.error.endswith("tokens, max_model_len is 1024")
    tokenizer = backend.engine.get_tokenizer()
    assert [results[0].prompt_tokens, results[2].prompt_tokens] == [chat_prompt_tokens(tokenizer, convs[0]),
                                                                    chat_prompt_tokens(tokenizer, convs[2])]


@pytest.mark.vllm
def test_engine_is_built_once_and_shared(backend, model_dir):
    built = engine_constructions()
    short = SamplingParams(temperature=0.0, max_tokens=4)
    other = VLLMBackend(str(model_dir), dict(ENGINE_ARGS))
    assert other.generate([user("Hi")], short)[0].ok
    assert backend.generate([user("Hello")], short)[0].ok
    assert other.engine is backend.engine is get_vllm_engine(str(model_dir), ENGINE_ARGS)[0]
    assert engine_constructions() == built


@pytest.mark.vllm
def test_calls_from_threads_each_get_their_own_answers(backend):
    """Two threads share the engine: each call gets back its own prompts' answers, in order (told apart by their
    prompt token counts, not by text, which depends on what else the engine ran)."""
    short = SamplingParams(temperature=0.0, max_tokens=8)
    tokenizer = backend.engine.get_tokenizer()
    calls = {k: [user(f"Count to {k + 3}." + " Please." * (3 * k + j)) for j in range(3)] for k in range(2)}
    expected = {k: [chat_prompt_tokens(tokenizer, c) for c in convs] for k, convs in calls.items()}
    assert len({n for counts in expected.values() for n in counts}) == 6
    out: dict[int, list] = {}

    def work(k: int) -> None:
        out[k] = backend.generate(calls[k], short)

    threads = [threading.Thread(target=work, args=(k,)) for k in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {k: [r.prompt_tokens for r in results] for k, results in out.items()} == expected
    assert all(r.ok and 1 <= r.completion_tokens <= 8 for results in out.values() for r in results)


# ---- forced choices and prefilled turns on the real engine ----------------------------------------------------

JUDGE = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=8, choices=("Equal", "Not Equal"))


@pytest.mark.vllm
def test_constrained_judge_answers_exactly_one_choice_with_a_margin(backend):
    from prompts import load_pack

    pack = load_pack("general")
    pairs = [("Write a haiku about a lighthouse.", "Write a haiku about a lighthouse."),
             ("Name three fruits.", "Name three tropical fruits and give the country each mostly comes from."),
             ("What is 2 + 2?", "It's 4."), ("Summarise the text.", "#"),
             ("Explain photosynthesis.", "Explain photosynthesis to a ten-year-old, in five sentences or fewer.")]
    results = backend.generate([pack.equality_messages(a, b)[0] for a, b in pairs], JUDGE)
    for r in results:
        assert r.ok and r.constrained and r.text in JUDGE.choices
        assert r.choice_margin is not None and r.choice_margin >= 0  # greedy picks the better first token
    yes_no = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=4, choices=("Yes", "No"))
    results = backend.generate([pack.validity_messages(a, b)[0] for a, b in pairs], yes_no)
    assert all(r.ok and r.constrained and r.text in ("Yes", "No") for r in results)
    # max_tokens below the longest choice cannot complete it: such an answer is not marked constrained
    cut = backend.generate([user("Is the sky green? Answer Equal or Not Equal.")],
                           SamplingParams(temperature=0.0, max_tokens=1, choices=("Not Equal", "Equal")))[0]
    assert cut.text in ("Equal", "Not Equal") or not cut.constrained


@pytest.mark.vllm
def test_prefilled_turn_is_continued_and_a_repeated_label_never_empties_the_output(backend):
    from prompts import load_pack
    from tasks.evolve.clean import clean_evolved_instruction, cut_at_stops, split_stops

    pack = load_pack("general")
    seeds = ["Write a haiku about a lighthouse.", "Name three primary colours.", "What is 37 multiplied by 24?",
             "Explain why the sky is blue.", "Give three tips for better sleep.", "Sort these numbers: 5, 2, 9."]
    stops = ("#Given Prompt#", "#The Given Prompt#", "#Rewritten Prompt#", "#Created Prompt#")
    for op in ("add_constraints", "in_breadth"):
        convs = [pack.evolve_messages(op, s, prefill=True)[0] for s in seeds]
        assert all(c[-1] == {"role": "assistant", "content": pack.label(op)} for c in convs)
        engine_stops, label_stops = split_stops(stops, [pack.label(op)])
        assert not label_stops or all(s not in engine_stops for s in label_stops)
        params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=48, stop=engine_stops)
        results = backend.generate(convs, params)
        tokenizer = backend.engine.get_tokenizer()
        assert [r.prompt_tokens for r in results] == [chat_prompt_tokens(tokenizer, c) for c in convs]
        for r in results:
            assert r.ok and r.completion_tokens >= 1
            text, _ = cut_at_stops(r.text, label_stops)
            if clean_evolved_instruction(r.text):  # the model wrote something besides labels: it is kept
                assert clean_evolved_instruction(text), r.text
