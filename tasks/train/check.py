"""A recipe checked against its model's tokenizer before any GPU time is spent (``evol train --dry-run``): the chat
template training would use, one rendered sample, the end-of-sequence token after the answer, and the rows that
``max_length`` would cut. Offline: a tokenizer that is neither a local folder nor in the Hugging Face cache is said
to be unchecked, and the checks that need it are reported as not done."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from storage import StorageSettings
from tasks.core.config import EnvSettings
from tasks.llm.models import resolve_model
from tasks.train.sft import load_recipe, read_sft_rows, recipe_path, to_prompt_completion
from tasks.train.templates import RECIPES_DIR, NoChatTemplateError, apply_template, render

SAMPLE = {"messages": [{"role": "user", "content": "Give three tips for staying healthy."},
                       {"role": "assistant", "content": "Eat well, sleep enough and move every day."}]}
Status = Literal["ok", "not checked", "failed"]


@dataclass(frozen=True)
class Check:
    what: str
    status: Status
    detail: str


@dataclass
class DryRun:
    """What a dry run found; ``prompt`` and ``answer`` are the rendered sample (the loss falls on ``answer``)."""

    recipe: str
    model: str
    checks: list[Check] = field(default_factory=list)
    prompt: str | None = None
    answer: str | None = None

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "failed"]

    def add(self, what: str, ok: bool | None, detail: str) -> None:
        """A check: passed (True), failed (False) or not done (None)."""
        self.checks.append(Check(what, "not checked" if ok is None else "ok" if ok else "failed", detail))


def local_tokenizer(model: str) -> tuple[Any | None, str]:
    """The tokenizer of ``model`` from a local folder or the Hugging Face cache, never the network; else None, and
    why."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model, local_files_only=True), f"loaded from {model}"
    except (OSError, ValueError) as err:
        if Path(model).is_dir():
            return None, f"no tokenizer loads from {model}: {str(err).splitlines()[0]}"
        return None, f"{model} is not a local folder and not in the Hugging Face cache (nothing is downloaded here)"


def dry_run(recipe: str, models_dir: str | None = None, dataset_uri: str | None = None,
            settings: StorageSettings | None = None) -> DryRun:
    """Check ``recipe`` as training would use it, on ``dataset_uri``'s rows (else a built-in sample row), without
    loading the model. A bad recipe raises ``RecipeError``; a bad dataset ``ValueError``."""
    spec = load_recipe(recipe)
    where = str(recipe_path(recipe))
    model = resolve_model(spec.base_model, models_dir or EnvSettings().llm.models_dir)
    rows = read_sft_rows(dataset_uri, settings) if dataset_uri else [to_prompt_completion(SAMPLE)]
    result = DryRun(recipe=where, model=model)
    tokenizer, how = local_tokenizer(model)
    result.add("tokenizer", True if tokenizer is not None else None, how)
    text = Path(spec.chat_template).read_text(encoding="utf-8") if spec.chat_template else None
    if tokenizer is not None:
        try:
            source = apply_template(tokenizer, spec.chat_template, where, model)
        except NoChatTemplateError as err:
            result.add("chat template", False, str(err))
            return result
        text = tokenizer.chat_template
    elif text is None:
        result.add("chat template", False, f"{where}: names no chat_template, and whether {model} has one can't be "
                   "told without its tokenizer: set chat_template in the recipe, or dry-run where the model is")
        return result
    else:
        source = spec.chat_template
    if spec.chat_template and Path(source).is_relative_to(RECIPES_DIR.parent):
        source = Path(source).relative_to(RECIPES_DIR.parent).as_posix()  # recipes/templates/NAME.jinja
    result.add("chat template", True, source if tokenizer is not None else
               f"{source}, rendered without the tokenizer: <bos>/<eos> stand for its special tokens")
    row = rows[0]
    prompt = render(text, row["prompt"], True, tokenizer)
    full = render(text, row["prompt"] + row["completion"], False, tokenizer)
    result.prompt, result.answer = prompt, full[len(prompt):] if full.startswith(prompt) else full
    result.add("prompt/answer split", full.startswith(prompt),
               "the rendered prompt is the start of prompt + answer: the loss falls on the answer alone"
               if full.startswith(prompt) else "the rendered prompt is not the start of prompt + answer: TRL would "
               "cut the prompt where they differ")
    eos = tokenizer.eos_token if tokenizer is not None else "<eos>"
    ends = bool(eos) and eos in result.answer
    result.add("end of answer", ends, f"the answer is followed by {eos!r}: the model learns to stop" if ends else
               f"no end-of-sequence token ({eos!r}) after the answer: the model would not learn to stop")
    if tokenizer is None:
        result.add("lengths", None, f"max_length {spec.max_length} not checked: no tokenizer")
        return result
    texts = [render(text, r["prompt"] + r["completion"], False, tokenizer) for r in rows]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    long = sum(n > spec.max_length for n in lengths)
    result.add("lengths", True if dataset_uri else None,  # cut rows are said, not failed: TRL truncates them
               f"{long} of {len(rows)} row(s) longer than max_length {spec.max_length} tokens, cut at training "
               f"(longest {max(lengths)}){'' if dataset_uri else '; the sample row only: pass --dataset'}")
    return result


def report_lines(result: DryRun) -> list[str]:
    """The dry run as plain lines: the checks, then the rendered sample."""
    lines = [f"recipe {result.recipe}, model {result.model}"]
    lines += [f"  {c.status:<12} {c.what}: {c.detail}" for c in result.checks]
    if result.prompt is not None:
        lines += ["rendered sample (no loss on the prompt):", "--- prompt ---", result.prompt,
                  "--- answer (carries the loss) ---", result.answer or ""]
    return lines
