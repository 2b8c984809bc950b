"""Benchmark files for decontamination: one text field of a JSONL (or JSON array), Parquet or CSV file, compressed or
not, local or remote; each item keeps its record number, so a dropped row can name the item it overlaps."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from fsspec.compression import compr
from fsspec.utils import infer_compression

from storage import StageMismatch, StorageSettings, resolve
from storage.redact import redact_text
from tasks.core.data_config import BenchmarkFile

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet",
           ".csv": "csv"}


class BenchmarkError(ValueError):
    """A benchmark file that can't be used; the message names the file and the field."""


@dataclass(frozen=True)
class Benchmark:
    """A benchmark file's items: the field's text per record (null where a record has none), and the file's
    SHA-256 (of its bytes as stored)."""

    path: str
    field: str
    sha256: str
    texts: pa.Array

    def item(self, row: int) -> str:
        """How a dropped row names the item it overlaps: ``{path}#{row}`` (the record's number from 0; credentials in
        the path masked)."""
        return f"{redact_text(self.path)}#{row}"


def benchmark_format(path: str) -> str:
    """``jsonl``, ``parquet`` or ``csv`` from the file's name (a compression suffix is looked past)."""
    name = path.rsplit("/", 1)[-1].lower()
    if infer_compression(name):
        name = name.rsplit(".", 1)[0]
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise BenchmarkError(f"benchmark file {path}: unknown format (use {', '.join(FORMATS)}, optionally compressed)")


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _jsonl_values(data: bytes, spec: BenchmarkFile) -> tuple[list[Any], set[str]]:
    """The field's value per record of a JSONL file (or a JSON array), and the fields the records have."""
    text = data.decode("utf-8-sig")
    if text.lstrip().startswith("["):
        records = json.loads(text)
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as err:
                    raise BenchmarkError(f"benchmark file {spec.path}: line {number} is not JSON ({err})") from None
    fields = {k for r in records if isinstance(r, dict) for k in r}
    return [r.get(spec.field) if isinstance(r, dict) else None for r in records], fields


def _column(table_fields: list[str], read: Any, spec: BenchmarkFile) -> pa.Array:
    if spec.field not in table_fields:
        raise _no_field(spec, table_fields)
    column = read([spec.field]).column(spec.field).combine_chunks()
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.string())
    return pa.array([_text(v) for v in column.to_pylist()], pa.string())


def _no_field(spec: BenchmarkFile, fields: Any) -> BenchmarkError:
    return BenchmarkError(f"benchmark file {spec.path} has no field '{spec.field}'; fields found: "
                          f"{', '.join(sorted(fields)[:30]) or '(none)'}")


def parse_benchmark(data: bytes, spec: BenchmarkFile) -> pa.Array:
    """The field's text of every record in ``data`` (the file's bytes, decompressed), in order."""
    fmt = benchmark_format(spec.path)
    try:
        if fmt == "parquet":
            pf = pq.ParquetFile(io.BytesIO(data))
            return _column(pf.schema_arrow.names, lambda cols: pf.read(columns=cols), spec)
        if fmt == "csv":
            table = pa_csv.read_csv(io.BytesIO(data), parse_options=pa_csv.ParseOptions(newlines_in_values=True))
            return _column(table.column_names, table.select, spec)
    except (pa.ArrowInvalid, OSError) as err:
        raise BenchmarkError(f"benchmark file {spec.path}: can't read it as {fmt} ({err})") from None
    values, fields = _jsonl_values(data, spec)
    if values and spec.field not in fields:
        raise _no_field(spec, fields)
    return pa.array([_text(v) for v in values], pa.string())


def read_benchmark(spec: BenchmarkFile, settings: StorageSettings | None = None) -> Benchmark:
    """A benchmark file's items and its SHA-256; errors name the file (and the field)."""
    benchmark_format(spec.path)
    fs, path = resolve(spec.path, settings)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        raise BenchmarkError(f"benchmark file not found: {spec.path}") from None
    codec = infer_compression(path)
    data = compr[codec](io.BytesIO(raw)).read() if codec else raw
    texts = parse_benchmark(data, spec)
    if texts.null_count == len(texts):
        raise BenchmarkError(f"benchmark file {spec.path}: no record has text in field '{spec.field}'")
    return Benchmark(spec.path, spec.field, hashlib.sha256(raw).hexdigest(), texts)


def read_benchmarks(files: tuple[BenchmarkFile, ...], settings: StorageSettings | None = None,
                    expected: tuple[str, ...] | None = None) -> list[Benchmark]:
    """Every benchmark file, each checked against the SHA-256 the run resolved at its start (``expected``)."""
    benchmarks = [read_benchmark(spec, settings) for spec in files]
    for b, sha in zip(benchmarks, expected or (), strict=False):
        if b.sha256 != sha:
            raise StageMismatch(f"benchmark file {b.path} changed since the run started: rerun to decontaminate "
                                "against its new content")
    return benchmarks
