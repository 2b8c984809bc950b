"""Supervised fine-tuning on the exported ``messages.jsonl``: YAML recipes, TRL ``SFTTrainer`` with the loss on the
assistant turn only, outputs (model, metrics, loss curve) on any storage URI. The training stack is imported inside
the functions: flows import this module on workers that may not have it."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect import task
from pydantic import Field

from storage import StorageSettings, join_uri, resolve
from storage.shards import write_file_atomic
from tasks.core.config import EnvSettings, StrictModel, validated
from tasks.core.config_file import DuplicateKeyError, load_yaml
from tasks.core.summaries import LossPoint, TrainResult
from tasks.core.text import md_table
from tasks.llm.models import resolve_model
from tasks.train.launch import launch_with_accelerate
from tasks.train.templates import RECIPES_DIR, RecipeError, template_path, training_tokenizer

Scheduler = Literal["linear", "cosine", "cosine_with_min_lr", "cosine_with_restarts", "polynomial", "constant",
                    "constant_with_warmup", "inverse_sqrt", "warmup_stable_decay"]


class LoraSettings(StrictModel):
    """LoRA adapter shape (used when ``method: lora``)."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class TrainRecipe(StrictModel):
    """Everything that decides a fine-tuning run. Frozen; unknown keys are errors."""

    base_model: str = "default"  # "default" = the bundled SmolLM2-135M, else a local folder or hub id
    method: Literal["full", "lora"] = "full"
    lora: LoraSettings = LoraSettings()
    learning_rate: float = Field(2e-5, gt=0)
    num_train_epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # overrides num_train_epochs when set
    per_device_train_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(2048, ge=8)
    lr_scheduler_type: Scheduler = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 42
    logging_steps: int = Field(1, ge=1)
    cpu_threads: int | None = Field(None, ge=1)  # CPU runs only: torch intra-op threads (None: torch's default)
    # The Prefect task runs `accelerate launch` with this config (a name under recipes/accelerate/ or a path).
    accelerate_config: str | None = None
    # A named format (recipes/templates/NAME.jinja: alpaca, wizardlm) or a .jinja file (relative: from the recipe's
    # folder); it replaces the tokenizer's own. Needed for a base model, whose tokenizer has none.
    chat_template: str | None = None


def recipe_path(recipe: str, folder: Path = RECIPES_DIR) -> Path:
    """A name (``smoke-cpu`` -> ``recipes/smoke-cpu.yaml``) or a path to a YAML file."""
    path = Path(recipe).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    return folder / f"{recipe}.yaml"


def recipe_name(recipe: str) -> str:
    return recipe_path(recipe).stem


def load_recipe(recipe: str) -> TrainRecipe:
    """Load and validate a recipe by name or path; errors name the file and each bad key."""
    path = recipe_path(recipe)
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise RecipeError(f"recipe not found: {path} (known names: {', '.join(known)})") from None
    except DuplicateKeyError as err:
        raise RecipeError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"invalid YAML in {path}: {err}") from None
    spec = validated(TrainRecipe, data, str(path), RecipeError)
    if spec.chat_template:  # resolved now: an unknown name or a missing file is a recipe error, found before training
        spec = spec.model_copy(update={"chat_template": str(template_path(spec.chat_template, path))})
    return spec


def to_prompt_completion(row: dict[str, Any], where: str = "<row>") -> dict[str, list[dict[str, str]]]:
    """A ``messages`` row as TRL's conversational prompt/completion pair: every turn before the last assistant turn
    is the prompt, the last assistant turn the completion, so only that turn carries loss."""
    messages = row.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        raise ValueError(f"{where}: expected 'messages' with at least a user and an assistant turn")
    turns = [{"role": str(m.get("role")), "content": m.get("content")} for m in messages if isinstance(m, dict)]
    if len(turns) != len(messages) or any(not isinstance(t["content"], str) for t in turns):
        raise ValueError(f"{where}: every message needs a 'role' and a string 'content'")
    if turns[-1]["role"] != "assistant" or not turns[-1]["content"].strip():
        raise ValueError(f"{where}: the last message must be a non-empty assistant turn")
    return {"prompt": turns[:-1], "completion": turns[-1:]}


