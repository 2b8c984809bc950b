"""Storage: URIs over fsspec, the run layout, Parquet shards with atomic commit and verified reads, stage
markers, the run lease, DuckDB over any URI."""

from storage.duck import connect as duck_connect
from storage.duck import read_parquet_sql
from storage.layout import RunLayout
from storage.schema import RECORD_SCHEMA, REJECTED_INPUT_SCHEMA
from storage.shards import (
    ShardCorrupt,
    ShardWriter,
    is_committed,
    list_committed_shards,
    read_shard,
    verify_shard,
    write_shard,
)
from storage.stages import ShardRef, StageMismatch, read_stage, total_rows, write_stage
from storage.uri import StorageSettings, join_uri, resolve

__all__ = ["RECORD_SCHEMA", "REJECTED_INPUT_SCHEMA", "RunLayout", "ShardCorrupt", "ShardRef", "ShardWriter",
           "StageMismatch", "StorageSettings", "duck_connect", "is_committed", "join_uri", "list_committed_shards",
           "read_parquet_sql", "read_shard", "read_stage", "resolve", "total_rows", "verify_shard", "write_shard",
           "write_stage"]
