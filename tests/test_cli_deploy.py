"""`evol deploy` without a server: which commands it runs, and a clear error when no API is set."""

from __future__ import annotations

import os
import subprocess

from flows.cli_deploy import PREFECT, deploy_commands, deployment_specs
from tests.services import BIN, ROOT


def test_overrides_go_to_the_nightly_deployment_only():
    specs = deployment_specs(ROOT)
    assert [s["name"] for s in specs] == ["nightly", "gpu"]
    assert deploy_commands(specs, None, None, None) == [[PREFECT, "--no-prompt", "deploy", "--all"]]
    nightly, gpu = deploy_commands(specs, "s3://evol/configs/nightly.yaml", 60, "0 3 * * *")
    assert nightly == [PREFECT, "--no-prompt", "deploy", "--name", "nightly", "--param",
                       "config_uri=s3://evol/configs/nightly.yaml", "--interval", "60", "--cron", "0 3 * * *"]
    assert gpu == [PREFECT, "--no-prompt", "deploy", "--name", "gpu"]


def test_deploy_needs_an_api_url(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "COLUMNS": "400"}
    done = subprocess.run([str(BIN / "evol"), "deploy"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "set PREFECT_API_URL" in done.stderr
    done = subprocess.run([str(BIN / "evol"), "deploy", "--project-dir", str(tmp_path)], cwd=ROOT,
                          env=env | {"PREFECT_API_URL": "http://127.0.0.1:9/api"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and f"no prefect.yaml in {tmp_path}" in done.stderr
