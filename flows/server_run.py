"""``evol run`` against a Prefect server: the run is a flow run of the ``evol-instruct/cli`` deployment
(``prefect.yaml``), created by ``evol run`` and run in its process.

The UI offers Retry only on a deployment's runs. As one, a run that crashed (its process killed: the crash automation
marks it Crashed, ``tasks.runtime.crash_detection``), failed or was cancelled is retried from the UI or with
``prefect flow-run retry ID``: a worker of the deployment's pool runs it again in the project's folder with the same
config and reuses the run folder's committed shards. The work pool, the deployment and the crash automation are put
on the server when missing; a server that refuses them gets a plain flow run, with a warning."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.flow_engine import run_flow
from prefect.settings import temporary_settings
from prefect.states import Pending

from flows.cli_deploy import ensure_process_pools
from flows.evol_instruct import RunResult, evol_instruct, evol_round
from flows.evol_run import evol_run
from flows.evol_score import evol_score
from flows.train import train
from tasks.core.config import RunConfig
from tasks.runtime.crash_detection import ensure_crash_automation, heartbeat_settings

DEPLOYMENT = "cli"
PROJECT_DIR = Path(__file__).resolve().parent.parent


def project_flow_names() -> list[str]:
    """The flows whose runs the crash automation watches."""
    return [f.name for f in (evol_run, evol_instruct, evol_round, evol_score, train)]


def deployment_spec(project_dir: Path = PROJECT_DIR) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``cli`` deployment of ``prefect.yaml`` and the file's pull steps."""
    data = yaml.safe_load((project_dir / "prefect.yaml").read_text(encoding="utf-8"))
    return next(d for d in data["deployments"] if d["name"] == DEPLOYMENT), data.get("pull") or []


def ensure_run_deployment(client: SyncPrefectClient) -> UUID:
    """The ``evol-instruct/cli`` deployment's id; registered as ``prefect.yaml`` says (as ``evol deploy`` would), with
    its work pool, when the server has none."""
    try:
        return client.read_deployment_by_name(f"{evol_instruct.name}/{DEPLOYMENT}").id
    except ObjectNotFound:
        pass
    spec, pull_steps = deployment_spec()
    pool = spec["work_pool"]
    ensure_process_pools(client, [pool["name"]])
    return client.create_deployment(
        flow_id=client.create_flow(evol_instruct), name=DEPLOYMENT, description=spec.get("description"),
        entrypoint=spec["entrypoint"], work_pool_name=pool["name"], job_variables=pool.get("job_variables") or {},
        pull_steps=pull_steps, parameter_openapi_schema=evol_instruct.parameters.model_dump_for_openapi(),
        enforce_parameter_schema=False)


def _deployment_flow_run(parameters: dict[str, Any], say: Callable[[str], None]) -> FlowRun | None:
    """A Pending flow run of the ``cli`` deployment (a worker takes only Scheduled ones), with the crash automation on
    the server; None, after a warning, when the server refuses the deployment."""
    with get_client(sync_client=True) as client:
        try:
            ensure_crash_automation(client, project_flow_names())
        except Exception as err:  # a server without automations, or a user not allowed to create one
            say(f"warning: no crash detection on this server ({type(err).__name__}: {err}): if this process is "
                "killed, its flow run stays Running until its run folder is run again")
        try:
            return client.create_flow_run_from_deployment(
                ensure_run_deployment(client), parameters=evol_instruct.serialize_parameters(parameters),
                state=Pending())
        except Exception as err:
            say(f"warning: the run is not a run of deployment {evol_instruct.name}/{DEPLOYMENT} "
                f"({type(err).__name__}: {err}): the UI will not offer to retry it")
            return None


def run_on_server(config: RunConfig, recompute: list[str], take_over: bool,
                  say: Callable[[str], None]) -> RunResult:
    """Run ``config`` as a flow run of the ``cli`` deployment, in this process, its flow runs sending heartbeats for
    the crash automation. ``say`` gets the lines for the terminal."""
    parameters = {"config": config, "recompute": list(recompute), "take_over": take_over}
    with temporary_settings(updates=heartbeat_settings()):
        flow_run = _deployment_flow_run(parameters, say)
        if flow_run is None:
            return evol_instruct(config, recompute=list(recompute), take_over=take_over)
        say(f"flow run {flow_run.id} of deployment {evol_instruct.name}/{DEPLOYMENT}: the UI's Retry reruns it on "
            f"a worker of pool {flow_run.work_pool_name}")
        return run_flow(evol_instruct, flow_run=flow_run, parameters=parameters)
