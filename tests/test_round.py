"""One round without Prefect: elimination reasons, pool semantics and the invariant, with exact counts."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from prompts import load_pack
from storage import RunLayout, ShardRef, list_committed_shards, read_shard
from storage.schema import RECORD_SCHEMA, records_table
from storage.shards import read_marker
from tasks.core.config import OrchestrationConfig, RunConfig
from tasks.core.context import EvolveSpec
from tasks.evolve.shard import evolve_shard, summarize
from tasks.ingest.seeds import ingest_seeds
from tasks.llm.scripted import ScriptedBackend
from tasks.round.finish import RoundInvariantError, check_round_invariant, finish_round, shard_outputs
from tests.flow_script import ROUND1_REJECTED, ROUND2_REJECTED, PlannedScript, load_seeds


@pytest.fixture()
def seeded(tmp_path):
    seeds = load_seeds()
    src = tmp_path / "seeds.jsonl"
    src.write_text("\n".join(json.dumps(s) for s in seeds))
    layout = RunLayout(str(tmp_path / "runs"), "r")
    ingest_seeds(str(src), layout.stage_dir(0, "pool"), shard_size=6)
    config = RunConfig(seeds=str(src), rounds=2, shard_size=6, random_seed=3)
    return seeds, layout, config


def refs(layout, k, stage):
    return [ShardRef.of(read_marker(u)) for u in list_committed_shards(layout.stage_dir(k, stage))]


def run_round(layout, config, backend, k):
    """What the round flow does, without Prefect: evolve every pool shard, then finish the round."""
    pack = load_pack("general")
    pool = refs(layout, k - 1, "pool")
    references = refs(layout, 0, "pool") + [r for j in range(1, k) for r in refs(layout, j, "evolved")]
    references += pool if k > 1 else []
    summaries = [evolve_shard(ref, layout.shard(k, "candidates", i), k, EvolveSpec.of(config), backend, pack)
                 for i, ref in enumerate(pool)]
    return finish_round(layout, k, summaries, pool, references, started=0.0)


@pytest.mark.parametrize("streaming", [False, True], ids=["batch", "streaming"])
def test_two_rounds_exact_counts_and_pool_semantics(seeded, streaming):
    seeds, layout, config = seeded
    config = config.model_copy(update={"orchestration": OrchestrationConfig(streaming=streaming)})
    backend = ScriptedBackend(PlannedScript(seeds))
    r1 = run_round(layout, config, backend, 1)
    assert (r1.pool_in, r1.evolved, r1.carried, r1.shards) == (20, 6, 14, 4)
    assert r1.rejected == ROUND1_REJECTED
    # evolved by operation: the shards' counts less the two duplicates (an in_breadth and an add_constraints)
    assert r1.operations == {"add_constraints": 2, "concretizing": 1, "deepening": 3}
    r2 = run_round(layout, config, backend, 2)
    assert (r2.pool_in, r2.evolved, r2.carried) == (20, 7, 13)
    assert r2.rejected == ROUND2_REJECTED
    assert r2.operations == {"add_constraints": 1, "concretizing": 2, "deepening": 1, "in_breadth": 2,
                             "increase_reasoning_steps": 1}

    evolved = [row for u in list_committed_shards(layout.stage_dir(2, "evolved")) for row in read_shard(u).to_pylist()]
    pool1 = {row["id"]: row for u in list_committed_shards(layout.stage_dir(1, "pool"))
             for row in read_shard(u).to_pylist()}
    for row in evolved:  # lineage: each round-2 evolution's parent is its row in the round-1 pool
        parent = pool1[row["parent_id"]]
        assert row["root_id"] == parent["root_id"]
        assert row["instruction"].startswith(parent["instruction"].split("\n")[0])
        assert row["round"] == 2 and row["status"] == "evolved" and row["reject_reason"] is None
        assert row["prompt_sha"] == load_pack("general").template_shas()[row["operation"]]
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
        assert row["model"] == "scripted" and row["response"].startswith("A full answer")
    rejected = [row for u in list_committed_shards(layout.stage_dir(1, "rejected"))
                for row in read_shard(u).to_pylist()]
    dups = [r for r in rejected if r["reject_reason"] == "duplicate"]
    seed17 = next(row for u in list_committed_shards(layout.stage_dir(0, "pool"))
                  for row in read_shard(u).to_pylist() if row["instruction"] == seeds[17]["instruction"])
    assert [d["duplicate_of"] for d in dups] == [seed17["id"], seed17["id"]]
    # a carried parent goes on unchanged: seed 0 failed twice and is still the seed row
    pool2 = [row for u in list_committed_shards(layout.stage_dir(2, "pool")) for row in read_shard(u).to_pylist()]
    assert pool2[0]["round"] == 0 and pool2[0]["instruction"] == seeds[0]["instruction"]
    assert sum(1 for r in pool2 if r["round"] == 0) == 13  # the 13 carried in round 2 are seeds that never evolved
    assert backend.items == 111  # every row's every step, in either mode
    # batch: one call per stage that some row of the shard reached (evolve, validity, answer, equality: 4 shards x
    # 4 stages x 2 rounds, less the 6 stages no row of its shard reached); streaming: one call per step
    assert backend.calls == (111 if streaming else 4 * 4 * 2 - 6)


def test_invariant_fails_loudly_when_a_rejection_is_missing(seeded):
    seeds, layout, config = seeded
    run_round(layout, config, ScriptedBackend(PlannedScript(seeds)), 1)
    from storage import write_shard

    uri = list_committed_shards(layout.stage_dir(1, "rejected"))[0]
    rows = read_shard(uri).to_pylist()
    write_shard(uri, records_table(rows[1:]))  # lose one rejected candidate
    pool_in = list_committed_shards(layout.stage_dir(0, "pool"))
    outputs = {stage: refs(layout, 1, stage) for stage in ("evolved", "rejected", "pool")}
    with pytest.raises(RoundInvariantError, match="without exactly one rejected candidate: 1"):
        check_round_invariant(1, pool_in, outputs)


def test_finished_round_is_reused_from_its_marker_without_the_model(seeded):
    seeds, layout, config = seeded
    backend = ScriptedBackend(PlannedScript(seeds))
    first = run_round(layout, config, backend, 1)
    pool = refs(layout, 0, "pool")
    summaries = [summarize(1, p.uri, ShardRef.of(read_marker(layout.shard(1, "candidates", i))),
                           read_shard(layout.shard(1, "candidates", i)), 0.0)
                 for i, p in enumerate(pool)]
    again = finish_round(layout, 1, summaries, pool, pool, started=0.0)
    assert again.reused and not first.reused
    assert again.model_dump(exclude={"reused"}) == first.model_dump(exclude={"reused"})
    # a different reference set is a different key: the round is finished anew. Without seed 13's shard
    # among the references, one of its two copies is no longer a duplicate.
    redone = finish_round(layout, 1, summaries, pool, pool[:1], started=0.0)
    assert not redone.reused and (redone.evolved, redone.rejected["duplicate"]) == (first.evolved + 1, 1)


def test_shard_outputs_mark_duplicates_and_replace_parents():
    pool = records_table([{"id": f"p{i}", "root_id": f"p{i}", "round": 0, "operation": "seed", "instruction": f"t{i}",
                           "input": "", "content_key": f"t{i}", "status": "evolved"} for i in range(4)])
    statuses = ["evolved", "rejected", "evolved", "evolved"]
    candidates = records_table([{"id": f"c{i}", "root_id": f"p{i}", "parent_id": f"p{i}", "round": 1,
                                 "operation": "deepening", "instruction": f"u{i}", "input": "", "content_key": f"u{i}",
                                 "status": status, "reject_reason": None if status == "evolved" else "llm_error"}
                                for i, status in enumerate(statuses)])
    duplicates = pa.table({"row": [2], "duplicate_of": ["s9"]})
    out = shard_outputs(pool, candidates, duplicates)
    assert out["evolved"]["id"].to_pylist() == ["c0", "c3"]
    assert out["rejected"].select(["id", "reject_reason", "duplicate_of"]).to_pylist() == [
        {"id": "c1", "reject_reason": "llm_error", "duplicate_of": None},
        {"id": "c2", "reject_reason": "duplicate", "duplicate_of": "s9"}]
    assert out["pool"]["id"].to_pylist() == ["c0", "p1", "p2", "c3"]
    assert all(table.schema == RECORD_SCHEMA for table in out.values())
    with pytest.raises(RoundInvariantError, match="do not line up"):
        shard_outputs(pool, candidates.slice(1), duplicates.slice(0, 0))
    with pytest.raises(RoundInvariantError, match="do not line up"):
        shard_outputs(pool.take([1, 0, 2, 3]), candidates, duplicates)
