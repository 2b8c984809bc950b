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

No import from this project: it runs in ``.venv-server``, where only Prefect's server is installed."""

from __future__ import annotations

import sys

from prefect.server.database import configurations

_deferred_or_immediate = configurations.AioSqliteConfiguration.begin_transaction


def _immediate(self, session, with_for_update: bool = False):
    return _deferred_or_immediate(self, session, with_for_update=True)


configurations.AioSqliteConfiguration.begin_transaction = _immediate

if __name__ == "__main__":
    from prefect.cli import app

    sys.argv[0] = "prefect"
    sys.exit(app())
