"""Seed file readers: JSONL, JSON, CSV, Parquet, compressed or not, local or remote, streamed in blocks.

A block is a run of consecutive records. JSONL and Parquet blocks can also be read as one Arrow
table (the vectorised path); every block can be read record by record with each record's line
(JSONL, CSV) or record number (JSON array, Parquet).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from storage import StorageSettings, resolve
from tasks.core.text import has_lone_surrogate
from tasks.ingest_fields import KNOWN_NAMES

COMPRESSION = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
FORMATS = ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".csv", "csv"),
           (".parquet", "parquet"), (".pq", "parquet"))
BLOCK_BYTES = 8 << 20
PARQUET_BATCH_ROWS = 65_536
# A line that is blank or starts with anything but an object (a record broken across lines; nested values,
# which alone could start a continuation line with "{", send a block row by row anyway)
_ODD_LINE = re.compile(rb"\n[ \t\r]*[^{ \t\r]")

CsvHeader = Literal["auto"] | bool


class IngestError(ValueError):
    """The source as a whole can't be read (unknown format, no such file, a JSON document that does not parse)."""


@dataclass
class RawRecord:
    """One source record: its line or record number, its text, its parsed value or why it has none."""

    line: int
    raw: str
    value: Any = None
    error: tuple[str, str] | None = None  # (reason, detail) when the row could not be parsed


@dataclass
class Block:
    """Consecutive records: JSONL text, a Parquet batch, or records parsed already (CSV, JSON)."""

    first_line: int
    data: bytes | None = None  # JSONL: lines joined by b"\n", no trailing newline
    table: pa.Table | None = None
    records: list[RawRecord] | None = None
    _lines: list[bytes] | None = field(default=None, repr=False)

    @property
    def lines(self) -> list[bytes]:
        if self._lines is None:
            self._lines = (self.data or b"").split(b"\n")
        return self._lines

    def as_table(self) -> tuple[pa.Table, np.ndarray] | None:
        """The block as an Arrow table and each row's line, when it parses as one; None means read it row by row."""
        if self.table is not None:
            return self.table, np.arange(self.first_line, self.first_line + self.table.num_rows)
        if not self.data or _ODD_LINE.search(b"\n" + self.data + b"\n"):
            return None  # rows would shift against lines
        try:
            self.data.decode("utf-8")  # pyarrow would replace invalid bytes silently
            table = pa_json.read_json(io.BytesIO(self.data))
        except (UnicodeDecodeError, pa.ArrowInvalid):
            return None
        if table.num_rows != self.data.count(b"\n") + 1:
            return None  # two objects on one line (every line starts one)
        return table, np.arange(self.first_line, self.first_line + table.num_rows)

    def iter_records(self) -> Iterator[RawRecord]:
        """Every record of the block, parsed on its own."""
        if self.records is not None:
            yield from self.records
        elif self.table is not None:
            for i, row in enumerate(self.table.to_pylist(), start=self.first_line):
                yield RawRecord(i, json.dumps(row, default=str, ensure_ascii=False), row)
        else:
            for i, raw in enumerate(self.lines, start=self.first_line):
                yield from _jsonl_record(i, raw)

    def raw(self, index: int) -> str:
        """The source text of the block's ``index``-th row (vectorised path)."""
        if self.data is not None:
            return safe_text(self.lines[index].decode("utf-8", "surrogateescape").rstrip("\r"))
        row = self.table.slice(index, 1).to_pylist()[0]
        return json.dumps(row, default=str, ensure_ascii=False)


def _jsonl_record(line: int, raw: bytes) -> Iterator[RawRecord]:
    text = raw.decode("utf-8", errors="surrogateescape").rstrip("\r")
    if not text.strip():
        return
    try:
        yield RawRecord(line, safe_text(text), json.loads(text))
    except json.JSONDecodeError as err:
        yield RawRecord(line, safe_text(text), error=("malformed_json", f"column {err.colno}: {err.msg}"))


def safe_text(text: str) -> str:
    """Text that can be stored: invalid bytes replaced."""
    return text.encode("utf-8", errors="replace").decode("utf-8") if has_lone_surrogate(text) else text


def detect_format(uri: str) -> tuple[str, str | None]:
    """(``json`` | ``jsonl`` | ``csv`` | ``parquet``, compression or None) from the file name."""
    name = uri.lower()
    compression = next((c for suffix, c in COMPRESSION.items() if name.endswith(suffix)), None)
    if compression:
        name = name[: name.rfind(".")]
    for suffix, fmt in FORMATS:
        if name.endswith(suffix):
            if fmt == "parquet" and compression:
                raise IngestError(f"{uri}: Parquet compresses its own pages; give the .parquet file uncompressed")
            return fmt, compression
    raise IngestError(f"{uri}: unknown format; use a .json, .jsonl, .csv or .parquet file "
                      "(optionally .gz, .zst or .bz2)")


