"""DuckDB connections that read Parquet shards on every kind of location.

DuckDB's own httpfs extension is not used (it is downloaded at run time, which an offline
machine can't do): the s3fs and memory filesystems are registered with DuckDB instead."""

from __future__ import annotations

import duckdb

from storage.uri import StorageSettings, filesystem_for, protocol_of


def connect(*uris: str, settings: StorageSettings | None = None,
            threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection able to read the given locations."""
    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    for proto, uri in {protocol_of(uri): uri for uri in uris}.items():  # one filesystem per protocol
        if proto != "file":
            con.register_filesystem(filesystem_for(uri, settings))
    return con


def sql_list(uris: list[str]) -> str:
    if not uris:
        raise ValueError("no shards to read")
    quoted = ", ".join("'" + u.replace("'", "''") + "'" for u in uris)
    return f"[{quoted}]"


def read_parquet_sql(uris: list[str]) -> str:
    return f"read_parquet({sql_list(uris)})"
