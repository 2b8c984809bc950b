"""Stage markers: the one record of what a stage produced and from what.

A stage marker (``_ingest.json``, ``_round.json``, ...) holds the stage's key, its summary and
the shards it wrote (URI, rows, SHA-256). It is written after all of them; a stage counts as done only
when its marker's key is the key asked for and every shard it names still matches.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from storage.shards import ShardCorrupt, verify_shard, write_file_atomic
from storage.uri import StorageSettings, resolve


class ShardRef(BaseModel):
    """A committed shard as a stage hands it on: where it is, its rows and its SHA-256."""

    uri: str
    rows: int
    sha256: str

    @classmethod
    def of(cls, marker: dict[str, Any]) -> ShardRef:
        return cls(uri=marker["uri"], rows=marker["rows"], sha256=marker["sha256"])


class StageMismatch(RuntimeError):
    """A stage's input does not add up with what its upstream stage recorded."""


def total_rows(refs: list[ShardRef]) -> int:
    return sum(r.rows for r in refs)


def read_stage(uri: str, key: str, settings: StorageSettings | None = None,
               problems: list[str] | None = None) -> dict[str, Any] | None:
    """The stage marker at ``uri`` when it was written under ``key`` and all its shards verify, else None.

    Why a marker was not accepted is appended to ``problems`` (a shard that fails its check names its URI).
    """
    fs, path = resolve(uri, settings)
    problems = [] if problems is None else problems
    try:
        record = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except ValueError as err:
        problems.append(f"{uri}: unreadable ({err})")
        return None
    if record.get("key") != key:
        return None
    for refs in record.get("outputs", {}).values():
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
    record = {"key": key, "summary": summary,
              "outputs": {name: [r.model_dump() for r in refs] for name, refs in outputs.items()}}
    write_file_atomic(uri, json.dumps(record, indent=2).encode(), settings)


def stage_refs(record: dict[str, Any], name: str) -> list[ShardRef]:
    """The shards a stage marker names under ``name``."""
    return [ShardRef.model_validate(r) for r in record["outputs"][name]]
