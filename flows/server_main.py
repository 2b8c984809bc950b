"""Prefect's ``prefect`` command for ``evol server``, run by the server's own Python (``.venv-server``), with every
transaction of a SQLite-backed server begun ``IMMEDIATE``.

SQLite has one writer. Prefect begins most server transactions ``DEFERRED``: one that reads, then writes while
another connection has written meanwhile, gets "database is locked" at once (SQLite cannot wait there without risking
a deadlock), and the server logs a traceback. Prefect 3.8.6 began the scheduler's ``mark_deployments_ready``
``IMMEDIATE`` (PrefectHQ/prefect #22967); the automations' bucket updates (``increment_bucket``, one per event an
automation watches: the crash automation watches every flow run's heartbeats) and a worker's heartbeat still race.
Begun ``IMMEDIATE``, a transaction takes the write lock first and waits for it (the server's busy timeout, 60 s)
instead of failing. Reads outside transactions are not affected (WAL mode: readers never wait for the writer).
PostgreSQL-backed servers are untouched (``AsyncPostgresConfiguration``).

It also runs one service of its own beside Prefect's: the unfinished task runs (Pending, Running, Scheduled, Paused,
Cancelling) of a flow run that crashed in the last day (the crash automation, or a worker, marks the flow run when
its process dies; nothing marks its task runs) are set Crashed too, as Prefect's cancellation cleanup does for a
Cancelled flow run's task runs, every ``loop_seconds`` of that cleanup (20 s by default; off where the cleanup is).
A task run that stands for a subflow is left to Prefect, which keeps it in its subflow's state. Services run where
the server's services run: `prefect server start` without ``--no-services``.

No import from this project: it runs in ``.venv-server``, where only Prefect's server is installed."""

from __future__ import annotations

import sys

from prefect.server.database import configurations

_deferred_or_immediate = configurations.AioSqliteConfiguration.begin_transaction


def _immediate(self, session, with_for_update: bool = False):
    return _deferred_or_immediate(self, session, with_for_update=True)


configurations.AioSqliteConfiguration.begin_transaction = _immediate

CRASHED_TASK_MESSAGE = "its flow run crashed (its process died): marked Crashed by the server; rerun the flow run"


def _register_crashed_task_run_sweep() -> None:
    import datetime
    import logging

    import sqlalchemy as sa
    from docket import Depends, Perpetual
    from prefect.server import models, schemas
    from prefect.server.database import PrefectDBInterface, provide_database_interface
    from prefect.server.schemas import states
    from prefect.server.services.perpetual_services import perpetual_service
    from prefect.settings.context import get_current_settings
    from prefect.types._datetime import now

    logger = logging.getLogger("prefect.server.services.evol_crashed_task_runs")
    cleanup = get_current_settings().server.services.cancellation_cleanup
    unfinished = [states.StateType.PENDING, states.StateType.RUNNING, states.StateType.SCHEDULED,
                  states.StateType.PAUSED, states.StateType.CANCELLING]

    def stranded(db: PrefectDBInterface, since: datetime.datetime):
        """Unfinished task runs under a flow run that crashed since ``since``. Not a task run that stands for a
        subflow: Prefect keeps it in its subflow's state, and a retry of the flow run attaches the subflow again
        only while it is unfinished."""
        subflow_tasks = sa.select(db.FlowRun.parent_task_run_id).where(db.FlowRun.parent_task_run_id.is_not(None))
        return (sa.select(db.TaskRun.id)
                .join(db.FlowRun, db.TaskRun.flow_run_id == db.FlowRun.id)
                .where(db.FlowRun.state_type == states.StateType.CRASHED, db.FlowRun.end_time >= since,
                       db.TaskRun.state_type.in_(unfinished), db.TaskRun.id.not_in(subflow_tasks)))

    @perpetual_service(enabled_getter=lambda: get_current_settings().server.services.cancellation_cleanup.enabled)
    async def crash_task_runs_of_crashed_flow_runs(
        db: PrefectDBInterface = Depends(provide_database_interface),
        perpetual: Perpetual = Perpetual(automatic=True, every=datetime.timedelta(seconds=cleanup.loop_seconds)),
    ) -> None:
        """Set Crashed the unfinished task runs of the flow runs that crashed in the last day."""
        since = now("UTC") - datetime.timedelta(days=1)
        async with db.session_context() as session:
            found = (await session.execute(stranded(db, since).limit(500))).scalars().all()
        marked = 0
        for task_run_id in found:
            try:
                async with db.session_context(begin_transaction=True) as session:
                    # still so inside the write: a retry may have set the flow run going again meanwhile
                    if (await session.execute(stranded(db, since).where(db.TaskRun.id == task_run_id))).first():
                        await models.task_runs.set_task_run_state(
                            session=session, task_run_id=task_run_id,
                            state=schemas.states.Crashed(message=CRASHED_TASK_MESSAGE), force=True)
                        marked += 1
            except Exception:  # one task run that cannot be changed must not stop the others
                logger.exception("could not mark task run %s Crashed", task_run_id)
        if marked:
            logger.info("marked Crashed %d task run(s) of crashed flow runs", marked)


_register_crashed_task_run_sweep()

if __name__ == "__main__":
    from prefect.cli import app

    sys.argv[0] = "prefect"
    sys.exit(app())
