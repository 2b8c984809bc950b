"""Streamed rows (each row moves on as soon as its own step is done) against the batch path: the same candidates,
no barrier between stages or shards, text rules checked in batches, a fatal backend error seen as itself."""

from __future__ import annotations

import asyncio
import threading

import pytest

from prompts import load_pack
from tasks.core.config import EliminationConfig
from tasks.core.text import record_id
from tasks.evolve.drive import drive_streaming
from tasks.evolve.shard import evolve_rows
from tasks.evolve.steps import ShardPlan
from tasks.llm.aio import run_on_loop
from tasks.llm.base import BackendError, Completion
from tasks.llm.factory import RoleBackends
from tasks.llm.scripted import ScriptedBackend, given_prompt, is_evolution_prompt, last_user_text
from tests.test_evolve_rows import PARENTS, capable, config, engine_like

PACK = load_pack("general")
HANG_GUARD_S = 60  # a barrier would hang these tests: fail instead (never reached when rows stream)


def rows_of(texts: list[str]) -> list[dict]:
    return [{"id": record_id(t), "root_id": record_id(t), "instruction": t, "input": ""} for t in texts]


MIXED = [*PARENTS, "Name a colour.", "Summarise the plot of Hamlet in two sentences.", "What is 37 times 24?",
         "List four uses of baking soda around the house.", "Write a limerick about a cat who hates Mondays."]


def mixed(conversation, params) -> str | Completion:
    """Every kind of fate: errors, empty and truncated rewrites, answers, 'sorry', equal judgements."""
    text = last_user_text(conversation)
    if is_evolution_prompt(text):
        parent = given_prompt(text)
        if "colour" in parent:
            return Completion(error="engine hiccup", finish_reason="error")
        if "Hamlet" in parent:
            return "   "
        if "37" in parent:
            return Completion(text=f"{parent} and then", finish_reason="length", completion_tokens=64)
        if "baking" in parent:
            return "Sure, here are four uses."
        return f"{parent} Answer in exactly five bullet points."
    if params.choices == ("Yes", "No"):
        return "No" if "lighthouse" in text else "Yes"
    if params.choices == ("Equal", "Not Equal"):
        return "Equal" if "limerick" in text else "Not Equal"
    if "sky" in text:
        return "Sorry, I can't."
    return capable(conversation, params)


@pytest.mark.parametrize("responder", [capable, mixed], ids=["capable", "mixed"])
@pytest.mark.parametrize("changes", [{}, {"elimination": EliminationConfig(validity_check=False)},
                                     {"elimination": EliminationConfig(equality_check=False)}, {"prefill": False},
                                     {"elimination": EliminationConfig(profile="paper")}],
                         ids=["default", "no-validity", "no-equality", "no-prefill", "paper"])
def test_streaming_gives_the_batch_paths_candidates(responder, changes):
    rows = rows_of(MIXED)
    batch_backend = ScriptedBackend(engine_like(responder), constrained=True, margin=0.5)
    stream_backend = ScriptedBackend(engine_like(responder), constrained=True, margin=0.5)
    made: dict[str, list[dict]] = {"batch": [], "streamed": []}  # each candidate as its row finished
    batch = evolve_rows(rows, 2, config(**changes), batch_backend, PACK, on_row=made["batch"].append)
    streamed = evolve_rows(rows, 2, config(**changes), stream_backend, PACK, streaming=True,
                           on_row=made["streamed"].append)
    assert streamed == batch
    key = lambda c: c["id"]  # noqa: E731
    assert sorted(made["batch"], key=key) == sorted(made["streamed"], key=key) == sorted(batch, key=key)
    assert stream_backend.items == batch_backend.items and stream_backend.calls == stream_backend.items
    if responder is mixed and not changes:
        assert [c["reject_reason"] for c in batch] == [
            "not_an_instruction", "sorry_short_response", None, "llm_error", "empty_evolution",
            "evolution_truncated", "answers_parent", "no_information_gain"]
    if responder is mixed and changes.get("elimination") == EliminationConfig(profile="paper"):
        # no validity question, no answers_parent; the equality question is asked in free text (no forced choice)
        # and this judge answers in prose, which the paper's strict parse does not take
        assert [c["reject_reason"] for c in batch] == [
            "equality_unparseable", "sorry_short_response", "equality_unparseable", "llm_error", "empty_evolution",
            "evolution_truncated", "equality_unparseable", "equality_unparseable"]
        assert {c["equality_method"] for c in batch} == {"text", None}


