"""Command-line entry point for fine-tuning, one process per device under ``accelerate launch``:

    python -m tasks.train_cli --dataset URI --recipe smoke-cpu --output URI
    accelerate launch --config_file recipes/accelerate/zero3.yaml -m tasks.train_cli \\
        --dataset URI --recipe wizardlm-7b --output URI
"""

from __future__ import annotations

import argparse
import os
import sys

from tasks.train.sft import RecipeError, run_training


def main(argv: list[str] | None = None) -> int:
    """Train, then print the result (JSON) from the main process; a bad recipe or dataset exits with 2."""
    parser = argparse.ArgumentParser(prog="python -m tasks.train_cli", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="messages.jsonl URI (local path, s3://, memory://)")
    parser.add_argument("--recipe", required=True, help="recipe name under recipes/ or a YAML path")
    parser.add_argument("--output", required=True, help="where the model, metrics.json and loss.png go (any URI)")
    parser.add_argument("--models-dir", default=None, help="where the bundled model is prepared (EVOL_LLM__MODELS_DIR)")
    args = parser.parse_args(argv)
    try:
        result = run_training(args.dataset, args.recipe, args.output, models_dir=args.models_dir)
    except (RecipeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(result.model_dump_json(indent=2, exclude={"log"}))
    return 0
