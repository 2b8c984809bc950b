"""Ingest on Arrow arrays: the vectorised path, and the ids, duplicate checks and seed shards of both paths.

A block takes the vectorised path (parsed by Arrow, validated column-wise) only when the result is certain to be
what the row-by-row path gives; anything else (a bad row, an extra field for ``meta``, a nested record) goes row
by row. Text Arrow and Python could treat differently (non-ASCII, unusual whitespace) is normalised by Python.
Either path's rows then get their ids (DuckDB hashes the content keys), are checked for duplicates with numpy,
and go to shards that a thread writes while the next block is read."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage import StorageSettings, join_uri, write_shard
from storage.schema import RECORD_SCHEMA
from storage.shards import shard_name
from tasks.core.text import content_keys
from tasks.ingest.fields import RECOGNISED, TARGET_FIELDS

_TEXT = (pa.null(), pa.string(), pa.large_string())  # column types the vectorised path takes


def _strip(values: pa.Array) -> pa.Array:
    """``str.strip`` of every value: on printable ASCII that removes only spaces (Arrow); Python strips the rest."""
    trimmed, odd = pc.ascii_trim(values, " "), pc.invert(pc.ascii_is_printable(values))
    if not pc.any(odd).as_py():
        return trimmed
    stripped = [v.strip() for v in values.filter(odd).to_pylist()]
    return pc.replace_with_mask(trimmed, odd, pa.array(stripped, pa.string()))


def fast_extract(table: pa.Table, field_map: dict[str, str]) -> pa.Table | None:
    """``instruction``, ``input``, ``response`` exactly as the row-by-row path makes them, or None for that path:
    a column that is not a target, an ambiguous target (``input`` and ``context``), a value not text, a missing or
    empty instruction."""
    arrays, used = {}, set()
    for target in TARGET_FIELDS:
        mapped = field_map.get(target)
        matches = [n for n in table.column_names
                   if (n == mapped if mapped is not None else n.lower() in RECOGNISED[target])]
        if len(matches) > 1:
            return None
        used.update(matches)
        arrays[target] = table[matches[0]].combine_chunks() if matches else pa.nulls(table.num_rows)
    if used != set(table.column_names) or any(a.type not in _TEXT for a in arrays.values()) \
            or not table.num_rows or arrays["instruction"].null_count:
        return None
    instructions = _strip(arrays["instruction"].cast(pa.string()))
    if pc.any(pc.equal(instructions, "")).as_py():
        return None  # an empty instruction: the row-by-row path reports it
    inputs = _strip(pc.fill_null(arrays["input"].cast(pa.string()), ""))
    return pa.table({"instruction": instructions, "input": inputs, "response": arrays["output"].cast(pa.string())})


def with_ids(rows: pa.Table, con: duckdb.DuckDBPyConnection) -> tuple[pa.Table, np.ndarray]:
    """``rows`` with the ``content_key`` and ``id`` columns of ``tasks.core.text``, and each id as a number.

    The key is computed once (Arrow; Python for text Arrow would fold differently) and DuckDB hashes it. An id
    is 16 hex digits, so its ``uint64`` stands for it exactly in ``SeenIds``."""
    keys = pa.table({"key": content_keys(rows["instruction"], rows["input"])})
    out = con.sql("SELECT left(sha256(key), 16) AS id, ('0x' || id)::UBIGINT AS number FROM keys").to_arrow_table()
    rows = rows.append_column("content_key", keys["key"]).append_column("id", out["id"].combine_chunks())
    return rows, out["number"].to_numpy()


class SeenIds:
    """The ids accepted so far, as sorted numbers with the line of each: duplicate checks at numpy speed."""

    def __init__(self) -> None:
        self.numbers = np.empty(0, np.uint64)
        self.lines = np.empty(0, np.int64)

    def first_lines(self, numbers: np.ndarray, lines: np.ndarray) -> np.ndarray:
        """Each row's first line with its id: an earlier batch's, an earlier row's, or its own (then recorded)."""
        order = np.argsort(numbers, kind="stable")  # lines ascend in a batch: a run of equal ids starts with the first
        numbers, lines = numbers[order], lines[order]
        starts = np.ones(len(numbers), bool)
        starts[1:] = numbers[1:] != numbers[:-1]
        first = lines[starts][np.cumsum(starts) - 1]
        at = np.searchsorted(self.numbers, numbers)
        earlier = np.zeros(len(numbers), bool)
        if len(self.numbers):
            hit = np.minimum(at, len(self.numbers) - 1)
            earlier = self.numbers[hit] == numbers
            first = np.where(earlier, self.lines[hit], first)
        new = starts & ~earlier
        self.numbers = np.insert(self.numbers, at[new], numbers[new])
        self.lines = np.insert(self.lines, at[new], lines[new])
        out = np.empty_like(first)
        out[order] = first
        return out


