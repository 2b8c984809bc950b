"""RunConfig loading, errors that name the key and file, and the run folder."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.core.config import ConfigError, EnvSettings, RunConfig, parse_run_config
from tasks.core.config_file import load_run_config


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


def test_random_seed_and_its_old_name(tmp_path):
    assert load_run_config(write(tmp_path, "seeds: s.jsonl\nrandom_seed: 7\n")).random_seed == 7
    with pytest.warns(FutureWarning, match="`seed` is deprecated: call it `random_seed`"):
        assert load_run_config(write(tmp_path, "seeds: s.jsonl\nseed: 5\n")).random_seed == 5
    with pytest.raises(ConfigError, match="give `random_seed` only"):
        load_run_config(write(tmp_path, "seeds: s.jsonl\nseed: 5\nrandom_seed: 5\n"))
    assert "seed" not in RunConfig(seeds="s.jsonl").model_dump()


def test_run_folder_is_the_name_or_the_seed_file_stem():
    from tasks.core.context import run_layout

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


def test_config_from_a_storage_uri(memory_root, tmp_path):
    from storage import resolve

    fs, path = resolve(memory_root + "/configs/nightly.yaml")
    fs.pipe_file(path, b"name: nightly\nseeds: ../seeds/s.jsonl\noutput_root: runs\nrounds: 1\n")
    cfg = load_run_config(memory_root + "/configs/nightly.yaml", {"rounds": 3})
    assert cfg.seeds == memory_root + "/seeds/s.jsonl"
    assert cfg.output_root == memory_root + "/configs/runs"
    assert cfg.rounds == 3 and cfg.name == "nightly"
    # a local path or file:// URI behaves as load_run_config
    local = write(tmp_path, "seeds: data/s.jsonl\n")
    assert load_run_config("file://" + str(local)).seeds == str(tmp_path / "data" / "s.jsonl")
    assert load_run_config(str(local)) == load_run_config(local)


def test_config_uri_errors_name_the_uri(memory_root):
    from storage import resolve

    with pytest.raises(ConfigError, match="not found: " + memory_root + "/nope.yaml"):
        load_run_config(memory_root + "/nope.yaml")
    fs, path = resolve(memory_root + "/bad.yaml")
    fs.pipe_file(path, b"seeds: s.jsonl\nroundz: 2\n")
    with pytest.raises(ConfigError, match="roundz: unknown key") as err:
        load_run_config(memory_root + "/bad.yaml")
    assert memory_root + "/bad.yaml" in str(err.value)
    with pytest.raises(ConfigError, match="unsupported storage location"):
        load_run_config("ftp://host/run.yaml")


@pytest.mark.s3
def test_config_from_s3(s3_bucket, s3_settings):
    from storage import resolve

    fs, path = resolve(s3_bucket + "/configs/run.yaml", s3_settings)
    fs.pipe_file(path, b"seeds: ../seeds/demo.jsonl\noutput_root: ../runs\n")
    cfg = load_run_config(s3_bucket + "/configs/run.yaml", settings=s3_settings)
    assert (cfg.seeds, cfg.output_root) == (s3_bucket + "/seeds/demo.jsonl", s3_bucket + "/runs")
