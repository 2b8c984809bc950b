"""Training a base model: a recipe's chat template (a named format or a file), the dry run that checks a recipe
against its tokenizer before any GPU time, and the bundled model with its chat template removed (a stand-in for a
base model such as LLaMA-7B) fine-tuned through the training hand-off in the Alpaca format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tasks.core.config import TrainConfig
from tasks.train.check import dry_run
from tasks.train.sft import (
    RECIPES_DIR,
    RecipeError,
    build_trainer,
    load_recipe,
    read_sft_rows,
    run_training,
    train_task,
)
from tasks.train.templates import TEMPLATES_DIR, NoChatTemplateError, render, template_names
from tests.test_train import FACTS, completion_label_mask, hand_off, messages_jsonl, write_uri

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n")
PAIR = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]


@pytest.fixture(scope="module")
def base_model(model_dir, tmp_path_factory) -> Path:
    """The bundled model as a base model: the same files (the weights linked, not copied) without a chat template."""
    folder = tmp_path_factory.mktemp("base") / "smollm2-135m-base"
    folder.mkdir()
    for path in model_dir.iterdir():
        if path.name == "chat_template.jinja" or path.name.startswith("."):
            continue
        if path.suffix == ".safetensors":
            (folder / path.name).symlink_to(path)
        else:
            shutil.copy(path, folder / path.name)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def smoke_recipe(folder: Path, base: Path, chat_template: str | None) -> Path:
    """The smoke-cpu recipe with another base model and, if given, a chat template."""
    spec = yaml.safe_load((RECIPES_DIR / "smoke-cpu.yaml").read_text())
    spec["base_model"] = str(base)
    if chat_template:
        spec["chat_template"] = chat_template
    path = folder / f"smoke-{chat_template or 'none'}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_recipe_names_a_format_or_a_file(tmp_path):
    assert template_names() == ["alpaca", "wizardlm"]
    assert load_recipe("wizardlm-7b").chat_template == str(TEMPLATES_DIR / "wizardlm.jinja")
    assert load_recipe("smoke-cpu").chat_template is None
    (tmp_path / "mine.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (tmp_path / "file.yaml").write_text("chat_template: mine.jinja\n")  # relative: from the recipe's folder
    assert load_recipe(str(tmp_path / "file.yaml")).chat_template == str(tmp_path / "mine.jinja")
    (tmp_path / "typo.yaml").write_text("chat_template: alpacca\n")
    with pytest.raises(RecipeError, match=r"typo\.yaml: chat_template: unknown format 'alpacca' \(named formats: "
                                          r"alpaca, wizardlm; or a path to a \.jinja file\)"):
        load_recipe(str(tmp_path / "typo.yaml"))
    (tmp_path / "gone.yaml").write_text("chat_template: gone.j2\n")
    with pytest.raises(RecipeError, match=r"gone\.yaml: chat_template: file not found: .*gone\.j2"):
        load_recipe(str(tmp_path / "gone.yaml"))


@pytest.mark.parametrize(("name", "prompt"), [
    ("alpaca", f"<bos>{ALPACA_PREAMBLE}### Instruction:\nQ?\n\n### Response:"),
    ("wizardlm", "<bos>Q?\n\n### Response:"),
])
def test_named_formats_lay_out_a_row_as_their_sources(name, prompt):
    """Alpaca's train.py and WizardLM's train_freeform.py: the prompt ends at "### Response:", the answer follows
    with the end-of-sequence token; the prompt alone is the start of the whole (the loss mask relies on it)."""
    text = (TEMPLATES_DIR / f"{name}.jinja").read_text()
    assert render(text, PAIR[:1], True) == prompt
    assert render(text, PAIR, False) == prompt + "A.<eos>"
    system = render(text, [{"role": "system", "content": "Be brief."}, *PAIR], False)
    assert system.startswith("<bos>Be brief.\n\n") and ALPACA_PREAMBLE not in system


def test_the_7b_recipe_passes_the_dry_run_offline(tmp_path, monkeypatch):
    """No hub access (and an empty Hugging Face cache): the tokenizer is said to be unchecked, the template is checked
    alone and a sample shown."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    out = CliRunner().invoke(app, ["train", "wizardlm-7b", "--dry-run"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert any(line.split() == ["not", "checked", "tokenizer:", "huggyllama/llama-7b", "is", "not", "a", "local",
                                "folder", "and", "not", "in", "the", "Hugging", "Face", "cache", "(nothing", "is",
                                "downloaded", "here)"] for line in lines), lines
    assert "<bos>Give three tips for staying healthy.\n\n### Response:\n--- answer (carries the loss) ---\n" \
           "Eat well, sleep enough and move every day.<eos>" in out.output
    assert lines[-1].endswith("wizardlm-7b.yaml (not checked: tokenizer, lengths)") and "dry run OK" in lines[-1]


