"""Stage markers: the one record of what a stage produced and from what.

A stage marker (``_ingest.json``, ``_round.json``, ...) holds the stage's key, its summary and
the shards it wrote (URI, rows, SHA-256). It is written after all of them; a stage counts as done only
when its marker's key is the key asked for and every shard it names still matches.

Every marker sits one folder below its run folder (``{run}/round=1/_round.json``) and names the run's own files
relative to that run folder (``./round=1/pool/shard-00000.parquet``), so a copied or moved run folder verifies and
reuses its own files. A marker of an older version names them by absolute URIs: accepted while they lie in the
marker's run folder, else not reused (the folder was moved or copied) and recomputed, with the reason."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from storage.redact import map_strings, redact_text
from storage.shards import ShardCorrupt, verify_shard, write_file_atomic
from storage.uri import StorageSettings, join_uri, resolve

RELATIVE = "./"  # a marker's string that starts with it is a path relative to the marker's run folder


class ShardRef(BaseModel):
    uri: str
    rows: int
    sha256: str

    @classmethod
    def of(cls, marker: dict[str, Any], uri: str | None = None) -> ShardRef:
        """The reference of a shard from its ``.done`` marker; ``uri``: where the shard is now (a moved run folder's
        markers keep the URI they were written at)."""
        return cls(uri=uri or marker["uri"], rows=marker["rows"], sha256=marker["sha256"])


class StageMismatch(RuntimeError):
    """A stage's input does not add up with what its upstream stage recorded."""


def total_rows(refs: list[ShardRef]) -> int:
    return sum(r.rows for r in refs)


def run_folder_of(marker_uri: str) -> str:
    """The run folder of a stage marker (``{run}/{folder}/_{stage}.json``)."""
    return marker_uri.rsplit("/", 2)[0]


def relative_to_run(value: Any, run_uri: str) -> Any:
    """``value`` (JSON: a string, a list, a dict) with every URI inside ``run_uri`` written relative to it."""
    inside = run_uri.rstrip("/") + "/"
    return map_strings(value, lambda s: RELATIVE + s[len(inside):] if s.startswith(inside) else s)


def absolute_in_run(value: Any, run_uri: str) -> Any:
    """The inverse of :func:`relative_to_run`: relative paths joined onto ``run_uri`` (where the folder is now)."""
    return map_strings(value, lambda s: join_uri(run_uri, s[len(RELATIVE):]) if s.startswith(RELATIVE) else s)


def load_marker(uri: str, key: str, settings: StorageSettings | None = None,
                problems: list[str] | None = None) -> dict[str, Any] | None:
    """The marker at ``uri`` written under ``key``, its paths made absolute in the marker's run folder, else None
    (a marker that can't be read is said in ``problems``)."""
    fs, path = resolve(uri, settings)
    try:
        record = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except ValueError as err:
        (problems if problems is not None else []).append(f"{uri}: unreadable ({err})")
        return None
    if record.get("key") != key:
        return None
    return absolute_in_run(record, run_folder_of(uri))


def moved_folder_problem(marker_uri: str, uris: list[str]) -> str | None:
    """Why a marker is not reused when it names a file outside its run folder (an older marker of a moved or copied
    folder names the original's files), else None."""
    run_uri = run_folder_of(marker_uri)
    outside = next((u for u in uris if not u.startswith(run_uri + "/")), None)
    if outside is None:
        return None
    return (f"{marker_uri} names {outside}, outside its run folder {run_uri} (the folder was moved or copied, and "
            "the marker is older than relative paths): recomputing the stage from this folder's files")


def read_stage(uri: str, key: str, settings: StorageSettings | None = None,
               problems: list[str] | None = None) -> dict[str, Any] | None:
    """The stage marker at ``uri`` when it was written under ``key`` and all its shards verify, else None.

    Why a marker was not accepted is appended to ``problems`` (a shard that fails its check names its URI)."""
    problems = [] if problems is None else problems
    record = load_marker(uri, key, settings, problems)
    if record is None:
        return None
    refs = [ref for refs in record.get("outputs", {}).values() for ref in refs]
    moved = moved_folder_problem(uri, [ref["uri"] for ref in refs])
    if moved:
        problems.append(moved)
        return None
    for ref in refs:
        try:
            verify_shard(ref["uri"], settings, expected=ref)
        except ShardCorrupt as err:
            problems.append(str(err))
            return None
    return record


def write_stage(uri: str, key: str, summary: dict[str, Any], outputs: dict[str, list[ShardRef]],
                settings: StorageSettings | None = None) -> None:
    """Record a finished stage; call it after every shard it names is committed."""
    write_marker(uri, {"key": key, "summary": summary,
                       "outputs": {name: [r.model_dump() for r in refs] for name, refs in outputs.items()}}, settings)


def write_marker(uri: str, record: dict[str, Any], settings: StorageSettings | None = None) -> None:
    """Write a stage marker, the run folder's own files named relative to it, any secret in a URL masked."""
    record = map_strings(relative_to_run(record, run_folder_of(uri)), redact_text)
    write_file_atomic(uri, json.dumps(record, indent=2).encode(), settings)
