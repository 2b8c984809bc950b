"""Each stage is recomputed exactly when what it depends on changed: asserted from the storage markers."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from flows.evol_instruct import evol_instruct
from prompts.pack import PACKS_DIR
from tasks.core.config import parse_run_config
from tasks.llm.models import model_identity
from tests.flow_script import load_seeds

EVOLVE_SHARDS = {"evolve r1 s0", "evolve r1 s1", "evolve r2 s0", "evolve r2 s1"}
ALL_LLM = {"evolve r1 s0", "evolve r1 s1", "round=1", "evolve r2 s0", "evolve r2 s1", "round=2", "mix", "export"}


def stage_of(rel: str) -> str | None:
    """The stage a marker file records, named as the tests name it."""
    parts = rel.split("/")
    if rel == "round=0/_ingest.json":
        return "ingest"
    if parts[-1] == "_round.json":
        return parts[0]
    if len(parts) == 3 and parts[1] == "candidates" and parts[2].endswith(".done"):
        return f"evolve r{parts[0].split('=')[1]} s{int(parts[2][6:11])}"
    return {"final/_mix.json": "mix", "export/_export.json": "export"}.get(rel)


def snapshot(run_dir: Path) -> dict[str, str]:
    """Stage -> hash of its marker file (a recomputed stage rewrites its marker)."""
    out = {}
    for p in run_dir.rglob("*"):
        stage = stage_of(p.relative_to(run_dir).as_posix())
        if stage and p.is_file():
            out[stage] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def recomputed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {stage for stage, digest in after.items() if before.get(stage) != digest}


@pytest.fixture(scope="module")
def baseline(scripted_run, tmp_path_factory):
    """One finished run (20 seeds, 2 rounds, 2 shards, the scripted demo model) to change things against."""
    tmp = tmp_path_factory.mktemp("keys")
    base, result = scripted_run(tmp, "keys", "base")
    return tmp, base, result


def edited_seeds(tmp: Path) -> str:
    """The seed file edited in place, as a user would (rows keep their source file in ``meta``)."""
    rows = load_seeds()
    rows[3]["instruction"] += " Use at most three sentences."
    path = tmp / "seeds.jsonl"
    path.write_text("\n".join(json.dumps(s) for s in rows) + "\n")
    return str(path)


def edited_pack(tmp: Path) -> str:
    folder = tmp / "pack"
    if not folder.exists():
        shutil.copytree(PACKS_DIR / "general", folder)
        answer = folder / "answer.jinja2"
        answer.write_text(answer.read_text() + "\nBe precise.\n")
    return str(folder)


CHANGES = [
    ("seed content", lambda tmp, c: {**c, "seeds": edited_seeds(tmp)},
     {"ingest", "evolve r1 s0", "round=1", "evolve r2 s0", "round=2", "mix", "export"}),
    # the same rows come out of ingest, so nothing downstream of it is redone; the card shows the new map
    ("field map", lambda tmp, c: {**c, "field_map": {"instruction": "instruction", "input": "input",
                                                     "output": "output"}}, {"ingest", "export"}),
    ("template", lambda tmp, c: {**c, "prompt_pack": edited_pack(tmp)}, ALL_LLM),
    # the evolve shards are redone; the scripted model answers the same and no answer says sorry, so their
    # candidates come out byte-identical and nothing after them is redone but the card, which shows the setting
    ("sampling", lambda tmp, c: {**c, "sampling": {"respond": {"max_tokens": 1000}}}, EVOLVE_SHARDS | {"export"}),
    ("elimination", lambda tmp, c: {**c, "elimination": {"sorry_max_words": 60}}, EVOLVE_SHARDS | {"export"}),
    # the same rules run in both profiles: the shards' candidates come out the same, the card names the profile
    ("elimination profile", lambda tmp, c: {**c, "elimination": {"profile": "small-model"}},
     EVOLVE_SHARDS | {"export"}),
    ("run seed", lambda tmp, c: {**c, "random_seed": 4}, ALL_LLM),
    ("dedup", lambda tmp, c: {**c, "dedup": {"jaccard_threshold": 0.9}}, {"mix", "export"}),
    ("mix", lambda tmp, c: {**c, "mix": {"sample_size": 10}}, {"mix", "export"}),
    ("train", lambda tmp, c: {**c, "train": {"recipe": "smoke-cpu", "enabled": False}}, set()),
    ("orchestration", lambda tmp, c: {**c, "orchestration": {"max_parallel_shards": 1, "retries": 1}}, set()),
    ("batch path", lambda tmp, c: {**c, "orchestration": {**c["orchestration"], "streaming": False}}, set()),
    # no model output is redone; the card lists the engine arguments
    ("performance engine args", lambda tmp, c: {**c, "llm": {**c["llm"], "engine_args": {"tensor_parallel_size": 2}}},
     {"export"}),
    ("more rounds", lambda tmp, c: {**c, "rounds": 3}, {"evolve r3 s0", "evolve r3 s1", "round=3", "mix", "export"}),
]


@pytest.mark.parametrize("change,edit,expected", CHANGES, ids=[c[0] for c in CHANGES])
def test_a_change_recomputes_exactly_the_stages_that_depend_on_it(baseline, change, edit, expected):
    tmp, base, first = baseline
    root = tmp / change.replace(" ", "-")
    shutil.copytree(tmp / "base", root)
    run_dir = root / "keys"
    before = snapshot(run_dir)
    seeds = Path(base["seeds"]).read_bytes()
    try:
        result = evol_instruct(parse_run_config(edit(tmp, {**base, "output_root": str(root)})))
    finally:
        Path(base["seeds"]).write_bytes(seeds)
    assert recomputed(before, snapshot(run_dir)) == expected
    if "export" not in expected:
        assert result.export.sha256 == first.export.sha256
    if "mix" not in expected:  # the data is the same; only the card (which shows the config) may change
        assert {k: v for k, v in result.export.sha256.items() if k != "card"} == \
            {k: v for k, v in first.export.sha256.items() if k != "card"}


def test_the_batch_path_exports_the_same_bytes_as_streaming(baseline):
    """A fresh run stage by stage in batches (the baseline streamed its rows) writes the same export."""
    tmp, base, first = baseline
    batch = {**base, "output_root": str(tmp / "batch"), "orchestration": {**base["orchestration"], "streaming": False}}
    assert evol_instruct(parse_run_config(batch)).export.sha256 == first.export.sha256


def test_a_rerun_with_nothing_changed_recomputes_nothing(baseline):
    tmp, base, first = baseline
    root = tmp / "unchanged"
    shutil.copytree(tmp / "base", root)
    before = snapshot(root / "keys")
    result = evol_instruct(parse_run_config({**base, "output_root": str(root)}))
    assert recomputed(before, snapshot(root / "keys")) == set()
    assert result.ingest.reused and result.mix.reused and result.export.reused
    assert all(r.reused and r.shards_reused == r.shards == 2 for r in result.rounds)
    assert result.export.sha256 == first.export.sha256


def test_recompute_forces_a_stage_and_only_what_depends_on_its_output(baseline):
    tmp, base, first = baseline
    root = tmp / "forced"
    shutil.copytree(tmp / "base", root)
    before = snapshot(root / "keys")
    result = evol_instruct(parse_run_config({**base, "output_root": str(root)}), recompute=["round=2"])
    # the scripted model is deterministic and rows carry no wall-clock time: round 2 comes out byte-identical,
    # so mix and export, keyed by the shards' content, are reused
    assert recomputed(before, snapshot(root / "keys")) == {"evolve r2 s0", "evolve r2 s1", "round=2"}
    assert result.export.reused and result.export.sha256 == first.export.sha256


def test_model_identity_follows_the_folder_content_not_performance_settings(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["X"]}')
    (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    first = model_identity("vllm", str(folder), {"dtype": "float32"}, tmp_path)
    assert model_identity("vllm", str(folder), {"dtype": "float32", "tensor_parallel_size": 8}, tmp_path) == first
    assert model_identity("vllm", str(folder), {"dtype": "bfloat16"}, tmp_path) != first
    (folder / "model.safetensors").write_bytes(b"\0" * 999 + b"\1")
    assert model_identity("vllm", str(folder), {"dtype": "float32"}, tmp_path) != first
    hub = model_identity("vllm", "org/model", {"revision": "abc"}, tmp_path)
    assert hub["hub_id"] == "org/model" and hub["revision"] == "abc"
