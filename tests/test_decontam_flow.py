"""Decontamination end to end: planted benchmark items leave the final data, named in ``final_dropped/``; an
unchanged rerun reuses the mix, a changed benchmark file recomputes it."""

from __future__ import annotations

import json

import pyarrow.compute as pc

from flows.evol_instruct import evol_instruct
from storage import read_shard
from tasks.llm.scripted import ScriptedBackend, register_scripted_backend
from tests.flow_script import PlannedScript, load_seeds
from tests.test_flow import make_config
from tests.test_stage_keys import recomputed, snapshot


def test_planted_benchmark_items_are_removed_and_named(prefect_harness, tmp_path):
    seeds = load_seeds()
    jsonl, csv = tmp_path / "bench.jsonl", tmp_path / "bench.csv"
    # seed 19 evolves in both rounds (its rewrites keep its words): 3 rows; seed 7's rewrites all fail: 1 row
    jsonl.write_text(json.dumps({"question": "How many primes are there below one hundred, and how do you know?"})
                     + "\n" + json.dumps({"question": "Q: " + seeds[19]["instruction"].upper() + " Answer briefly."}))
    csv.write_text("question\n\"" + seeds[7]["instruction"].replace(" ", "  ").rstrip(".") + "!\"\n")
    spec = {"files": [{"path": str(jsonl), "field": "question"}, {"path": str(csv), "field": "question"}]}
    _, config = make_config(tmp_path, str(tmp_path / "runs"), name="decontam", mix={"decontaminate": spec})
    register_scripted_backend(ScriptedBackend(PlannedScript(seeds)), "decontam")
    result = evol_instruct(config)

    assert (result.mix.candidates, result.mix.contaminated, result.mix.final) == (33, 4, 29)
    assert result.mix.contaminated_by == {str(jsonl): 3, str(csv): 1}
    assert result.mix.by_round == {"0": 18, "1": 5, "2": 6}
    dropped = read_shard(result.mix.dropped_uri)
    dropped = dropped.filter(pc.equal(dropped["reject_reason"], "contaminated")).sort_by("round")
    roots = dropped.to_pydict()
    named = sorted(zip(roots["round"], roots["duplicate_of"], roots["instruction"], strict=True))
    assert [(r, of) for r, of, _ in named] == [(0, f"{csv}#0"), (0, f"{jsonl}#1"), (1, f"{jsonl}#1"),
                                               (2, f"{jsonl}#1")]
    assert named[0][2] == seeds[7]["instruction"] and named[1][2] == seeds[19]["instruction"]
    card = (tmp_path / "runs" / "decontam" / "export" / "README.md").read_text()
    assert "4 contaminated" in card
    assert f"| `{jsonl}` | `question` | 3 |\n| `{csv}` | `question` | 1 |" in card

    run_dir = tmp_path / "runs" / "decontam"
    before = snapshot(run_dir)
    again = evol_instruct(config)
    assert recomputed(before, snapshot(run_dir)) == set() and again.mix.reused

    csv.write_text("question\nWhat is the capital of France?\n")
    changed = evol_instruct(config)
    assert recomputed(before, snapshot(run_dir)) == {"mix", "export"}
    assert (changed.mix.contaminated, changed.mix.contaminated_by, changed.mix.final) == (3, {str(jsonl): 3}, 30)
