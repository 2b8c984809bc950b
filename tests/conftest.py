"""Shared fixtures: a real S3 server (moto) on 127.0.0.1, temporary roots."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from storage import StorageSettings

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here
# Each test process (pytest-xdist runs two) gets a Prefect home of its own: the local API an `evol run` starts keeps its
# SQLite database there, and two runs in two test processes must not share it (nor the user's own profile).
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="evol-tests-prefect-home-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], True)
# vLLM's own logging in tests: as vLLM's default (INFO to stdout) without its one warning per weight of the bundled
# model (``tasks.core.runlog.WeightLoadNoise``), pages of them in a failure report. A run's log file drops them too.
_VLLM_LOGGING = os.path.join(os.environ["PREFECT_HOME"], "vllm-logging.json")
with open(_VLLM_LOGGING, "w") as _f:
    json.dump({"version": 1, "disable_existing_loggers": False,
               "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
               "filters": {"weights": {"()": "tasks.core.runlog.WeightLoadNoise"}},
               "handlers": {"out": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout",
                                    "formatter": "plain", "filters": ["weights"]}},
               "loggers": {"vllm": {"handlers": ["out"], "level": "INFO", "propagate": False}}}, _f)
os.environ.setdefault("VLLM_LOGGING_CONFIG_PATH", _VLLM_LOGGING)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def moto_server(**env: str):
    """moto's standalone S3 server on 127.0.0.1 (a real HTTP S3 endpoint); yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server():
    """The session's S3 server."""
    with moto_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_settings(s3_server, monkeypatch_session):
    """Storage settings for the moto server, also exported as ``EVOL_STORAGE__*`` for subprocesses."""
    settings = StorageSettings(endpoint_url=s3_server, key="testing", secret="testing")
    monkeypatch_session.setenv("EVOL_STORAGE__ENDPOINT_URL", s3_server)
    monkeypatch_session.setenv("EVOL_STORAGE__KEY", "testing")
    monkeypatch_session.setenv("EVOL_STORAGE__SECRET", "testing")
    return settings


@pytest.fixture(scope="session")
def monkeypatch_session():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture()
def s3_bucket(s3_settings):
    """A fresh bucket; yields its ``s3://`` root."""
    from storage.uri import filesystem_for

    name = f"evol-{uuid.uuid4().hex[:10]}"
    fs = filesystem_for("s3://x", s3_settings)
    fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture()
