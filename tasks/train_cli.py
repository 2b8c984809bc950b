"""Command-line entry point for fine-tuning, one process per device under ``accelerate launch``:

    python -m tasks.train_cli --dataset URI --recipe smoke-cpu --output URI
    accelerate launch --config_file recipes/accelerate/zero3.yaml -m tasks.train_cli \\
        --dataset URI --recipe wizardlm-7b --output URI
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from storage import StorageSettings, join_uri, resolve
from tasks.train import RecipeError, TrainResult, run_training

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command's arguments."""
    parser = argparse.ArgumentParser(prog="python -m tasks.train_cli", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="messages.jsonl URI (local path, s3://, memory://)")
    parser.add_argument("--recipe", required=True, help="recipe name under recipes/ or a YAML path")
    parser.add_argument("--output", required=True, help="where the model, metrics.json and loss.png go (any URI)")
    parser.add_argument("--models-dir", default=None, help="where the bundled model is prepared (EVOL_LLM__MODELS_DIR)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train, then print the result (JSON) from the main process; a bad recipe or dataset exits with 2."""
    args = parse_args(argv)
    try:
        result = run_training(args.dataset, args.recipe, args.output, models_dir=args.models_dir)
    except (RecipeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(result.model_dump_json(indent=2, exclude={"log"}))
    return 0


def launch_with_accelerate(dataset_uri: str, recipe: str, output_uri: str, accelerate_config: Path,
                           models_dir: str | None = None, settings: StorageSettings | None = None) -> TrainResult:
    """Run this command under ``accelerate launch --config_file accelerate_config``, wait for it, and read the
    result back from ``metrics.json`` (so ``output_uri`` must be storage the launched processes share)."""
    if not accelerate_config.is_file():
        raise RecipeError(f"accelerate config not found: {accelerate_config}")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
           "-m", "tasks.train_cli", "--dataset", dataset_uri, "--recipe", recipe, "--output", output_uri]
    if models_dir:
        cmd += ["--models-dir", models_dir]
    code = subprocess.run(cmd, cwd=REPO_ROOT).returncode
    if code != 0:
        raise RuntimeError(f"accelerate launch exited with {code}: {' '.join(cmd)}")
    fs, path = resolve(join_uri(output_uri, "metrics.json"), settings)
    metrics = json.loads(fs.cat_file(path))
    return TrainResult.model_validate({k: metrics[k] for k in TrainResult.model_fields})


if __name__ == "__main__":
    sys.exit(main())
