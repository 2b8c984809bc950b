"""Parquet shards with atomic commit and verified reads.

A shard is visible under its final name only once complete, and a marker written after it records its
rows, size, SHA-256 and the key of the stage that wrote it. Readers trust a shard only when it matches
its marker; a shard that does not is reported with its URI and counts as not committed."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from storage import faults
from storage.errors import naming_path
from storage.schema import RECORD_SCHEMA, require_columns
from storage.uri import StorageSettings, join_uri, resolve, strip_protocol

MARKER_SUFFIX = ".done"
TMP_SUFFIX = ".tmp"


class ShardCorrupt(RuntimeError):
    """A committed shard does not match its marker (missing, truncated, changed, unreadable)."""

    def __init__(self, uri: str, why: str):
        super().__init__(f"shard {uri} can't be trusted: {why}; a rerun recomputes it")
        self.uri, self.why = uri, why


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` is not thread-safe to probe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def local_temp_path(final_path: str, local_dir: str | None) -> str:
    """A temp file next to ``final_path`` (local) or in the system temp folder (remote); the pid in its name
    lets a later run tell a dead writer's leftovers from a live one's."""
    folder = local_dir or os.path.join(tempfile.gettempdir(), "evol-tmp")
    os.makedirs(folder, exist_ok=True)
    name = f".{os.path.basename(final_path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    path = os.path.join(folder, name)
    # Same permissions as any other file the process writes (mkstemp would give 0600).
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_umask())
    os.close(fd)
    return path


class ShardWriter:
    """Write one Parquet shard; commit it on a clean exit, leave nothing behind on any error.

    Rows go to a local temporary file first; the finished file is then moved (local) or uploaded in
    one request (S3, memory) to its final name, and the ``.done`` marker is written last."""

    def __init__(self, uri: str, schema: pa.Schema = RECORD_SCHEMA, settings: StorageSettings | None = None,
                 key: str | None = None):
        self.uri, self.schema, self.key = uri, schema, key
        self.fs, self.path = resolve(uri, settings)
        self.rows = 0
        self._local = isinstance(self.fs, LocalFileSystem)
        if self._local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._tmp = local_temp_path(self.path, os.path.dirname(self.path) if self._local else None)
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._tmp, schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        assert self._writer is not None, "writer already closed"
        require_columns(table, self.schema.names, f"a table written to {self.uri}")
        table = table.select(self.schema.names).cast(self.schema)
        with naming_path(self.uri):
            self._writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> dict[str, Any]:
        """Publish the shard under its final name, then its marker; returns the marker."""
        assert self._writer is not None, "writer already closed"
        try:
            with naming_path(self.uri):
                self._writer.close()
            self._writer = None
            digest, size = file_sha256(self._tmp), os.path.getsize(self._tmp)
            faults.checkpoint(f"shard-before-publish {self.uri}")
            if self.fs.exists(self.path + MARKER_SUFFIX):  # it must not vouch for the new file while it is replaced
                self.fs.rm_file(self.path + MARKER_SUFFIX)
            with naming_path(self.uri):
                if self._local:
                    os.replace(self._tmp, self.path)
                else:
                    self.fs.put_file(self._tmp, self.path)
                    os.unlink(self._tmp)
            faults.checkpoint(f"shard-before-marker {self.uri}")
            marker = {"rows": self.rows, "size": size, "sha256": digest, "uri": self.uri, "key": self.key,
                      "written_at": datetime.now(UTC).isoformat()}
            write_file_atomic(self.uri + MARKER_SUFFIX, json.dumps(marker).encode(), fs=self.fs)
            return marker
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop everything written so far (a no-op once committed)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._writer is not None:
            self.commit()
        else:
            self.abort()


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_shard(uri: str, table: pa.Table, schema: pa.Schema = RECORD_SCHEMA,
                settings: StorageSettings | None = None, key: str | None = None) -> dict[str, Any]:
    with ShardWriter(uri, schema, settings, key) as writer:
        writer.write(table)
        return writer.commit()


def read_marker(uri: str, settings: StorageSettings | None = None) -> dict[str, Any]:
    """The commit marker of a shard; raises ShardCorrupt when there is none or it can't be read."""
    fs, path = resolve(uri, settings)
    try:
        return json.loads(fs.cat_file(path + MARKER_SUFFIX))
    except FileNotFoundError:
        raise ShardCorrupt(uri, f"no {MARKER_SUFFIX} marker (not committed)") from None
    except ValueError as err:
        raise ShardCorrupt(uri, f"unreadable marker: {err}") from None


