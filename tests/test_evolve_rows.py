"""evolve_rows with scripted backends: forced-choice judgements, the validity check, prefill and stops, a model
per stage in the lineage."""

from __future__ import annotations

import subprocess
import sys

from prompts import load_pack
from tasks.core.config import LLMConfig, RoleLLMConfig, RunConfig, SamplingParams, StageSampling
from tasks.core.text import record_id
from tasks.evolve.shard import evolve_rows
from tasks.llm.base import Completion, Conversation
from tasks.llm.factory import RoleBackends, role_backends
from tasks.llm.scripted import (
    ScriptedBackend,
    given_prompt,
    is_evolution_prompt,
    last_user_text,
    register_scripted_backend,
)

PACK = load_pack("general")
PARENTS = ["Write a haiku about a lighthouse on a cold night.", "Explain why the sky looks blue in daytime.",
           "Give three tips for sleeping better after a long flight."]
ROWS = [{"id": record_id(p), "root_id": record_id(p), "instruction": p, "input": ""} for p in PARENTS]
STOPS = ("#Given Prompt#", "#The Given Prompt#", "#Rewritten Prompt#", "#Created Prompt#")


def config(**changes) -> RunConfig:
    sampling = StageSampling(evolve=SamplingParams(max_tokens=64, stop=STOPS))
    return RunConfig(seeds="unused", random_seed=3, sampling=sampling, **changes)


def engine_like(answer):
    """A responder whose answers are cut at the request's stop strings, as an engine does."""

    def respond(conversation: Conversation, params: SamplingParams) -> str | Completion:
        text = answer(conversation, params)
        for stop in params.stop:
            text = text.split(stop, 1)[0] if isinstance(text, str) else text
        return text

    return respond


def capable(conversation: Conversation, params: SamplingParams) -> str:
    text = last_user_text(conversation)
    if params.choices == ("Yes", "No"):
        return "Yes"
    if params.choices == ("Equal", "Not Equal"):
        return "Not Equal"
    if is_evolution_prompt(text):
        # labels first and last, as small models write them: the label must not cut the rewrite away
        return f"#Rewritten Prompt#: {given_prompt(text)} Answer in exactly five bullet points.\n#Rewritten Prompt#:"
    return "A full answer with enough words to pass every response rule of the pipeline, point by point."


def test_labelled_outputs_survive_the_stops_and_the_judges_are_constrained():
    seen: list[SamplingParams] = []

    def spy(conversation, params):
        seen.append(params)
        return capable(conversation, params)

    backend = ScriptedBackend(engine_like(spy), constrained=True, margin=1.5)
    out = evolve_rows(ROWS, 1, config(), backend, PACK)
    assert [c["status"] for c in out] == ["evolved"] * 3, [c["reject_reason"] for c in out]
    for c, parent in zip(out, PARENTS, strict=True):
        assert c["instruction"] == f"{parent} Answer in exactly five bullet points."
        assert c["raw_evolution"].startswith("#Rewritten Prompt#:")
        assert (c["equality_raw"], c["equality_method"], c["equality_margin"]) == ("Not Equal", "constrained", 1.5)
        assert (c["validity_raw"], c["validity_method"], c["validity_margin"]) == ("Yes", "constrained", 1.5)
    evolve_params = [p for p in seen if p.choices is None and p.max_tokens == 64]
    assert evolve_params and all("#Rewritten Prompt#" not in p.stop for p in evolve_params)
    assert all("#Given Prompt#" in p.stop for p in evolve_params)


def test_prefill_puts_the_label_in_the_assistant_turn():
    turns: list[Conversation] = []

    def spy(conversation, params):
        if is_evolution_prompt(last_user_text(conversation)):
            turns.append(conversation)
        return capable(conversation, params)

    evolve_rows(ROWS, 1, config(), ScriptedBackend(spy), PACK)
    assert turns and all(t[-1]["role"] == "assistant" and t[-1]["content"].endswith(":") for t in turns)
    turns.clear()
    evolve_rows(ROWS, 1, config(prefill=False), ScriptedBackend(spy), PACK)
    assert turns and all(t[-1]["role"] == "user" for t in turns)


def test_an_answer_instead_of_a_rewrite_is_rejected_by_rule_and_by_the_judge():
    answers = iter(["It's a lighthouse haiku: waves break on stone.", "Explain the blue sky in one word.",
                    "Give three tips for sleeping better after a long flight, each tied to a time zone."])

    def respond(conversation, params):
        text = last_user_text(conversation)
        if is_evolution_prompt(text):
            return next(answers)
        if params.choices == ("Yes", "No"):
            return "No" if "one word" in text else "Yes"
        return capable(conversation, params)

    out = evolve_rows(ROWS, 1, config(), ScriptedBackend(respond, constrained=True), PACK)
    assert [c["reject_reason"] for c in out] == ["answers_parent", "not_an_instruction", None]
    assert out[0]["validity_raw"] is None and out[0]["response"] is None  # a rule decided: no judge, no answer
    assert out[1]["validity_raw"] == "No" and out[1]["response"] is None
    assert out[2]["status"] == "evolved" and out[2]["validity_method"] == "constrained"


