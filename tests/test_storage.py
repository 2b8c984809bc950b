"""Shard round trips, atomic commit and DuckDB over local, memory:// and s3:// locations."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from storage import (
    RECORD_SCHEMA,
    RunLayout,
    ShardCorrupt,
    ShardWriter,
    duck_connect,
    is_committed,
    list_committed_shards,
    read_parquet_sql,
    read_shard,
    resolve,
    write_shard,
)
from storage.schema import records_table


def make_rows(n: int, round_index: int = 0) -> list[dict]:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        {"id": f"id{i:04d}", "root_id": f"id{i:04d}", "round": round_index, "operation": "seed",
         "instruction": f"Instruction number {i}", "input": "",
         "content_key": f"instruction number {i}", "status": "seed",
         "prompt_tokens": i, "completion_tokens": 2 * i, "created_at": now}
        for i in range(n)
    ]


@pytest.fixture(params=["local", "memory", pytest.param("s3", marks=pytest.mark.s3)])
def root(request, tmp_path, memory_root):
    if request.param == "local":
        return str(tmp_path / "runs")
    if request.param == "memory":
        return memory_root
    return request.getfixturevalue("s3_bucket") + "/runs"


def test_round_trip_and_duckdb(root):
    layout = RunLayout(root, "run-a")
    uris = [layout.shard(1, "evolved", i) for i in range(3)]
    for i, uri in enumerate(uris):
        marker = write_shard(uri, records_table(make_rows(10 + i)))
        assert marker["rows"] == 10 + i
        assert len(marker["sha256"]) == 64
    assert list_committed_shards(layout.stage_dir(1, "evolved")) == uris
    back = read_shard(uris[1])
    assert back.schema == RECORD_SCHEMA
    assert back.num_rows == 11
    assert back.column("instruction").to_pylist()[3] == "Instruction number 3"
    con = duck_connect(root)
    total, tokens = con.execute(
        f"SELECT count(*), sum(completion_tokens) FROM {read_parquet_sql(uris)}"
    ).fetchone()
    assert total == 33
    assert tokens == 2 * (sum(range(10)) + sum(range(11)) + sum(range(12)))


def test_failed_write_leaves_nothing(root):
    uri = RunLayout(root, "run-b").shard(1, "evolved", 0)
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(uri) as writer:
            writer.write(records_table(make_rows(5)))
            raise RuntimeError("boom")
    fs, path = resolve(uri)
    assert not fs.exists(path)
    assert not fs.exists(path + ".done")
    assert not is_committed(uri)
    assert list_committed_shards(RunLayout(root, "run-b").stage_dir(1, "evolved")) == []


def test_uncommitted_shard_is_not_listed_or_read(tmp_path):
    uri = RunLayout(str(tmp_path), "r").shard(0, "pool", 0)
    write_shard(uri, records_table(make_rows(2)))
    fs, path = resolve(uri)
    fs.rm(path + ".done")
    assert list_committed_shards(RunLayout(str(tmp_path), "r").stage_dir(0, "pool")) == []
    with pytest.raises(ShardCorrupt, match="not committed"):
        read_shard(uri)


def test_writer_casts_and_rejects_wrong_schema(tmp_path):
    uri = str(tmp_path / "shard-00000.parquet")
    bad = pa.table({"id": ["x"]})
    with pytest.raises(ValueError, match=r"shard-00000\.parquet has no column root_id, .* \(its columns: id\)$"):
        with ShardWriter(uri) as writer:
            writer.write(bad)
    assert not is_committed(uri)
    assert list(tmp_path.iterdir()) == []


def test_unsupported_protocol():
    with pytest.raises(ValueError, match="unsupported storage location"):
        resolve("gs://bucket/x")
