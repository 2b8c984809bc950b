"""Seed ingestion: a seed file in; seed shards (with every unused source field in ``meta``) and quarantined rows out."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from prefect import task

from storage import RunLayout, StorageSettings, join_uri, resolve
from storage.schema import REJECTED_INPUT_SCHEMA, records_table
from storage.shards import MARKER_SUFFIX, read_marker, remove_shards_except, shard_name, write_shard
from storage.stages import ShardRef, StageMismatch, total_rows, write_stage
from tasks.core.config import RunConfig
from tasks.core.stage import Stage, state
from tasks.core.summaries import IngestSummary
from tasks.ingest.fast import SeedShardWriter, SeenIds, fast_extract, meta_column, with_ids
from tasks.ingest.fields import Rejection, dumps, extract_fields, field_map_problems, lookup
from tasks.ingest.read import CsvHeader, IngestError, iter_blocks

NO_INSTRUCTION = ("missing_instruction", "malformed_json", "not_an_object")  # reasons of rows without one


class EmptySeedsError(IngestError):
    """Ingest accepted no row, or rejected more than the allowed share."""


def find_unmatched_paths(src: str, field_map: dict[str, str], settings: StorageSettings | None = None,
                         csv_header: CsvHeader = "auto") -> tuple[list[str], list[str]]:
    """(mapped source paths that occur in no record, the top-level fields that do occur); stops reading as soon
    as every mapped path has been seen once."""
    missing = dict.fromkeys(field_map.values())
    seen: dict[str, None] = {}
    for block in iter_blocks(src, settings, csv_header, _header_names(field_map)):
        for rec in block.iter_records():
            if isinstance(rec.value, dict):
                seen.update(dict.fromkeys(rec.value))
                for path in [p for p in missing if lookup(rec.value, p) is not None]:
                    del missing[path]
            if not missing:
                return [], list(seen)
    return list(missing), list(seen)


def _header_names(field_map: dict[str, str]) -> frozenset[str]:
    return frozenset(p.split(".")[0] for p in field_map.values())


def ingest_seeds(src: str, dest_dir: str, rejected_dir: str | None = None, shard_size: int = 1000,
                 field_map: dict[str, str] | None = None, settings: StorageSettings | None = None,
                 csv_header: CsvHeader = "auto", vectorised: bool = True) -> IngestSummary:
    """Read a seed file into committed seed shards; every unusable row is quarantined with its reason.

    Every source field not used for instruction / input / output is kept in the ``meta`` column, with the
    source and line. Raises IngestError before writing any row when a mapped field occurs in no record, and
    when no record has an instruction. ``vectorised=False`` reads every row on its own (the reference path)."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    field_map = dict(field_map or {})
    if problems := field_map_problems(field_map):
        raise IngestError("field map: " + "; ".join(f"{target}: {what}" for target, what in problems.items()))
    if field_map:
        unmatched, fields = find_unmatched_paths(src, field_map, settings, csv_header)
        if unmatched:
            pairs = ", ".join(f"{t}={p}" for t, p in field_map.items() if p in unmatched)
            raise IngestError(f"{src}: field map {pairs}: no record has {', '.join(map(repr, unmatched))}; "
                              f"fields found: {', '.join(fields[:30]) or '(none)'}")
    writer = SeedShardWriter(dest_dir, shard_size, settings)
    src_json = json.dumps(src, ensure_ascii=False)
    seen, con = SeenIds(), duckdb.connect()
    rejected: list[dict[str, Any]] = []
    fields_seen: dict[str, None] = {}  # top-level fields of the row-by-row records, for the error below
    read = 0

    def accept(rows: pa.Table, lines: np.ndarray, raw: Callable[[int], str]) -> None:
        rows, numbers = with_ids(rows, con)
        first = seen.first_lines(numbers, lines)
        dup = first != lines
        if dup.any():  # a later row with an id already taken
            ids = rows["id"]
            rejected.extend({"source": src, "line": int(lines[i]), "raw": raw(i), "field": None, "reason": "duplicate",
                             "duplicate_of": ids[i].as_py(), "detail": f"same normalised text as line {first[i]}"}
                            for i in np.flatnonzero(dup))
            rows = rows.filter(pa.array(~dup))
        writer.add(rows)

    for block in iter_blocks(src, settings, csv_header, _header_names(field_map)):
        parsed = block.as_table() if vectorised else None
        rows = fast_extract(parsed[0], field_map) if parsed else None
        if rows is not None:
            read += rows.num_rows
            accept(rows.append_column("meta", meta_column(src_json, parsed[1])), parsed[1], block.raw)
            continue
        good: list[tuple[Any, ...]] = []  # instruction, input, output, meta fields, line, raw
        for rec in block.iter_records():
            read += 1
            if isinstance(rec.value, dict):
                fields_seen.update(dict.fromkeys(rec.value))
            try:
                if rec.error is not None:
                    raise rec.error
                instruction, input_text, output, rest = extract_fields(rec.value, field_map)
            except Rejection as rej:
                rejected.append({"source": src, "line": rec.line, "raw": rec.raw, "field": rej.field,
                                 "reason": rej.reason, "detail": rej.detail, "duplicate_of": None})
                continue
            good.append((instruction, input_text, output, dumps(rest), rec.line, rec.raw))
        if good:
            accept(*_table_of(good, src_json))

    reasons = Counter(r["reason"] for r in rejected)
    if fields_seen and sum(reasons[r] for r in NO_INSTRUCTION) == read:
        names = list(fields_seen)
        raise IngestError(f"{src}: no record has an instruction; fields found: {', '.join(names[:30])}; map one "
                          f"with --map instruction={names[0]} (field_map in a run config)")
    writer.close()
    rejected_uri = None
    if rejected:
        rejected_uri = join_uri(rejected_dir or join_uri(dest_dir, "_rejected"), shard_name(0))
        rejected.sort(key=lambda r: r["line"])
        write_shard(rejected_uri, records_table(rejected, REJECTED_INPUT_SCHEMA), REJECTED_INPUT_SCHEMA, settings)
    return IngestSummary(source=src, read=read, accepted=read - len(rejected), rejected=dict(sorted(reasons.items())),
                         duplicates=reasons["duplicate"], shards=writer.shards, rejected_uri=rejected_uri)