def test_without_constrained_decoding_the_strict_text_parse_decides():
    def prose(conversation, params):
        if params.choices == ("Yes", "No"):
            return "Yes."
        if params.choices == ("Equal", "Not Equal"):
            return "**Not Equal**" if "lighthouse" in last_user_text(conversation) else "They are not equal"
        return capable(conversation, params)

    out = evolve_rows(ROWS, 1, config(), ScriptedBackend(engine_like(prose)), PACK)
    assert [c["reject_reason"] for c in out] == [None, "equality_unparseable", "equality_unparseable"]
    assert {c["equality_method"] for c in out} == {"text"} and {c["validity_method"] for c in out} == {"text"}
    assert all(c["equality_margin"] is None for c in out)


def test_each_stage_uses_its_own_backend_and_the_lineage_names_them():
    evolver = ScriptedBackend(engine_like(capable), model_name="cheap-evolver")
    answerer = ScriptedBackend(capable, model_name="answerer")
    judge = ScriptedBackend(capable, model_name="strong-judge", constrained=True)
    out = evolve_rows(ROWS, 1, config(), RoleBackends(evolver, answerer, judge), PACK)
    for c in out:
        assert (c["model"], c["respond_model"], c["judge_model"]) == ("cheap-evolver", "answerer", "strong-judge")
    assert (evolver.items, answerer.items, judge.items) == (3, 3, 6)  # judge: validity and equality per row


def test_stage_backends_are_built_from_the_config_and_shared_when_equal():
    for name, model in (("evolver-x", "e"), ("judge-x", "j")):
        register_scripted_backend(ScriptedBackend(capable, model_name=model), name)
    one = role_backends(LLMConfig(backend="scripted", model="evolver-x"))
    assert one.evolve is one.respond is one.judge
    split = role_backends(LLMConfig(backend="scripted", model="evolver-x",
                                     judge=RoleLLMConfig(model="judge-x")))
    assert split.evolve is split.respond and split.judge is not split.evolve
    assert split.model_names() == {"evolve": "e", "respond": "e", "judge": "j"}
    assert LLMConfig(model="m", judge=RoleLLMConfig(backend="openai")).for_role("judge") == \
        LLMConfig(backend="openai", model="m")


def test_export_mix_and_report_do_not_import_the_evolve_stage_or_a_backend():
    """``parent_text`` lives in ``tasks.core.text``: the later stages import neither evolve nor the LLM layer."""
    code = ("import sys, tasks.export.files, tasks.mix.final, tasks.reporting.report; "
            "print(sorted(m for m in sys.modules if m.startswith(('tasks.evolve', 'tasks.llm'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


def test_a_rewrite_a_label_cuts_mid_sentence_is_unfinished():
    """The model put its output label inside a sentence; the label's stop (applied after generation) cut it to "To
    create a new", which no word rule catches: the cut itself marks it unfinished. A label after a full stop, or on
    its own line, ends a rewrite."""
    answers = iter(["To create a new #Rewritten Prompt#, I need to draw inspiration from the ",
                    "Explain why the sky looks blue at noon but red at dusk. #Rewritten Prompt#: more",
                    "Give three tips for sleeping better after a long flight across six time zones\n"
                    "#Rewritten Prompt#"])

    def respond(conversation, params):
        return next(answers) if is_evolution_prompt(last_user_text(conversation)) else capable(conversation, params)

    out = evolve_rows(ROWS, 1, config(), ScriptedBackend(engine_like(respond), constrained=True), PACK)
    assert [c["instruction"] for c in out] == [
        "To create a new", "Explain why the sky looks blue at noon but red at dusk.",
        "Give three tips for sleeping better after a long flight across six time zones"]
    assert [c["reject_reason"] for c in out] == ["unfinished_evolution", None, None]
    assert [c["finish_reason"] for c in out] == ["stop", "stop", "stop"]


def test_a_rewrite_the_engine_stopped_mid_sentence_is_unfinished():
    """The engine stopped at a stop string after "Create a new": unfinished. The same words ended by the model itself
    (end of sequence) are judged by the other rules; a full sentence ended by a stop string is kept."""
    answers = iter([Completion(text="\nCreate a new ", finish_reason="stop", at_stop_string=True),
                    Completion(text="\nExplain why the sky looks blue at noon but red at dusk ", finish_reason="stop"),
                    Completion(text="Give three tips for sleeping better after a long flight across six time zones.",
                               finish_reason="stop", at_stop_string=True)])

    def respond(conversation, params):
        return next(answers) if is_evolution_prompt(last_user_text(conversation)) else capable(conversation, params)

    out = evolve_rows(ROWS, 1, config(), ScriptedBackend(respond, constrained=True), PACK)
    assert [c["reject_reason"] for c in out] == ["unfinished_evolution", None, None]
