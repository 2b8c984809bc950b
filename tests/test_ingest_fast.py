"""The vectorised ingest path against the reference functions: ids, content keys, stripping, duplicates, shards."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from storage import list_committed_shards, read_shard
from tasks.core.text import content_key, record_id
from tasks.ingest import fast as ingest_fast
from tasks.ingest import read as ingest_read
from tasks.ingest.fast import SeenIds, fast_extract, with_ids
from tasks.ingest.seeds import ingest_seeds

# Text where Arrow's ASCII functions and Python's str methods could part: edge and inner whitespace of every
# kind, control characters, non-ASCII case and spaces.
TRICKY = ["Plain text.", "  padded  ", "double  space", "Tab\tinside", "\x1c edge \x1f", "\x0bvt\x0c", "Ünïcode ÇASE",
          "nbsp\u00a0end\u00a0", "wide\u3000space", "nel\x85", "del\x7f char", "MiXeD  Case ", "ﬁ ligature", "İstanbul",
          "STRASSE ß", " x"]


def test_ids_and_keys_are_the_reference_functions():
    pairs = [(a, b) for a in TRICKY for b in ("", "Ctx  TWO", "ü", "\x1d")]
    rows = pa.table({"instruction": [a for a, _ in pairs], "input": [b for _, b in pairs]})
    out, numbers = with_ids(rows, duckdb.connect())
    assert out["content_key"].to_pylist() == [content_key(a, b) for a, b in pairs]
    assert out["id"].to_pylist() == [record_id(a, b) for a, b in pairs]
    assert numbers.tolist() == [int(record_id(a, b), 16) for a, b in pairs]


def test_fast_extract_strips_like_str_strip():
    table = pa.table({"instruction": TRICKY, "input": [None, *TRICKY[1:]], "output": TRICKY[::-1]})
    rows = fast_extract(table, {})
    assert rows["instruction"].to_pylist() == [t.strip() for t in TRICKY]
    assert rows["input"].to_pylist() == ["", *(t.strip() for t in TRICKY[1:])]
    assert rows["response"].to_pylist() == TRICKY[::-1]
    assert fast_extract(pa.table({"instruction": ["ok", " \x1f "]}), {}) is None  # empty: the row path reports it


def test_seen_ids_give_the_first_line_within_and_across_batches():
    seen = SeenIds()

    def first(numbers, lines):
        return seen.first_lines(np.array(numbers, np.uint64), np.array(lines, np.int64)).tolist()

    assert first([5, 3, 5, 9, 3, 5], [1, 2, 3, 4, 5, 6]) == [1, 2, 1, 4, 2, 1]
    assert first([], []) == []
    assert first([9, 7, 2**64 - 1, 7, 0], [7, 8, 9, 10, 11]) == [4, 8, 9, 8, 11]
    assert first([2**64 - 1, 0, 1, 3], [12, 13, 14, 15]) == [9, 11, 14, 2]
    assert seen.numbers.tolist() == [0, 1, 3, 5, 7, 9, 2**64 - 1] and seen.lines.tolist() == [11, 14, 2, 1, 8, 4, 9]


@pytest.mark.parametrize("vectorised", [True, False])
def test_duplicates_within_and_across_blocks_and_paths(tmp_path, monkeypatch, vectorised):
    monkeypatch.setattr(ingest_read, "BLOCK_BYTES", 200)  # blocks of a few rows; some go row by row
    rows = [{"instruction": f"Task {i}", "output": "x"} for i in range(12)]  # blocks: lines 1-4, 5-8, 9-11, 12
    rows[3] = {"instruction": "task  1", "output": "same block"}
    rows[4] = {"instruction": "Task 4", "output": "x", "extra": "meta"}  # its block goes row by row
    rows[7] = {"instruction": " task 2 ", "output": "row by row, of a vectorised row"}
    rows[8] = {"instruction": "TASK 4", "output": "vectorised, of a row-by-row row"}
    rows[9] = {"instruction": "task 3", "output": "kept: line 4 held no 'task 3'"}
    rows[11] = {"instruction": "TASK  3", "output": "an earlier vectorised block"}
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    blocks = [(b.first_line, len(b.lines)) for b in ingest_read.iter_blocks(str(tmp_path / "d.jsonl"))]
    assert blocks == [(1, 4), (5, 4), (9, 3), (12, 1)]
    s = ingest_seeds(str(tmp_path / "d.jsonl"), str(tmp_path / "out"), shard_size=4, vectorised=vectorised)
    assert (s.read, s.accepted, s.rejected) == (12, 8, {"duplicate": 4})
    dups = (3, 7, 8, 11)
    kept = [r for uri in s.shards for r in read_shard(uri).to_pylist()]
    assert [r["instruction"] for r in kept] == [r["instruction"].strip() for i, r in enumerate(rows) if i not in dups]
    assert [r["id"] for r in kept] == [record_id(r["instruction"]) for r in kept]
    rejected = read_shard(s.rejected_uri).to_pylist()
    assert [(r["line"], r["duplicate_of"], r["detail"]) for r in rejected] == [
        (4, record_id("Task 1"), "same normalised text as line 2"),
        (8, record_id("Task 2"), "same normalised text as line 3"),
        (9, record_id("Task 4"), "same normalised text as line 5"),
        (12, record_id("task 3"), "same normalised text as line 10")]
    assert [r["raw"] for r in rejected] == [json.dumps(rows[i]) for i in dups]


def test_a_failed_shard_write_fails_the_ingest_and_the_shards_keep_their_order(tmp_path, monkeypatch):
    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"instruction": f"Task {i}"}) + "\n" for i in range(10)))
    s = ingest_seeds(str(tmp_path / "s.jsonl"), str(tmp_path / "ok"), shard_size=3)
    assert [read_shard(u)["instruction"].to_pylist() for u in s.shards] == [
        [f"Task {i}" for i in range(j, min(j + 3, 10))] for j in range(0, 10, 3)]
    calls, write_shard = [], ingest_fast.write_shard

    def failing(uri, *args, **kwargs):
        calls.append(uri)
        if len(calls) == 2:
            raise OSError("disk full")
        return write_shard(uri, *args, **kwargs)

    monkeypatch.setattr(ingest_fast, "write_shard", failing)
    with pytest.raises(OSError, match="disk full"):
        ingest_seeds(str(tmp_path / "s.jsonl"), str(tmp_path / "bad"), shard_size=3)
    assert len(list_committed_shards(str(tmp_path / "bad"))) == 1


@pytest.mark.parametrize("vectorised", [True, False])
def test_a_record_broken_across_lines_is_read_row_by_row(tmp_path, vectorised):
    # As many objects as lines: only the check that every line starts an object keeps Arrow from taking them
    text = '{"instruction": "a",\n"input": "x"}\n{"instruction": "b"} {"instruction": "c"}\n'
    (tmp_path / "b.jsonl").write_text(text)
    s = ingest_seeds(str(tmp_path / "b.jsonl"), str(tmp_path / "out"), vectorised=vectorised)
    assert (s.read, s.accepted, s.rejected) == (3, 0, {"malformed_json": 3})
