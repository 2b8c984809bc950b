"""docker-compose.yml and prefect.yaml can't be started here: check they parse and name real things."""

from __future__ import annotations

import importlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SECRET_VARS = {"POSTGRES_PASSWORD", "PREFECT_API_AUTH_STRING", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "VLLM_API_KEY"}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_and_builds():
    services = compose()["services"]
    gpu_workers = {name for name, svc in services.items() if "dask-scheduler" in svc.get("depends_on", [])}
    assert gpu_workers, "the cluster profile has no `evol worker` service"
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            assert (ROOT / svc["build"]["dockerfile"]).is_file(), name
    gpu = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert services["vllm"]["profiles"] == ["serve"]
    # the cluster profile: one `evol worker` per GPU, each reserving its own device, all on the one scheduler
    assert services["dask-scheduler"]["profiles"] == ["cluster"]
    reserved = []
    for name in sorted(gpu_workers):  # each reserves a device of its own
        svc = services[name]
        assert svc["profiles"] == ["cluster"] and "dask-scheduler" in svc["depends_on"]
        assert svc["command"][:3] == ["evol", "worker", "tcp://dask-scheduler:8786"]
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        reserved += device["device_ids"]
    assert len(reserved) == len(set(reserved)) == len(gpu_workers), reserved
    for svc in services.values():  # nothing listens beyond this host
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_compose_credentials_come_from_env_file():
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert used <= set(example), used - set(example)
    assert SECRET_VARS <= used
    for var in SECRET_VARS:  # required, never defaulted
        assert re.search(r"\$\{" + var + r"(:\?|\})", text) and not re.search(r"\$\{" + var + ":-", text)
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    server_env = compose()["services"]["prefect-server"]["environment"]
    assert "PREFECT_SERVER_API_AUTH_STRING" in server_env


def test_compose_commands_exist():
    services = compose()["services"]
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent))
    for name in ("worker", "gpu-worker"):
        cmd = services[name]["command"]
        assert cmd[:3] == ["prefect", "worker", "start"]
        out = subprocess.run([prefect, "worker", "start", "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "--pool" in out.stdout
    from typer.testing import CliRunner

    from flows.cli import app

    # every `evol` command a service runs parses: its subcommand and options exist (--help stops before running)
    commands = [part.strip() for svc in services.values() for cmd in [svc.get("command") or []]
                for part in (" ".join(cmd) if isinstance(cmd, list) else cmd).split("&&")]
    evol = [shlex.split(c)[1:] for c in commands if c.startswith("evol ")]
    assert evol, commands
    for args in evol:
        result = CliRunner().invoke(app, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)


def test_prefect_yaml_entrypoints_and_schedule():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert [set(s) & {"cron", "interval", "rrule"} for s in by_name["nightly"]["schedules"]] == [{"cron"}]
    for dep in spec["deployments"]:
        module_path, func = dep["entrypoint"].split(":")
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        assert hasattr(flow, "deploy"), f"{dep['entrypoint']} is not a Prefect flow"
    from tasks.core.config_file import load_run_config

    # the nightly run's config is a file in the worker's project folder, not a config inlined here
    assert set(by_name["nightly"]["parameters"]) == {"config_uri"}
    assert load_run_config(str(ROOT / by_name["nightly"]["parameters"]["config_uri"])).rounds >= 1
    # no deployment names a folder: the pull step finds the installed project (a checkout or /app)
    assert spec["pull"] == [{"flows.deploy_steps.set_code_directory": {}}]
    assert "/app" not in yaml.safe_dump(spec)
    assert all("pull" not in dep for dep in spec["deployments"])


def test_pull_step_changes_into_the_project(tmp_path, monkeypatch):
    import os

    import pytest

    from flows.deploy_steps import set_code_directory

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVOL_CODE_DIR", raising=False)
    assert set_code_directory() == {"directory": str(ROOT)} and Path.cwd() == ROOT
    (tmp_path / "app" / "flows").mkdir(parents=True)
    monkeypatch.setenv("EVOL_CODE_DIR", str(tmp_path / "app"))
    assert set_code_directory() == {"directory": str(tmp_path / "app")} and os.getcwd() == str(tmp_path / "app")
    monkeypatch.setenv("EVOL_CODE_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="set EVOL_CODE_DIR"):
        set_code_directory()