def meta_column(source_json: str, lines: np.ndarray, fields: pa.Array | None = None) -> pa.Array:
    """The ``meta`` text, ``{"source": ..., "line": ..., "fields": {...}}``: ``fields`` holds the JSON texts of what
    each row has beyond its target fields (none: ``{}``)."""
    return pc.binary_join_element_wise(f'{{"source": {source_json}, "line": ', pa.array(lines).cast(pa.string()),
                                       ', "fields": ', "{}" if fields is None else fields, "}", "")


class SeedShardWriter:
    """Accepted rows, buffered as Arrow tables and written as committed shards of ``shard_size`` rows.

    A thread writes one shard while the next is read (Parquet encoding and compression release the GIL)."""

    def __init__(self, dest_dir: str, shard_size: int, settings: StorageSettings | None):
        self.dest_dir, self.shard_size, self.settings = dest_dir, shard_size, settings
        self.pending: list[pa.Table] = []
        self.rows = 0
        self.shards: list[str] = []
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="seed-shards")
        self._writing: Future | None = None

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.rows += table.num_rows
        while self.rows >= self.shard_size:
            self.flush(self.shard_size)

    def flush(self, n: int | None = None) -> None:
        table = pa.concat_tables(self.pending) if self.pending else _ACCEPTED.empty_table()
        n = table.num_rows if n is None else n
        rest = table.slice(n)  # a slice holds the whole table's buffers: keep none when it is empty
        self.pending, self.rows = ([rest] if rest.num_rows else []), rest.num_rows
        uri = join_uri(self.dest_dir, shard_name(len(self.shards)))
        self.wait()  # one shard in flight at a time: memory stays bounded
        self._writing = self._pool.submit(write_shard, uri, seed_table(table.slice(0, n)), settings=self.settings)
        self.shards.append(uri)

    def wait(self) -> None:
        if self._writing is not None:
            self._writing.result()

    def close(self) -> None:
        """Write the rows still buffered (one empty shard when no row was accepted) and wait for every write."""
        try:
            if self.rows or not self.shards:
                self.flush()
            self.wait()
        finally:
            self._pool.shutdown()


_ACCEPTED = pa.schema([(n, pa.string()) for n in ("instruction", "input", "response", "meta", "content_key", "id")])
_SEED = {"round": 0, "operation": "seed", "status": "seed", "prompt_tokens": 0, "completion_tokens": 0}


def seed_table(accepted: pa.Table) -> pa.Table:
    """Seed rows (round 0) from a table of the ``_ACCEPTED`` columns."""
    n = accepted.num_rows
    columns = {**{k: pa.repeat(pa.scalar(v, RECORD_SCHEMA.field(k).type), n) for k, v in _SEED.items()},
               "root_id": accepted["id"], **{k: accepted[k] for k in accepted.column_names}}
    return pa.table([columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in RECORD_SCHEMA],
                    schema=RECORD_SCHEMA)
