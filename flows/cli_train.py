"""``evol train``: fine-tune on an exported ``messages.jsonl`` with a recipe, or only check the recipe first
(``--dry-run``: the recipe against its model's tokenizer, no model loaded, nothing downloaded)."""

from __future__ import annotations

from flows.cli_common import console, fail


def dry_run_command(recipe: str, dataset: str | None, models_dir: str | None) -> None:
    """Print the checks and a rendered sample; a failed check ends the command with its one-line error (exit 2)."""
    from tasks.llm.models import ModelPreparationError
    from tasks.train.check import dry_run, report_lines
    from tasks.train.sft import RecipeError

    try:
        result = dry_run(recipe, models_dir, dataset)
    except (RecipeError, ValueError, OSError, ModelPreparationError) as err:
        fail(str(err))
    for line in report_lines(result):
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    if result.failures:
        fail(result.failures[0].detail)
    skipped = [c.what for c in result.checks if c.status == "not checked"]
    console.print(f"dry run OK: {result.recipe}" + (f" (not checked: {', '.join(skipped)})" if skipped else ""),
                  soft_wrap=True, highlight=False, markup=False)


def train_command(recipe: str, dataset: str | None, output: str | None, models_dir: str | None) -> None:
    """Check the recipe (as ``--dry-run`` does, quietly), then run the ``train`` flow here."""
    from tasks.llm.models import ModelPreparationError
    from tasks.train.check import dry_run
    from tasks.train.sft import RecipeError

    if not dataset or not output:
        fail("evol train needs --dataset and --output (or --dry-run)")
    try:
        failures = dry_run(recipe, models_dir, dataset).failures
    except (RecipeError, ValueError, OSError, ModelPreparationError) as err:
        fail(str(err))
    if failures:
        fail(f"{failures[0].detail} (evol train {recipe} --dry-run shows every check)")
    if models_dir:
        import os

        os.environ["EVOL_LLM__MODELS_DIR"] = models_dir
    from flows.train import train

    result = train(dataset, recipe, output)
    console.print(f"trained {result.steps} step(s), loss {result.first_loss:.4f} -> {result.final_loss:.4f}; "
                  f"model at {result.model_uri}", soft_wrap=True, highlight=False)
