"""Crash detection on a Prefect server: flow runs send heartbeats; an automation marks Crashed those gone silent.

Prefect's flow engine sends a ``prefect.flow-run.heartbeat`` event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds
for each flow run it runs (subflows too) while the run lives; a killed process sends none. The automation here is
Prefect's documented one for "zombie" flow runs ("How to detect and respond to zombie flows"), limited to this
project's flows: after each heartbeat of a flow run it expects another event of that flow run (a heartbeat or a state
change) within ``SILENCE_S`` seconds, and sets the run Crashed when none comes. The server carries it out: nobody has
to rerun anything. A run in a final state is left alone (the server refuses Crashed after Completed or Cancelled).

A process that runs these flows against such a server must send heartbeats every ``HEARTBEAT_S`` seconds (Prefect's
default is 180): ``evol run`` sets it for itself, the deployments set it in their environment (``prefect.yaml``);
anything else that runs them there sets ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30``.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

HEARTBEAT_S = 30  # Prefect's shortest heartbeat interval
SILENCE_S = 90  # three heartbeats missed: Crashed 60 to 90 s after the kill, plus the server's evaluation period (5 s)
HEARTBEAT_SETTING = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
AUTOMATION_NAME = "evol: mark Crashed the flow runs whose heartbeats stopped"
CRASH_MESSAGE = (f"no heartbeat from this flow run's process for {SILENCE_S} s: it died (killed, out of memory, its "
                 "machine lost); marked Crashed by the server's automation. Retry it, or run its config again: "
                 "committed shards are reused")


def heartbeat_settings() -> dict[str, Any]:
    """Prefect settings (for ``prefect.settings.temporary_settings``) that make this process's flow runs heartbeat
    often enough for the automation."""
    return {"flows.heartbeat_frequency": HEARTBEAT_S}


def local_run_settings() -> dict[str, Any]:
    """Prefect settings for a run on its own local API (``flows.local_api``): no heartbeats. No automation watches
    that API, and at the end of each flow run (each round's subflow too) Prefect's engine waits for its heartbeat
    thread to wake from its one-second sleep: about a second per flow run, for nothing."""
    return {"flows.heartbeat_frequency": None}


def crash_automation(flow_names: list[str]) -> AutomationCore:
    """The automation that marks Crashed a flow run of ``flow_names`` once its heartbeats stop."""
    return AutomationCore(
        name=AUTOMATION_NAME,
        description=(f"Flow runs of {', '.join(flow_names)} send a heartbeat every {HEARTBEAT_S} s; one silent for "
                     f"{SILENCE_S} s has lost its process and is set Crashed. Put here by `evol run` and "
                     "`evol deploy`."),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.*"},  # a heartbeat or a state change (named as the state: Completed, ...)
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=ResourceSpecification({"prefect.resource.role": "flow",
                                                 "prefect.resource.name": sorted(flow_names)}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=SILENCE_S),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=CRASH_MESSAGE)],
    )


def _shape(automation: AutomationCore) -> str:
    """What makes two automations the same one here (not their ids)."""
    return json.dumps([automation.description, automation.trigger.model_dump(mode="json", exclude={"id"}),
                       [a.model_dump(mode="json") for a in automation.actions]], sort_keys=True, default=str)


def ensure_crash_automation(client: SyncPrefectClient, flow_names: list[str]) -> str:
    """Put the crash automation on the server once: ``created``, ``updated`` (one of that name differed; a copy made
    by two runs starting at once is removed) or ``exists``. One turned off in the UI stays off (``disabled``)."""
    wanted = crash_automation(flow_names)
    found = client.read_automations_by_name(AUTOMATION_NAME)
    if not found:
        client.create_automation(wanted)
        return "created"
    first, *copies = sorted(found, key=lambda a: str(a.id))
    for copy in copies:
        client.delete_automation(copy.id)
    if _shape(first) != _shape(wanted):
        client.update_automation(first.id, wanted.model_copy(update={"enabled": first.enabled}))
        copies.append(first)
    return "disabled" if not first.enabled else "updated" if copies else "exists"
