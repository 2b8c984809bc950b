"""The pipeline on the real vLLM CPU engine and the bundled model: one round on 8 demo seeds through the flow."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from flows.evol_instruct import evol_instruct
from prompts import load_pack
from storage import list_committed_shards, read_shard
from tasks.core.config import parse_run_config
from tasks.core.context import run_layout
from tests.flow_script import load_seeds
from tests.test_monitor import _run_records

pytestmark = pytest.mark.vllm


def test_one_round_on_8_seeds_with_vllm(prefect_harness, tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("EVOL_LLM__MODELS_DIR", str(model_dir.parent))
    src = tmp_path / "seeds.jsonl"
    src.write_text("\n".join(json.dumps(s) for s in load_seeds(n=8)))
    config = parse_run_config({
        "seeds": str(src), "output_root": str(tmp_path / "runs"), "rounds": 1, "shard_size": 4, "random_seed": 5,
        # the async engine of tests/test_llm_streaming.py (one engine group in tests/conftest.py: one start for
        # both): one sequence per step costs this round about 5 s more than batches, a second engine about 30 s of CPU
        "llm": {"backend": "vllm", "model": "default", "engine_args": {"max_model_len": 1024, "max_num_seqs": 1}},
        "sampling": {"evolve": {"temperature": 0.7, "max_tokens": 64},
                     "respond": {"temperature": 0.7, "max_tokens": 64}},
        "dedup": {"near": False},
    })
    state = evol_instruct(config, return_state=True)
    result = state.result()
    (r1,) = result.rounds
    assert r1.pool_in == 8 and r1.evolved + r1.carried == 8
    assert sum(r1.rejected.values()) == r1.carried
    assert r1.prompt_tokens > 0 and r1.completion_tokens > 0

    layout = run_layout(config)
    shas = load_pack("general").template_shas()
    candidates = [row for uri in list_committed_shards(layout.stage_dir(1, "candidates"))
                  for row in read_shard(uri).to_pylist()]
    seeds = {row["id"]: row for uri in list_committed_shards(layout.stage_dir(0, "pool"))
             for row in read_shard(uri).to_pylist()}
    assert len(candidates) == 8
    assert {c["parent_id"] for c in candidates} == set(seeds)
    for c in candidates:
        assert c["root_id"] == c["parent_id"] and c["round"] == 1
        assert c["model"].endswith("smollm2-135m-instruct")
        assert c["prompt_sha"] == shas[c["operation"]]
        assert c["finish_reason"] in ("stop", "length")
        assert c["prompt_tokens"] > 0 and c["completion_tokens"] > 0
        if c["response"] is not None:
            assert c["response_prompt_sha"] == shas["answer"]
    evolved_uris = list_committed_shards(layout.stage_dir(1, "evolved"))
    evolved = [row for uri in evolved_uris for row in read_shard(uri).to_pylist()]
    assert len(evolved) == r1.evolved
    assert result.mix.final == result.export.rows
    assert result.mix.by_round.get("0", 0) <= 8

    # the engine started in a step of its own, before the shards, and said how long it took
    _, logs, task_runs = asyncio.run(_run_records(state.state_details.flow_run_id, "seeds-", 1, shard_lines=2))
    assert [t.name for t in task_runs if t.name.startswith("start-engines")] == ["start-engines-r1"]
    ready = [log.message for log in logs if "ready in" in log.message]
    assert len(ready) == 1 and re.fullmatch(r"round 1: engine smollm2-135m-instruct ready in \d+\.\d s", ready[0])
