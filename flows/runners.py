"""Where a round's shard tasks run: threads in the run's process (embedded) or the workers of a Dask cluster.

Wiring only: which Prefect task runner a round gets, and how the round treats the futures the runner hands it."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from tasks.core.config import EnvSettings, OrchestrationConfig


class ClusterUnavailable(RuntimeError):
    """A run names a cluster but this installation cannot reach one (prefect-dask missing)."""


def cluster_address(orchestration: OrchestrationConfig, env: EnvSettings | None = None) -> str | None:
    """The Dask scheduler the run's shards go to (config first, then ``EVOL_CLUSTER``); None: embedded threads."""
    return orchestration.cluster_address((env or EnvSettings()).cluster)


def round_task_runner(orchestration: OrchestrationConfig, env: EnvSettings | None = None) -> TaskRunner:
    """The task runner of a round flow: a ThreadPoolTaskRunner of ``max_parallel_shards`` threads, or a
    DaskTaskRunner connected to the cluster (each `evol worker` takes one shard at a time)."""
    address = cluster_address(orchestration, env)
    if address is None:
        return ThreadPoolTaskRunner(max_workers=orchestration.max_parallel_shards)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as err:
        raise ClusterUnavailable(f"orchestration.cluster is {address!r} but prefect-dask is not installed: "
                                 f"pip install prefect-dask ({err})") from err
    return DaskTaskRunner(address=address)


def release_future(future: Any) -> None:
    """Let the cluster forget a shard whose result the round has taken.

    Dask keeps a finished task's result on its worker while a future holds it, and recomputes it elsewhere when
    that worker dies (PrefectHQ/prefect #15442). The candidates marker would make that recompute cheap; released,
    it does not happen at all. A no-op for thread futures."""
    wrapped = getattr(future, "wrapped_future", None)
    release = getattr(wrapped, "release", None)
    if callable(release):
        release()


def completions(futures: list[Any], every_s: float) -> Iterator[Any | None]:
    """Each future as it finishes, and None after every ``every_s`` seconds without one (a tick: the round
    refreshes its progress from the shards still running)."""
    finished: queue.Queue[Any] = queue.Queue()
    for future in futures:
        future.add_done_callback(finished.put)
    left = len(futures)
    while left:
        try:
            future = finished.get(timeout=every_s)
        except queue.Empty:
            yield None
            continue
        left -= 1
        yield future
