"""A corpus of public seed formats written here: exact accounting, and every source field kept (row or ``meta``)."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from storage import read_shard
from tasks.ingest import read as ingest_read
from tasks.ingest.seeds import IngestError, ingest_seeds

SELF_INSTRUCT = [
    {"id": "seed_task_0", "name": "breakfast", "instruction": "Suggest a breakfast with no milk.",
     "instances": [{"input": "", "output": "Oatmeal with water."}, {"input": "vegan", "output": "Tofu scramble."}],
     "is_classification": False},
    {"id": "seed_task_1", "name": "antonym", "instruction": "Give the antonym of the word.",
     "instances": [{"input": "hot", "output": "cold"}], "is_classification": False},
]
CAPITALISED = [
    {"idx": 7, "Instruction": "Explain photosynthesis.", "Skill": "biology", "Difficulty": 2},
    {"idx": 8, "Instruction": "Sort these numbers.", "Input": "3 1 2", "Output": "1 2 3", "Skill": "math",
     "Difficulty": 1},
]
CHAT_SYSTEM = [
    {"messages": [{"role": "system", "content": "Answer like a pirate."}, {"role": "user", "content": "Where is Rome?"},
                  {"role": "assistant", "content": "In Italy, matey."}], "source": "pirates"},
    {"messages": [{"role": "assistant", "content": "An answer with no question."}]},
]
CHAT_MULTI = [
    {"conversations": [{"from": "human", "value": "Name a prime."}, {"from": "gpt", "value": "7."},
                       {"from": "human", "value": "Another?"}, {"from": "gpt", "value": "11."}], "id": "c1"},
]
DOLLY = [
    {"instruction": "Who wrote the text?", "context": "Hamlet is a play by Shakespeare.",
     "response": "Shakespeare.", "category": "closed_qa"},
    {"instruction": "Name a colour.", "context": "", "response": "Blue.", "category": "brainstorming"},
]


def write_corpus(folder) -> dict[str, dict]:
    """One file per format; for each, the expected (instruction, input, response, meta fields) and rejections."""
    corpus: dict[str, dict] = {}

    def jsonl(name, rows, opener=open):
        with opener(folder / name, "wt", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    jsonl("self_instruct.jsonl", SELF_INSTRUCT)
    corpus["self_instruct.jsonl"] = {"rows": [
        ("Suggest a breakfast with no milk.", "", "Oatmeal with water.",
         {"id": "seed_task_0", "name": "breakfast", "instances": [{"input": "vegan", "output": "Tofu scramble."}],
          "is_classification": False}, 1),
        ("Give the antonym of the word.", "hot", "cold",
         {"id": "seed_task_1", "name": "antonym", "is_classification": False}, 2)], "rejected": {}}
    (folder / "capitalised.json").write_text(json.dumps(CAPITALISED))
    corpus["capitalised.json"] = {"rows": [
        ("Explain photosynthesis.", "", None, {"idx": 7, "Skill": "biology", "Difficulty": 2}, 1),
        ("Sort these numbers.", "3 1 2", "1 2 3", {"idx": 8, "Skill": "math", "Difficulty": 1}, 2)], "rejected": {}}
    jsonl("chat_system.jsonl", CHAT_SYSTEM)
    corpus["chat_system.jsonl"] = {"rows": [
        ("Where is Rome?", "Answer like a pirate.", "In Italy, matey.", {"source": "pirates"}, 1)],
        "rejected": {"missing_instruction": 1}}
    jsonl("chat_multiturn.jsonl", CHAT_MULTI)
    corpus["chat_multiturn.jsonl"] = {"rows": [
        ("Name a prime.", "", "7.", {"conversations": [{"from": "human", "value": "Another?"},
                                                       {"from": "gpt", "value": "11."}], "id": "c1"}, 1)],
        "rejected": {}}
    jsonl("dolly.jsonl.gz", DOLLY, gzip.open)
    corpus["dolly.jsonl.gz"] = {"rows": [
        ("Who wrote the text?", "Hamlet is a play by Shakespeare.", "Shakespeare.", {"category": "closed_qa"}, 1),
        ("Name a colour.", "", "Blue.", {"category": "brainstorming"}, 2)], "rejected": {}}
    text = ("\ufeffInstruction,Input,Output,Source\r\n\"Write a haiku\nabout rain.\",,\"Drops fall,\nsoft.\",poems\r\n"
            "\"Add 2 and 3.\",,5,\"math, easy\"\r\n,,orphan,x\r\n")
    (folder / "bom_multiline.csv").write_bytes(text.encode("utf-8"))
    corpus["bom_multiline.csv"] = {"rows": [
        ("Write a haiku\nabout rain.", "", "Drops fall,\nsoft.", {"Source": "poems"}, 4),
        ("Add 2 and 3.", "", "5", {"Source": "math, easy"}, 5)], "rejected": {"empty_instruction": 1}}
    (folder / "pretty.json").write_text(json.dumps({"instruction": "Define entropy.", "output": "A measure.",
                                                    "tags": ["physics"]}, indent=4))
    corpus["pretty.json"] = {"rows": [("Define entropy.", "", "A measure.", {"tags": ["physics"]}, 1)], "rejected": {}}
    with zstandard.open(folder / "alpaca.jsonl.zst", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"instruction": "Translate 'cat'.", "input": "French", "output": "chat"}) + "\nnot json\n")
    corpus["alpaca.jsonl.zst"] = {"rows": [("Translate 'cat'.", "French", "chat", {}, 1)],
                                  "rejected": {"malformed_json": 1}}
    with bz2.open(folder / "alpaca.json.bz2", "wt") as f:
        f.write(json.dumps([{"instruction": "Count to 3.", "output": "1 2 3", "id": 5}]))
    corpus["alpaca.json.bz2"] = {"rows": [("Count to 3.", "", "1 2 3", {"id": 5}, 1)], "rejected": {}}
    pq.write_table(pa.Table.from_pylist([{"Instruction": "Name a river.", "Response": "Nile", "lang": "en"}]),
                   folder / "dolly_caps.parquet")
    corpus["dolly_caps.parquet"] = {"rows": [("Name a river.", "", "Nile", {"lang": "en"}, 1)], "rejected": {}}
    return corpus


def seed_rows(summary) -> list[dict]:
    return [r for uri in summary.shards for r in read_shard(uri).to_pylist()]


@pytest.mark.parametrize("vectorised", [True, False])
def test_format_corpus_exact_accounting_and_nothing_lost(tmp_path, vectorised):
    corpus = write_corpus(tmp_path)
    for name, expected in corpus.items():
        src = str(tmp_path / name)
        s = ingest_seeds(src, str(tmp_path / f"out-{name}"), vectorised=vectorised)
        assert s.read == s.accepted + sum(s.rejected.values()), name
        assert (s.accepted, s.rejected) == (len(expected["rows"]), expected["rejected"]), name
        got = []
        for r in seed_rows(s):
            meta = json.loads(r["meta"])
            assert meta["source"] == src, name
            got.append((r["instruction"], r["input"], r["response"], meta["fields"], meta["line"]))
        assert got == expected["rows"], name


def test_further_instances_kept_and_map_paths(tmp_path):
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SELF_INSTRUCT))
    s = ingest_seeds(str(tmp_path / "s.jsonl"), str(tmp_path / "o"),
                     field_map={"input": "instances.1.input", "output": "instances.1.output"})
    assert s.accepted == 2 and s.rejected == {}
    first, second = seed_rows(s)
    assert (first["input"], first["response"]) == ("vegan", "Tofu scramble.")
    assert json.loads(first["meta"])["fields"]["instances"] == [{"input": "", "output": "Oatmeal with water."}]
    # a row without the mapped path has no input or output; the instance it does have stays in meta
    assert (second["input"], second["response"]) == ("", None)
    assert json.loads(second["meta"])["fields"]["instances"] == [{"input": "hot", "output": "cold"}]


def test_mapped_field_that_never_occurs_is_an_error_before_any_row(tmp_path):
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SELF_INSTRUCT))
    with pytest.raises(IngestError) as err:
        ingest_seeds(str(tmp_path / "s.jsonl"), str(tmp_path / "o"), field_map={"input": "instances[0].input"})
    assert "no record has 'instances[0].input'" in str(err.value)
    assert "fields found: id, name, instruction, instances, is_classification" in str(err.value)
    assert not (tmp_path / "o").exists()


def test_capitalised_keys_without_a_map_and_no_instruction_names_the_fields(tmp_path):
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CAPITALISED * 3))
    s = ingest_seeds(str(tmp_path / "t.jsonl"), str(tmp_path / "o"))
    assert (s.read, s.accepted, s.rejected) == (6, 2, {"duplicate": 4})
    rows = [{"idx": i, "Query": f"question {i}", "Skill": "x"} for i in range(3)]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(IngestError, match=r"q.jsonl: no record has an instruction; fields found: idx, Query, Skill; "
                                          r"map one with --map instruction=idx"):
        ingest_seeds(str(tmp_path / "q.jsonl"), str(tmp_path / "o2"))
    s = ingest_seeds(str(tmp_path / "q.jsonl"), str(tmp_path / "o3"), field_map={"instruction": "Query"})
    assert [json.loads(r["meta"])["fields"] for r in seed_rows(s)] == [{"idx": i, "Skill": "x"} for i in range(3)]


def test_partial_map_overrides_only_what_it_names(tmp_path):
    rows = [{"prompt": "Reverse the list.", "input": "1 2 3", "output": "3 2 1", "instruction": "old"}]
    (tmp_path / "p.jsonl").write_text(json.dumps(rows[0]) + "\n")
    s = ingest_seeds(str(tmp_path / "p.jsonl"), str(tmp_path / "o"), field_map={"instruction": "prompt"})
    (row,) = seed_rows(s)
    assert (row["instruction"], row["input"], row["response"]) == ("Reverse the list.", "1 2 3", "3 2 1")
    assert json.loads(row["meta"])["fields"] == {"instruction": "old"}


def test_jsonl_line_separators_inside_records(tmp_path):
    texts = ["a\u2028b", "c\u2029d", "e\x85f", "plain"]
    data = "".join(json.dumps({"instruction": t}, ensure_ascii=False) + "\n" for t in texts)
    (tmp_path / "u.jsonl").write_text(data, encoding="utf-8")
    for vectorised in (True, False):
        s = ingest_seeds(str(tmp_path / "u.jsonl"), str(tmp_path / f"o{vectorised}"), vectorised=vectorised)
        assert (s.read, s.accepted, s.rejected) == (4, 4, {})
        assert [(r["instruction"], json.loads(r["meta"])["line"]) for r in seed_rows(s)] == \
            list(zip(texts, [1, 2, 3, 4], strict=True))


def test_csv_huge_field_and_header_detection(tmp_path):
    big = "word " * 40_000  # 200 KB, over the csv module's default 128 KiB field limit
    with open(tmp_path / "big.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["instruction", "output"])
        w.writerow(["Summarise this.", big])
    s = ingest_seeds(str(tmp_path / "big.csv"), str(tmp_path / "o1"))
    assert s.accepted == 1 and seed_rows(s)[0]["response"] == big
    (tmp_path / "nohead.csv").write_text("Write a limerick.,A limerick\nName a fruit.,Apple\n")
    fmap = {"instruction": "column1", "output": "column2"}
    s = ingest_seeds(str(tmp_path / "nohead.csv"), str(tmp_path / "o2"), field_map=fmap)
    assert (s.read, s.accepted) == (2, 2)  # the first row is data, not a header
    assert [r["instruction"] for r in seed_rows(s)] == ["Write a limerick.", "Name a fruit."]
    s = ingest_seeds(str(tmp_path / "nohead.csv"), str(tmp_path / "o3"), csv_header=True,
                     field_map={"instruction": "Write a limerick."})
    assert (s.read, s.accepted) == (1, 1)
    (tmp_path / "head.csv").write_text("question,answer\nWhy?,Because.\n")
    s = ingest_seeds(str(tmp_path / "head.csv"), str(tmp_path / "o4"), csv_header=False,
                     field_map={"instruction": "column1"})
    assert (s.read, s.accepted) == (2, 2)


def test_vectorised_and_row_paths_agree_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_read, "BLOCK_BYTES", 300)  # many blocks, duplicates across them
    rows = [{"instruction": f"Task {i}:  fold\tthese   spaces", "input": "Ünïcode ÇASE" if i % 3 else "", "output": "x"}
            for i in range(40)]
    rows += [{"instruction": "TASK 1: fold these spaces", "input": "ünïcode çase", "output": "dup"},
             {"instruction": "\x1c edge \x1f", "input": "  ", "output": None}]
    data = "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows)
    (tmp_path / "v.jsonl").write_text(data, encoding="utf-8", newline="")
    results = []
    for vectorised in (True, False):
        s = ingest_seeds(str(tmp_path / "v.jsonl"), str(tmp_path / f"o{vectorised}"), shard_size=7,
                         vectorised=vectorised)
        rejected = read_shard(s.rejected_uri).to_pylist()
        results.append(([{k: v for k, v in r.items() if k != "created_at"} for r in seed_rows(s)],
                        rejected, s.accepted, s.rejected))
    assert results[0] == results[1]
    assert results[0][2:] == (41, {"duplicate": 1})
    assert results[0][1][0]["line"] == 41 and "same normalised text as line 2" in results[0][1][0]["detail"]


def test_whole_file_errors_one_line(tmp_path):
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(IngestError, match=r"d.jsonl: is a folder; give the seed file itself"):
        ingest_seeds(str(tmp_path / "d.jsonl"), str(tmp_path / "o"))
    with pytest.raises(IngestError, match="unknown format"):
        ingest_seeds(str(tmp_path / "x.jsonl.lz4"), str(tmp_path / "o"))
    (tmp_path / "bad.json").write_text('{\n  "instruction": "a",\n  oops\n}')
    with pytest.raises(IngestError, match=r"bad.json: not valid JSON at line 3"):
        ingest_seeds(str(tmp_path / "bad.json"), str(tmp_path / "o"))


def test_gzip_bytes_round_trip(tmp_path):
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as f:
        f.write(b'{"instruction": "one"}\n{"instruction": "two"}')  # no final newline
    (tmp_path / "s.jsonl.gz").write_bytes(buf.getvalue())
    s = ingest_seeds(str(tmp_path / "s.jsonl.gz"), str(tmp_path / "o"))
    assert [r["instruction"] for r in seed_rows(s)] == ["one", "two"]


def test_meta_follows_lineage_into_exports(prefect_harness, tmp_path):
    from flows.evol_instruct import evol_instruct
    from storage import list_committed_shards
    from tasks.core.config import parse_run_config

    rows = [{"Instruction": f"Describe animal number {i} and where it lives.", "Output": "A fine answer.",
             "idx": i, "Skill": "zoology"} for i in range(8)]
    (tmp_path / "seeds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = parse_run_config({"name": "meta", "seeds": str(tmp_path / "seeds.jsonl"),
                               "output_root": str(tmp_path / "runs"), "rounds": 2, "shard_size": 3,
                               "dedup": {"near": False},  # the seeds are near duplicates of each other
                               "llm": {"backend": "scripted", "model": "demo"},
                               "orchestration": {"retries": 0, "retry_delay_s": 0}})
    result = evol_instruct(config)
    seeds_dir = f"{result.run_uri}/round=0/pool"
    seed_meta = {r["id"]: r["meta"] for u in list_committed_shards(seeds_dir) for r in read_shard(u).to_pylist()}
    assert [json.loads(m)["fields"] for m in seed_meta.values()] == [{"idx": i, "Skill": "zoology"} for i in range(8)]
    fs, path = resolve_path(result.export.files["parquet"])
    exported = pq.read_table(fs.open(path, "rb")).to_pylist()
    assert any(r["round"] > 0 for r in exported)
    for r in exported:
        assert r["meta"] == seed_meta[r["root_id"]]
    for k in (1, 2):
        for stage in ("candidates", "rejected"):
            for u in list_committed_shards(f"{result.run_uri}/round={k}/{stage}"):
                assert all(r["meta"] == seed_meta[r["root_id"]] for r in read_shard(u).to_pylist())
    fs, path = resolve_path(result.export.files["alpaca"])
    alpaca = json.loads(fs.cat_file(path))
    by_seed = {r["Instruction"]: r["idx"] for r in rows}
    assert {a["instruction"]: a["meta"]["fields"]["idx"] for a in alpaca if a["instruction"] in by_seed} == by_seed
    assert all(a["meta"]["fields"]["Skill"] == "zoology" for a in alpaca) and len(alpaca) > len(rows)


def resolve_path(uri: str):
    from storage import resolve

    return resolve(uri)


def test_run_ingest_check_stops_fresh_and_cached_and_is_not_retried(tmp_path):
    from prefect.states import Failed

    from storage import RunLayout
    from tasks.core.config import parse_run_config
    from tasks.ingest.seeds import EmptySeedsError, _retry_unless_bad_input, ingest_run_seeds

    (tmp_path / "s.jsonl").write_text('{"instruction": "only one"}\nbroken\n{"instruction": ""}\n')
    config = parse_run_config({"seeds": str(tmp_path / "s.jsonl"), "ingest": {"max_rejected_share": 0.6}})
    layout = RunLayout(str(tmp_path / "runs"), "r")
    for _ in range(2):  # the second time from the cached summary
        with pytest.raises(EmptySeedsError, match=r"2 of 3 rows rejected, more than ingest.max_rejected_share=0.6 "
                                                  r"\(rejected: empty_instruction=1, malformed_json=1\)"):
            ingest_run_seeds(config, layout, key="k")
    assert _retry_unless_bad_input(None, None, Failed(data=EmptySeedsError("x"))) is False
    assert _retry_unless_bad_input(None, None, Failed(data=ConnectionError("x"))) is True
    relaxed = parse_run_config({"seeds": str(tmp_path / "s.jsonl"), "ingest": {"max_rejected_share": 0.7}})
    assert ingest_run_seeds(relaxed, RunLayout(str(tmp_path / "runs"), "r2"), key="k").accepted == 1
