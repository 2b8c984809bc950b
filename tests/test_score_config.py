"""The scoring stage's settings: the ``llm.score`` role, ``mix.selection`` needing scores, unset options out of keys;
`evol plan`'s estimate of the stage."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tasks.core.config import ConfigError, parse_run_config
from tasks.core.context import RunContext, ScoreSpec, run_layout, stage_key
from tasks.core.options import without_unset_options
from tasks.planning.plan import make_plan


def config(**extra):
    return parse_run_config({"seeds": "s.jsonl", "llm": {"backend": "scripted", "model": "demo"}, **extra})


def test_the_score_role_defaults_to_the_judges_settings():
    judged = config(llm={"model": "base", "judge": {"backend": "openai", "model": "big-judge"}})
    assert (judged.llm.for_role("score").backend, judged.llm.for_role("score").model) == ("openai", "big-judge")
    own = config(llm={"model": "base", "judge": {"model": "big-judge"}, "score": {"model": "scorer"}})
    assert own.llm.for_role("score").model == "scorer" and own.llm.for_role("judge").model == "big-judge"
    assert ScoreSpec.of(config()) is None and ScoreSpec.of(config(score={})).llm.model == "demo"


def test_selection_needs_scores_with_embeddings():
    with pytest.raises(ConfigError, match="mix.selection ranks rows by their scores"):
        config(mix={"selection": {}})
    with pytest.raises(ConfigError, match="mix.selection"):
        config(score={"embeddings": False}, mix={"selection": {}})
    assert config(score={}, mix={"selection": {"threshold": 0.8}}).mix.selection.threshold == 0.8


def test_unset_options_stay_out_of_the_mix_key_and_the_card():
    plain = config()
    dump = without_unset_options(plain.model_dump(mode="json"))
    assert "score" not in dump and "score" not in dump["llm"] and "selection" not in dump["mix"]
    # what main dumped before these options (main's own `mix.decontaminate` shows in the card while unset)
    assert dump["mix"] == {"include_seeds": True, "sample_size": None, "decontaminate": None}

    def ctx(c):
        return RunContext(config=c, layout=run_layout(c), template_shas={}, model={}, seeds_sha="x",
                          evolve={"prompt_pack": "general", "operation_weights": None, "random_seed": 0,
                                  "prefill": True, "llm": c.llm, "sampling": c.sampling,
                                  "elimination": c.elimination}, ingest_key="i", evolve_key="e")

    # the key of a run without them is the one such a run had before (the mix settings as they were dumped)
    before = stage_key("mix", ["a"], plain.dedup.model_dump(mode="json"), {"include_seeds": True, "sample_size": None},
                       0, plain.rounds)
    assert ctx(plain).mix_key(["a"]) == before
    selecting = config(score={}, mix={"selection": {}})
    assert ctx(selecting).mix_key(["a"], ["s"]) != ctx(selecting).mix_key(["a"], ["t"])


def test_an_unset_embedding_model_keeps_the_score_key_and_a_set_one_enters_it(tmp_path):
    from prompts import load_pack
    from tasks.core.config import EnvSettings
    from tasks.llm.models import model_identity
    from tasks.runtime.resolve import build_context

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Say hello."}\n')
    scored = config(seeds=str(seeds), score={})
    settings = scored.score.model_dump(mode="json")
    assert settings.pop("embedding_model") is None and settings.pop("evolve_responses") is None
    assert not {"embedding_model", "evolve_responses"} & set(without_unset_options(
        scored.model_dump(mode="json"))["score"])
    identity = model_identity("scripted", "demo", {}, EnvSettings().llm.models_dir)
    before = stage_key("score", load_pack("general").scoring_shas(), identity, True, settings)  # the key before
    assert build_context(scored).score_key == before
    named = build_context(config(seeds=str(seeds), score={"embedding_model": "embedder"}))
    assert named.score_key != before and named.score.score.embedding_model == "embedder"


def test_evol_plan_estimates_the_scoring_stage_and_response_evolution_exactly(tmp_path):
    """Three seeds (one unanswered), 2 rounds, the scripted backend (whitespace words) and the sampling caps (every
    row evolves: 6 evolutions, each instruction 20 words, each response 30)."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps(r) for r in (
        {"instruction": "Name a warm colour.", "output": "Red, like a fire."},  # 4 + 4 words
        {"instruction": "Add two numbers.", "input": "3 and 4", "output": "7"},  # 6 + 1
        {"instruction": "Say hello politely."})) + "\n")  # 3, no response
    data = {"seeds": str(seeds), "output_root": str(tmp_path / "runs"), "rounds": 2,
            "llm": {"backend": "scripted", "model": "demo"},
            "sampling": {"evolve": {"max_tokens": 20}, "respond": {"max_tokens": 30}},
            "score": {"evolve_responses": {"operations": ["depth", "details"], "sampling": {"max_tokens": 40}}}}
    stages = {s.stage: s for s in make_plan(parse_run_config(data)).estimate.stages}
    # score: 9 complexity requests (3 roots x 3 variants), each 65 words of template + 13/3 + 2 x 20;
    # 8 quality requests: 2 answered seeds x (47 + 13/3 + 2.5), 6 evolutions x (47 + 20 + 30); one token each
    assert stages["score"].model_dump() == {"stage": "score", "calls": 17, "prompt_tokens": 1674,
                                            "max_completion_tokens": 17, "share": 1.0}
    # response evolution: 8 answered rows x 2 operations = 16 rewrites (depth's template 139 words, details' 138)
    # and 16 quality requests; each rewrite up to 40 tokens, each score 1
    assert stages["response evolution"].model_dump() == {
        "stage": "response evolution", "calls": 32, "prompt_tokens": 4223, "max_completion_tokens": 656,
        "share": 1.0}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    printed = CliRunner().invoke(app, ["plan", str(path)], env={"COLUMNS": "200"})
    assert printed.exit_code == 0, printed.output
    assert "added by the scoring stage" in printed.output
    assert re.search(r"response evolution\s*│\s*32\s*│\s*4223\s*│\s*656\s*│\s*100%", printed.output)
    data["score"] = {"complexity": False}
    assert [s.model_dump() for s in make_plan(parse_run_config(data)).estimate.stages] == [
        {"stage": "score", "calls": 8, "prompt_tokens": 690, "max_completion_tokens": 8, "share": 1.0}]
    del data["score"]
    assert make_plan(parse_run_config(data)).estimate.stages == []
