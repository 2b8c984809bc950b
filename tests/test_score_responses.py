"""Response evolution without Prefect: each response rewritten by each operation, the candidates scored by the
quality scorer, the best kept and every candidate recorded; the settings, the pack's templates and the stage key."""

from __future__ import annotations

import math
import re
import shutil

import pytest

from prompts import PromptPackError, load_pack
from prompts.pack import PACKS_DIR
from storage import ShardRef, read_shard, write_shard
from storage.schema import records_table, score_schema
from tasks.core.config import ConfigError, ScoreConfig, parse_run_config
from tasks.core.context import ScoreSpec, stage_key
from tasks.core.options import RESPONSE_OPERATIONS
from tasks.llm.base import Completion
from tasks.llm.scripted import ScriptedBackend
from tasks.runtime.resolve import build_context
from tasks.score.rows import score_rows
from tasks.score.shard import SCORE_SHARD, score_shard

ROWS = [
    {"id": "a", "root_id": "a", "round": 0, "instruction": "Name a colour.", "input": "", "response": "Blue."},
    {"id": "b", "root_id": "b", "round": 0, "instruction": "Add 2 and 3.", "input": "", "response": "5"},
    {"id": "c", "root_id": "c", "round": 0, "instruction": "Say hello.", "input": "", "response": None},
]
# the quality a scripted scorer gives each response (an expectation over a two-choice distribution)
QUALITY = {"Blue.": ("2", "3"), "Blue, the colour of a clear sky.": ("5", "6"), "5": ("4", "4"),
           "5, since 2 + 3 = 5.": ("4", "4")}


def responder(conversation, params):
    """Rewrites: `depth` adds a reason (row a) or the sum (row b), `details` fails, `creativity` comes back empty,
    `helpfulness` is cut off, `relevance` repeats the response. Quality: from QUALITY, with log-probabilities."""
    text = conversation[-1]["content"]
    if params.choices is not None:
        if "complexity" in text:
            return Completion(text="3", finish_reason="stop", constrained=True, choice_logprobs={"3": 0.0})
        response = re.search(r"#Response#:\n(.*)\n\nAnswer with one digit", text, re.S).group(1)
        low, high = QUALITY[response]
        return Completion(text=high, finish_reason="stop", constrained=True,
                          choice_logprobs={low: math.log(0.5), high: math.log(0.5)})
    given = text.rsplit("#The Given Response#:", 1)[1].split("#Rewritten Response#:")[0].strip()
    method = text.rsplit("#The Given Prompt#:", 1)[0]
    if "deeper" in method:
        return "#Rewritten Response#: " + ("Blue, the colour of a clear sky." if given == "Blue." else
                                           "5, since 2 + 3 = 5.")
    if "detailed" in method:
        raise RuntimeError("the engine failed this item")
    if "creative" in method:
        return "   "
    if "helpful" in method:
        return Completion(text="Blue is", finish_reason="length", prompt_tokens=7, completion_tokens=2)
    return given


def spec(**evolve) -> ScoreConfig:
    return ScoreConfig(embeddings=False, evolve_responses={"operations": list(RESPONSE_OPERATIONS), **evolve})


def test_the_best_scored_candidate_is_kept_and_every_candidate_is_recorded():
    backend = ScriptedBackend(responder, model_name="scorer")
    out = {r["id"]: r for r in score_rows(ROWS, load_pack("general"), backend, spec())}
    a, b, c = out["a"], out["b"], out["c"]
    shas = load_pack("general").response_shas(RESPONSE_OPERATIONS)
    # row a: depth's rewrite scored 5.5 against the original's 2.5, and replaced it
    assert (a["response"], a["response_operation"], a["response_prompt_sha"]) == (
        "Blue, the colour of a clear sky.", "depth", shas["depth"])
    assert (a["quality"], a["quality_probs"], a["quality_method"]) == (5.5, [0, 0, 0, 0, 0.5, 0.5], "expectation")
    variants = {v["operation"]: v for v in a["response_variants"]}
    assert [v["operation"] for v in a["response_variants"]] == ["original", *RESPONSE_OPERATIONS]
    assert {op: v["status"] for op, v in variants.items()} == {
        "original": "ok", "helpfulness": "truncated", "relevance": "unchanged", "depth": "ok",
        "creativity": "empty", "details": "llm_error"}
    assert (variants["original"]["quality"], variants["depth"]["quality"]) == (2.5, 5.5)
    assert variants["helpfulness"]["response"] == "Blue is" and variants["helpfulness"]["quality"] is None
    assert all(v["quality"] is None for op, v in variants.items() if op not in ("original", "depth"))
    # row b: a tie keeps the original; row c has no response, so nothing to rewrite or score
    assert (b["response"], b["response_operation"], b["response_prompt_sha"], b["quality"]) == ("5", "original",
                                                                                               None, 4.0)
    assert (c.get("response"), c.get("response_variants"), c.get("quality")) == (None, None, None)
    # calls: one batch of 10 rewrites (2 answered rows x 5), one of 3 complexity + 4 quality requests
    assert (backend.calls, backend.items) == (2, 17)
    assert records_table(list(out.values()), score_schema(True)).num_rows == 3


