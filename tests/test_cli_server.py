"""`evol server`: the documented single-machine server, from its own environment (.venv-server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
