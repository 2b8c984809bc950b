"""The whole flow under Prefect with a scripted backend: exact counts, golden export, rerun of failed shards."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, TaskRunFilter

from flows.evol_instruct import evol_instruct
from storage import resolve
from tasks.core.config import EliminationConfig, parse_run_config
from tasks.llm.scripted import ScriptedBackend, register_scripted_backend
from tests.flow_script import ROUND1_REJECTED, ROUND2_REJECTED, PlannedScript, load_seeds

# sha256 of export/messages.jsonl for the 20-seed, 2-round scripted run below
GOLDEN_MESSAGES_SHA = "42c7397947311297b3e0159dabb8f263ec0983d0bf8816f571182b193b976764"


def make_config(tmp_path, root: str, name: str = "flowtest", **extra):
    seeds = load_seeds()
    src = tmp_path / "seeds.jsonl"
    src.write_text("\n".join(json.dumps(s) for s in seeds))
    data = {"name": name, "seeds": str(src), "output_root": root, "rounds": 2, "shard_size": 5, "random_seed": 11,
            "llm": {"backend": "scripted", "model": name},
            "orchestration": {"retries": 0, "retry_delay_s": 0}, **extra}
    return seeds, parse_run_config(data)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    return fs.cat_file(path)


def test_full_flow_exact_counts_and_golden_export(prefect_harness, tmp_path):
    seeds, config = make_config(tmp_path, str(tmp_path / "runs"))
    backend = ScriptedBackend(PlannedScript(seeds))
    register_scripted_backend(backend, "flowtest")
    result = evol_instruct(config)
    assert result.ingest.accepted == 20
    r1, r2 = result.rounds
    assert (r1.pool_in, r1.evolved, r1.carried, r1.rejected) == (20, 6, 14, ROUND1_REJECTED)
    assert (r2.pool_in, r2.evolved, r2.carried, r2.rejected) == (20, 7, 13, ROUND2_REJECTED)
    assert result.mix.candidates == 33 and result.mix.final == 33
    assert result.mix.by_round == {"0": 20, "1": 6, "2": 7}
    assert result.export.rows == 33
    messages = read_bytes(result.export.files["messages"])
    assert len(messages.decode().splitlines()) == 33
    alpaca = json.loads(read_bytes(result.export.files["alpaca"]))
    assert {a["instruction"] for a in alpaca} >= {s["instruction"] for s in seeds}
    card = read_bytes(result.export.files["card"]).decode()
    assert result.data_key in card and "| duplicate | 4 |" in card
    digest = hashlib.sha256(messages).hexdigest()
    assert digest == GOLDEN_MESSAGES_SHA
    assert result.export.sha256["messages"] == digest


class FlakyScript(PlannedScript):
    """Fails whole batches that touch the given seeds while armed: a shard-level failure."""

    def __init__(self, seeds, fail_seeds: set[int]):
        super().__init__(seeds)
        self.fail_seeds = fail_seeds
        self.armed = True


class FlakyBackend(ScriptedBackend):
    """Fails the whole call (a batch, or a streamed row's request) that touches a failing seed."""

    def _check(self, conversations):
        script: FlakyScript = self.responder
        if script.armed:
            for conv in conversations:
                text = conv[-1]["content"]
                if any(script.parents[i][:40] in text for i in script.fail_seeds):
                    raise ConnectionError("simulated backend outage")

    def generate(self, conversations, params):
        self._check(conversations)
        return super().generate(conversations, params)

    async def acomplete(self, conversation, params):
        self._check([conversation])
        return await super().acomplete(conversation, params)


async def task_runs_of_round(flow_run_id, round_index: int):
    """The round's shard task runs, once the server has recorded their final states (it does so from events,
    a moment after the flow returns)."""
    async with get_client() as client:
        subflows = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        ids = [f.id for f in subflows if f.name == f"round-{round_index}"]
        for _ in range(120):
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": ids}),
                                               task_run_filter=TaskRunFilter())
            runs = [r for r in runs if r.name.startswith(f"evolve-r{round_index}-")]
            if all(r.state is not None and r.state.is_final() for r in runs):
                break
            await asyncio.sleep(0.5)
        return runs


