"""A private Prefect API for one ``evol run`` when no ``PREFECT_API_URL`` is set.

Prefect's own ephemeral server is a child process that outlives a killed parent. This one is started
with the kernel's parent-death signal, so it ends with the run however the run ends."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import httpx

from tasks.runtime.cancel import drain_prefect_workers
from tasks.runtime.crash_detection import local_run_settings

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the process that started it dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _drain_to(url: str, timeout_s: float = 10.0) -> None:
    """Send the logs and events still queued to the API before it stops (else Prefect prints "Error logging to
    API" at exit)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        drain_prefect_workers(timeout_s)


@contextmanager
def local_api(startup_timeout_s: float = 180.0) -> Iterator[str]:
    """Start a Prefect API on 127.0.0.1 for the duration of the block; yields its URL (``.../api``). Flow runs in the
    block send no heartbeats (``local_run_settings``)."""
    import prefect
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
         "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "error", "--lifespan", "on"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the local Prefect API exited with code {proc.returncode} while starting")
            with suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local Prefect API did not answer on {url} within {startup_timeout_s:.0f} s")
            time.sleep(0.25)
        with temporary_settings(updates={PREFECT_API_URL: url, **local_run_settings()}):
            yield url
    finally:
        _drain_to(url)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
