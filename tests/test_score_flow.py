"""The scoring stage and diversity-aware selection end to end, under Prefect with the scripted demo backend: exact
counts, a rerun after a mix-only change reuses every score, `evol plan` sees the stage."""

from __future__ import annotations

import json

import pyarrow.compute as pc

from flows.evol_instruct import evol_instruct
from storage import read_shard
from tasks.core.config import parse_run_config
from tasks.planning.plan import make_plan
from tests.flow_script import load_seeds


def scored_config(tmp_path, **mix):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps(s) for s in load_seeds()) + "\n")
    return parse_run_config({
        "name": "scored", "seeds": str(seeds), "output_root": str(tmp_path / "runs"), "rounds": 2, "shard_size": 10,
        "random_seed": 3, "llm": {"backend": "scripted", "model": "demo"}, "score": {},
        "mix": {"sample_size": 30, "selection": {"threshold": 0.9}, **mix},
        "orchestration": {"retries": 0, "retry_delay_s": 0}})


def test_scripted_scores_and_selection_exact_counts_and_a_mix_only_rerun_reuses_every_score(prefect_harness,
                                                                                          tmp_path):
    config = scored_config(tmp_path)
    first = evol_instruct(config)
    assert (first.ingest.accepted, [r.evolved for r in first.rounds]) == (20, [20, 19])
    score = first.score
    assert (len(score.shards), score.shards_reused, score.total("rows")) == (2, 0, 59)  # seeds + evolutions
    # the demo backend has no log-probabilities: every score is the chosen one, and says so
    assert (score.total("complexity"), score.total("quality"), score.total("chosen"), score.total("embedded")) == (
        59, 59, 118, 59)
    rows = read_shard(score.shards[0].scores.uri)
    assert set(rows["complexity_method"].to_pylist()) == {"chosen"} and rows["complexity_probs"].null_count == 30
    mix = first.mix
    assert (mix.candidates, mix.near_duplicates, mix.not_selected, mix.sampled_out, mix.final) == (59, 8, 21, 0, 30)
    dropped = read_shard(mix.dropped_uri)
    final_ids = set(read_shard(mix.final_uri)["id"].to_pylist())
    not_selected = dropped.filter(pc.equal(dropped["reject_reason"], "not_selected"))
    assert not_selected.num_rows == 21 and set(not_selected["duplicate_of"].to_pylist()) <= final_ids

    # a mix-only change: every score shard reused, mix and export made again; `evol plan` says so beforehand
    changed = scored_config(tmp_path, sample_size=25, selection={"threshold": 0.8})
    plan = {s.stage: s for s in make_plan(changed).stages}
    assert list(plan) == ["ingest", "round 1", "round 2", "score", "mix", "export"]
    assert (plan["score"].reused, plan["score"].shards_reused, plan["mix"].reused) == (True, 2, False)
    second = evol_instruct(changed)
    assert second.score.shards_reused == 2 and all(s.reused for s in second.score.shards)
    assert [s.scores for s in second.score.shards] == [s.scores for s in score.shards]
    assert not second.mix.reused and second.mix.final == 25
    assert second.mix.near_duplicates + second.mix.not_selected + second.mix.final == 59


def test_decontamination_and_selection_together(prefect_harness, tmp_path):
    """Decontamination drops its rows before selection ranks the rest; the card shows both."""
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question": load_seeds()[19]["instruction"]}) + "\n")
    config = scored_config(tmp_path, decontaminate=[{"path": str(bench), "field": "question"}])
    mix = evol_instruct(config).mix
    assert mix.contaminated >= 1 and mix.contaminated_by == {str(bench): mix.contaminated}
    assert mix.contaminated + mix.near_duplicates + mix.not_selected + mix.sampled_out + mix.final == 59
    assert mix.final == 30
    dropped = read_shard(mix.dropped_uri)
    assert set(dropped["reject_reason"].to_pylist()) >= {"contaminated", "not_selected"}
    card = (tmp_path / "runs" / "scored" / "export" / "README.md").read_text()
    assert f"{mix.contaminated} contaminated" in card and f"{mix.not_selected} not selected" in card
    assert "## Selection" in card and "by diversity-aware selection" in card and f"| `{bench}` | `question` |" in card
