"""The hand-off from the data run to fine-tuning: start the GPU deployment when there is one, else train in-process.

A deployment is looked up by name on the Prefect API the run talks to. When it exists its flow run is created and
left to the ``gpu`` work pool's worker (the data run does not wait for it); when it does not, the ``train`` flow
runs in this process (a subflow when called from a flow)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from prefect import get_client, get_run_logger
from prefect.deployments import run_deployment
from prefect.exceptions import MissingContextError, ObjectNotFound
from pydantic import BaseModel

from storage import join_uri
from tasks.core.config import TrainConfig
from tasks.train.sft import recipe_name


class TriggerResult(BaseModel):
    mode: Literal["deployment", "in_process", "disabled"]
    flow_run_id: str | None
    output_uri: str
    deployment: str | None = None


def _log(message: str, *args: Any) -> None:
    try:
        get_run_logger().info(message, *args)
    except MissingContextError:  # called outside a flow or task run
        pass


def deployment_exists(name: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
    return True


def trigger_training(export_messages_uri: str, run_uri: str, train_config: TrainConfig,
                     in_process: Callable[..., Any]) -> TriggerResult:
    """Start fine-tuning on a run's ``messages.jsonl``: through ``train_config.deployment`` if it exists (not
    waited for), else by running ``in_process`` (the ``train`` flow) here and waiting for it."""
    output_uri = join_uri(run_uri, "train", recipe_name(train_config.recipe))
    if not train_config.enabled:
        return TriggerResult(mode="disabled", flow_run_id=None, output_uri=output_uri)
    parameters = {"dataset_uri": export_messages_uri, "recipe": train_config.recipe, "output_uri": output_uri}
    if deployment_exists(train_config.deployment):
        flow_run = run_deployment(train_config.deployment, parameters=parameters, timeout=0)
        _log("training started through deployment %s: flow run %s", train_config.deployment, flow_run.id)
        return TriggerResult(mode="deployment", flow_run_id=str(flow_run.id), output_uri=output_uri,
                             deployment=train_config.deployment)
    _log("no deployment %s: training in-process with %s", train_config.deployment, train_config.recipe)
    state = in_process(**parameters, return_state=True)
    state.result()  # a failed training fails the caller
    return TriggerResult(mode="in_process", flow_run_id=str(state.state_details.flow_run_id), output_uri=output_uri)