def _table_of(good: list[tuple[Any, ...]], src_json: str) -> tuple[pa.Table, np.ndarray, Callable[[int], str]]:
    """Rows of the row-by-row path as a table, their lines, and each one's source text by index."""
    *texts, lines, raws = zip(*good, strict=True)
    instructions, inputs, outputs, fields = (pa.array(c, pa.string()) for c in texts)
    lines = np.array(lines)
    return (pa.table({"instruction": instructions, "input": inputs, "response": outputs,
                      "meta": meta_column(src_json, lines, fields)}), lines, raws.__getitem__)


def check_ingest_summary(summary: IngestSummary, max_rejected_share: float = 0.5,
                         setting: str = "ingest.max_rejected_share") -> IngestSummary:
    """The summary unchanged, or EmptySeedsError: no row accepted, or more than ``max_rejected_share`` rejected
    (the error names ``setting``: the run config's key, or the option of ``evol ingest``)."""
    rejected = summary.read - summary.accepted
    reasons = ", ".join(f"{k}={v}" for k, v in summary.rejected.items()) or "none"
    where = f"; quarantined rows: {summary.rejected_uri}" if summary.rejected_uri else ""
    if summary.accepted == 0:
        raise EmptySeedsError(f"{summary.source}: 0 of {summary.read} rows accepted (rejected: {reasons}){where}")
    if rejected / summary.read > max_rejected_share:
        raise EmptySeedsError(f"{summary.source}: {rejected} of {summary.read} rows rejected, more than "
                              f"{setting}={max_rejected_share:g} (rejected: {reasons}){where}")
    return summary


def discard_seed_shards(summary: IngestSummary, settings: StorageSettings | None = None) -> None:
    """Remove the seed shards an ingest wrote, each marker before its file: none looks committed meanwhile. For
    ``evol ingest`` whose check failed: a run's ingest keeps them, its stage marker records the failed summary."""
    for uri in summary.shards:
        fs, path = resolve(uri, settings)
        for name in (path + MARKER_SUFFIX, path):
            if fs.exists(name):
                fs.rm_file(name)


INGEST = Stage("ingest", IngestSummary, RunLayout.ingest_marker)


def ingest_run_seeds(config: RunConfig, layout: RunLayout, key: str, force: bool = False,
                     settings: StorageSettings | None = None) -> IngestSummary:
    """Round 0 of a run: the seed shards. Reused when ``_ingest.json`` was written under ``key`` (the seed
    file's content, field map, ingest settings, shard size, reader) and every shard it names still verifies.
    Too few accepted rows stop the run either way (EmptySeedsError)."""
    problems: list[str] = []
    summary = None if force else INGEST.done(layout.ingest_marker(), key, settings, problems)
    if summary is not None:
        return check_ingest_summary(summary, config.ingest.max_rejected_share)
    pool_dir, rejected_dir = layout.stage_dir(0, "pool"), layout.stage_dir(0, "rejected_input")
    summary = ingest_seeds(config.seeds, pool_dir, rejected_dir, config.shard_size, config.field_map, settings,
                           csv_header=config.ingest.csv_header)
    refs = [ShardRef.of(read_marker(uri, settings)) for uri in summary.shards]
    if total_rows(refs) != summary.accepted:
        raise StageMismatch(f"ingest: {summary.accepted} rows accepted but the shards hold {total_rows(refs)}")
    rejected = [ShardRef.of(read_marker(summary.rejected_uri, settings))] if summary.rejected_uri else []
    remove_shards_except(pool_dir, summary.shards, settings)
    remove_shards_except(rejected_dir, [r.uri for r in rejected], settings)
    summary = summary.model_copy(update={"refs": refs, "problems": problems})
    outputs = {"pool": refs, "rejected": rejected}
    write_stage(layout.ingest_marker(), key, summary.model_dump(mode="json"), outputs, settings)
    return check_ingest_summary(summary, config.ingest.max_rejected_share)


def _retry_unless_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    """Retry storage hiccups, never a seed file that is wrong: it would fail the same way."""
    return not isinstance(state.result(raise_on_failure=False), IngestError)


@task(name="ingest-seeds", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_unless_bad_input)
def ingest_run_seeds_task(config: RunConfig, layout: RunLayout, key: str, force: bool = False) -> IngestSummary:
    """Ingest the run's seed file into round 0 (or reuse it)."""
    return state(ingest_run_seeds(config, layout, key, force))
