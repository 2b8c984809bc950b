"""Seed file readers: JSONL, JSON, CSV, Parquet, compressed or not, local or remote, streamed in blocks.

A block is a run of consecutive records. JSONL and Parquet blocks can also be read as one Arrow
table (the vectorised path); every block can be read record by record with each record's line
(JSONL, CSV) or record number (JSON array, Parquet)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from storage import StorageSettings, resolve
from tasks.core.text import has_lone_surrogate
from tasks.ingest.fields import KNOWN_NAMES, Rejection, check_unique_keys, dumps, loads_marking, strict_json

COMPRESSION = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet",
           ".pq": "parquet"}  # .ndjson before .json: the first suffix that fits
BLOCK_BYTES = 8 << 20
PARQUET_BATCH_ROWS = 65_536
BOM = b"\xef\xbb\xbf"
# A line that is blank or starts with anything but an object (a record broken across lines; nested values,
# which alone could start a continuation line with "{", send a block row by row anyway)
_ODD_LINE = re.compile(rb"\n[ \t\r]*[^{ \t\r]")

CsvHeader = Literal["auto"] | bool


class IngestError(ValueError):
    """The source as a whole can't be read (unknown format, no such file, a JSON document that does not parse)."""


@dataclass
class RawRecord:
    line: int
    raw: str
    value: Any = None
    error: Rejection | None = None  # when the row could not be parsed


@dataclass
class Block:
    """Consecutive records: JSONL text, a Parquet batch, or records parsed already (CSV, JSON)."""

    first_line: int
    data: bytes | None = None  # JSONL: lines joined by b"\n", no trailing newline
    table: pa.Table | None = None
    records: list[RawRecord] | None = None

    @cached_property
    def lines(self) -> list[bytes]:
        return (self.data or b"").split(b"\n")

    def as_table(self) -> tuple[pa.Table, np.ndarray] | None:
        """The block as an Arrow table and each row's line, when it parses as one; None means read it row by row."""
        table = self.table
        if table is None:
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
        """Every record of the block, parsed on its own (a blank JSONL line is none)."""
        if self.records is not None:
            yield from self.records
        elif self.table is not None:
            for i, row in enumerate(self.table.to_pylist(), start=self.first_line):
                yield RawRecord(i, dumps(row), row)
        else:
            for i, raw in enumerate(self.lines, start=self.first_line):
                text = raw.decode("utf-8", errors="surrogateescape").rstrip("\r")
                if not text.strip():
                    continue
                try:
                    yield RawRecord(i, safe_text(text), strict_json(text))
                except json.JSONDecodeError as err:
                    yield RawRecord(i, safe_text(text), error=Rejection("malformed_json", None,
                                                                        f"column {err.colno}: {err.msg}"))
                except Rejection as rej:
                    yield RawRecord(i, safe_text(text), error=rej)

    def raw(self, index: int) -> str:
        """The source text of the block's ``index``-th row (vectorised path: valid UTF-8)."""
        if self.data is not None:
            return self.lines[index].decode("utf-8").rstrip("\r")
        return dumps(self.table.slice(index, 1).to_pylist()[0])


def safe_text(text: str) -> str:
    return text.encode("utf-8", errors="replace").decode("utf-8") if has_lone_surrogate(text) else text


def detect_format(uri: str) -> tuple[str, str | None]:
    """(``json`` | ``jsonl`` | ``csv`` | ``parquet``, compression or None) from the file name."""
    name = uri.lower()
    compression = next((c for suffix, c in COMPRESSION.items() if name.endswith(suffix)), None)
    name = name[: name.rfind(".")] if compression else name
    fmt = next((f for suffix, f in FORMATS.items() if name.endswith(suffix)), None)
    if fmt is None:
        raise IngestError(f"{uri}: unknown format; use a .json, .jsonl, .csv or .parquet file "
                          "(optionally .gz, .zst or .bz2)")
    if fmt == "parquet" and compression:
        raise IngestError(f"{uri}: Parquet compresses its own pages; give the .parquet file uncompressed")
    return fmt, compression


def check_source(uri: str, settings: StorageSettings | None = None) -> None:
    """Raise an IngestError (one line) unless ``uri`` is an existing, readable file of a known format."""
    endpoint = (settings or StorageSettings()).endpoint_url or "AWS S3"
    try:
        fs, path = resolve(uri, settings)
        if fs.isdir(path):
            raise IngestError(f"{uri}: is a folder; give the seed file itself")
        detect_format(uri)
        if fs.exists(path):
            return
        bucket = path.split("/", 1)[0]
        if uri.startswith("s3://") and not fs.exists(bucket):
            raise IngestError(f"{uri}: bucket '{bucket}' does not exist at {endpoint}; create it or fix the URI")
        raise IngestError(f"{uri}: no such file")
    except IngestError:
        raise
    except OSError as err:  # PermissionError too
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise IngestError(f"{uri}: cannot read: {reason}; check EVOL_STORAGE__KEY, EVOL_STORAGE__SECRET "
                          f"and EVOL_STORAGE__ENDPOINT_URL ({endpoint})") from None
    except ValueError as err:  # an unsupported protocol
        raise IngestError(f"{uri}: {err}") from None


