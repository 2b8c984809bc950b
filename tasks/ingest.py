"""Seed ingestion: JSON, JSONL, CSV or Parquet in; seed shards and quarantined rows out."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq
from prefect import task
from prefect.states import Completed
from pydantic import BaseModel

from storage import (
    REJECTED_INPUT_SCHEMA,
    RunLayout,
    ShardRef,
    StageMismatch,
    StorageSettings,
    join_uri,
    read_stage,
    resolve,
    total_rows,
    write_shard,
    write_stage,
)
from storage.schema import records_table
from storage.shards import read_marker, remove_shards_except, shard_name
from tasks.core.config import RunConfig
from tasks.core.text import has_lone_surrogate, record_id

TARGET_FIELDS = ("instruction", "input", "output")
USER_ROLES = {"user", "human"}
ASSISTANT_ROLES = {"assistant", "gpt", "model", "bot"}


class IngestError(ValueError):
    """The source as a whole can't be read (unknown format, a JSON array that does not parse)."""


class IngestSummary(BaseModel):
    """What ingestion read, kept and quarantined."""

    source: str
    read: int
    accepted: int
    rejected: dict[str, int]
    duplicates: int
    shards: list[str]
    rejected_uri: str | None
    refs: list[ShardRef] = []
    reused: bool = False
    problems: list[str] = []  # why an earlier ingest of this run folder was not reused


@dataclass
class RawRecord:
    line: int
    raw: str
    value: Any = None
    error: tuple[str, str] | None = None  # (reason, detail) when the row could not be parsed


class Rejection(Exception):
    def __init__(self, reason: str, field: str | None, detail: str):
        super().__init__(detail)
        self.reason, self.field, self.detail = reason, field, detail


