"""Cancellation of a run started outside a worker (``evol run``): watch the flow run's state, stop on Cancelling.

Prefect's workers kill the process of a flow run that is cancelled in the UI; a run started from the
command line has no worker, so its flow run would sit in Cancelling while the run went on. The watcher
polls the flow run's state; when it turns Cancelling it marks the run and everything under it Cancelled
and ends the process at once, whatever its shards are doing (in a worker's process too, before the worker's
SIGTERM would wait for the round's shard threads). Nothing committed is lost: shards are published atomically
and a half-written temp file is swept by the next run, which reuses every committed shard.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled

from tasks.core.runlog import finish_active_logs
from tasks.runtime.recovery import UNFINISHED, flow_run_tree, unfinished_task_runs

CANCEL_MESSAGE = "cancelled through the Prefect API; committed shards are kept and a rerun resumes from them"


def cancel_flow_run_tree(client: SyncPrefectClient, flow_run_id: UUID, message: str = CANCEL_MESSAGE) -> int:
    """Mark a flow run, its subflow runs and their unfinished task runs Cancelled; returns how many runs changed."""
    changed = 0
    for flow_run in reversed(flow_run_tree(client, flow_run_id)):
        for task_run in unfinished_task_runs(client, flow_run.id):
            client.set_task_run_state(task_run.id, Cancelled(message=message), force=True)
            changed += 1
        if flow_run.state is None or flow_run.state.type in UNFINISHED:
            client.set_flow_run_state(flow_run.id, Cancelled(message=message), force=True)
            changed += 1
    return changed


EXIT_CANCELLED = 130


class _NoDrainChatter(logging.Filter):
    """Drops Prefect's "Still processing items: N items remaining..." (a warning its queue services print while a
    drain this process asked for works through a backlog, as on a busy machine); keeps every other record, such as
    "queue is full ... dropping item"."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Still processing items")


def drain(workers: Iterable[type], timeout_s: float) -> None:
    """Send what Prefect's queue services (``EventsWorker``, ``APILogWorker``) still hold, waiting up to
    ``timeout_s`` each; a backlog is expected here, so its progress chatter is not printed."""
    chatter = _NoDrainChatter()
    for worker in workers:
        service_logger = logging.getLogger(worker.__name__)  # the name Prefect's services log under
        service_logger.addFilter(chatter)
        try:
            worker.drain_all(timeout=timeout_s, at_exit=False)
        finally:
            service_logger.removeFilter(chatter)


def drain_prefect_workers(timeout_s: float) -> None:
    """Send what Prefect's process-wide log and event workers hold to the API the settings name, and stop them: the
    next flow in this process gets new ones, bound to the API it then reports to."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    drain([APILogWorker, EventsWorker], timeout_s)


def send_queued_events(timeout_s: float = 2.0) -> None:
    """Send the events this process has queued (its task runs' states, its heartbeats) before the run's states are
    set: none of them then reaches the server after the Cancelled ones."""
    from prefect.events.worker import EventsWorker

    drain([EventsWorker], timeout_s)


def stop_engine_processes() -> int:
    """SIGTERM the processes this one started through ``multiprocessing`` (vLLM's engine core: it outlives a parent
    that ends with ``os._exit`` and would keep its memory); returns how many. Called last: a shard thread seeing its
    engine gone must not have time to commit rows it failed."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    return len(children)


def cancel_and_exit(client: SyncPrefectClient, flow_run_id: UUID, release: Callable[[], None],
                    requested: datetime | None = None) -> None:
    """Record the cancellation on the flow run tree, give the run folder back (``release``), end the process.

    Task runs report their states through events the server records a moment later, so a task that started
    just before the end can show up Running after the first pass: a detached sweeper makes the same pass
    again once this process (and so every event it sends) is gone. ``requested``: when the cancel was asked
    (the Cancelling state's time), for the line that says how long each step took."""
    seen = time.monotonic()
    lag = f"seen {(datetime.now(requested.tzinfo) - requested).total_seconds():.1f} s after the request, " \
        if requested is not None else ""
    send_queued_events()
    changed = cancel_flow_run_tree(client, flow_run_id)
    release()
    subprocess.Popen([sys.executable, "-m", "tasks.runtime.cancel", str(client.api_url), str(flow_run_id)],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)  # nothing of this process's: a caller's pipe closes when it exits
    print(f"run cancelled through the Prefect API (flow run {flow_run_id}): {lag}{changed} run(s) marked Cancelled "
          f"and the run folder given back in {time.monotonic() - seen:.1f} s; committed shards are kept, a rerun "
          "resumes from them", file=sys.stderr, flush=True)
    finish_active_logs()
    stop_engine_processes()
    os._exit(EXIT_CANCELLED)  # the shard threads hold no state worth waiting for: commits are atomic


def sweep_after_exit(api_url: str, flow_run_id: UUID, pauses: tuple[float, ...] = (1.0, 3.0)) -> int:
    """Cancel what the server recorded late; a local API that ended with the run leaves nothing to sweep."""
    changed = 0
    for pause in pauses:
        time.sleep(pause)
        try:
            with SyncPrefectClient(api=api_url) as client:
                changed += cancel_flow_run_tree(client, flow_run_id)
        except httpx.ConnectError:
            return changed  # the run's private API ended with it
    return changed


class CancelWatcher:
    """A daemon thread polling ``flow_run_id``'s state every ``interval_s``; on Cancelling (or Cancelled) it cancels
    the run and ends the process (``cancel_and_exit``, ``release`` giving the run folder back)."""

    def __init__(self, api_url: str, flow_run_id: UUID, release: Callable[[], None], interval_s: float = 1.0):
        self.api_url, self.flow_run_id, self.release, self.interval_s = api_url, flow_run_id, release, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cancel-watcher", daemon=True)

    def _watch(self) -> None:
        with SyncPrefectClient(api=self.api_url) as client:
            while not self._stop.wait(self.interval_s):
                state = client.read_flow_run(self.flow_run_id).state
                if state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED):
                    cancel_and_exit(client, self.flow_run_id, self.release, state.timestamp)

    def __enter__(self) -> CancelWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


if __name__ == "__main__":
    sweep_after_exit(sys.argv[1], UUID(sys.argv[2]))