def check_source(uri: str, settings: StorageSettings | None = None) -> None:
    """Raise an IngestError (one line) unless ``uri`` is an existing, readable file of a known format."""
    try:
        fs, path = resolve(uri, settings)
        if fs.isdir(path):
            raise IngestError(f"{uri}: is a folder; give the seed file itself")
        detect_format(uri)
        if fs.exists(path):
            return
        if uri.startswith("s3://"):
            bucket = path.split("/", 1)[0]
            if not fs.exists(bucket):
                raise IngestError(f"{uri}: bucket '{bucket}' does not exist at "
                                  f"{_endpoint(settings)}; create it or fix the URI")
        raise IngestError(f"{uri}: no such file")
    except IngestError:
        raise
    except (PermissionError, OSError) as err:
        raise IngestError(f"{uri}: cannot read: {_s3_reason(err)}; check EVOL_STORAGE__KEY, EVOL_STORAGE__SECRET "
                          f"and EVOL_STORAGE__ENDPOINT_URL ({_endpoint(settings)})") from None
    except ValueError as err:  # an unsupported protocol
        raise IngestError(f"{uri}: {err}") from None


def _endpoint(settings: StorageSettings | None) -> str:
    return (settings or StorageSettings()).endpoint_url or "AWS S3"


def _s3_reason(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:200]


def iter_blocks(uri: str, settings: StorageSettings | None = None, csv_header: CsvHeader = "auto",
                header_names: frozenset[str] = frozenset()) -> Iterator[Block]:
    """The source's records in blocks, streamed (a JSON document is read whole)."""
    check_source(uri, settings)
    fmt, compression = detect_format(uri)
    fs, path = resolve(uri, settings)
    with fs.open(path, "rb", compression=compression) as f:
        if fmt == "parquet":
            line = 1
            for batch in pq.ParquetFile(f).iter_batches(batch_size=PARQUET_BATCH_ROWS):
                yield Block(line, table=pa.Table.from_batches([batch]))
                line += batch.num_rows
        elif fmt == "jsonl":
            yield from _jsonl_blocks(f)
        elif fmt == "json":
            yield from _json_blocks(uri, f.read())
        else:
            yield from _csv_blocks(f, csv_header, KNOWN_NAMES | {n.lower() for n in header_names})


def _jsonl_blocks(f: Any) -> Iterator[Block]:
    """Split on b"\\n" only: U+2028, U+2029 and U+0085 are ordinary characters inside a record."""
    line, tail, first = 1, b"", True
    while True:
        chunk = f.read(BLOCK_BYTES)
        if first and chunk.startswith(b"\xef\xbb\xbf"):
            chunk = chunk[3:]
        first = False
        data = tail + chunk
        if not chunk:
            if data:
                yield Block(line, data=data)
            return
        cut = data.rfind(b"\n")
        if cut < 0:
            tail = data
            continue
        block, tail = data[:cut], data[cut + 1:]
        yield Block(line, data=block)
        line += block.count(b"\n") + 1


def _json_blocks(uri: str, data: bytes) -> Iterator[Block]:
    """A JSON array, a single object (pretty-printed or not), or one object per line."""
    text = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        stripped = text.lstrip()
        first_line = stripped.split("\n", 1)[0]
        if stripped.startswith("[") or (stripped.startswith("{") and not _parses(first_line)):
            raise IngestError(f"{uri}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
        yield Block(1, data=data.removeprefix(b"\xef\xbb\xbf"))  # one object per line
        return
    items = doc if isinstance(doc, list) else [doc]
    yield Block(1, records=[RawRecord(i, safe_text(json.dumps(item, ensure_ascii=False)), item)
                            for i, item in enumerate(items, start=1)])


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _csv_blocks(f: Any, header: CsvHeader, header_names: frozenset[str]) -> Iterator[Block]:
    """CSV with no field-size limit; the first row is a header when set so, or (auto) when it names a known field."""
    try:
        csv.field_size_limit(sys.maxsize)
    except OverflowError:
        csv.field_size_limit(2**31 - 1)
    text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text)
    first = next(reader, None)
    if first is None:
        return
    is_header = header if isinstance(header, bool) else any(c.strip().lower() in header_names for c in first)
    names = [c.strip() for c in first] if is_header else [f"column{i}" for i in range(1, len(first) + 1)]
    records: list[RawRecord] = []
    pending = [] if is_header else [(reader.line_num, first)]
    for line, row in _with_lines(pending, reader):
        if not row:
            continue  # a blank line
        keys = names + [f"column{i}" for i in range(len(names) + 1, len(row) + 1)]
        value = dict(zip(keys, row, strict=False))
        records.append(RawRecord(line, safe_text(json.dumps(value, ensure_ascii=False)), value))
        if len(records) >= PARQUET_BATCH_ROWS:
            yield Block(records[0].line, records=records)
            records = []
    if records:
        yield Block(records[0].line, records=records)


def _with_lines(pending: list[tuple[int, list[str]]], reader: Any) -> Iterator[tuple[int, list[str]]]:
    yield from pending
    for row in reader:
        yield reader.line_num, row
