"""``evol plan``: stages reused or recomputed, the token estimate, ``--set`` overrides, the card's estimate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tasks.core.config import ConfigError, LLMConfig, parse_run_config
from tasks.core.config_file import load_run_config
from tasks.planning.estimate import CharCounter, WordCounter, token_counter
from tasks.planning.plan import make_plan
from tests.flow_script import load_seeds

STAGES = ["ingest", "round 1", "round 2", "mix", "export"]


def reused(plan) -> dict[str, bool]:
    return {s.stage: s.reused for s in plan.stages}


def write_config(tmp: Path, config: dict) -> Path:
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def finished(scripted_run, tmp_path_factory):
    """One finished run (20 seeds, 2 rounds of 2 shards, the scripted demo model) and its config file."""
    tmp = tmp_path_factory.mktemp("plan")
    config, result = scripted_run(tmp, "plan", "runs")
    return tmp, config, write_config(tmp, config), result


def test_a_fresh_run_folder_recomputes_every_stage(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps(s) for s in load_seeds()) + "\n")
    config = parse_run_config({"seeds": str(seeds), "output_root": str(tmp_path / "runs"), "rounds": 2,
                               "shard_size": 10, "llm": {"backend": "scripted", "model": "demo"}})
    plan = make_plan(config)
    assert reused(plan) == dict.fromkeys(STAGES, False)
    assert [(s.shards, s.shards_reused) for s in plan.stages[:3]] == [(2, 0), (2, 0), (2, 0)]
    assert plan.stages[0].why == "not run yet" and plan.stages[2].why == "after round 1"
    # the sampling caps: 20 rows x (evolve, validity, respond, equality) per round, each writing max_tokens
    assert [r.calls for r in plan.estimate.rounds] == [80, 80]
    assert [r.completion_tokens for r in plan.estimate.rounds] == [20 * (2048 + 4 + 2048 + 8)] * 2
    assert "upper bound" in plan.estimate.completions and plan.estimate.tokens_per_second is None
    assert not (tmp_path / "runs" / "seeds").exists()  # the plan wrote no run folder
    out = CliRunner().invoke(app, ["plan", str(write_config(tmp_path, config.model_dump(mode="json")))],
                             env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    total = plan.estimate.total("prompt_tokens")
    assert f"whole run: {total} prompt tokens," in out.output and "to compute:" not in out.output  # one line


def test_evol_plan_writes_nothing_under_the_output_root(tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))  # where --measure's log goes
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps(s) for s in load_seeds()) + "\n")
    config = {"seeds": str(seeds), "output_root": str(tmp_path / "nu-plan"), "rounds": 1,
              "llm": {"backend": "scripted", "model": "demo"}}
    out = CliRunner().invoke(app, ["plan", str(write_config(tmp_path, config)), "--measure", "3"])
    assert out.exit_code == 0, out.output
    assert not (tmp_path / "nu-plan").exists()  # not even the empty folder of a write check
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml", "seeds.jsonl", "tmp"]


def test_evol_plan_says_1_round_and_its_first_line_is_one_line_when_piped(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps(s) for s in load_seeds()) + "\n")
    root = tmp_path / ("an-output-root-whose-path-is-long-enough-to-pass-eighty-columns" * 2)
    for rounds, said in ((1, "1 round"), (2, "2 rounds")):
        config = {"name": "p", "seeds": str(seeds), "output_root": str(root), "rounds": rounds,
                  "llm": {"backend": "scripted", "model": "demo"}}
        out = CliRunner().invoke(app, ["plan", str(write_config(tmp_path, config))])  # not a tty: 80 columns
        assert out.exit_code == 0, out.output
        assert out.output.splitlines()[0] == f"plan for run {root / 'p'} ({said}, scripted backend, model demo)"


def test_after_a_run_every_stage_is_reused_and_nothing_is_left_to_compute(finished):
    _, config, _, _ = finished
    plan = make_plan(parse_run_config(config))
    assert reused(plan) == dict.fromkeys(STAGES, True)
    assert plan.estimate.total("prompt_tokens") == 0 and plan.estimate.total("completion_tokens") == 0
    # a previous run of the same model is where completions and speed come from now
    assert plan.estimate.completions == "previous run plan (40 candidates)"
    assert plan.estimate.tokens_per_second is not None


def test_recompute_shows_in_the_plan(finished):
    _, config, _, _ = finished
    plan = make_plan(parse_run_config(config), ("round=2",))
    assert reused(plan) == {"ingest": True, "round 1": True, "round 2": False, "mix": False, "export": False}
    assert plan.stages[2].why == "forced by --recompute" and plan.stages[2].shards_reused == 0


def test_an_edited_seed_file_recomputes_ingest_and_what_follows(finished):
    tmp, config, _, _ = finished
    path = Path(config["seeds"])
    original = path.read_bytes()
    rows = load_seeds()
    rows[3]["instruction"] += " Use at most three sentences."
    path.write_text("\n".join(json.dumps(s) for s in rows) + "\n")
    try:
        plan = make_plan(parse_run_config(config))
    finally:
        path.write_bytes(original)
    assert reused(plan) == dict.fromkeys(STAGES, False)
    assert plan.stages[0].why == "its inputs changed"
    # the edited seed is in shard 0: shard 1 of round 1 keeps its key
    assert (plan.stages[1].shards, plan.stages[1].shards_reused) == (2, 1)
    assert plan.stages[2].why == "after round 1"


def test_set_rounds_3_on_a_finished_2_round_run_adds_round_3(finished):
    _, _, config_file, result = finished
    plan = make_plan(load_run_config(config_file, sets=["rounds=3"]))
    assert reused(plan) == {"ingest": True, "round 1": True, "round 2": True, "round 3": False, "mix": False,
                            "export": False}
    assert plan.stages[3].why == "not run yet"
    assert [r.share for r in plan.estimate.rounds] == [0.0, 0.0, 1.0]
    assert plan.estimate.total("prompt_tokens") == plan.estimate.rounds[2].prompt_tokens


def test_the_measured_estimate_of_round_1_is_exact_for_the_scripted_backend(finished):
    """Measured on every seed, round 1's estimate is what the run counted: prompts rendered and counted as the
    scripted backend counts them (whitespace words), completions and the calls that happened measured."""
    _, config, _, result = finished
    plan = make_plan(parse_run_config(config), measure=20)
    first = plan.estimate.rounds[0]
    assert (first.prompt_tokens, first.completion_tokens) == (result.rounds[0].prompt_tokens,
                                                              result.rounds[0].completion_tokens)
    assert plan.estimate.completions == "measured on 20 seeds"
    assert plan.estimate.tokenizer == WordCounter.name


def test_token_counters_scripted_words_model_tokenizer_or_chars_over_4(tmp_path):
    assert isinstance(token_counter(LLMConfig(backend="scripted", model="demo"), str(tmp_path)), WordCounter)
    chars = token_counter(LLMConfig(backend="openai", model="served-model"), str(tmp_path))
    assert isinstance(chars, CharCounter)
    assert chars.messages([{"role": "user", "content": "abcd"}, {"role": "assistant", "content": "abcde"}]) == 3
    assert chars.text("abcdefgh") == 2 and WordCounter().text(" a b\nc ") == 3


def test_the_card_shows_the_estimate_beside_the_actual_tokens(finished):
    tmp, _, _, result = finished
    card = Path(result.export.files["card"]).read_text()
    recorded = json.loads((tmp / "runs" / "plan" / "estimate.json").read_text())["estimate"]
    assert "## Estimate and actual" in card
    for est, actual in zip(recorded["rounds"], result.rounds, strict=True):
        assert (f"| {actual.round} | {est['prompt_tokens']} | {actual.prompt_tokens} | {est['completion_tokens']} | "
                f"{actual.completion_tokens} |") in card
    assert "completions: sampling max_tokens" in card  # the first run had nothing measured to go by


def test_the_card_depends_on_the_runs_own_data_not_on_other_runs_under_the_root(finished, scripted_run):
    tmp, _, _, result = finished
    _, beside = scripted_run(tmp, "plan-2", "runs")  # the same work, beside the finished run of the same model
    _, alone = scripted_run(tmp, "plan-2", "alone")  # the same work in an empty output root

    def estimate_section(run) -> str:
        card = Path(run.export.files["card"]).read_text()
        return card[card.index("## Estimate and actual"):].split("\n## ", 1)[0]

    assert "completions: sampling max_tokens" in estimate_section(beside)
    assert estimate_section(beside) == estimate_section(alone) == estimate_section(result)
    cards = [Path(run.export.files["card"]).read_text().replace(str(tmp / root), "ROOT")
             for run, root in ((beside, "runs"), (alone, "alone"))]
    assert cards[0] == cards[1]


def test_set_overrides_are_typed_and_a_bad_key_is_one_error_line(finished, tmp_path):
    _, _, config_file, _ = finished
    config = load_run_config(config_file, sets=["sampling.evolve.max_tokens=64", "dedup.near=false",
                                                 "llm.engine_args.max_model_len=1024"])
    assert config.sampling.evolve.max_tokens == 64 and config.dedup.near is False
    assert config.llm.engine_args == {"max_model_len": 1024}
    with pytest.raises(ConfigError, match="rounds: Input should be a valid integer"):
        load_run_config(config_file, sets=["rounds=many"])
    runner = CliRunner()
    for command in ("plan", "run"):
        out = runner.invoke(app, [command, str(config_file), "--set", "llm.max_tokens=64"])
        lines = out.output.strip().splitlines()
        assert out.exit_code == 2 and len(lines) == 1, out.output
        assert lines[0].startswith("error: --set llm.max_tokens: unknown key llm.max_tokens (llm has backend")


def test_evol_plan_prints_the_stages_and_the_estimate(finished):
    _, _, config_file, _ = finished
    out = CliRunner().invoke(app, ["plan", str(config_file), "--set", "rounds=3"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    rows = [line for line in out.output.splitlines() if "│" in line]
    stages = {cells[0]: cells[1] for cells in ([c.strip() for c in line.split("│")[1:]] for line in rows)}
    assert {k: stages[k] for k in ("ingest", "round 1", "round 2", "round 3", "mix", "export")} == {
        "ingest": "reused", "round 1": "reused", "round 2": "reused", "round 3": "recomputed", "mix": "recomputed",
        "export": "recomputed"}
    assert "to compute:" in out.output and "completions from previous run plan" in out.output


def test_evol_plan_measure_names_its_log_and_restores_the_environment(finished, monkeypatch, tmp_path):
    """Measuring starts the run's engines: the plan names a log file for their output and leaves the environment
    as it found it (an engine started later logs normally)."""
    import os

    _, _, config_file, _ = finished
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH", raising=False)
    before = {k: os.environ.get(k) for k in ("EVOL_ENGINE_LOG", "VLLM_LOGGING_CONFIG_PATH")}
    out = CliRunner().invoke(app, ["plan", str(config_file), "--measure", "5"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    logs = list(tmp_path.glob("evol-plan-*.log"))
    assert len(logs) == 1 and f"log: {logs[0]} (the engine's output while measuring)" in out.output
    assert {k: os.environ.get(k) for k in before} == before
    assert "completions from measured on 5 seeds" in out.output
    assert "whole run: " in out.output and "to compute: 0 prompt tokens, 0 completion tokens." in out.output