def memory_root():
    """A fresh ``memory://`` root, cleaned afterwards."""
    from storage import resolve

    root = f"memory://test-{uuid.uuid4().hex[:10]}"
    yield root
    fs, path = resolve(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """Prefect's own test harness: a temporary API and database for the session, with the settings of a run on its
    own local API (no heartbeats: tests/test_local_api.py)."""
    from prefect.settings import temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from tasks.runtime.crash_detection import local_run_settings

    with prefect_test_harness(server_startup_timeout=120), temporary_settings(updates=local_run_settings()):
        yield


@pytest.fixture(scope="session")
def scripted_run(prefect_harness):
    """Runs the 20 test seeds (2 rounds of 2 shards, the scripted demo model, random seed 3) to the end: call it with
    a folder (the seed file goes there), the run's name and its output root's folder name; returns the run's config
    (a dict) and its result."""
    from flows.evol_instruct import evol_instruct
    from tasks.core.config import parse_run_config
    from tests.flow_script import load_seeds

    def run(tmp, name: str, output: str):
        seeds = tmp / "seeds.jsonl"
        seeds.write_text("\n".join(json.dumps(s) for s in load_seeds()) + "\n")
        config = {"name": name, "seeds": str(seeds), "output_root": str(tmp / output), "rounds": 2, "shard_size": 10,
                  "random_seed": 3, "llm": {"backend": "scripted", "model": "demo"},
                  "orchestration": {"retries": 0, "retry_delay_s": 0}}
        return config, evol_instruct(parse_run_config(config))

    return run


# Modules that start the same engines (model and engine arguments): `make test` hands each group to one test process
# as one unit, so its modules run back to back and the engine starts once (each start costs about 30 s of CPU).
BUNDLED_ENGINES = "offline engine, max_model_len 1024; async engine, max_model_len 1024, one sequence per step"
ENGINE_GROUPS = {"tests/test_llm_streaming.py": BUNDLED_ENGINES, "tests/test_llm_vllm.py": BUNDLED_ENGINES,
                 "tests/test_score_vllm.py": BUNDLED_ENGINES, "tests/test_vllm_pipeline.py": BUNDLED_ENGINES}


def engine_scope(nodeid: str) -> str:
    """The unit a test's engines live in: its module, or the module's engine group."""
    module = nodeid.split("::", 1)[0]
    return ENGINE_GROUPS.get(module, module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the modules of an engine group in one work unit."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class EngineGroupScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return engine_scope(nodeid)

    return EngineGroupScheduling(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """The engines a module started stop when it ends, unless the next module is of its engine group: a test process
    runs many modules, and an engine left in the process-wide cache holds about 3 GB until the process ends (five of
    them filled 24 GiB)."""
    try:
        return (yield)
    finally:
        backend = sys.modules.get("tasks.llm.vllm_backend")
        if backend is not None and (nextitem is None or engine_scope(nextitem.nodeid) != engine_scope(item.nodeid)):
            backend.shutdown_engines()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The bundled model, prepared once (into ``EVOL_LLM__MODELS_DIR`` when set, so CI and the demo share it). The one
    copy of this fixture: a test that uses it, directly or through another fixture, is marked ``vllm`` (heavy)."""
    from tasks.llm.models import prepare_default_model

    yield prepare_default_model(os.environ.get("EVOL_LLM__MODELS_DIR") or tmp_path_factory.getbasetemp() / "models")
    backend = sys.modules.get("tasks.llm.vllm_backend")
    if backend is not None:  # stop the engines while pytest's log streams are still open
        backend.shutdown_engines()


@contextlib.contextmanager
def _prefect_server(home):
    """The documented Prefect server (`evol server`: SQLite) on 127.0.0.1, as a user starts it; yields its API URL."""
    from tests.services import evol_server
    from tests.services import prefect_server as start_prefect_server

    port = free_port()
    # a deployment run that finds its concurrency slot taken (the nightly's limit of 1) is tried again after 5 s,
    # not Prefect's default 30 s: tests/test_deploy_overlap.py waits for it
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": "", "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "5"}
    with start_prefect_server(evol_server(port), env, f"http://127.0.0.1:{port}/api", home / "server.log") as url:
        yield url


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """The session's Prefect server. Every `evol run` against it puts the crash automation there."""
    with _prefect_server(tmp_path_factory.mktemp("prefect-home")) as url:
        yield url


@pytest.fixture()
def own_prefect_server(tmp_path_factory):
    """A Prefect server for one test: none of the session's automations, runs or deployments."""
    with _prefect_server(tmp_path_factory.mktemp("prefect-home")) as url:
        yield url


# A test that uses one of these fixtures is marked by it, so `-m "not vllm and not s3 and not server"` (the
# fast loop, `make test-fast`) never starts an engine or a server, whatever marks a test file forgot.
FIXTURE_MARKS = {"prefect_harness": "server", "prefect_server": "server", "own_prefect_server": "server",
                 "s3_server": "s3", "s3_settings": "s3",
                 "s3_bucket": "s3", "s3_with_auth": "s3", "model_dir": "vllm", "vllm_server": "vllm"}


# Heaviest modules first: `make test` hands whole modules to its three processes in collection order, so a module that
# starts an engine or a server must not be the one left running alone at the end. Before them a module that holds
# services for minutes while it sleeps (`waits`): it takes one process at once and the others work meanwhile. After the
# engines, the modules that took over a minute on 2 cores (docs/benchmarks.md), longest first, then the other server
# and S3 modules.
MODULE_WEIGHT = {"waits": 0, "vllm": 1, "long": 2, "server": 3, "s3": 4}
LONG_MODULES = ["tests/test_crash_recovery.py", "tests/test_cli_deploy.py", "tests/test_workers.py",
                "tests/test_deploy_sequence.py", "tests/test_deploy_overlap.py", "tests/test_infra_errors.py",
                "tests/test_team_topology.py", "tests/test_stage_keys.py"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in FIXTURE_MARKS:
                item.add_marker(FIXTURE_MARKS[fixture])
    weight: dict[str, int] = {}
    for item in items:
        marks = {m.name for m in item.iter_markers()} & MODULE_WEIGHT.keys()
        module = item.nodeid.split("::")[0]
        if module in LONG_MODULES:
            marks.add("long")
        weight[module] = min([weight.get(module, len(MODULE_WEIGHT)), *(MODULE_WEIGHT[m] for m in marks)])
    order = {id(item): i for i, item in enumerate(items)}
    rank = {module: i for i, module in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: (weight[item.nodeid.split("::")[0]], rank.get(item.nodeid.split("::")[0], 0),
                                 order[id(item)]))
