"""Real services for the deployment tests, started from packages as a user would: Prefect's server,
a process worker, PostgreSQL. Each is a context manager that stops what it started."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import wait_for_port

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Terminate a process started in its own session, with everything it started (a worker's flow runs)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # children still in the group
        os.killpg(proc.pid, signal.SIGKILL)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180,
                 headers: dict[str, str] | None = None) -> None:
    """Wait until ``{url}/health`` answers 200; fail with the server's log if it exits or never answers."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2, headers=headers).status_code == 200:
                return
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"{proc.args[0]} did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


def evol_server(port: int) -> list[str]:
    """The documented server's command (README: `evol server`) on 127.0.0.1:``port``."""
    return [str(BIN / "evol"), "server", "--host", "127.0.0.1", "--port", str(port)]


@contextlib.contextmanager
def prefect_server(command: list[str], env: dict[str, str], api_url: str, log: Path,
                   headers: dict[str, str] | None = None) -> Iterator[str]:
    """A Prefect server started by ``command`` (``evol server ...``) with ``env``; yields the API URL once it
    answers."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(api_url, proc, log, headers=headers)
        yield api_url
    finally:
        stop(proc)


@contextlib.contextmanager
def background(command: list[str], env: dict[str, str], log: Path,
               cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """A long-running command (a worker), its output in ``log``; stopped with its children afterwards."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


def postgres_bin_dir() -> Path | None:
    """Where Debian's ``postgresql`` package put ``initdb`` and ``pg_ctl``; None if it is not installed."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


@contextlib.contextmanager
def postgres_cluster(port: int, user: str, password: str, database: str) -> Iterator[None]:
    """A fresh PostgreSQL cluster on 127.0.0.1:``port`` with ``user``/``password`` owning ``database``.

    PostgreSQL refuses to run as root: as root the cluster runs as the package's ``postgres`` user.
    """
    bindir = postgres_bin_dir()
    assert bindir, "postgres binaries not installed"
    run_as = "postgres" if os.geteuid() == 0 else None
    data = Path(tempfile.mkdtemp(prefix="evol-pg-"))
    pwfile = data / "pw"
    pwfile.write_text(password)
    if run_as:
        entry = pwd.getpwnam(run_as)
        os.chown(data, entry.pw_uid, entry.pw_gid)
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    cluster = data / "cluster"

    def pg(*args: str) -> None:
        done = subprocess.run([str(bindir / args[0]), *args[1:]], user=run_as, capture_output=True, text=True,
                              cwd=data, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    try:
        pg("initdb", "-D", str(cluster), "-U", user, f"--pwfile={pwfile}", "-A", "scram-sha-256", "-E", "UTF8")
        options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg("pg_ctl", "-D", str(cluster), "-o", options, "-l", str(data / "log"), "-w", "start")
        wait_for_port(port)
        env = {**os.environ, "PGPASSWORD": password}
        done = subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, database],
                              env=env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"createdb failed: {done.stderr}")
        yield
    finally:
        with contextlib.suppress(Exception):
            pg("pg_ctl", "-D", str(cluster), "-m", "immediate", "-w", "stop")
        shutil.rmtree(data, ignore_errors=True)


def assert_export(output_root: str, seeds: int, settings=None) -> str:
    """The one run under ``output_root`` exported every format with the same rows: seeds plus every round's
    evolved rows less those dropped while mixing. Returns the run's URI."""
    import json

    import pyarrow.parquet as pq

    from storage import join_uri, list_committed_shards, read_shard, resolve

    fs, root = resolve(output_root, settings)
    runs = fs.ls(root, detail=False)
    assert len(runs) == 1, runs
    run_uri = join_uri(output_root, runs[0].rstrip("/").rsplit("/", 1)[-1])
    _, run_path = resolve(run_uri, settings)
    evolved = sum(json.loads(fs.cat_file(p))["summary"]["evolved"] for p in fs.glob(run_path + "/round=*/_round.json"))
    dropped = sum(read_shard(u, settings).num_rows for u in list_committed_shards(join_uri(run_uri, "final_dropped"),
                                                                                    settings))
    expected = seeds + evolved - dropped
    assert evolved > 0
    with fs.open(run_path + "/export/data.parquet", "rb") as f:
        parquet_rows = pq.ParquetFile(f).metadata.num_rows
    messages = fs.cat_file(run_path + "/export/messages.jsonl").decode().splitlines()
    alpaca = json.loads(fs.cat_file(run_path + "/export/alpaca.json"))
    assert (parquet_rows, len(messages), len(alpaca)) == (expected, expected, expected)
    assert all(json.loads(line)["messages"][-1]["role"] == "assistant" for line in messages)
    card = fs.cat_file(run_path + "/export/README.md").decode()
    data_key = json.loads(fs.cat_file(run_path + "/final/_mix.json"))["key"]
    assert f"- data key: `{data_key}`" in card
    return run_uri


@contextlib.contextmanager
def prefect_api(url: str) -> Iterator[str]:
    """In-process flows report to ``url`` for the block. Prefect's event worker is one per process and keeps the API
    it started with, whatever the settings say later: without the drains, this block's events went to the session's
    other API (a harness) and, after it, a later test's events came here and its task runs were missing there."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.runtime.cancel import drain_prefect_workers

    drain_prefect_workers(60.0)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        try:
            yield url
        finally:
            drain_prefect_workers(60.0)


def pause_schedules(api_url: str, deployment: str) -> None:
    """Pause ``deployment`` (``flow/name``): its auto-scheduled runs are deleted and no more are made, so a test's
    worker runs only the runs the test asks for, whatever the time of day (the nightly deployment fires at 02:00
    UTC). Runs asked for by hand still run."""
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api=api_url) as client:
        client.pause_deployment(client.read_deployment_by_name(deployment).id)