def test_a_base_model_without_a_template_fails_in_one_line(base_model, tmp_path, memory_root):
    """The dry run and training itself: one line naming the recipe and the fix, before any model is loaded."""
    recipe = smoke_recipe(tmp_path, base_model, None)
    expected = (f"{recipe}: the tokenizer of {base_model} has no chat template (a base model?): set chat_template in "
                "the recipe to a named format (alpaca, wizardlm) or a .jinja file")
    out = CliRunner().invoke(app, ["train", str(recipe), "--dry-run"])
    assert out.exit_code == 2
    assert [line for line in out.output.splitlines() if line.startswith("error:")] == [f"error: {expected}"]
    dataset = write_uri(f"{memory_root}/messages.jsonl", messages_jsonl(FACTS[:2]))
    with pytest.raises(NoChatTemplateError) as err:
        run_training(dataset, str(recipe), str(tmp_path / "out"))
    assert str(err.value) == expected
    launched = tmp_path / "launched.yaml"  # under accelerate launch: the flow's task says it before launching
    (tmp_path / "cpu.yaml").write_text("distributed_type: 'NO'\nnum_processes: 1\nuse_cpu: true\n")
    launched.write_text(recipe.read_text() + f"accelerate_config: {tmp_path / 'cpu.yaml'}\n")
    with pytest.raises(NoChatTemplateError, match=f"^{launched}: the tokenizer of {base_model} has no chat template"):
        train_task.fn(dataset, str(launched), str(tmp_path / "out"))
    out = CliRunner().invoke(app, ["train", str(recipe), "--dataset", dataset, "--output", str(tmp_path / "out")])
    assert out.exit_code == 2 and f"error: {expected} (evol train {recipe} --dry-run shows every check)" in out.output
    assert not (tmp_path / "out").exists()
    out = CliRunner().invoke(app, ["train", "smoke-cpu"])
    assert out.exit_code == 2 and "error: evol train needs --dataset and --output (or --dry-run)" in out.output


def test_the_dry_run_checks_a_base_model_with_a_format(base_model, tmp_path, memory_root):
    recipe = smoke_recipe(tmp_path, base_model, "alpaca")
    dataset = write_uri(f"{memory_root}/messages.jsonl", messages_jsonl(FACTS))
    result = dry_run(str(recipe), dataset_uri=dataset)
    assert [(c.what, c.status) for c in result.checks] == [
        ("tokenizer", "ok"), ("chat template", "ok"), ("prompt/answer split", "ok"), ("end of answer", "ok"),
        ("lengths", "ok")]
    assert result.prompt == f"<|im_start|>{ALPACA_PREAMBLE}### Instruction:\n{FACTS[0][0]}\n\n### Response:"
    assert result.answer == f"{FACTS[0][1]}<|im_end|>"
    assert result.checks[-1].detail.startswith("0 of 8 row(s) longer than max_length 256 tokens")


def test_the_loss_falls_on_the_answer_and_its_end_token_in_the_alpaca_format(base_model, tmp_path, memory_root):
    rows = read_sft_rows(write_uri(f"{memory_root}/m.jsonl", messages_jsonl(FACTS[:3])))
    recipe = load_recipe(str(smoke_recipe(tmp_path, base_model, "alpaca")))
    trainer = build_trainer(recipe, str(base_model), rows, str(tmp_path / "out"))
    tokenizer = trainer.processing_class
    for i, row in enumerate(rows):
        ids, mask = completion_label_mask(trainer, i)
        start = mask.index(1)
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1  # the template's BOS only
        assert mask == [0] * start + [1] * (len(ids) - start)
        assert tokenizer.decode(ids[start:]) == row["completion"][0]["content"] + tokenizer.eos_token
        assert tokenizer.decode(ids[:start]).endswith(f"{row['prompt'][0]['content']}\n\n### Response:")


def test_a_base_model_fine_tunes_through_the_hand_off(prefect_harness, base_model, tmp_path, monkeypatch):
    """The smoke recipe on the stand-in base model with the Alpaca format, through the trigger (no deployment: the
    train flow in-process), on CPU: the loss falls and the saved tokenizer carries the format."""
    monkeypatch.setenv("EVOL_LLM__MODELS_DIR", str(base_model.parent))
    recipe = smoke_recipe(tmp_path, base_model, "alpaca")
    run_uri = str(tmp_path / "run")
    dataset = write_uri(f"{run_uri}/export/messages.jsonl", messages_jsonl(FACTS))
    result = hand_off(dataset, run_uri, TrainConfig(recipe=str(recipe), deployment="train/absent-base"))
    assert result.mode == "in_process"
    out = Path(result.output_uri)
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"base model, alpaca: loss {metrics['first_loss']:.4f} -> {metrics['final_loss']:.4f}")
    assert (metrics["steps"], metrics["samples"], metrics["base_model"]) == (8, 8, str(base_model))
    assert metrics["final_loss"] < metrics["first_loss"] - 1.0
    assert metrics["recipe_settings"]["chat_template"] == str(TEMPLATES_DIR / "alpaca.jinja")
    saved = (out / "model" / "chat_template.jinja").read_text()
    assert saved == (TEMPLATES_DIR / "alpaca.jinja").read_text()


def test_evol_train_checks_then_trains(prefect_harness, base_model, tmp_path):
    """`evol train` without --dry-run: the checks pass, then the train flow runs here (one full fine-tuning step)."""
    recipe = tmp_path / "one-step.yaml"
    recipe.write_text(f"base_model: {base_model}\nchat_template: wizardlm\nmax_steps: 1\nper_device_train_batch_size: 2"
                      "\nmax_length: 64\nwarmup_ratio: 0.0\ncpu_threads: 1\n")
    dataset = write_uri(str(tmp_path / "messages.jsonl"), messages_jsonl(FACTS[:2]))
    out = CliRunner().invoke(app, ["train", str(recipe), "--dataset", dataset, "--output", str(tmp_path / "out")])
    assert out.exit_code == 0, out.output
    assert "trained 1 step(s), loss" in out.output and (tmp_path / "out" / "metrics.json").is_file()
    saved = (tmp_path / "out" / "model" / "chat_template.jinja").read_text()
    assert saved == (TEMPLATES_DIR / "wizardlm.jinja").read_text()
