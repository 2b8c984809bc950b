"""`evol server`: the documented single-machine server, from its own environment (.venv-server)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_server_env_points_the_ui_at_itself_and_keeps_a_database_of_its_own(tmp_path):
    # In a process of its own, with nothing configured but the home: this test process may run inside Prefect's
    # test harness, whose temporary database URL counts as configured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    probe = ("import json; from flows.cli_server import server_env; "
             "print(json.dumps([server_env('127.0.0.1', 4300, {'PATH': '/bin'}), server_env('0.0.0.0', 4200, {}), "
             "server_env('127.0.0.1', 4300, {'PREFECT_UI_API_URL': 'http://h/api'})]))")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    local, everywhere, given = json.loads(done.stdout.strip().splitlines()[-1])
    assert local["PREFECT_UI_API_URL"] == "http://127.0.0.1:4300/api"
    # not the prefect.db each `evol run` without PREFECT_API_URL opens with Prefect 3.7.7
    assert local["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == f"sqlite+aiosqlite:///{tmp_path}/server.db"
    assert "PREFECT_UI_API_URL" not in everywhere  # the address the browser uses is unknown
    assert given["PREFECT_UI_API_URL"] == "http://h/api"


def test_server_env_keeps_a_configured_database():
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, temporary_settings

    from flows.cli_server import server_env

    postgres = "postgresql+asyncpg://u:p@db:5432/prefect"
    with temporary_settings(updates={PREFECT_API_DATABASE_CONNECTION_URL: postgres}):
        assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in server_env("127.0.0.1", 4200, {})


def test_evol_server_without_its_environment_says_how_to_make_it(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("EVOL_SERVER_VENV", str(tmp_path / "nothing"))
    result = CliRunner().invoke(app, ["server", "--port", "4300"])
    assert result.exit_code == 2
    assert f"error: no server environment at {tmp_path / 'nothing'}: run `make setup`" in result.output


PROBE_IMMEDIATE = """
import asyncio, runpy, sqlite3, sys
import sqlalchemy as sa
if sys.argv[3] == "evol":
    runpy.run_path(sys.argv[1], run_name="evol_server_main")  # what `evol server` runs, without starting a server
from prefect.server.database.configurations import AioSqliteConfiguration

async def main(path):
    config = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{path}")
    engine = await config.engine()
    session = await config.session(engine)
    async with session:
        async with config.begin_transaction(session):  # with_for_update=False: DEFERRED in Prefect
            await session.execute(sa.text("SELECT count(*) FROM t"))  # the transaction begins with its first read
            other = sqlite3.connect(path, timeout=0)
            try:
                other.execute("BEGIN IMMEDIATE")
                print("other writer got in")
            except sqlite3.OperationalError as exc:
                print(f"other writer waits: {exc}")
            finally:
                other.close()
    await engine.dispose()

asyncio.run(main(sys.argv[2]))
"""


def test_the_server_begins_its_sqlite_transactions_immediate(tmp_path):
    """A transaction Prefect begins DEFERRED holds the write lock from its start under `evol server`: another writer
    waits (here, with no busy timeout, it is refused) instead of both racing into "database is locked"."""
    from flows.cli_server import server_venv

    python = server_venv() / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"no server environment at {server_venv()} (make setup makes it)")
    db = tmp_path / "server.db"
    with sqlite3.connect(db) as made:
        made.execute("CREATE TABLE t (x)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path)

    def probe(mode: str) -> str:
        done = subprocess.run([str(python), "-c", PROBE_IMMEDIATE, str(ROOT / "flows/server_main.py"), str(db), mode],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    assert probe("evol") == "other writer waits: database is locked"
    assert probe("prefect") == "other writer got in"  # Prefect's own DEFERRED, where the race lives
