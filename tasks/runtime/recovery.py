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
    live_left: list[str] = []  # flow runs of the dead run's tree that are this run, retried: left as they are
    note: str = ""

    def line(self) -> str:
        """What recovery did, for the run's log."""
        if self.note:
            return f"dead run's flow run {self.flow_run_id}: {self.note}"
        done = (f"dead run's flow run {self.flow_run_id}: marked {len(self.flow_runs_crashed)} flow run(s) and "
                f"{self.task_runs_crashed} task run(s) Crashed")
        if self.live_left:
            return done + f"; this run is its retry: its {len(self.live_left)} live flow run(s) go on"
        return done + "; `prefect flow-run retry` works on it now"


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


def flow_run_chain(client: SyncPrefectClient, flow_run_id: UUID) -> list[Any]:
    """The flow run ``flow_run_id`` and the flow runs above it (a subflow's callers), innermost first."""
    chain = [client.read_flow_run(flow_run_id)]
    while chain[-1].parent_task_run_id is not None:
        chain.append(client.read_flow_run(client.read_task_run(chain[-1].parent_task_run_id).flow_run_id))
    return chain


def root_flow_run_id(client: SyncPrefectClient, flow_run_id: UUID) -> UUID:
    """The outermost flow run above ``flow_run_id`` (a deployment's ``evol-run`` calls ``evol-instruct`` as a
    subflow: the whole run crashed, not only its inner flow)."""
    return flow_run_chain(client, flow_run_id)[-1].id


def live_run_ids(client: SyncPrefectClient, live_flow_run_id: UUID | None) -> set[UUID]:
    """The ids recovery must leave alone: the running flow run, the flow runs above it and the task runs that call
    them as subflows. A retried run keeps its flow run ids (and Prefect attaches its subflow again to the subflow run
    the dead attempt left Running), so the dead run's tree holds the live run itself."""
    if live_flow_run_id is None:
        return set()
    chain = flow_run_chain(client, live_flow_run_id)
    return {f.id for f in chain} | {f.parent_task_run_id for f in chain if f.parent_task_run_id is not None}


def unfinished_task_runs(client: SyncPrefectClient, flow_run_id: UUID) -> list[Any]:
    """The task runs of one flow run that are not in a final state."""
    return client.read_task_runs(task_run_filter=TaskRunFilter(
        flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]),
        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=UNFINISHED), name=None)))


def crash_dead_flow_run(client: SyncPrefectClient, lease: dict[str, Any], api_url: str | None,
                        live_flow_run_id: UUID | None = None) -> CrashReport:
    """Mark the flow run recorded in a stale ``lease`` (and its subflow runs and unfinished task runs) Crashed,
    except the running flow run ``live_flow_run_id``, the flow runs above it and their subflow task runs (a retry
    of the dead run is the dead run's flow run, running again).

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
    live = live_run_ids(client, live_flow_run_id)
    report = CrashReport(flow_run_id=flow_run_id, found=True, live_left=sorted(str(f.id) for f in tree if f.id in live))
    message = (f"the process that ran this flow (pid {lease.get('pid')} on {lease.get('host')}, started "
               f"{lease.get('started')}) died; the next run of its run folder marked it Crashed")
    for flow_run in reversed(tree):  # children first, so a parent is never final while a child still runs
        task_runs = [t for t in unfinished_task_runs(client, flow_run.id) if t.id not in live]
        for task_run in task_runs:
            client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
        report.task_runs_crashed += len(task_runs)
        if flow_run.id not in live and (flow_run.state is None or flow_run.state.type in UNFINISHED):
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
