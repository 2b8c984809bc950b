"""One run per run folder, verified reads, no temp file left on any failure path, ordinary permissions."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.evol_instruct import evol_instruct
from storage import RunLayout, ShardCorrupt, StageMismatch, read_shard, resolve, write_shard
from storage.lease import LeaseHeld, RunLease
from storage.schema import records_table
from storage.shards import ShardWriter, sweep_temp_files
from tasks.core.config import parse_run_config
from tasks.core.context import run_layout
from tests.flow_script import load_seeds
from tests.test_storage import make_rows


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- the lease -------------------------------------------------------------------------------------------

def test_a_second_run_on_a_live_folder_fails_at_once_saying_who_holds_it(tmp_path):
    with RunLease(str(tmp_path / "run"), purpose="flow run A"):
        with pytest.raises(LeaseHeld, match=rf"in use by flow run A \(pid {os.getpid()} on {socket.gethostname()}, "
                                            r"since 20\d\d-.*--take-over"):
            RunLease(str(tmp_path / "run")).acquire()
    assert not (tmp_path / "run" / "_lease.json").exists()  # released


def test_a_lease_left_by_a_dead_process_or_expired_is_taken_over(tmp_path):
    lease_file = tmp_path / "run" / "_lease.json"
    lease_file.parent.mkdir()
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    dead = {"holder": "x", "host": socket.gethostname(), "pid": dead_pid(), "pid_start": "1", "started": "t",
            "expires": soon}
    lease_file.write_text(json.dumps(dead))
    with RunLease(str(tmp_path / "run")) as lease:
        assert lease.previous == dead
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    lease_file.write_text(json.dumps({**dead, "host": "elsewhere", "expires": past}))
    with RunLease(str(tmp_path / "run")) as lease:
        assert lease.previous["host"] == "elsewhere"
    live = {**dead, "host": "elsewhere", "expires": soon}
    lease_file.write_text(json.dumps(live))
    with pytest.raises(LeaseHeld, match="on elsewhere"):
        RunLease(str(tmp_path / "run")).acquire()
    with RunLease(str(tmp_path / "run"), take_over=True) as lease:  # --take-over
        assert lease.previous == live


def test_the_lease_is_renewed_while_the_run_lives(tmp_path):
    """Renewals (every ttl/3) replace the file whole: every read in between sees this holder, never a torn file."""
    with RunLease(str(tmp_path / "run"), ttl_s=0.3) as lease:
        holders, expiries = set(), set()
        for _ in range(500_000):  # a bound on reads, not a time: stops after five renewals
            record = lease.read()
            holders.add(record["holder"])
            expiries.add(record["expires"])
            if len(expiries) > 5:
                break
        assert len(expiries) > 5 and holders == {lease.record["holder"]}


@pytest.mark.s3
def test_the_lease_is_exclusive_on_s3(s3_bucket, s3_settings):
    run = f"{s3_bucket}/runs/r"
    with RunLease(run, settings=s3_settings):
        with pytest.raises(LeaseHeld):
            RunLease(run, settings=s3_settings).acquire()
    with RunLease(run, settings=s3_settings):
        pass


def test_evol_run_refuses_a_folder_another_run_holds(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps(s) for s in load_seeds(n=4)) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "held", "seeds": str(seeds), "output_root": str(tmp_path / "runs"),
                                      "rounds": 1, "llm": {"backend": "scripted", "model": "demo"}}))
    with RunLease(str(tmp_path / "runs" / "held"), purpose="flow run B"):
        result = CliRunner().invoke(app, ["run", str(config), "--no-progress"])
    assert result.exit_code == 2
    assert "in use by flow run B" in result.output and "--take-over" in result.output
    assert not (tmp_path / "runs" / "held" / "round=0").exists()


def test_the_flow_itself_holds_the_lease(prefect_harness, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps(s) for s in load_seeds(n=4)) + "\n")
    config = parse_run_config({"name": "held", "seeds": str(seeds), "output_root": str(tmp_path / "runs"),
                               "rounds": 1, "llm": {"backend": "scripted", "model": "demo"}})
    with RunLease(run_layout(config).run_uri, purpose="flow run C"):
        state = evol_instruct(config, return_state=True)
        assert state.is_failed()
        with pytest.raises(LeaseHeld, match="in use by flow run C"):
            state.result()
    assert evol_instruct(config).rounds[0].pool_in == 4


# --- verified reads and upstream accounting ---------------------------------------------------------------

def test_a_truncated_shard_is_named_and_treated_as_not_committed(tmp_path):
    uri = str(tmp_path / "shard-00000.parquet")
    write_shard(uri, records_table(make_rows(5)))
    data = Path(uri).read_bytes()
    Path(uri).write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardCorrupt, match=rf"shard {uri} can't be trusted: \d+ bytes, its marker says"):
        read_shard(uri)
    Path(uri).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit changed
    with pytest.raises(ShardCorrupt, match="SHA-256 differs"):
        read_shard(uri)


def small_run(tmp_path, name="safe"):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps(s) for s in load_seeds()) + "\n")
    return parse_run_config({"name": name, "seeds": str(seeds), "output_root": str(tmp_path / "runs"),
                             "rounds": 2, "shard_size": 10, "random_seed": 2,
                             "llm": {"backend": "scripted", "model": "demo"},
                             "orchestration": {"retries": 0, "retry_delay_s": 0}})


def test_lost_markers_and_damaged_shards_are_recomputed_not_dropped(prefect_harness, tmp_path):
    config = small_run(tmp_path)
    first = evol_instruct(config)
    layout = run_layout(config)
    fs, evolved = resolve(layout.shard(1, "evolved", 0))
    fs.rm(evolved + ".done")  # an evolved shard loses its marker
    pool = resolve(layout.shard(1, "pool", 1))[1]
    Path(pool).write_bytes(Path(pool).read_bytes()[:100])  # a pool shard is truncated
    cand = resolve(layout.shard(2, "candidates", 0))[1]
    Path(cand).write_bytes(Path(cand).read_bytes()[:-10])  # a candidates shard is truncated
    again = evol_instruct(config)
    assert [r.evolved for r in again.rounds] == [r.evolved for r in first.rounds]
    assert not again.rounds[0].reused and again.rounds[0].shards_reused == 2  # round 1 re-finished from candidates
    assert again.rounds[1].shards_reused == 1  # round 2's damaged candidates shard recomputed
    assert again.mix.final == first.mix.final and again.export.sha256 == first.export.sha256


def test_upstream_accounting_that_does_not_add_up_stops_the_run(prefect_harness, tmp_path):
    config = small_run(tmp_path, "books")
    evol_instruct(config)
    marker = Path(run_layout(config).file("round=0", "_ingest.json"))
    record = json.loads(marker.read_text())
    record["summary"]["accepted"] += 1  # the ingest summary claims a row its shards do not hold
    marker.write_text(json.dumps(record))
    state = evol_instruct(config, return_state=True)
    assert state.is_failed()
    with pytest.raises(StageMismatch, match=r"round 1: its input shards hold 20 rows, the stage before it recorded "
                                            r"21: \[.*shard-00000.parquet"):
        state.result()


# --- failure paths and permissions ------------------------------------------------------------------------

def shared_tmp() -> Path:
    return Path(tempfile.gettempdir()) / "evol-tmp"


def test_a_failed_upload_leaves_no_temp_file(memory_root, monkeypatch):
    uri = f"{memory_root}/shard-00000.parquet"
    writer = ShardWriter(uri)
    tmp = writer._tmp
    assert Path(tmp).parent == shared_tmp() and Path(tmp).exists()
    writer.write(records_table(make_rows(3)))

    def broken_put(*args, **kwargs):
        raise ConnectionError("upload refused")

    monkeypatch.setattr(writer.fs, "put_file", broken_put)
    with pytest.raises(ConnectionError):
        with writer:
            pass
    assert not Path(tmp).exists()
    assert not writer.fs.exists(resolve(uri)[1]) and not writer.fs.exists(resolve(uri)[1] + ".done")


def test_a_failed_local_publish_leaves_no_temp_file(tmp_path, monkeypatch):
    uri = str(tmp_path / "d" / "shard-00000.parquet")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_shard(uri, records_table(make_rows(3)))
    assert list((tmp_path / "d").iterdir()) == []


def test_sweep_removes_leftovers_of_dead_writers_only(tmp_path):
    run = tmp_path / "run" / "round=0" / "pool"
    run.mkdir(parents=True)
    (run / ".shard-00000.parquet.123.abcd.tmp").write_bytes(b"x")
    shared_tmp().mkdir(exist_ok=True)
    dead = shared_tmp() / f".shard-00000.parquet.{dead_pid()}.dead.tmp"
    live = shared_tmp() / f".shard-00000.parquet.{os.getpid()}.live.tmp"
    dead.write_bytes(b"x")
    live.write_bytes(b"x")
    try:
        removed = sweep_temp_files(str(tmp_path / "run"))
        assert sorted(Path(p).name for p in removed) == sorted([".shard-00000.parquet.123.abcd.tmp", dead.name])
        assert live.exists() and not dead.exists()
    finally:
        live.unlink(missing_ok=True)


def test_shards_get_the_same_permissions_as_any_other_file(tmp_path):
    old = os.umask(0o022)
    try:
        layout = RunLayout(str(tmp_path), "r")
        write_shard(layout.shard(0, "pool", 0), records_table(make_rows(2)))
        other = tmp_path / "other.txt"
        other.write_text("x")
        for path in (resolve(layout.shard(0, "pool", 0))[1], resolve(layout.shard(0, "pool", 0))[1] + ".done"):
            assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(other.stat().st_mode) == 0o644
    finally:
        os.umask(old)
