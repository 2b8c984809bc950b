"""One test process reports to two Prefect APIs in turn (the session's harness, a server): each flow's task runs
land on the API the flow ran against. Prefect's event worker is one per process and keeps the API it started with;
``tests.services.prefect_api`` drains it on the way in and out of a block, or task runs land on the other API."""

from __future__ import annotations

import pytest
from prefect import flow, task
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from tests.held_run import wait_until
from tests.services import prefect_api

pytestmark = pytest.mark.server


@task
def one_step(i: int) -> int:
    return i + 1


@flow
def two_steps() -> int:
    return one_step(1) + one_step(2)


def task_run_names(client: SyncPrefectClient, flow_run_id) -> list[str]:
    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(r.name for r in runs if r.state is not None and r.state.is_completed())


def run_and_read(client: SyncPrefectClient) -> list[str]:
    state = two_steps(return_state=True)
    assert state.is_completed()
    flow_run_id = state.state_details.flow_run_id
    wait_until(lambda: len(task_run_names(client, flow_run_id)) == 2, 120, "the flow's two task runs on its API")
    return task_run_names(client, flow_run_id)


def test_each_flow_s_task_runs_land_on_the_api_it_ran_against(prefect_harness, prefect_server):
    with get_client(sync_client=True) as harness:  # the harness first: its event worker starts bound to it
        assert len(run_and_read(harness)) == 2
    with prefect_api(prefect_server), SyncPrefectClient(api=prefect_server) as server:
        assert len(run_and_read(server)) == 2
    with get_client(sync_client=True) as harness:  # and back
        assert len(run_and_read(harness)) == 2
