"""A small round on a local cluster of 2 `evol worker` processes (one CPU each) with the vLLM backend and the bundled
model, against a real Prefect server: each worker starts its engine once, with its first shard, and keeps it for
the next shards and the next round; the shards spread over both workers; the round's counts are exact."""

from __future__ import annotations

import json

import pytest

from flows.evol_instruct import evol_instruct
from storage import list_committed_shards, read_shard
from tasks.core.config import parse_run_config
from tasks.core.context import run_layout
from tests.flow_script import load_seeds
from tests.services import prefect_api
from tests.test_workers import ROOT, LocalCluster
from tests.worker_support import engines_built, shards_done

pytestmark = [pytest.mark.vllm, pytest.mark.server]
SEEDS = 4  # one row a shard: 4 shards a round, 8 in all


@pytest.fixture
def vllm_cluster(tmp_path, model_dir):
    # Each worker's engine is pinned to its CPU with a 1 GiB KV cache (what `evol worker --cpus` sets; the smallest
    # vLLM takes), so two engines of the 135M model fit next to each other in a few GiB.
    cluster = LocalCluster(tmp_path, 2, 0.0, env={"EVOL_LLM__MODELS_DIR": str(model_dir.parent)})
    yield cluster
    cluster.close()


def test_two_vllm_workers_each_start_their_engine_once(prefect_server, vllm_cluster, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in load_seeds(str(ROOT / "data" / "demo_seeds.jsonl"), SEEDS)))
    short = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 16}
    config = parse_run_config({
        "name": "vllm-workers", "seeds": str(seeds), "output_root": str(tmp_path / "runs"), "rounds": 2,
        "shard_size": 1, "random_seed": 5, "dedup": {"near": False},
        "llm": {"backend": "vllm", "model": "default", "engine_args": {"max_model_len": 1024, "max_num_seqs": 4}},
        "sampling": {"evolve": short, "respond": short},
        "orchestration": {"cluster": vllm_cluster.address, "retries": 0, "retry_delay_s": 0}})
    with prefect_api(prefect_server):
        result = evol_instruct(config)

    assert [(r.round, r.shards, r.pool_in) for r in result.rounds] == [(1, SEEDS, SEEDS), (2, SEEDS, SEEDS)]
    for r in result.rounds:
        assert r.evolved + r.carried == SEEDS and sum(r.rejected.values()) == r.carried
        assert r.prompt_tokens > 0 and r.completion_tokens > 0
    layout = run_layout(config)
    for round_index in (1, 2):
        candidates = [row for uri in list_committed_shards(layout.stage_dir(round_index, "candidates"))
                      for row in read_shard(uri).to_pylist()]
        assert len(candidates) == SEEDS
        assert all(c["model"].endswith("smollm2-135m-instruct") and c["completion_tokens"] > 0 for c in candidates)

    # the streaming path: one AsyncLLM per worker for 8 shards over 2 rounds, no offline engine
    assert vllm_cluster.by_name(engines_built) == {"w0": {"offline": 0, "async": 1}, "w1": {"offline": 0, "async": 1}}
    done = vllm_cluster.by_name(shards_done)
    assert min(done.values()) >= 1 and sum(done.values()) == 2 * SEEDS, done
