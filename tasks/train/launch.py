"""Training on several GPUs: the training command (``python -m tasks.train_cli``) under ``accelerate launch``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from storage import StorageSettings, join_uri, resolve
from tasks.core.summaries import TrainResult

REPO_ROOT = Path(__file__).resolve().parents[2]


def launch_with_accelerate(dataset_uri: str, recipe: str, output_uri: str, accelerate_config: Path,
                           models_dir: str | None = None, settings: StorageSettings | None = None) -> TrainResult:
    """Run this command under ``accelerate launch --config_file accelerate_config``, wait for it, and read the
    result back from ``metrics.json`` (so ``output_uri`` must be storage the launched processes share)."""
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
