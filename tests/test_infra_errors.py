"""Infrastructure failures in one line, exit 2 (issue 25): storage that does not answer (its URI and the first cause),
a full disk (the path), a run folder lost to a run that started at the same time (the message a later start gets)."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from storage.errors import DiskFull, StorageUnreachable, check_reachable, infrastructure_message, naming_path
from storage.lease import held_message
from storage.shards import write_file_atomic
from storage.uri import StorageSettings
from tasks.runtime.cancel import drain
from tests.conftest import free_port
from tests.flow_script import load_seeds

BIN = Path(sys.executable).parent


def write_config(tmp_path: Path, **keys) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"name": "infra", "rounds": 1, "llm": {"backend": "scripted", "model": "demo"},
                                    **keys}))
    return path


def local_config(tmp_path: Path) -> Path:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps(s) for s in load_seeds(n=6)) + "\n")
    return write_config(tmp_path, seeds=str(seeds), output_root=str(tmp_path / "runs"))


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EVOL_STORAGE__")}
    return subprocess.run(args, env={**base, "PREFECT_API_URL": "", "PREFECT_HOME": str(tmp_path / "ph"), **env},
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent)


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.strip()]


def test_an_s3_endpoint_that_does_not_answer_is_one_line_naming_the_uri_and_the_cause(tmp_path):
    port = free_port()  # nothing listens there
    config = write_config(tmp_path, seeds="s3://seeds-bucket/seeds.jsonl", output_root="s3://out-bucket/runs")
    done = run([str(BIN / "evol"), "run", str(config), "--no-progress"], tmp_path,
               EVOL_STORAGE__ENDPOINT_URL=f"http://127.0.0.1:{port}", EVOL_STORAGE__KEY="k", EVOL_STORAGE__SECRET="s")
    assert done.returncode == 2
    assert done.stdout == ""
    assert error_lines(done) == [
        f"error: {config}: seeds: storage unreachable: s3://seeds-bucket/seeds.jsonl (endpoint "
        f"http://127.0.0.1:{port}): ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', {port})"]


def test_check_reachable_passes_a_live_endpoint_and_a_missing_bucket(s3_settings):
    check_reachable("s3://no-such-bucket-here/x.jsonl", s3_settings)  # an answer, even a no
    check_reachable("/tmp/anything")
    dead = StorageSettings(endpoint_url=f"http://127.0.0.1:{free_port()}", key="k", secret="s")
    with pytest.raises(StorageUnreachable, match=r"^storage unreachable: s3://b/runs \(endpoint http://127"):
        check_reachable("s3://b/runs", dead)


def test_storage_lost_mid_run_is_said_in_one_line_naming_the_run_folder():
    from storage.uri import filesystem_for

    port = free_port()
    dead = StorageSettings(endpoint_url=f"http://127.0.0.1:{port}", key="k", secret="s")
    try:
        filesystem_for("s3://b", dead).cat_file("b/runs/r/round=1/_round.json")
    except Exception as err:  # what a stage meets when the endpoint dies under it
        lost = err
    assert infrastructure_message(lost, "s3://b/runs/r", dead) == (
        f"storage unreachable: s3://b/runs/r (endpoint http://127.0.0.1:{port}): ConnectionRefusedError: "
        f"[Errno 111] Connect call failed ('127.0.0.1', {port})")


def test_a_full_disk_names_the_path(tmp_path, monkeypatch):
    target = str(tmp_path / "run" / "config.json")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("storage.shards.os.replace", full)
    with pytest.raises(DiskFull) as caught:
        with naming_path(target):
            full()
    assert str(caught.value) == f"no space left on the device writing {target}" and caught.value.errno == errno.ENOSPC
    with pytest.raises(OSError, match="No space left"):
        write_file_atomic(target, b"{}")  # os.replace is not a write: the original error goes on
    assert infrastructure_message(OSError(errno.ENOSPC, "No space left on device", "/x/y"), "/x") == \
        "no space left on the device writing /x/y"
    assert infrastructure_message(ValueError("data"), "/x") is None


@pytest.mark.server  # a whole `evol run` with its local Prefect API
def test_evol_run_on_a_full_disk_is_one_line_naming_the_shard(tmp_path):
    config = local_config(tmp_path)
    done = run([sys.executable, "-m", "tests.infra_driver", "enospc", str(config)], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    shard = tmp_path / "runs" / "infra" / "round=0" / "pool" / "shard-00000.parquet"
    assert error_lines(done) == [f"error: no space left on the device writing {shard}"]
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.server  # a whole `evol run` with its local Prefect API
def test_a_lease_lost_to_a_run_started_at_the_same_time_says_what_a_later_start_says(tmp_path):
    config, record = local_config(tmp_path), tmp_path / "lease.json"
    done = run([sys.executable, "-m", "tests.infra_driver", "race", str(config), str(record)], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    lease = json.loads(record.read_text())
    assert error_lines(done) == ["error: " + held_message(str(tmp_path / "runs" / "infra"), lease)]
    assert "LeaseHeld" not in done.stdout + done.stderr
    assert len(list((tmp_path / "runs" / "infra" / "logs").glob(f"run-*-{lease['pid']}.log"))) == 1  # its own log


def test_a_drain_with_a_backlog_prints_no_chatter_and_keeps_real_warnings(caplog):
    """On a busy machine Prefect's queue services warn "Still processing items" while a drain works through its
    backlog: that line once made a one-line error two lines. The drain drops only that record."""

    class StandInWorker:
        drained = 0

        @classmethod
        def drain_all(cls, timeout, at_exit):
            service_logger = logging.getLogger(cls.__name__)
            service_logger.warning("Still processing items: 3 items remaining...")
            service_logger.warning("Service 'StandInWorker' queue is full (10 items), dropping item")
            cls.drained += 1

    with caplog.at_level(logging.INFO):
        drain([StandInWorker], timeout_s=1.0)
        logging.getLogger("StandInWorker").warning("Still processing items: after the drain")
    assert StandInWorker.drained == 1
    assert [r.getMessage() for r in caplog.records] == [
        "Service 'StandInWorker' queue is full (10 items), dropping item", "Still processing items: after the drain"]
