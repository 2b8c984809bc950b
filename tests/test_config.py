"""RunConfig loading, errors that name the key and file, and the run folder."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.core.config import ConfigError, EnvSettings, RunConfig, load_run_config, parse_run_config


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path):
    cfg = load_run_config(write(tmp_path, "seeds: data/seeds.jsonl\n"))
    assert cfg.rounds == 4
    assert cfg.sampling.evolve.temperature == 1.0 and cfg.sampling.evolve.top_p == 0.95
    assert cfg.sampling.evolve.max_tokens == 2048
    assert cfg.elimination.sorry_max_words == 80
    assert cfg.seeds == str(tmp_path / "data" / "seeds.jsonl")
    assert cfg.output_root == "runs"  # the default is relative to where the command runs
    cfg = load_run_config(write(tmp_path, "seeds: s3://bucket/seeds.jsonl\noutput_root: out\n"))
    assert cfg.seeds == "s3://bucket/seeds.jsonl"
    assert cfg.output_root == str(tmp_path / "out")
    with pytest.raises(ValidationError):
        cfg.rounds = 2  # frozen


def test_unknown_key_is_named_with_the_file(tmp_path):
    path = write(tmp_path, "seeds: s.jsonl\nroundz: 3\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert str(path) in str(err.value)
    assert "roundz: unknown key" in str(err.value)


def test_nested_bad_value_is_named(tmp_path):
    text = "seeds: s.jsonl\nsampling:\n  evolve:\n    temperature: hot\ndedup:\n  jaccard_threshold: 2\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    text = str(err.value)
    assert "sampling.evolve.temperature:" in text
    assert "dedup.jaccard_threshold:" in text


def test_missing_seeds_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="seeds: Field required"):
        parse_run_config({"rounds": 1}, "x.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_run_config(write(tmp_path, "seeds: [unclosed\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="at least one weight"):
        parse_run_config({"seeds": "s", "operation_weights": {"deepening": 0}})


def test_run_folder_is_the_name_or_the_seed_file_stem():
    from tasks.context import run_layout

    assert run_layout(RunConfig(seeds="s3://b/seeds.jsonl", name="nightly", output_root="/o")).run_uri == "/o/nightly"
    assert run_layout(RunConfig(seeds="s3://b/my seeds.v2.jsonl.gz", output_root="/o")).run_uri == "/o/my-seeds"

def test_env_settings_nested(monkeypatch):
    monkeypatch.setenv("EVOL_STORAGE__ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("EVOL_LLM__BASE_URL", "http://127.0.0.1:8001/v1")
    monkeypatch.setenv("EVOL_LLM__API_KEY", "secret-key")
    env = EnvSettings()
    assert env.storage.endpoint_url == "http://127.0.0.1:9000"
    assert env.llm.base_url == "http://127.0.0.1:8001/v1"
    assert "secret-key" not in repr(env)
