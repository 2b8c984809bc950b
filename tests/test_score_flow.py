"""The scoring stage and diversity-aware selection end to end, under Prefect with the scripted demo backend: exact
counts, a rerun after a mix-only change reuses every score, `evol plan` sees the stage."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.evol_instruct import evol_instruct
from prompts import load_pack
from storage import read_shard
from tasks.core.config import parse_run_config
from tasks.export.scores import BIN_LABELS
from tasks.planning.plan import make_plan
from tasks.reporting.monitor import artifact_key
from tests.flow_script import load_seeds

REPLACED_BY = {"depth": 5, "details": 46}  # response evolution's replacements over the 59 scored rows, by operation
FINAL_REPLACED = {"depth": 3, "details": 22}  # and over the 30 selected ones


def scored_config(tmp_path, name="scored", score=None, **mix):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps(s) for s in load_seeds()) + "\n")
    return parse_run_config({
        "name": name, "seeds": str(seeds), "output_root": str(tmp_path / "runs"), "rounds": 2, "shard_size": 10,
        "random_seed": 3, "llm": {"backend": "scripted", "model": "demo"}, "score": score or {},
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


PNG_HEADER = b"\x89PNG\r\n\x1a\n"
SCORE_PNGS = {"complexity_scores.png": "Complexity scores", "quality_scores.png": "Quality scores"}


def summary_artifact(run_id: str) -> str:
    """The markdown of the run's summary artifact."""
    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[artifact_key(run_id, "summary")])))
    (artifact,) = asyncio.run(read())
    return artifact.data


def bins_of(values: list[float | None]) -> list[int]:
    """Rows per bin (1..6 at the nearest whole number, a half upward, then none), counted one by one."""
    counted = Counter("none" if v is None else str(math.floor(v + 0.5)) for v in values)
    return [counted[label] for label in BIN_LABELS]


def test_a_scored_run_exports_score_plots_and_bins_and_the_selection_settings(prefect_harness, tmp_path,
                                                                             scripted_run):
    result = evol_instruct(scored_config(tmp_path, name="scored-plots"))
    export = Path(result.export.files["card"]).parent
    card = (export / "README.md").read_text()
    summary = summary_artifact("scored-plots")
    for name, title in SCORE_PNGS.items():
        data = (export / "plots" / name).read_bytes()
        assert len(data) > 1000 and data[:8] == PNG_HEADER and data[12:16] == b"IHDR"
        assert result.export.files[f"plot_{name.removesuffix('.png')}"] == str(export / "plots" / name)
        assert f"![{title}](plots/{name})" in card
        assert f"![{title}](data:image/png;base64,{base64.b64encode(data).decode()})" in summary

    # the card's table: rows per bin over every scored row and over the exported rows, as counted here
    scores = pa.concat_tables(read_shard(s.scores.uri) for s in result.score.shards)
    exported = pc.is_in(scores["id"], read_shard(result.mix.final_uri)["id"])
    final = scores.filter(exported)
    columns = {kind: (bins_of(scores[kind].to_pylist()), bins_of(final[kind].to_pylist()))
               for kind in ("complexity", "quality")}
    assert columns == {"complexity": ([9, 9, 7, 11, 11, 12, 0], [0, 3, 4, 3, 9, 11, 0]),  # 59 and 30 rows
                       "quality": ([5, 16, 8, 11, 11, 8, 0], [0, 5, 4, 8, 6, 7, 0])}
    table = ["| score | complexity: scored | complexity: exported | quality: scored | quality: exported |",
             "| --- | --- | --- | --- | --- |",
             *(f"| {label} | {columns['complexity'][0][i]} | {columns['complexity'][1][i]} | "
               f"{columns['quality'][0][i]} | {columns['quality'][1][i]} |" for i, label in enumerate(BIN_LABELS))]
    assert "\n".join(table) in card
    assert "(`llm.score`) of the 59 scored rows (the seeds and every round's evolutions) and of the 30 exported " \
           "rows" in card
    assert "| budget (`mix.sample_size`) | 30 rows |" in card
    assert "| threshold (`mix.selection.threshold`) | cosine similarity < 0.9 to every row taken before |" in card
    assert "| embedding model | `scripted:demo` |" in card

    # a run without a `score:` section: no score plots, no score section, no selection settings
    _, plain = scripted_run(tmp_path, "unscored-plots", "plain")
    plain_export = Path(plain.export.files["card"]).parent
    assert sorted(p.name for p in (plain_export / "plots").iterdir()) == [
        "evolved_share.png", "instruction_length.png", "rejections.png"]
    assert not {k for k in plain.export.files if k.endswith("_scores")}
    plain_card = (plain_export / "README.md").read_text()
    assert "## Scores" not in plain_card and "embedding model" not in plain_card
    assert "_scores.png" not in summary_artifact("unscored-plots")


def test_response_evolution_replaces_responses_by_score_and_is_keyed_like_every_stage(prefect_harness, tmp_path):
    """Turning response evolution on redoes the scores (and what follows) only; the final rows take the kept
    responses; a mix-only change after it reuses every score shard."""
    evol_instruct(scored_config(tmp_path))
    evolving = scored_config(tmp_path, score={"evolve_responses": ["depth", "details"]})
    plan = {s.stage: s for s in make_plan(evolving).stages}
    assert (plan["round 2"].reused, plan["score"].reused, plan["score"].why) == (True, False, "its inputs changed")
    run = evol_instruct(evolving)
    assert all(r.reused for r in run.rounds) and run.score.shards_reused == 0
    score, mix = run.score, run.mix
    assert (score.total("rows"), score.total("quality"), score.total("rewrites")) == (59, 59, 118)
    assert score.replaced_by() == REPLACED_BY
    assert mix.final == 30 and mix.responses_replaced == FINAL_REPLACED
    scores = {r["id"]: r for s in score.shards for r in read_shard(s.scores.uri).to_pylist()}
    shas = load_pack("general").response_shas(("depth", "details"))
    for row in read_shard(mix.final_uri).to_pylist():
        kept = scores[row["id"]]
        assert row["response"] == kept["response"] and len(kept["response_variants"]) == 3
        assert kept["quality"] == max(v["quality"] for v in kept["response_variants"] if v["quality"] is not None)
        if kept["response_operation"] != "original":
            assert row["response_prompt_sha"] == shas[kept["response_operation"]]
            assert row["respond_model"] == kept["score_model"]
    card = (tmp_path / "runs" / "scored" / "export" / "README.md").read_text()
    assert f"replaced it in {sum(FINAL_REPLACED.values())} final row(s)" in card

    again = evol_instruct(scored_config(tmp_path, score={"evolve_responses": ["depth", "details"]}, sample_size=25))
    assert again.score.shards_reused == 2 and again.score.replaced_by() == REPLACED_BY
    assert not again.mix.reused and again.mix.final == 25