def detect_format(uri: str) -> str:
    """``json``, ``jsonl``, ``csv`` or ``parquet`` from the file name."""
    name = uri.lower()
    for suffix, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".csv", "csv"),
                        (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise IngestError(f"{uri}: unknown format; use a .json, .jsonl, .csv or .parquet file")


def iter_raw_records(uri: str, settings: StorageSettings | None = None) -> Iterator[RawRecord]:
    """Every record of the source with its line (JSONL, CSV) or record number (JSON array, Parquet)."""
    fmt = detect_format(uri)
    fs, path = resolve(uri, settings)
    if not fs.exists(path):
        raise IngestError(f"{uri}: no such file")
    if fmt == "parquet":
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        for i, row in enumerate(table.to_pylist(), start=1):
            yield RawRecord(i, json.dumps(row, default=str, ensure_ascii=False), row)
        return
    # surrogateescape keeps invalid UTF-8 bytes visible per row instead of failing the file.
    text = fs.cat_file(path).decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    if fmt == "json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise IngestError(f"{uri}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
        for i, item in enumerate(items, start=1):
            yield RawRecord(i, _safe(json.dumps(item, ensure_ascii=False)), item)
    elif fmt in ("json", "jsonl"):
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield RawRecord(i, _safe(line), json.loads(line))
            except json.JSONDecodeError as err:
                yield RawRecord(i, _safe(line), error=("malformed_json", f"column {err.colno}: {err.msg}"))
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for row in reader:
            yield RawRecord(reader.line_num, _safe(json.dumps(row, ensure_ascii=False)), row)


def _safe(text: str) -> str:
    """Text that can be stored: invalid bytes replaced."""
    return text.encode("utf-8", errors="replace").decode("utf-8") if has_lone_surrogate(text) else text


def _chat_fields(turns: Any) -> dict[str, Any]:
    if not isinstance(turns, list):
        raise Rejection("not_a_list", "messages", "chat turns must be a list")
    out: dict[str, Any] = {}
    for turn in turns:
        if not isinstance(turn, dict):
            continue
        role = str(turn.get("role", turn.get("from", ""))).lower()
        content = turn.get("content", turn.get("value"))
        if role in USER_ROLES and "instruction" not in out:
            out["instruction"] = content
        elif role in ASSISTANT_ROLES and "instruction" in out and "output" not in out:
            out["output"] = content
    return out


def extract_fields(value: Any, field_map: dict[str, str]) -> dict[str, Any]:
    """instruction / input / output from one source record; raises Rejection when unusable."""
    if not isinstance(value, dict):
        raise Rejection("not_an_object", None, f"expected an object, got {type(value).__name__}")
    if field_map:
        fields = {target: value.get(src) for target, src in field_map.items()}
    elif "instruction" in value:
        fields = {k: value.get(k) for k in TARGET_FIELDS}
    elif "messages" in value or "conversations" in value:
        fields = _chat_fields(value.get("messages", value.get("conversations")))
    else:
        fields = {}
    src_name = field_map.get("instruction", "instruction")
    if fields.get("instruction") is None:
        raise Rejection("missing_instruction", src_name, "record has no instruction")
    for target in TARGET_FIELDS:
        v = fields.get(target)
        name = field_map.get(target, target)
        if v is not None and not isinstance(v, str):
            raise Rejection("not_a_string", name, f"{name} is {type(v).__name__}, expected a string")
        if isinstance(v, str) and has_lone_surrogate(v):
            raise Rejection("invalid_utf8", name, f"{name} holds bytes that are not valid UTF-8")
    if not fields["instruction"].strip():
        raise Rejection("empty_instruction", src_name, "instruction is empty or only whitespace")
    return {"instruction": fields["instruction"].strip(), "input": (fields.get("input") or "").strip(),
            "output": fields.get("output")}


def ingest_seeds(
    src: str,
    dest_dir: str,
    rejected_dir: str | None = None,
    shard_size: int = 1000,
    field_map: dict[str, str] | None = None,
    settings: StorageSettings | None = None,
) -> IngestSummary:
    """Read a seed file into committed seed shards; every unusable row is quarantined with its reason."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    unknown = set(field_map or {}) - set(TARGET_FIELDS)
    if unknown:
        raise IngestError(f"field map names unknown target fields {sorted(unknown)}; use {list(TARGET_FIELDS)}")
    rejected_dir = rejected_dir or join_uri(dest_dir, "_rejected")
    seen: dict[str, int] = {}
    pending: list[dict[str, Any]] = []  # rows of the shard being filled; shards are written as they fill
    shards: list[str] = []
    accepted = 0

    def flush() -> None:
        uri = join_uri(dest_dir, shard_name(len(shards)))
        write_shard(uri, records_table(pending), settings=settings)
        shards.append(uri)
        pending.clear()

    rejected: list[dict[str, Any]] = []
    read = 0
    for rec in iter_raw_records(src, settings):
        read += 1
        base = {"source": src, "line": rec.line, "raw": rec.raw, "field": None, "duplicate_of": None}
        if rec.error:
            rejected.append({**base, "reason": rec.error[0], "detail": rec.error[1]})
            continue
        try:
            fields = extract_fields(rec.value, field_map or {})
        except Rejection as rej:
            rejected.append({**base, "reason": rej.reason, "field": rej.field, "detail": rej.detail})
            continue
        rid = record_id(fields["instruction"], fields["input"])
        if rid in seen:
            rejected.append({**base, "reason": "duplicate", "duplicate_of": rid,
                             "detail": f"same normalised text as line {seen[rid]}"})
            continue
        seen[rid] = rec.line
        accepted += 1
        pending.append({
            "id": rid, "root_id": rid, "round": 0, "operation": "seed", "status": "seed",
            "instruction": fields["instruction"], "input": fields["input"], "response": fields["output"],
        })
        if len(pending) == shard_size:
            flush()
    if pending or not shards:
        flush()
    rejected_uri = None
    if rejected:
        rejected_uri = join_uri(rejected_dir, shard_name(0))
        write_shard(rejected_uri, records_table(rejected, REJECTED_INPUT_SCHEMA), REJECTED_INPUT_SCHEMA, settings)
    reasons = Counter(r["reason"] for r in rejected)
    return IngestSummary(source=src, read=read, accepted=accepted, rejected=dict(sorted(reasons.items())),
                         duplicates=reasons.get("duplicate", 0), shards=shards, rejected_uri=rejected_uri)


def ingest_run_seeds(config: RunConfig, layout: RunLayout, key: str, force: bool = False,
                     settings: StorageSettings | None = None) -> IngestSummary:
    """Round 0 of a run: the seed shards. Reused when ``_ingest.json`` was written under ``key`` (the seed
    file's content, field map, shard size, reader) and every shard it names still verifies."""
    marker_uri = layout.file("round=0", "_ingest.json")
    problems: list[str] = []
    record = None if force else read_stage(marker_uri, key, settings, problems)
    if record is not None:
        return IngestSummary.model_validate({**record["summary"], "reused": True})
    pool_dir, rejected_dir = layout.stage_dir(0, "pool"), layout.stage_dir(0, "rejected_input")
    summary = ingest_seeds(config.seeds, pool_dir, rejected_dir, config.shard_size, config.field_map, settings)
    refs = [ShardRef.of(read_marker(uri, settings)) for uri in summary.shards]
    if total_rows(refs) != summary.accepted:
        raise StageMismatch(f"ingest: {summary.accepted} rows accepted but the shards hold {total_rows(refs)}")
    rejected = [ShardRef.of(read_marker(summary.rejected_uri, settings))] if summary.rejected_uri else []
    remove_shards_except(pool_dir, summary.shards, settings)
    remove_shards_except(rejected_dir, [r.uri for r in rejected], settings)
    summary = summary.model_copy(update={"refs": refs, "problems": problems})
    write_stage(marker_uri, key, summary.model_dump(mode="json"), {"pool": refs, "rejected": rejected}, settings)
    return summary


@task(name="ingest-seeds", retries=2, retry_delay_seconds=5)
def ingest_run_seeds_task(config: RunConfig, layout: RunLayout, key: str, force: bool = False) -> IngestSummary:
    """Ingest the run's seed file into round 0 (or reuse it)."""
    summary = ingest_run_seeds(config, layout, key, force)
    return Completed(data=summary, name="Reused") if summary.reused else summary
