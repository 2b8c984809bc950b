"""Crash recovery: a run that takes over a stale run-folder lease marks the dead run's flow runs Crashed.

A process killed outside a worker leaves its flow run, its round flow runs and its task runs Running in
Prefect forever, and ``prefect flow-run retry`` refuses a run that is not in a final state. The lease
records the flow run that held the folder; the next run of the folder knows from the lease that its
holder is dead, so it sets that flow run, every flow run under it and their unfinished task runs to
Crashed (forced: the dead process will never report again).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed
from pydantic import BaseModel

from storage.redact import redact

UNFINISHED = [StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED, StateType.PAUSED, StateType.CANCELLING]


class CrashReport(BaseModel):
    """What recovery did to a dead run's records."""

    flow_run_id: str | None
    found: bool = False
    flow_runs_crashed: list[str] = []
    task_runs_crashed: int = 0
    note: str = ""


def flow_run_tree(client: SyncPrefectClient, root: UUID) -> list[Any]:
    """The flow run ``root`` and every flow run under it (round flows, training), parents first."""
    found = [client.read_flow_run(root)]
    frontier = [root]
    while frontier:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)))
        found += children
        frontier = [c.id for c in children]
    return found


def root_flow_run_id(client: SyncPrefectClient, flow_run_id: UUID) -> UUID:
    """The outermost flow run above ``flow_run_id`` (a deployment's ``evol-run`` calls ``evol-instruct`` as a
    subflow: the whole run crashed, not only its inner flow)."""
    flow_run = client.read_flow_run(flow_run_id)
    while flow_run.parent_task_run_id is not None:
        flow_run = client.read_flow_run(client.read_task_run(flow_run.parent_task_run_id).flow_run_id)
    return flow_run.id


def unfinished_task_runs(client: SyncPrefectClient, flow_run_id: UUID) -> list[Any]:
    """The task runs of one flow run that are not in a final state."""
    return client.read_task_runs(task_run_filter=TaskRunFilter(
        flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]),
        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=UNFINISHED), name=None)))


def crash_dead_flow_run(client: SyncPrefectClient, lease: dict[str, Any], api_url: str | None) -> CrashReport:
    """Mark the flow run recorded in a stale ``lease`` (and its subflow runs and unfinished task runs) Crashed.

    Only when the lease was written against the same Prefect API: a run on a private local API leaves
    nothing behind that another API could show."""
    flow_run_id = lease.get("flow_run_id")
    if not flow_run_id:
        return CrashReport(flow_run_id=flow_run_id, note="the dead run recorded no flow run")
    if lease.get("prefect_api") and api_url and lease["prefect_api"].rstrip("/") != redact(api_url).rstrip("/"):
        return CrashReport(flow_run_id=flow_run_id,
                           note=f"flow run {flow_run_id} ran on another Prefect API ({lease['prefect_api']})")
    try:
        tree = flow_run_tree(client, root_flow_run_id(client, UUID(flow_run_id)))
    except ObjectNotFound:
        return CrashReport(flow_run_id=flow_run_id, note=f"flow run {flow_run_id} is not on this Prefect API")
    report = CrashReport(flow_run_id=flow_run_id, found=True)
    message = (f"the process that ran this flow (pid {lease.get('pid')} on {lease.get('host')}, started "
               f"{lease.get('started')}) died; the next run of its run folder marked it Crashed")
    for flow_run in reversed(tree):  # children first, so a parent is never final while a child still runs
        task_runs = unfinished_task_runs(client, flow_run.id)
        for task_run in task_runs:
            client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
        report.task_runs_crashed += len(task_runs)
        if flow_run.state is None or flow_run.state.type in UNFINISHED:
            client.set_flow_run_state(flow_run.id, Crashed(message=message), force=True)
            report.flow_runs_crashed.append(str(flow_run.id))
    return report


def crash_lost_task_runs(client: SyncPrefectClient, task_run_ids: list[UUID], message: str) -> list[UUID]:
    """Mark Crashed the task runs among ``task_run_ids`` that are not in a final state; returns those.

    A distributed runner that gives up on a task (Dask's ``KilledWorker`` once workers died under it) raises in
    the flow and never reports the task run, which stays Running and refuses a retry (PrefectHQ/prefect #5925,
    #9014): the round records the outcome itself."""
    crashed = []
    for task_run_id in task_run_ids:
        try:
            task_run = client.read_task_run(task_run_id)
        except ObjectNotFound:  # the worker died before the task engine created it: nothing left Running
            continue
        if task_run.state is None or task_run.state.type in UNFINISHED:
            client.set_task_run_state(task_run_id, Crashed(message=message), force=True)
            crashed.append(task_run_id)
    return crashed
