"""``evol train``: fine-tune on an exported ``messages.jsonl`` with a recipe, or only check the recipe first
(``--dry-run``: the recipe against its model's tokenizer, no model loaded, nothing downloaded)."""

from __future__ import annotations

import os

import typer

from flows.cli_common import console, fail


def train_command(
    recipe: str = typer.Argument(..., help="A recipe: a name under recipes/ (smoke-cpu, wizardlm-7b) or a YAML path"),
    dataset: str | None = typer.Option(None, "--dataset", help="An exported messages.jsonl (local, s3://, memory://)"),
    output: str | None = typer.Option(None, "--output", help="Where model/, metrics.json and loss.png go"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only check the recipe against its model's tokenizer "
                                 "(chat template, a rendered sample, lengths on --dataset); loads no model"),
    models_dir: str | None = typer.Option(None, "--models-dir", help="Where the bundled model is prepared"),
) -> None:
    """Fine-tune with a recipe on an exported messages.jsonl (the `train` flow, here), after the --dry-run checks."""
    from tasks.llm.models import ModelPreparationError
    from tasks.train import check
    from tasks.train.sft import RecipeError

    if not dry_run and (not dataset or not output):
        fail("evol train needs --dataset and --output (or --dry-run)")
    try:
        result = check.dry_run(recipe, models_dir, dataset)
    except (RecipeError, ValueError, OSError, ModelPreparationError) as err:
        fail(str(err))
    if not dry_run:  # the checks were quiet: the first failure, then the `train` flow here
        if result.failures:
            fail(f"{result.failures[0].detail} (evol train {recipe} --dry-run shows every check)")
        if models_dir:
            os.environ["EVOL_LLM__MODELS_DIR"] = models_dir
        from flows.train import train

        trained = train(dataset, recipe, output)
        console.print(f"trained {trained.steps} step(s), loss {trained.first_loss:.4f} -> {trained.final_loss:.4f}; "
                      f"model at {trained.model_uri}", soft_wrap=True, highlight=False)
        return
    for line in check.report_lines(result):
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    if result.failures:
        fail(result.failures[0].detail)
    skipped = [c.what for c in result.checks if c.status == "not checked"]
    console.print(f"dry run OK: {result.recipe}" + (f" (not checked: {', '.join(skipped)})" if skipped else ""),
                  soft_wrap=True, highlight=False, markup=False)