def test_a_row_is_answered_while_another_rows_rewrite_is_still_being_written():
    """Row 0's evolution finishes only once row 1 has asked for its answer: with a barrier after the evolve stage
    that answer would never be asked for."""
    answer_asked = asyncio.Event()
    order: list[str] = []

    async def respond(conversation, params):
        text = last_user_text(conversation)
        if is_evolution_prompt(text) and "lighthouse" in given_prompt(text):
            await asyncio.wait_for(answer_asked.wait(), HANG_GUARD_S)
            order.append("row 0 rewritten")
        elif not is_evolution_prompt(text) and params.choices is None and "sky" in text:
            order.append("row 1 answer asked")
            answer_asked.set()
        return engine_like(capable)(conversation, params)

    out = evolve_rows(rows_of(PARENTS[:2]), 1, config(), ScriptedBackend(respond), PACK, streaming=True)
    assert [c["reject_reason"] for c in out] == [None, None]
    assert order == ["row 1 answer asked", "row 0 rewritten"]


def test_shards_in_two_threads_share_the_loop_with_no_lock_between_them():
    """Shard A's only row waits for shard B's row to be judged: shards that took turns would hang."""
    judged = asyncio.Event()

    async def respond(conversation, params):
        text = last_user_text(conversation)
        if is_evolution_prompt(text) and "lighthouse" in given_prompt(text):
            await asyncio.wait_for(judged.wait(), HANG_GUARD_S)
        if params.choices == ("Equal", "Not Equal") and "sky" in text:
            judged.set()
        return engine_like(capable)(conversation, params)

    backend = ScriptedBackend(respond)
    out: dict[str, list] = {}
    threads = [threading.Thread(target=lambda k=k, r=r: out.__setitem__(
        k, evolve_rows(rows_of([r]), 1, config(), backend, PACK, streaming=True)))
        for k, r in (("a", PARENTS[0]), ("b", PARENTS[1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=HANG_GUARD_S * 2)
    alone = ScriptedBackend(engine_like(capable))
    assert out == {k: evolve_rows(rows_of([r]), 1, config(), alone, PACK) for k, r in (("a", PARENTS[0]),
                                                                                        ("b", PARENTS[1]))}


def test_text_rules_of_rows_in_flight_share_queries():
    """20 rows: their early checks arrive together (one query), their late checks together (one more)."""
    texts = [f"{p} Case {i}." for i in range(5) for p in [*PARENTS, "Describe a sunrise over the sea."]]
    spec = config()
    backends = RoleBackends.single(ScriptedBackend(engine_like(capable)))
    plan = ShardPlan.of(rows_of(texts), 1, spec, PACK, backends.model_names())

    async def run():
        from tasks.evolve.drive import RuleBatcher, _row

        rules = RuleBatcher(spec.elimination, PACK.scaffolding_phrases)
        out = await asyncio.gather(*(_row(gen, backends, rules) for gen in plan.steps()))
        return out, rules.queries

    out, queries = run_on_loop(run())
    assert len(out) == 20 and all(c["status"] == "evolved" for c in out)
    assert queries == 2


def test_a_fatal_backend_error_stops_the_shard_as_itself():
    def respond(conversation, params):
        return capable(conversation, params)

    class Dying(ScriptedBackend):
        async def acomplete(self, conversation, params):
            if "sky" in last_user_text(conversation):
                raise BackendError("the vLLM engine died: test")
            return await super().acomplete(conversation, params)

    backend = Dying(engine_like(respond))
    with pytest.raises(BackendError, match="engine died"):
        evolve_rows(rows_of(PARENTS), 1, config(), backend, PACK, streaming=True)
    rows = rows_of(PARENTS[:1])  # a shard without the failing row still runs on the same loop
    plan = ShardPlan.of(rows, 1, config(), PACK, RoleBackends.single(backend).model_names())
    assert run_on_loop(drive_streaming(plan, RoleBackends.single(backend))) == evolve_rows(rows, 1, config(),
                                                                                            backend, PACK)
