"""Parquet shards with atomic commit.

A shard is visible under its final name only once complete, and a marker written after it says
that it is done. Readers and reruns trust only shards that have their marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from storage.schema import RECORD_SCHEMA
from storage.uri import StorageSettings, join_uri, resolve

MARKER_SUFFIX = ".done"


class ShardWriter:
    """Write one Parquet shard; commit it on a clean exit, leave nothing behind on an error.

    Rows go to a local temporary file first (fsspec's own file ``__exit__`` would commit
    partial data on an exception); the finished file is then moved (local) or uploaded in one
    request (S3, memory) to its final name, and the ``.done`` marker is written last.
    """

    def __init__(self, uri: str, schema: pa.Schema = RECORD_SCHEMA, settings: StorageSettings | None = None):
        self.uri = uri
        self.schema = schema
        self.fs, self.path = resolve(uri, settings)
        self.rows = 0
        self._local = isinstance(self.fs, LocalFileSystem)
        if self._local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp_dir = os.path.dirname(self.path)
        else:
            tmp_dir = None
        fd, self._tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.", suffix=".tmp", dir=tmp_dir)
        os.close(fd)
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._tmp, schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        """Append a table (cast to the shard's schema)."""
        assert self._writer is not None, "writer already closed"
        table = table.select(self.schema.names).cast(self.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> dict[str, Any]:
        """Publish the shard under its final name, then its marker; returns the marker."""
        assert self._writer is not None, "writer already closed"
        self._writer.close()
        self._writer = None
        digest = _file_sha256(self._tmp)
        if self._local:
            os.replace(self._tmp, self.path)
        else:
            self.fs.put_file(self._tmp, self.path)
            os.unlink(self._tmp)
        marker = {"rows": self.rows, "sha256": digest, "uri": self.uri}
        self.fs.pipe_file(self.path + MARKER_SUFFIX, json.dumps(marker).encode())
        return marker

    def abort(self) -> None:
        """Drop everything written so far."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_shard(
    uri: str, table: pa.Table, schema: pa.Schema = RECORD_SCHEMA, settings: StorageSettings | None = None
) -> dict[str, Any]:
    """Write a whole table as one committed shard; returns its marker (rows, sha256)."""
    with ShardWriter(uri, schema, settings) as writer:
        writer.write(table)
    return read_marker(uri, settings)


def read_marker(uri: str, settings: StorageSettings | None = None) -> dict[str, Any]:
    """The commit marker of a shard; raises FileNotFoundError when the shard is not committed."""
    fs, path = resolve(uri, settings)
    return json.loads(fs.cat_file(path + MARKER_SUFFIX))


def is_committed(uri: str, settings: StorageSettings | None = None) -> bool:
    """Whether the shard and its marker are both there."""
    fs, path = resolve(uri, settings)
    return fs.exists(path + MARKER_SUFFIX) and fs.exists(path)


def read_shard(uri: str, settings: StorageSettings | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read a committed shard."""
    fs, path = resolve(uri, settings)
    if not fs.exists(path + MARKER_SUFFIX):
        raise FileNotFoundError(f"shard {uri} is not committed (no {MARKER_SUFFIX} marker)")
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def list_committed_shards(dir_uri: str, settings: StorageSettings | None = None) -> list[str]:
    """URIs of the committed ``shard-*.parquet`` files in a folder, in name order."""
    fs, path = resolve(dir_uri, settings)
    if not fs.exists(path):
        return []
    names = sorted(
        os.path.basename(p) for p in fs.ls(path, detail=False) if os.path.basename(p).startswith("shard-")
    )
    present = set(names)
    return [
        join_uri(dir_uri, name)
        for name in names
        if name.endswith(".parquet") and name + MARKER_SUFFIX in present
    ]


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard-{index:05d}.parquet"


def write_file_atomic(uri: str, data: bytes, settings: StorageSettings | None = None) -> str:
    """Write a whole file so that it appears complete or not at all; returns its SHA-256."""
    fs, path = resolve(uri, settings)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        fs.pipe_file(path, data)  # one PUT: S3 shows the object only once complete
    return hashlib.sha256(data).hexdigest()
