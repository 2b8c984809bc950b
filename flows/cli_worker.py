"""``evol worker``: one shard worker of a cluster (see ``tasks.worker``); this module only starts it."""

from __future__ import annotations

import os

from rich.console import Console

console = Console(stderr=True)


def worker_command(scheduler: str, name: str | None, cpus: str | None, gpu: str | None, preload: list[str],
                   warm: str | None, nanny: bool) -> None:
    from flows.cli_common import fail
    from tasks.runtime.worker import worker_plan

    try:
        plan = worker_plan(scheduler, name, cpus, gpu, preload, warm, nanny)
    except ValueError as err:
        fail(str(err))
    if plan.cpus:
        os.sched_setaffinity(0, plan.cpus)  # kept across exec: the worker, its engine and their children
    console.print(f"evol worker {name or ''} -> {scheduler} (cpus {cpus or 'all'}, gpu {gpu or '-'})",
                  soft_wrap=True, highlight=False)
    os.execve(plan.argv[0], plan.argv, plan.env)
