"""``evol deploy``: create the work pools the deployments in ``prefect.yaml`` use, then register them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from rich.console import Console

from storage.redact import redact

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

console = Console()
PREFECT = str(Path(sys.executable).parent / "prefect")


def deployment_specs(project_dir: Path) -> list[dict]:
    """The deployments of ``project_dir/prefect.yaml``."""
    path = project_dir / "prefect.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no prefect.yaml in {project_dir}: run evol deploy in the project's folder")
    return yaml.safe_load(path.read_text(encoding="utf-8"))["deployments"]


def ensure_process_pools(client: SyncPrefectClient, names: list[str]) -> dict[str, bool]:
    """Create each missing work pool as a process pool; returns name -> created now."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    created = {}
    for name in names:
        try:
            client.read_work_pool(name)
            created[name] = False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template()))
            created[name] = True
    return created


async def existing_parameters(specs: list[dict]) -> dict[str, dict]:
    """The parameters of the deployments of ``specs`` already on the server (same name and entrypoint), by name."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    entrypoints = {spec["name"]: spec["entrypoint"] for spec in specs}
    async with get_client() as client:
        found = await client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=list(entrypoints))))
    return {d.name: dict(d.parameters) for d in found if entrypoints.get(d.name) == d.entrypoint}


def deploy_commands(specs: list[dict], config_uri: str | None, interval: int | None,
                    cron: str | None, existing: dict[str, dict] | None = None) -> list[list[str]]:
    """``prefect deploy --all`` for deployments new to the server; else one command per deployment that keeps the
    parameters it has on the server (``existing``: a team's config URI, a run count set in the UI) and changes only
    what is asked: ``config_uri``, ``interval`` and ``cron`` go to the deployments that take ``config_uri``."""
    existing = existing or {}
    if not (config_uri or interval or cron or existing):
        return [[PREFECT, "--no-prompt", "deploy", "--all"]]
    commands = []
    for spec in specs:
        cmd = [PREFECT, "--no-prompt", "deploy", "--name", spec["name"]]
        takes_config = "config_uri" in (spec.get("parameters") or {})
        parameters = dict(existing.get(spec["name"], {}))
        if takes_config and config_uri:
            parameters["config_uri"] = config_uri
        if parameters:
            cmd += ["--params", json.dumps(parameters, sort_keys=True)]
        if takes_config and interval:
            cmd += ["--interval", str(interval)]
        if takes_config and cron:
            cmd += ["--cron", cron]
        commands.append(cmd)
    return commands


def deploy_command(project_dir: Path, config_uri: str | None, interval: int | None, cron: str | None) -> None:
    """Create the pools and the crash automation, then deploy every deployment of ``prefect.yaml``; exits non-zero on
    the first failure."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    from flows.cli_common import fail
    from flows.server_run import project_flow_names
    from tasks.runtime.crash_detection import AUTOMATION_NAME, ensure_crash_automation

    api_url = PREFECT_API_URL.value()
    if not api_url:
        fail("evol deploy registers deployments on a Prefect server: set PREFECT_API_URL "
             "(for example http://127.0.0.1:4200/api) or `prefect config set PREFECT_API_URL=...`")
    try:
        specs = deployment_specs(project_dir)
    except FileNotFoundError as err:
        fail(str(err))
    pools = sorted({spec["work_pool"]["name"] for spec in specs})
    try:
        with get_client(sync_client=True) as client:
            created = ensure_process_pools(client, pools)
            automation = ensure_crash_automation(client, project_flow_names())
        existing = asyncio.run(existing_parameters(specs))
    except Exception as err:  # the server is down or refuses: say where
        fail(f"can't reach the Prefect API at {api_url}: {type(err).__name__}: {err}")
    for name, new in created.items():
        console.print(f"work pool [bold]{name}[/]: {'created (process)' if new else 'exists'}", soft_wrap=True)
    console.print(f"automation [bold]{AUTOMATION_NAME}[/]: {automation}", soft_wrap=True)
    env = {**os.environ, "PREFECT_API_URL": api_url}
    for name, parameters in sorted(existing.items()):
        console.print(f"deployment [bold]{name}[/] exists: keeping its parameters {redact(parameters)} unless asked",
                      soft_wrap=True)
    for cmd in deploy_commands(specs, config_uri, interval, cron, existing):
        done = subprocess.run(cmd, cwd=project_dir, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            fail(f"{' '.join(cmd[1:])} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        names = [cmd[cmd.index("--name") + 1]] if "--name" in cmd else [spec["name"] for spec in specs]
        console.print("deployed " + ", ".join(f"[bold]{name}[/]" for name in names), soft_wrap=True)
    console.print(f"on {api_url}; start a worker per pool: "
                  + ", ".join(f"prefect worker start --pool {p}" for p in pools), soft_wrap=True)