def read_sft_rows(dataset_uri: str, settings: StorageSettings | None = None) -> list[dict[str, Any]]:
    """Read a ``messages.jsonl`` from any URI into prompt/completion rows; a bad line is an error naming it."""
    fs, path = resolve(dataset_uri, settings)
    text = fs.cat_file(path).decode("utf-8")
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            where = f"{dataset_uri}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON: {err}") from None
            rows.append(to_prompt_completion(record, where))
    if not rows:
        raise ValueError(f"{dataset_uri}: no training rows")
    return rows


def build_trainer(recipe: TrainRecipe, model_path: str, rows: list[dict[str, Any]], output_dir: str,
                  where: str = "recipe") -> Any:
    """A TRL ``SFTTrainer`` for the recipe; prompt/completion rows give the completion-only loss. The tokenizer
    gets the recipe's chat template (a base model has none: ``NoChatTemplateError`` naming ``where``) before the
    model is loaded."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    # transformers 5 folded warmup_ratio into warmup_steps: a float in [0, 1) is a ratio of the total steps.
    args = SFTConfig(
        output_dir=output_dir, learning_rate=recipe.learning_rate, num_train_epochs=recipe.num_train_epochs,
        max_steps=recipe.max_steps or -1, per_device_train_batch_size=recipe.per_device_train_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps, max_length=recipe.max_length,
        lr_scheduler_type=recipe.lr_scheduler_type, warmup_steps=recipe.warmup_ratio, bf16=recipe.bf16,
        gradient_checkpointing=recipe.gradient_checkpointing, seed=recipe.seed, logging_steps=recipe.logging_steps,
        completion_only_loss=True, save_strategy="no", report_to=[], disable_tqdm=True,
    )
    peft_config = None
    if recipe.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                                 target_modules=list(recipe.lora.target_modules), task_type="CAUSAL_LM")
    tokenizer = training_tokenizer(recipe.chat_template, model_path, where)
    # A model path (not an instance) lets TRL load it after the args exist, so DeepSpeed ZeRO-3 can shard at load.
    return SFTTrainer(model=model_path, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                      peft_config=peft_config)


def plot_loss(log: list[LossPoint], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    ax.plot([p.step for p in log], [p.loss for p in log], marker="o", markersize=3)
    ax.set(xlabel="step", ylabel="train loss", title=title)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def train_markdown(result: TrainResult) -> str:
    """A Markdown summary of a fine-tuning run (for a Prefect artifact)."""
    rows = [("recipe", result.recipe), ("method", result.method), ("base model", result.base_model),
            ("samples", result.samples), ("steps", result.steps), ("epochs", f"{result.epochs:.2f}"),
            ("first loss", f"{result.first_loss:.4f}"), ("final loss", f"{result.final_loss:.4f}"),
            ("mean loss", f"{result.mean_loss:.4f}"), ("runtime", f"{result.runtime_s:.1f} s"),
            ("model", f"`{result.model_uri}`"), ("metrics", f"`{result.metrics_uri}`")]
    return "\n".join(["# Fine-tuning", "", *md_table(["", ""], rows), ""])


def upload_folder(local_dir: Path, uri: str, settings: StorageSettings | None = None) -> None:
    """Copy every file under ``local_dir`` to ``uri`` (any storage), keeping relative paths."""
    fs, root = resolve(uri, settings)
    fs.put(f"{local_dir}/", f"{root}/", recursive=True)  # the trailing slashes: the folder's contents, not the folder


def _save_model(trainer: Any, recipe: TrainRecipe, model_path: str, work: Path) -> None:
    """Write ``work/model`` (and ``work/adapter`` for LoRA); every process calls this (ZeRO-3 gathers here)."""
    if recipe.method == "full":
        trainer.save_model(str(work / "model"))
        return
    trainer.save_model(str(work / "adapter"))
    if trainer.is_world_process_zero():
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        # Merge from the saved adapter on a fresh base: works the same whether training was sharded or not.
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if recipe.bf16 else torch.float32)
        merged = PeftModel.from_pretrained(base, str(work / "adapter")).merge_and_unload()
        merged.save_pretrained(str(work / "model"), safe_serialization=True)
        trainer.processing_class.save_pretrained(str(work / "model"))


def run_training(dataset_uri: str, recipe: str, output_uri: str, models_dir: str | None = None,
                 settings: StorageSettings | None = None) -> TrainResult:
    """Fine-tune the recipe's base model on ``dataset_uri`` (a ``messages.jsonl``) and write the model folder,
    ``metrics.json`` and ``loss.png`` under ``output_uri``; training happens in a local temporary folder."""
    import torch

    spec = load_recipe(recipe)
    model_path = resolve_model(spec.base_model, models_dir or EnvSettings().llm.models_dir)
    rows = read_sft_rows(dataset_uri, settings)
    threads = torch.get_num_threads()
    if spec.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(spec.cpu_threads)
    try:
        with tempfile.TemporaryDirectory(prefix="evol-train-") as tmp:
            work = Path(tmp)
            trainer = build_trainer(spec, model_path, rows, str(work / "checkpoints"), str(recipe_path(recipe)))
            output = trainer.train()
            _save_model(trainer, spec, model_path, work)
            log = [LossPoint(step=h["step"], loss=h["loss"], learning_rate=h.get("learning_rate"))
                   for h in trainer.state.log_history if "loss" in h]
            result = TrainResult(
                output_uri=output_uri, model_uri=join_uri(output_uri, "model"),
                adapter_uri=join_uri(output_uri, "adapter") if spec.method == "lora" else None,
                metrics_uri=join_uri(output_uri, "metrics.json"), loss_plot_uri=join_uri(output_uri, "loss.png"),
                recipe=recipe_name(recipe), method=spec.method, base_model=spec.base_model, samples=len(rows),
                steps=trainer.state.global_step, epochs=float(trainer.state.epoch or 0.0),
                first_loss=log[0].loss if log else float("nan"), final_loss=log[-1].loss if log else float("nan"),
                mean_loss=output.training_loss, runtime_s=output.metrics.get("train_runtime", 0.0), log=log,
            )
            if trainer.is_world_process_zero():
                upload_folder(work / "model", result.model_uri, settings)
                if result.adapter_uri:
                    upload_folder(work / "adapter", result.adapter_uri, settings)
                write_file_atomic(result.loss_plot_uri, plot_loss(log, f"{result.recipe} ({spec.method})"), settings)
                metrics = {**result.model_dump(mode="json"), "recipe_settings": spec.model_dump(mode="json")}
                # Written last: its presence says the model and the plot are complete.
                write_file_atomic(result.metrics_uri, json.dumps(metrics, indent=2).encode(), settings)
    finally:
        torch.set_num_threads(threads)
    return result


@task(name="train-sft")
def train_task(dataset_uri: str, recipe: str, output_uri: str) -> TrainResult:
    """Fine-tune on the exported messages and write the model and metrics under ``output_uri``: in this process, or
    under ``accelerate launch`` (one process per device) when the recipe names an accelerate config."""
    spec = load_recipe(recipe)
    if spec.accelerate_config:
        config = recipe_path(spec.accelerate_config, RECIPES_DIR / "accelerate")
        if not config.is_file():
            raise RecipeError(f"accelerate config not found: {config}")
        # The template check here too: its one line in this task's error, not "accelerate launch exited with 2".
        training_tokenizer(spec.chat_template, resolve_model(spec.base_model, EnvSettings().llm.models_dir),
                           str(recipe_path(recipe)))
        return launch_with_accelerate(dataset_uri, recipe, output_uri, config)
    return run_training(dataset_uri, recipe, output_uri)
