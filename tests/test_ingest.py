"""Seed ingestion: each format, field mappings, and every kind of bad record with exact counts."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flows.cli import app
from storage import list_committed_shards, read_shard, resolve
from tasks.core.text import record_id
from tasks.ingest.seeds import IngestError, ingest_seeds

GOOD = [
    {"instruction": "Name three primary colours.", "input": "", "output": "Red, blue and yellow."},
    {"instruction": "Summarise the text.", "input": "Cats sleep a lot.", "output": "Cats sleep much."},
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
]


def rows_of(summary) -> list[dict]:
    out = []
    for uri in summary.shards:
        out += read_shard(uri).to_pylist()
    return out


def rejected_of(summary) -> list[dict]:
    return read_shard(summary.rejected_uri).to_pylist() if summary.rejected_uri else []


def test_jsonl_with_every_kind_of_bad_record(tmp_path):
    lines = [
        json.dumps(GOOD[0]),                                   # 1 ok
        '{"instruction": "broken", ',                          # 2 malformed json
        json.dumps({"input": "x", "output": "y"}),             # 3 no instruction
        json.dumps({"instruction": 42, "output": "y"}),        # 4 not a string
        json.dumps({"instruction": "   \t ", "output": "y"}),  # 5 whitespace only
        "",                                                    # 6 blank: skipped
        json.dumps(GOOD[1]),                                   # 7 ok
        json.dumps({"instruction": "name THREE primary   colours.", "input": ""}),  # 8 duplicate of 1
        json.dumps(["a", "list"]),                             # 9 not an object
        json.dumps(GOOD[2]),                                   # 10 ok
        json.dumps({"instruction": "Fine", "input": 7}),       # 11 input not a string
    ]
    data = "\n".join(lines).encode() + b'\n{"instruction": "bad \xff\xfe bytes"}\n'  # 12 invalid utf-8
    src = tmp_path / "seeds.jsonl"
    src.write_bytes(data)
    summary = ingest_seeds(str(src), str(tmp_path / "out"), shard_size=2)
    assert summary.read == 11
    assert summary.accepted == 3
    assert summary.duplicates == 1
    assert summary.rejected == {
        "duplicate": 1, "empty_instruction": 1, "invalid_utf8": 1, "malformed_json": 1,
        "missing_instruction": 1, "not_a_string": 2, "not_an_object": 1,
    }
    assert len(summary.shards) == 2
    assert list_committed_shards(str(tmp_path / "out")) == summary.shards
    rows = rows_of(summary)
    assert [r["instruction"] for r in rows] == [g["instruction"] for g in GOOD]
    assert rows[0]["id"] == record_id(GOOD[0]["instruction"]) == rows[0]["root_id"]
    assert {r["round"] for r in rows} == {0} and {r["status"] for r in rows} == {"seed"}
    assert rows[1]["input"] == "Cats sleep a lot." and rows[1]["response"] == "Cats sleep much."
    bad = {(r["line"], r["reason"], r["field"]) for r in rejected_of(summary)}
    assert bad == {
        (2, "malformed_json", None), (3, "missing_instruction", "instruction"), (4, "not_a_string", "instruction"),
        (5, "empty_instruction", "instruction"), (8, "duplicate", None), (9, "not_an_object", None),
        (11, "not_a_string", "input"), (12, "invalid_utf8", "instruction"),
    }
    dup = next(r for r in rejected_of(summary) if r["reason"] == "duplicate")
    assert dup["duplicate_of"] == rows[0]["id"] and "line 1" in dup["detail"]
    assert all(r["source"] == str(src) for r in rejected_of(summary))


def test_json_array_csv_parquet_give_the_same_rows(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(GOOD))
    with open(tmp_path / "a.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        w.writeheader()
        w.writerows(GOOD)
    pq.write_table(pa.Table.from_pylist(GOOD), tmp_path / "a.parquet")
    results = {}
    for name in ("a.json", "a.csv", "a.parquet"):
        s = ingest_seeds(str(tmp_path / name), str(tmp_path / f"out-{name}"))
        assert (s.read, s.accepted, s.rejected) == (3, 3, {})
        results[name] = [(r["id"], r["instruction"], r["input"], r["response"]) for r in rows_of(s)]
    assert results["a.json"] == results["a.csv"] == results["a.parquet"]


def test_csv_bad_rows_report_their_line(tmp_path):
    src = tmp_path / "s.csv"
    src.write_text(
        'instruction,input,output\n"Write a haiku.",,"Leaves"\n"",,"empty"\n"Multi\nline task",,ok\n   ,,x\n'
    )
    s = ingest_seeds(str(src), str(tmp_path / "o"))
    assert (s.read, s.accepted) == (4, 2)
    assert {(r["line"], r["reason"]) for r in rejected_of(s)} == {(3, "empty_instruction"), (6, "empty_instruction")}


def test_chat_records_and_field_map(tmp_path):
    chat = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
                      {"role": "assistant", "content": "4"}]},
        {"conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]},
        {"messages": [{"role": "assistant", "content": "orphan"}]},
    ]
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(c) for c in chat))
    s = ingest_seeds(str(tmp_path / "chat.jsonl"), str(tmp_path / "o1"))
    assert (s.accepted, s.rejected) == (2, {"missing_instruction": 1})
    assert [(r["instruction"], r["response"]) for r in rows_of(s)] == [("What is 2+2?", "4"), ("Say hi.", "Hi.")]

    mapped = [{"Instruction": "Translate to French.", "Context": "Good morning", "Answer": "Bonjour"},
              {"Instruction": None, "Context": "", "Answer": "x"}]
    (tmp_path / "m.json").write_text(json.dumps(mapped))
    s = ingest_seeds(str(tmp_path / "m.json"), str(tmp_path / "o2"),
                     field_map={"instruction": "Instruction", "input": "Context", "output": "Answer"})
    assert s.accepted == 1
    assert rows_of(s)[0]["input"] == "Good morning" and rows_of(s)[0]["response"] == "Bonjour"
    assert [(r["line"], r["reason"], r["field"]) for r in rejected_of(s)] == [(2, "missing_instruction", "Instruction")]


def test_whole_file_errors_are_clear(tmp_path):
    (tmp_path / "broken.json").write_text('[{"instruction": "a"},\n  {oops}]')
    with pytest.raises(IngestError, match=r"broken.json: not valid JSON at line 2 column 4"):
        ingest_seeds(str(tmp_path / "broken.json"), str(tmp_path / "o"))
    with pytest.raises(IngestError, match="unknown format"):
        ingest_seeds(str(tmp_path / "seeds.txt"), str(tmp_path / "o"))
    with pytest.raises(IngestError, match="no such file"):
        ingest_seeds(str(tmp_path / "missing.jsonl"), str(tmp_path / "o"))
    with pytest.raises(IngestError, match="field map: question: unknown target field; use instruction, input, output"):
        ingest_seeds(str(tmp_path / "x.jsonl"), str(tmp_path / "o"), field_map={"question": "Q"})


def test_ingest_from_and_to_s3(s3_bucket, s3_settings):
    fs, path = resolve(s3_bucket + "/in/seeds.jsonl", s3_settings)
    fs.pipe_file(path, "\n".join(json.dumps(g) for g in GOOD).encode() + b"\nnot json\n")
    s = ingest_seeds(s3_bucket + "/in/seeds.jsonl", s3_bucket + "/seeds", shard_size=2, settings=s3_settings)
    assert (s.accepted, s.rejected, len(s.shards)) == (3, {"malformed_json": 1}, 2)
    assert s.shards[0].startswith(s3_bucket + "/seeds/shard-00000.parquet")
    assert len(rows_of(s)) == 3


def test_cli_ingest_demo_seeds(tmp_path):
    result = CliRunner().invoke(app, ["ingest", "data/demo_seeds.jsonl", str(tmp_path / "seeds"), "--shard-size", "40"])
    assert result.exit_code == 0, result.output
    assert "accepted" in result.output
    shards = list_committed_shards(str(tmp_path / "seeds"))
    assert [read_shard(u).num_rows for u in shards] == [40, 40, 16]  # the 96 demo seeds, every one distinct
    ids = [i for u in shards for i in read_shard(u).column("id").to_pylist()]
    assert len(set(ids)) == 96


def test_cli_ingest_that_fails_its_check_names_its_option_and_keeps_no_seed_shard(tmp_path):
    src, dest = tmp_path / "s.jsonl", tmp_path / "seeds"
    src.write_text('{"prompt": "Write a poem about rain"}\n{"prompt": ""}\n{"prompt": " "}\n')
    result = CliRunner().invoke(app, ["ingest", str(src), str(dest), "--map", "instruction=prompt"])
    assert result.exit_code == 2, result.output
    quarantined = dest / "_rejected" / "shard-00000.parquet"
    assert result.output.splitlines()[-1] == (
        f"error: {src}: 2 of 3 rows rejected, more than --max-rejected-share=0.5 (rejected: empty_instruction=2); "
        f"quarantined rows: {quarantined}; no seed shard kept in {dest}")
    assert "shard(s) in" not in result.output
    assert sorted(p.name for p in dest.iterdir()) == ["_rejected"]  # no shard, no marker
    assert read_shard(str(quarantined)).num_rows == 2  # the rows that say why stay
    src.write_text('{"prompt": ""}\n')
    result = CliRunner().invoke(app, ["ingest", str(src), str(dest), "--map", "instruction=prompt"])
    assert result.exit_code == 2 and "0 of 1 rows accepted" in result.output  # not even the empty shard
    assert sorted(p.name for p in dest.iterdir()) == ["_rejected"]
    src.write_text('{"prompt": "Write a poem about rain"}\n{"prompt": ""}\n{"prompt": " "}\n')
    result = CliRunner().invoke(app, ["ingest", str(src), str(dest), "--map", "instruction=prompt",
                                      "--max-rejected-share", "0.7"])
    assert result.exit_code == 0, result.output
    assert [read_shard(u).num_rows for u in list_committed_shards(str(dest))] == [1]


def test_cli_ingest_bad_map_and_missing_file(tmp_path):
    result = CliRunner().invoke(app, ["ingest", "nope.jsonl", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no such file" in result.output
    result = CliRunner().invoke(app, ["ingest", "nope.jsonl", str(tmp_path / "o"), "--map", "instruction"])
    assert result.exit_code == 2 and "TARGET=SOURCE" in result.output
