"""A score shard without Prefect: each root's variants scored together, the counts, reuse under its key."""

from __future__ import annotations

import re

from prompts import load_pack
from storage import RunLayout, ShardRef, read_shard, write_shard
from storage.schema import records_table
from tasks.core.config import ScoreConfig
from tasks.core.context import ScoreSpec
from tasks.llm.base import Completion
from tasks.llm.scripted import ScriptedBackend
from tasks.score.shard import SCORE_SHARD, score_shard


def row(id_: str, root: str, round_: int, instruction: str, response: str | None = "An answer.") -> dict:
    return {"id": id_, "root_id": root, "parent_id": None if round_ == 0 else root, "round": round_,
            "operation": "seed" if round_ == 0 else "deepening", "instruction": instruction, "input": "",
            "content_key": instruction.lower(), "response": response, "status": "evolved"}


def test_a_roots_variants_are_scored_together_and_the_shard_is_reused_under_its_key(tmp_path):
    seen: list[str] = []

    def responder(conversation, params):
        text = conversation[-1]["content"]
        seen.append(text)
        if "complexity" in text:  # the target's round + 1, with a distribution over the six choices
            target = int(re.search(r"question \[(\d)\]", text).group(1))
            return Completion(text=str(target), finish_reason="stop", constrained=True,
                              choice_logprobs={str(target): 0.0})
        return "3"  # quality: a backend without log-probabilities

    layout = RunLayout(str(tmp_path), "run")
    seeds = [row("a", "a", 0, "Name a colour."), row("b", "b", 0, "Add two numbers.", response=None)]
    evolved = [row("a1", "a", 1, "Name a colour and say why it is warm."),
               row("a2", "a", 2, "Name a warm colour, say why, and give one painting that uses it.")]
    refs = [ShardRef.of(write_shard(str(tmp_path / name), records_table(rows)))
            for name, rows in (("seeds.parquet", seeds), ("r1.parquet", evolved[:1]), ("r2.parquet", evolved[1:]))]
    spec = ScoreSpec(prompt_pack="general", llm={"backend": "scripted", "model": "t"}, score=ScoreConfig())
    backend = ScriptedBackend(responder)
    uri = SCORE_SHARD.marker(layout, 0)
    summary = score_shard(refs, uri, spec, backend, load_pack("general"), key="k1")
    assert (summary.rows, summary.complexity, summary.quality, summary.chosen, summary.embedded) == (4, 4, 3, 3, 4)
    complexity = [t for t in seen if "complexity" in t]
    assert len(complexity) == 4 and sum("[3] Name a warm colour" in t for t in complexity) == 3  # root a: 3 variants
    assert any("[1] Add two numbers." in t and "colour" not in t for t in complexity)
    assert SCORE_SHARD.done(uri, "k1").rows == 4 and SCORE_SHARD.done(uri, "k2") is None
    scores = {r["id"]: r for r in read_shard(uri).to_pylist()}
    assert [scores[i]["complexity"] for i in ("a", "a1", "a2", "b")] == [1.0, 2.0, 3.0, 1.0]
    assert scores["a2"]["complexity_probs"] == [0, 0, 1.0, 0, 0, 0]
    assert (scores["b"]["quality"], scores["a"]["quality_method"]) == (None, "chosen")