def test_failed_shards_rerun_alone_and_export_is_identical(prefect_harness, tmp_path):
    seeds, clean_config = make_config(tmp_path, str(tmp_path / "clean"), name="rerun")
    register_scripted_backend(ScriptedBackend(PlannedScript(seeds)), "rerun")
    clean = evol_instruct(clean_config)

    _, config = make_config(tmp_path, str(tmp_path / "faulty"), name="rerun")
    script = FlakyScript(seeds, fail_seeds={16, 17})  # both in shard 3 (seeds 15-19)
    register_scripted_backend(FlakyBackend(script), "rerun")
    state = evol_instruct(config, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"round 1: 1 shard\(s\) failed after retries.*shard-00003"):
        state.result()
    first_runs = asyncio.run(task_runs_of_round(state.state_details.flow_run_id, 1))
    assert sorted(r.state.name for r in first_runs) == ["Completed"] * 3 + ["Failed"]

    script.armed = False
    state2 = evol_instruct(config, return_state=True)
    assert state2.is_completed()
    runs = asyncio.run(task_runs_of_round(state2.state_details.flow_run_id, 1))
    assert sorted(r.state.name for r in runs) == ["Completed"] + ["Reused"] * 3
    recomputed = [r.name for r in runs if r.state.name == "Completed"]
    assert recomputed == ["evolve-r1-s00003"]
    result = state2.result()
    for kind in ("parquet", "alpaca", "messages"):
        assert read_bytes(result.export.files[kind]) == read_bytes(clean.export.files[kind]), kind


def test_cached_shard_whose_output_was_deleted_is_recomputed(prefect_harness, tmp_path):
    _, config = make_config(tmp_path, str(tmp_path / "runs"), name="stale", rounds=1,
                            llm={"backend": "scripted", "model": "demo"})
    first = evol_instruct(config)
    from storage import is_committed
    from tasks.core.context import run_layout

    layout = run_layout(config)
    shard = layout.shard(1, "candidates", 0)
    fs, path = resolve(shard)
    fs.rm(path + ".done")
    fs.rm(path)
    state = evol_instruct(config, return_state=True)
    assert state.is_completed() and is_committed(shard)
    runs = asyncio.run(task_runs_of_round(state.state_details.flow_run_id, 1))
    assert sorted(r.name for r in runs if r.state.name == "Completed") == ["evolve-r1-s00000"]
    assert read_bytes(state.result().export.files["messages"]) == read_bytes(first.export.files["messages"])


def test_run_hands_its_export_to_the_training_deployment(prefect_harness, tmp_path):
    from tests.test_train import _create_deployment

    name = f"gpu-{tmp_path.name[-8:]}"
    _create_deployment(f"pool-{name}", name)
    _, config = make_config(tmp_path, str(tmp_path / "runs"), name="handoff", rounds=1,
                            llm={"backend": "scripted", "model": "demo"},
                            train={"recipe": "smoke-cpu", "deployment": f"train/{name}"})
    result = evol_instruct(config)
    assert result.training is not None and result.training.mode == "deployment"
    assert result.training.output_uri == f"{result.run_uri}/train/smoke-cpu"
    assert result.training.flow_run_id


def test_card_names_the_model_of_each_stage(tmp_path):
    from tasks.export.card import _model_lines

    _, same = make_config(tmp_path, str(tmp_path / "runs"))
    assert _model_lines(same) == ["- model: `scripted:flowtest` (evolve, respond, judge)"]
    _, split = make_config(tmp_path, str(tmp_path / "runs"),
                           llm={"backend": "scripted", "model": "cheap", "judge": {"model": "strong"}})
    assert _model_lines(split) == ["- evolve model: `scripted:cheap`", "- respond model: `scripted:cheap`",
                                   "- judge model: `scripted:strong`"]


def test_a_card_without_rejections_says_so_instead_of_an_empty_table(tmp_path):
    from tasks.core.summaries import MixSummary, RoundSummary
    from tasks.export.card import dataset_card

    _, config = make_config(tmp_path, str(tmp_path / "runs"))
    counts = {"pool_in": 4, "prompt_tokens": 9, "completion_tokens": 9, "wall_seconds": 1.0, "shard_seconds": 1.0}
    clean = RoundSummary(round=1, shards=1, evolved=4, carried=0, rejected={}, operations={"deepening": 4}, **counts)
    mix = MixSummary(candidates=8, no_response=0, near_duplicates=0, sampled_out=0, final=8, by_round={"0": 4, "1": 4},
                     by_operation={"deepening": 4}, final_uri="f", dropped_uri="d", final_sha256="0")
    card = dataset_card(config, "key", {}, [clean], mix)
    assert "## Rejections by reason\n\nNo evolution was rejected.\n" in card
    assert "- elimination profile: `default` (rules: `empty_evolution`, `evolution_truncated`, " in card
    paper = dataset_card(config.model_copy(update={"elimination": EliminationConfig(profile="paper")}), "key", {},
                         [clean], mix)
    assert ("- elimination profile: `paper` (rules: `empty_evolution`, `evolution_truncated`, `scaffolding_copied`, "
            "`empty_response`, `response_truncated`, `sorry_short_response`, `stopwords_only_response`, "
            "`no_information_gain`)\n") in paper
    rejecting = clean.model_copy(update={"evolved": 3, "carried": 1, "rejected": {"duplicate": 1}})
    assert "## Rejections by reason\n\n| reason | rows |\n| --- | --- |\n| duplicate | 1 |\n" in dataset_card(
        config, "key", {}, [rejecting], mix)
