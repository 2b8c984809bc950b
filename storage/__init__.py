"""Storage: URIs over fsspec, the run layout, Parquet shards with atomic commit, DuckDB over any URI."""

from storage.duck import connect as duck_connect
from storage.duck import read_parquet_sql
from storage.layout import RunLayout
from storage.schema import RECORD_SCHEMA, REJECTED_INPUT_SCHEMA
from storage.shards import ShardWriter, is_committed, list_committed_shards, read_shard, write_shard
from storage.uri import StorageSettings, join_uri, resolve

__all__ = [
    "RECORD_SCHEMA",
    "REJECTED_INPUT_SCHEMA",
    "RunLayout",
    "duck_connect",
    "read_parquet_sql",
    "ShardWriter",
    "StorageSettings",
    "is_committed",
    "join_uri",
    "list_committed_shards",
    "read_shard",
    "resolve",
    "write_shard",
]
