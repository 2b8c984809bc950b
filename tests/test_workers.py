"""A round on a local cluster: a Dask scheduler and two `evol worker` processes (one CPU each), against a real
Prefect server. Shards spread over both workers, each builds its backend once, and a worker SIGKILLed in the
middle of a shard costs nothing: the round completes on the other and the export is byte-identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter

from flows.evol_instruct import evol_instruct
from storage import resolve
from tasks.core.config import parse_run_config
from tasks.evolve.shard import evolve_runtime_builds
from tasks.runtime.recovery import flow_run_tree, unfinished_task_runs
from tests.conftest import free_port
from tests.services import prefect_api
from tests.worker_support import shards_done  # importing it registers slow-demo here too (the embedded reference)

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[1]
EXPORTS = ("parquet", "alpaca", "messages")


class LocalCluster:
    """A scheduler and ``n`` workers started as `evol worker` would start them, each in a process group of its own.

    ``item_s``: seconds per conversation of the ``slow-demo`` backend; ``gate``: a file its conversations wait for
    (held until it exists); ``env``: more variables for every process."""

    def __init__(self, tmp: Path, n: int, item_s: float, gate: Path | None = None, env: dict[str, str] | None = None):
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.tmp = tmp
        self.log_dir = tmp / "worker-log"
        self.log_dir.mkdir()
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "EVOL_TEST_WORKER_LOG": str(self.log_dir),
                    "EVOL_TEST_ITEM_S": str(item_s), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(env or {})}
        if gate is not None:
            self.env["EVOL_TEST_GATE"] = str(gate)
        port = self.address.rsplit(":", 1)[1]
        self.procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", port,
                                        "--no-dashboard"], env=self.env, cwd=ROOT, start_new_session=True,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        self.workers: dict[str, subprocess.Popen] = {}
        from distributed import Client

        self.client = Client(self.address, timeout=120)
        for i in range(n):
            self.add_worker(f"w{i}")

    def add_worker(self, name: str) -> None:
        """Start one more `evol worker` (pinned to the next CPU in turn) and wait until the scheduler has it."""
        cpus = sorted(os.sched_getaffinity(0))
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "worker", self.address, "--name", name,
                                 "--cpus", str(cpus[len(self.workers) % len(cpus)]), "--preload",
                                 "tests.worker_support"], env=self.env, cwd=ROOT, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=open(self.tmp / f"{name}.log", "w"))  # noqa: SIM115
        self.procs.append(proc)
        self.workers[name] = proc
        self.client.wait_for_workers(len(self.workers), timeout=300)

    def by_name(self, fn) -> dict[str, object]:
        """``fn()`` run in every live worker, keyed by worker name."""
        names = {addr: w["name"] for addr, w in self.client.scheduler_info(n_workers=-1)["workers"].items()}
        return {names[addr]: value for addr, value in self.client.run(fn).items()}

    def items_done(self, pid: int) -> int:
        path = self.log_dir / f"{pid}.log"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def kill(self, name: str) -> None:
        os.killpg(self.workers[name].pid, signal.SIGKILL)  # the nanny and its worker: the whole `evol worker`

    def close(self) -> None:
        self.client.close()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def make_config(root: Path, cluster: str | None, rounds: int = 1):
    return parse_run_config({
        "name": "workers", "seeds": str(ROOT / "data" / "demo_seeds.jsonl"), "output_root": str(root),
        "rounds": rounds, "shard_size": 12, "random_seed": 5, "llm": {"backend": "scripted", "model": "slow-demo"},
        "orchestration": {"cluster": cluster or "embedded", "retries": 0, "retry_delay_s": 0}})


def exports(result) -> dict[str, bytes]:
    out = {}
    for kind in EXPORTS:
        fs, path = resolve(result.export.files[kind])
        out[kind] = fs.cat_file(path)
    return out


def unfinished_runs(flow_run_id: UUID) -> list[str]:
    """Names of flow and task runs under the run that are not final, once the server has taken in its events."""
    import time

    with get_client(sync_client=True) as client:
        for _ in range(120):
            tree = flow_run_tree(client, flow_run_id)
            left = [f.name for f in tree if f.state is None or not f.state.is_final()]
            left += [t.name for f in tree for t in unfinished_task_runs(client, f.id)]
            if not left:
                return []
            time.sleep(0.5)
        return left


@pytest.fixture
def cluster_factory(tmp_path):
    made: list[LocalCluster] = []

    def make(n: int = 2, item_s: float = 0.0, gate: Path | None = None, env: dict[str, str] | None = None
             ) -> LocalCluster:
        made.append(LocalCluster(tmp_path, n, item_s, gate, env))
        return made[-1]

    yield make
    for cluster in made:
        cluster.close()


def test_round_spreads_over_two_workers_each_building_its_backend_once(prefect_server, cluster_factory, tmp_path):
    cluster = cluster_factory(2, item_s=0.01)
    with prefect_api(prefect_server):
        reference = evol_instruct(make_config(tmp_path / "embedded", None, rounds=2))
        first = evol_instruct(make_config(tmp_path / "cluster-1", cluster.address, rounds=2))
        second = evol_instruct(make_config(tmp_path / "cluster-2", cluster.address, rounds=2))
    assert exports(first) == exports(reference) == exports(second)
    assert [r.shards for r in first.rounds] == [8, 8]
    pids = cluster.by_name(os.getpid)
    items = {name: cluster.items_done(pid) for name, pid in pids.items()}
    assert sorted(items) == ["w0", "w1"] and all(n > 0 for n in items.values()), items
    done = cluster.by_name(shards_done)
    assert min(done.values()) >= 1 and sum(done.values()) == 32, done  # 2 runs of 2 rounds of 8 shards, each once
    # two runs with the same settings, four rounds of shards: one build of the pack and backends per worker
    assert cluster.by_name(evolve_runtime_builds) == {"w0": 1, "w1": 1}


def test_worker_killed_mid_shard_round_completes_on_the_other(prefect_server, cluster_factory, tmp_path):
    cluster = cluster_factory(2, item_s=0.05)
    victim_pid = cluster.by_name(os.getpid)["w0"]
    fired = threading.Event()

    def kill_when_busy() -> None:
        import time

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if cluster.items_done(victim_pid) >= 3:  # inside a shard's first batch (12 items of 0.05 s)
                cluster.kill("w0")
                fired.set()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_busy, daemon=True)
    with prefect_api(prefect_server):
        reference = evol_instruct(make_config(tmp_path / "embedded", None))
        killer.start()
        state = evol_instruct(make_config(tmp_path / "cluster", cluster.address), return_state=True)
        killer.join()
        assert fired.is_set()
        assert state.is_completed(), state
        result = state.result()
        assert exports(result) == exports(reference)
        assert result.rounds[0].shards == 8 and result.rounds[0].pool_in == 96
        assert list(cluster.by_name(os.getpid)) == ["w1"]
        assert unfinished_runs(state.state_details.flow_run_id) == []
        with get_client(sync_client=True) as client:
            tree = flow_run_tree(client, state.state_details.flow_run_id)
            (round_run,) = [f for f in tree if f.name == "round-1"]
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [round_run.id]}))
    shard_runs = sorted(t.name for t in runs if t.name.startswith("evolve-"))
    assert shard_runs == [f"evolve-r1-s{i:05d}" for i in range(8)]  # the killed shard re-ran under its own task run


def test_worker_joining_mid_round_takes_shards(prefect_server, cluster_factory, tmp_path):
    """One worker holds its first shard at a gate until a second worker has joined and taken a shard of its own."""
    gate = tmp_path / "gate"
    cluster = cluster_factory(1, gate=gate)
    first_pid = cluster.by_name(os.getpid)["w0"]
    joined = threading.Event()

    def join_while_busy() -> None:
        import time

        try:
            deadline = time.monotonic() + 300
            while cluster.items_done(first_pid) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)  # w0 is inside its first shard, held at the gate
            cluster.add_worker("w1")
            while time.monotonic() < deadline:
                if any(p.stem != str(first_pid) and p.read_text() for p in cluster.log_dir.glob("*.log")):
                    joined.set()  # w1 is inside a shard of this round too
                    return
                time.sleep(0.05)
        finally:
            gate.touch()  # never leave the round held

    joiner = threading.Thread(target=join_while_busy, daemon=True)
    with prefect_api(prefect_server):
        reference = evol_instruct(make_config(tmp_path / "embedded", None))
        joiner.start()
        result = evol_instruct(make_config(tmp_path / "cluster", cluster.address))
        joiner.join()
    assert joined.is_set()
    assert exports(result) == exports(reference)
    assert result.rounds[0].shards == 8 and result.rounds[0].pool_in == 96
    done = cluster.by_name(shards_done)
    assert sorted(done) == ["w0", "w1"] and done["w1"] >= 1, done
    assert done["w0"] + done["w1"] == 8  # every shard ran once, on one worker or the other
