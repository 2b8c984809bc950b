"""A process that keeps a run's pack and backends (a cluster worker, between runs) notices an edited pack: a run that
starts after the edit renders the edited templates while the backends stay built; a pack edited after its run
started fails the run's shards instead of mixing templates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from prompts import PromptPackError, load_pack
from storage import read_shard
from tasks.core.config import parse_run_config
from tasks.core.context import EvolveSpec
from tasks.evolve.shard import evolve_runtime, evolve_runtime_builds, evolve_shard_task, reset_evolve_runtimes
from tasks.ingest.seeds import ingest_run_seeds
from tasks.llm.scripted import ScriptedBackend, demo_responder, register_scripted_backend
from tasks.runtime.resolve import build_context
from tests.flow_script import load_seeds

ROOT = Path(__file__).resolve().parents[1]
MARKER = "Keep the rewritten prompt in plain English."
# the general pack's operations whose templates extend _in_depth.jinja2 (complicate_input and in_breadth do not)
EXTENDS_IN_DEPTH = {"add_constraints", "concretizing", "deepening", "increase_reasoning_steps"}
PROMPTS: list[str] = []  # the user turn of every conversation the recording backend answered (any stage)


def recording_responder(conversation, params):
    PROMPTS.append(conversation[-1]["content"] if conversation[-1]["role"] == "user" else conversation[-2]["content"])
    return demo_responder(conversation, params)


register_scripted_backend(ScriptedBackend(recording_responder, model_name="scripted-demo"), "recording-demo")


def run_shard(tmp: Path, pack: Path, label: str) -> tuple[list[dict], list[str], EvolveSpec]:
    """One shard of 8 seeds through the shard task's body, as a worker runs it; its candidates and the prompts sent."""
    seeds = tmp / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in load_seeds(str(ROOT / "data" / "demo_seeds.jsonl"), 8)))
    config = parse_run_config({"name": label, "seeds": str(seeds), "output_root": str(tmp / label), "rounds": 1,
                               "shard_size": 8, "random_seed": 5, "prompt_pack": str(pack),
                               "llm": {"backend": "scripted", "model": "recording-demo"}})
    ctx = build_context(config)
    (pool,) = ingest_run_seeds(config, ctx.layout, ctx.ingest_key).refs
    PROMPTS.clear()
    summary = evolve_shard_task.fn(pool, ctx.layout.shard(1, "candidates", 0), 1, 0, ctx.evolve, ctx.evolve_key)
    return read_shard(summary.candidates.uri).to_pylist(), list(PROMPTS), ctx.evolve


def test_an_edited_template_is_used_by_the_next_run_in_the_same_process(tmp_path):
    pack = tmp_path / "pack"
    shutil.copytree(ROOT / "prompts" / "general", pack)
    reset_evolve_runtimes()
    builds = evolve_runtime_builds()
    first, first_prompts, first_spec = run_shard(tmp_path, pack, "first")
    extending = [c for c in first if c["operation"] in EXTENDS_IN_DEPTH]
    assert len(first) == 8 and len(first_prompts) >= 8 and 0 < len(extending) < 8
    assert not any(MARKER in p for p in first_prompts)
    old_shas = load_pack(pack).template_shas()

    # their shared parent, named in no manifest entry, is edited between the runs
    parent = pack / "_in_depth.jinja2"
    parent.write_text(parent.read_text().replace("#The Given Prompt#:\n", f"{MARKER}\n\n#The Given Prompt#:\n"))
    second, second_prompts, spec = run_shard(tmp_path, pack, "second")
    new_shas = load_pack(pack).template_shas()

    assert [c["operation"] for c in second] == [c["operation"] for c in first]  # same rows, same operations
    assert sum(MARKER in p for p in second_prompts) == len(extending)  # each of their evolve prompts, nothing else
    for c in second:
        assert c["prompt_sha"] == new_shas[c["operation"]]
        assert (c["prompt_sha"] != old_shas[c["operation"]]) is (c["operation"] in EXTENDS_IN_DEPTH)
    # each run's spec names its pack's templates: the second run's pack was loaded anew, the backends were built once
    assert (first_spec.template_shas, spec.template_shas) == (old_shas, new_shas)
    assert spec.model_copy(update={"template_shas": None}) == first_spec.model_copy(update={"template_shas": None})
    assert evolve_runtime_builds() == builds + 1
    assert evolve_runtime(first_spec)[0] is not evolve_runtime(spec)[0]
    # a shard of the first run in a process that has not loaded its pack yet (a worker joining late) would now
    # render templates the run's keys do not name: it fails instead
    reset_evolve_runtimes()
    with pytest.raises(PromptPackError, match=r"'.+/pack' changed since the run started \(templates add_constraints, "
                                              r"concretizing, deepening, increase_reasoning_steps\): rerun"):
        evolve_runtime(first_spec)
    reset_evolve_runtimes()


def test_a_warmed_worker_runs_the_shards_of_a_run_on_the_backends_it_started(tmp_path):
    """``evol worker --warm CONFIG`` builds the config's backends before any run; a run of that config (whose spec
    names its template shas) then renders with the pack it loads and the backends already built."""
    from tasks.runtime.worker import warm_engine

    pack = tmp_path / "pack"
    shutil.copytree(ROOT / "prompts" / "general", pack)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in load_seeds(str(ROOT / "data" / "demo_seeds.jsonl"), 8)))
    config_file = tmp_path / "warm.yaml"
    config_file.write_text(json.dumps({"name": "warm", "seeds": str(seeds), "output_root": str(tmp_path / "warm"),
                                       "rounds": 1, "shard_size": 8, "random_seed": 5, "prompt_pack": str(pack),
                                       "llm": {"backend": "scripted", "model": "recording-demo"}}))
    reset_evolve_runtimes()
    builds = evolve_runtime_builds()
    assert warm_engine(str(config_file)) == []  # the scripted backend has no engine to start
    assert evolve_runtime_builds() == builds + 1
    rows, prompts, spec = run_shard(tmp_path, pack, "warm")
    assert spec.template_shas == load_pack(pack).template_shas() and len(rows) == 8 and len(prompts) >= 8
    assert evolve_runtime_builds() == builds + 1  # the run's shard found the warmed backends
    reset_evolve_runtimes()