def iter_blocks(uri: str, settings: StorageSettings | None = None, csv_header: CsvHeader = "auto",
                header_names: frozenset[str] = frozenset()) -> Iterator[Block]:
    """The source's records in blocks, streamed (a JSON document is read whole)."""
    check_source(uri, settings)
    fmt, compression = detect_format(uri)
    fs, path = resolve(uri, settings)
    with fs.open(path, "rb", compression=compression) as f:
        if fmt == "parquet":
            line, parquet = 1, pq.ParquetFile(f)
            _check_unique_columns(uri, "the Parquet schema", None, parquet.schema_arrow.names)
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                yield Block(line, table=pa.Table.from_batches([batch]))
                line += batch.num_rows
        elif fmt == "jsonl":
            yield from _jsonl_blocks(f)
        elif fmt == "json":
            yield from _json_blocks(uri, f.read())
        else:
            yield from _csv_blocks(uri, f, csv_header, KNOWN_NAMES | {n.lower() for n in header_names})


def _jsonl_blocks(f: Any) -> Iterator[Block]:
    """Split on b"\\n" only: U+2028, U+2029 and U+0085 are ordinary characters inside a record."""
    line, tail = 1, b""
    chunk = f.read(BLOCK_BYTES).removeprefix(BOM)
    while chunk:
        data = tail + chunk
        cut = data.rfind(b"\n")
        if cut >= 0:
            yield Block(line, data=data[:cut])
            line += data.count(b"\n", 0, cut) + 1
        tail = data[cut + 1:]
        chunk = f.read(BLOCK_BYTES)
    if tail:
        yield Block(line, data=tail)


def _json_blocks(uri: str, data: bytes) -> Iterator[Block]:
    """A JSON array, a single object (pretty-printed or not), or one object per line."""
    text = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    try:
        doc, twice = loads_marking(text)
    except json.JSONDecodeError as err:
        stripped = text.lstrip()
        if stripped.startswith("[") or (stripped.startswith("{") and not _parses(stripped.split("\n", 1)[0])):
            raise IngestError(f"{uri}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
        yield Block(1, data=data.removeprefix(BOM))  # one object per line
        return
    yield Block(1, records=[_document_record(i, item, twice)
                            for i, item in enumerate(doc if isinstance(doc, list) else [doc], start=1)])


def _document_record(number: int, item: Any, twice: bool) -> RawRecord:
    """One record of a JSON document; one with a key twice is rejected (the raw text keeps the value read last)."""
    try:
        return RawRecord(number, safe_text(dumps(item)), check_unique_keys(item) if twice else item)
    except Rejection as rej:
        return RawRecord(number, safe_text(dumps(item)), error=rej)


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _csv_blocks(uri: str, f: Any, header: CsvHeader, header_names: frozenset[str]) -> Iterator[Block]:
    """CSV with no field-size limit; the first row is a header when set so, or (auto) when it names a
    known field. Columns without a header name are ``column1``, ``column2``, ... A header naming a column twice
    and a quote left open are IngestErrors naming the line: either would merge or drop values silently."""
    try:
        csv.field_size_limit(sys.maxsize)
    except OverflowError:  # a C long of 32 bits
        csv.field_size_limit(2**31 - 1)
    reader = csv.reader(io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline=""),
                        strict=True)
    rows = _csv_rows(uri, reader)
    first = next(rows, None)
    if first is None:
        return
    is_header = header if isinstance(header, bool) else any(c.strip().lower() in header_names for c in first[1])
    names = [c.strip() for c in first[1]] if is_header else []
    _check_unique_columns(uri, "the header", first[0], names)
    records: list[RawRecord] = []
    for line, row in rows if is_header else itertools.chain([first], rows):
        if not row:
            continue  # a blank line
        value = dict(zip(names + [f"column{i}" for i in range(len(names) + 1, len(row) + 1)], row, strict=False))
        records.append(RawRecord(line, safe_text(dumps(value)), value))
        if len(records) >= PARQUET_BATCH_ROWS:
            yield Block(records[0].line, records=records)
            records = []
    if records:
        yield Block(records[0].line, records=records)


def _check_unique_columns(uri: str, what: str, line: int | None, names: list[str]) -> None:
    """An IngestError when ``names`` (a CSV header, a Parquet schema) has a column twice: one would be lost."""
    if twice := [n for i, n in enumerate(names) if n in names[:i]]:
        columns = [str(i) for i, n in enumerate(names, start=1) if n == twice[0]]
        where = f"line {line}: " if line else ""
        raise IngestError(f"{uri}: {where}{what} names {twice[0]!r} more than once (columns "
                          f"{', '.join(columns)}); rename all but one, or the values of the others would be lost")


def _csv_rows(uri: str, reader: Any) -> Iterator[tuple[int, list[str]]]:
    """(the record's last line, its fields) of each CSV record (csv's ``strict``): a quote left open, or text
    after a closing quote, is an IngestError naming the line where the record starts, never a merged record."""
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise IngestError(f"{uri}: line {start}: unbalanced quote: a quoted field opened in the record at line "
                              f"{start} does not close properly ({err}, line {reader.line_num}); close it, or write "
                              'a quote inside a quoted field as ""') from None
        yield reader.line_num, row
        start = reader.line_num + 1