def _checked_bytes(uri: str, settings: StorageSettings | None, expected: dict[str, Any] | None) -> tuple[
        bytes, dict[str, Any]]:
    marker = read_marker(uri, settings)
    if expected is not None and marker.get("sha256") != expected.get("sha256"):
        raise ShardCorrupt(uri, "its marker is not the one its stage recorded (rewritten by another run?)")
    fs, path = resolve(uri, settings)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise ShardCorrupt(uri, "the file is missing") from None
    if "size" in marker and len(data) != marker["size"]:
        raise ShardCorrupt(uri, f"{len(data)} bytes, its marker says {marker['size']}")
    if hashlib.sha256(data).hexdigest() != marker["sha256"]:
        raise ShardCorrupt(uri, "its SHA-256 differs from its marker's")
    return data, marker


def verify_shard(uri: str, settings: StorageSettings | None = None,
                 expected: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check a shard against its marker (and the marker against ``expected``); returns the marker."""
    return _checked_bytes(uri, settings, expected)[1]


def committed_marker(uri: str, key: str | None = None, settings: StorageSettings | None = None) -> dict[
        str, Any] | None:
    """The marker of a shard that verifies and was written under ``key`` (when given), else None."""
    try:
        marker = verify_shard(uri, settings)
    except ShardCorrupt:
        return None
    return marker if key is None or marker.get("key") == key else None


def is_committed(uri: str, settings: StorageSettings | None = None) -> bool:
    return committed_marker(uri, None, settings) is not None


def read_shard(uri: str, settings: StorageSettings | None = None, columns: list[str] | None = None,
               expected: dict[str, Any] | None = None) -> pa.Table:
    """Read a committed shard after checking it against its marker; ShardCorrupt names the URI otherwise."""
    data, marker = _checked_bytes(uri, settings, expected)
    try:
        table = pq.read_table(io.BytesIO(data), columns=columns)
    except (pa.ArrowInvalid, OSError) as err:
        raise ShardCorrupt(uri, f"not readable as Parquet: {err}") from None
    if table.num_rows != marker["rows"]:
        raise ShardCorrupt(uri, f"{table.num_rows} rows, its marker says {marker['rows']}")
    return table


def read_shard_unverified(uri: str, settings: StorageSettings | None = None) -> pa.Table:
    """Read a shard without checking it (benchmarks compare against this)."""
    fs, path = resolve(uri, settings)
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def list_committed_shards(dir_uri: str, settings: StorageSettings | None = None) -> list[str]:
    """URIs of the ``shard-*.parquet`` files in a folder that have a marker, in name order (not verified)."""
    fs, path = resolve(dir_uri, settings)
    if not fs.exists(path):
        return []
    names = {os.path.basename(p) for p in fs.ls(path, detail=False)}
    return [join_uri(dir_uri, name) for name in sorted(names)
            if name.startswith("shard-") and name.endswith(".parquet") and name + MARKER_SUFFIX in names]


def remove_shards_except(dir_uri: str, keep: list[str], settings: StorageSettings | None = None) -> list[str]:
    """Remove the shards (and markers) of a folder that a stage's new output no longer names."""
    fs, path = resolve(dir_uri, settings)
    if not fs.exists(path):
        return []
    kept = {os.path.basename(u) for u in keep}
    removed = []
    for p in fs.ls(path, detail=False):
        name = os.path.basename(p)
        base = name[: -len(MARKER_SUFFIX)] if name.endswith(MARKER_SUFFIX) else name
        if name.startswith("shard-") and base not in kept:
            fs.rm_file(p)
            removed.append(join_uri(dir_uri, name))
    return removed


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def write_file_atomic(uri: str, data: bytes, settings: StorageSettings | None = None, fs: Any = None) -> str:
    """Write a whole file so that it appears complete or not at all; returns its SHA-256."""
    fs, path = resolve(uri, settings) if fs is None else (fs, strip_protocol(uri))
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with naming_path(uri):
            tmp = local_temp_path(path, os.path.dirname(path))
        try:
            with naming_path(uri), open(tmp, "wb") as f:
                f.write(data)
            faults.checkpoint(f"file-before-publish {uri}")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        with naming_path(uri):
            fs.pipe_file(path, data)  # one PUT: S3 shows the object only once complete
    return hashlib.sha256(data).hexdigest()


def sweep_temp_files(dir_uri: str, settings: StorageSettings | None = None) -> list[str]:
    """Remove temp files that killed writers left: under ``dir_uri`` (local) and, for any location, in the
    system temp folder when their writer's process is gone. Call it while holding the run's lease."""
    removed = []
    fs, path = resolve(dir_uri, settings)
    if isinstance(fs, LocalFileSystem) and os.path.isdir(path):
        for tmp in Path(path).rglob(f".*{TMP_SUFFIX}"):
            tmp.unlink()
            removed.append(str(tmp))
    shared = os.path.join(tempfile.gettempdir(), "evol-tmp")
    if os.path.isdir(shared):
        for name in os.listdir(shared):
            parts = name.split(".")
            pid = int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None
            if pid is not None and not _pid_alive(pid):
                os.unlink(os.path.join(shared, name))
                removed.append(os.path.join(shared, name))
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        pass
    return True