def test_a_score_shard_with_response_evolution_counts_rewrites_and_replacements(tmp_path):
    ref = ShardRef.of(write_shard(str(tmp_path / "seeds.parquet"), records_table(
        [{**r, "parent_id": None, "operation": "seed", "content_key": r["instruction"], "status": "evolved"}
         for r in ROWS])))
    score = ScoreSpec(prompt_pack="general", llm={"backend": "scripted", "model": "t"}, score=spec())
    uri = str(tmp_path / "scores" / "shard-00000.parquet")
    summary = score_shard([ref], uri, score, ScriptedBackend(responder), load_pack("general"), key="k")
    assert (summary.rows, summary.quality, summary.rewrites, summary.replaced_by) == (3, 2, 10, {"depth": 1})
    assert SCORE_SHARD.done(uri, "k").replaced_by == {"depth": 1}  # read back from the shard itself
    assert read_shard(uri).column_names[-4:] == ["response", "response_operation", "response_prompt_sha",
                                                 "response_variants"]


def test_settings_a_list_of_operations_needs_quality_and_names_known_operations(tmp_path):
    assert ScoreConfig(evolve_responses=["depth", "details"]).evolve_responses.operations == ("depth", "details")
    assert ScoreConfig(evolve_responses={}).evolve_responses.operations == RESPONSE_OPERATIONS
    assert ScoreConfig().evolve_responses is None
    with pytest.raises(ConfigError, match="set score.quality to true"):
        parse_run_config({"seeds": "s.jsonl", "score": {"quality": False, "evolve_responses": ["depth"]}})
    with pytest.raises(ConfigError, match="each operation once"):
        parse_run_config({"seeds": "s.jsonl", "score": {"evolve_responses": ["depth", "depth"]}})
    with pytest.raises(PromptPackError, match=r"no response evolution template for \['brevity'\]"):
        load_pack("general").response_shas(("brevity",))


def run_config(tmp_path, pack="general", **score):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Name a colour.", "output": "Blue."}\n')
    return parse_run_config({"seeds": str(seeds), "output_root": str(tmp_path / "runs"), "prompt_pack": pack,
                             "llm": {"backend": "scripted", "model": "demo"}, "score": score})


def test_the_score_key_has_the_setting_and_the_templates_and_is_unchanged_without_them(tmp_path):
    plain = build_context(run_config(tmp_path))
    identity = plain.model["judge"]
    # without response evolution the key is the one a run had before the option existed
    before = {"complexity": True, "quality": True, "embeddings": True,
              "sampling": ScoreConfig().sampling.model_dump(mode="json")}
    assert plain.score_key == stage_key("score", load_pack("general").scoring_shas(),
                                        {k: v for k, v in identity.items() if k != "structured_outputs"}, True, before)
    on = build_context(run_config(tmp_path, evolve_responses=["depth"])).score_key
    assert len({plain.score_key, on, build_context(run_config(tmp_path, evolve_responses=["details"])).score_key,
                build_context(run_config(tmp_path, evolve_responses={
                    "operations": ["depth"], "sampling": {"max_tokens": 64}})).score_key}) == 4
    # an edited rewrite template changes the key; an edit to another operation's template does not
    pack = tmp_path / "pack"
    shutil.copytree(PACKS_DIR / "general", pack)
    assert build_context(run_config(tmp_path, str(pack), evolve_responses=["depth"])).score_key == on
    (pack / "response_details.jinja2").write_text((pack / "response_details.jinja2").read_text() + "\n")
    assert build_context(run_config(tmp_path, str(pack), evolve_responses=["depth"])).score_key == on
    (pack / "response_depth.jinja2").write_text((pack / "response_depth.jinja2").read_text() + "Be brief.\n")
    assert build_context(run_config(tmp_path, str(pack), evolve_responses=["depth"])).score_key != on
