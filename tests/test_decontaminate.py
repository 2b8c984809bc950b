"""Decontamination against benchmark files: words and n-grams, the file readers, the config, the errors."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.config import ConfigError, parse_run_config
from tasks.core.config_file import load_run_config
from tasks.core.data_config import BenchmarkFile
from tasks.mix.benchmarks import Benchmark, BenchmarkError, read_benchmark, read_benchmarks
from tasks.mix.decontaminate import contaminated_rows, find_contaminated, words
from tasks.runtime.resolve import build_context

THIRTEEN = "the quick brown fox jumps over the lazy dog while seven wizards quietly hum"  # 14 words


def test_words_fold_case_and_drop_punctuation():
    got = words(pa.array(["  Hello, WORLD!  Café—naïve x_y.", None, "", "?!", "it's 3.5"])).to_pylist()
    assert got == [["hello", "world", "café", "naïve", "x", "y"], None, None, None, ["it", "s", "3", "5"]]


def test_a_shared_thirteen_gram_matches_whatever_the_case_and_punctuation():
    item = THIRTEEN.split()
    row = "Intro: " + " ".join(w.upper() + "," for w in item[:13]) + " -- end"
    misses_one = " ".join(item[:12]) + " banana " + item[12]
    assert find_contaminated(pa.array([row, misses_one, THIRTEEN[:40]]), pa.array([THIRTEEN])) == {0: 0}


def test_texts_under_n_words_are_one_gram_matched_only_by_the_same_words():
    items = pa.array(["What is two plus two?", "Name a colour."])
    rows = pa.array(["what is two PLUS two", "Tell me: what is two plus two?", "name a colour", "name", "", None])
    assert find_contaminated(rows, items, n=13) == {0: 0, 2: 1}
    # with n = 3 the long row holds the item's 3-grams; the one-word row is still a gram of its own
    assert find_contaminated(rows, items, n=3) == {0: 0, 1: 0, 2: 1}
    assert find_contaminated(rows, items, n=1) == {0: 0, 1: 0, 2: 1, 3: 1}


def test_each_row_names_the_first_item_of_its_first_shared_gram():
    a, b = "alpha beta gamma delta epsilon", "zeta eta theta iota kappa"
    rows = pa.array([f"{b} and then {a}", f"{a} {b}", "nothing"])
    assert find_contaminated(rows, pa.array([a, b, b, None, ""]), n=5) == {0: 1, 1: 0}
    assert find_contaminated(rows, pa.array([None, ""]), n=5) == {}


def test_rows_are_matched_across_blocks(monkeypatch):
    monkeypatch.setattr("tasks.mix.decontaminate.ROW_BLOCK", 2)
    rows = pa.array(["x"] * 5 + [THIRTEEN] + ["y"] * 3 + [THIRTEEN.upper()])
    assert find_contaminated(rows, pa.array(["unrelated", THIRTEEN])) == {5: 1, 9: 1}


def write_benchmarks(tmp_path):
    """The same three items as JSONL (gzip), Parquet and CSV; the question in ``question``."""
    items = [{"question": "Unrelated item", "id": 1}, {"id": 2}, {"question": THIRTEEN, "id": 3}]
    jsonl = tmp_path / "bench.jsonl.gz"
    jsonl.write_bytes(gzip.compress(("\n".join(json.dumps(i) for i in items) + "\n\n").encode()))
    parquet = tmp_path / "bench.parquet"
    pq.write_table(pa.Table.from_pylist(items), parquet)
    csv = tmp_path / "bench.csv"
    csv.write_text('id,question\n1,Unrelated item\n2,\n3,"' + THIRTEEN.replace("lazy", "lazy\n") + '"\n')
    return jsonl, parquet, csv


def test_benchmark_files_in_every_format_give_their_items_in_record_order(tmp_path):
    for path in write_benchmarks(tmp_path):
        bench = read_benchmark(BenchmarkFile(path=str(path), field="question"))
        texts = bench.texts.to_pylist()
        assert len(texts) == 3 and texts[0] == "Unrelated item" and texts[1] in (None, "")
        rows, items = contaminated_rows(pa.array(["a", THIRTEEN.title()]), [bench], 13)
        assert rows.tolist() == [1] and items == [f"{path}#2"]


def test_rows_name_the_file_and_record_of_their_item(tmp_path):
    jsonl, parquet, csv = write_benchmarks(tmp_path)
    parquet.unlink()
    pq.write_table(pa.table({"q": ["zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma"]}), parquet)
    benchmarks = read_benchmarks((BenchmarkFile(path=str(parquet), field="q"),
                                  BenchmarkFile(path=str(csv), field="question")))
    rows, items = contaminated_rows(pa.array([THIRTEEN, "no", "Zeta eta theta iota kappa lambda mu nu xi omicron "
                                              "pi rho sigma tau"]), benchmarks, 13)
    assert rows.tolist() == [0, 2] and items == [f"{csv}#2", f"{parquet}#0"]


def test_an_item_is_named_by_its_file_with_credentials_masked():
    bench = Benchmark("s3://KEY:SECRET@bucket/mmlu.jsonl", "question", "0" * 64, pa.array(["a"]))
    assert bench.item(7) == "s3://***@bucket/mmlu.jsonl#7"


def test_a_missing_file_or_field_is_an_error_naming_both(tmp_path):
    jsonl, parquet, csv = write_benchmarks(tmp_path)
    with pytest.raises(BenchmarkError, match=r"benchmark file not found: .*nope\.jsonl"):
        read_benchmark(BenchmarkFile(path=str(tmp_path / "nope.jsonl"), field="question"))
    for path in (jsonl, parquet, csv):
        with pytest.raises(BenchmarkError, match=rf"benchmark file {path} has no field 'prompt'; fields found: "
                                                 r"id, question"):
            read_benchmark(BenchmarkFile(path=str(path), field="prompt"))
    with pytest.raises(BenchmarkError, match=r"bench\.txt: unknown format"):
        read_benchmark(BenchmarkFile(path=str(tmp_path / "bench.txt"), field="q"))


def test_a_benchmark_file_that_changed_since_the_run_started_is_an_error(tmp_path):
    jsonl, _, _ = write_benchmarks(tmp_path)
    with pytest.raises(Exception, match="changed since the run started"):
        read_benchmarks((BenchmarkFile(path=str(jsonl), field="question"),), expected=("0" * 64,))


def test_config_takes_a_list_or_files_and_n_with_paths_from_the_config_folder(tmp_path):
    (tmp_path / "c.yaml").write_text("seeds: s.jsonl\nmix:\n  decontaminate:\n    - {path: b/gsm8k.jsonl, field: q}\n")
    config = load_run_config(tmp_path / "c.yaml")
    assert config.mix.decontaminate.n == 13
    assert [f.path for f in config.mix.decontaminate.files] == [str(tmp_path / "b" / "gsm8k.jsonl")]
    full = parse_run_config({"seeds": "s", "mix": {"decontaminate": {"files": [{"path": "s3://b/x.csv",
                                                                                 "field": "q"}], "n": 8}}})
    assert full.mix.decontaminate.n == 8 and full.mix.decontaminate.files[0].path == "s3://b/x.csv"
    with pytest.raises(ConfigError, match=r"mix\.decontaminate\.files\.0\.field: Field required"):
        parse_run_config({"seeds": "s", "mix": {"decontaminate": [{"path": "x.csv"}]}})


def test_a_run_with_a_bad_benchmark_stops_before_it_starts(tmp_path):
    seeds = tmp_path / "s.jsonl"
    seeds.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n")
    jsonl, _, _ = write_benchmarks(tmp_path)
    base = {"seeds": str(seeds), "output_root": str(tmp_path / "runs"), "llm": {"backend": "scripted"}}
    with pytest.raises(BenchmarkError, match=rf"{jsonl} has no field 'prompt'"):
        build_context(parse_run_config({**base, "mix": {"decontaminate": [{"path": str(jsonl), "field": "prompt"}]}}))
    ctx = build_context(parse_run_config({**base, "mix": {"decontaminate": [{"path": str(jsonl),
                                                                             "field": "question"}]}}))
    assert ctx.benchmark_shas == (read_benchmark(BenchmarkFile(path=str(jsonl), field="question")).sha256,)
    assert ctx.mix_key(["a"]) != build_context(parse_run_config(base)).mix_key(["a"])


def test_validation_names_the_benchmark_file_and_field(tmp_path):
    from tasks.planning.validate import validate_run

    seeds = tmp_path / "s.jsonl"
    seeds.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n")
    jsonl, _, _ = write_benchmarks(tmp_path)
    config = parse_run_config({"seeds": str(seeds), "output_root": str(tmp_path / "runs"),
                               "mix": {"decontaminate": [{"path": str(jsonl), "field": "question"},
                                                         {"path": str(jsonl), "field": "prompt"},
                                                         {"path": str(tmp_path / "gone.csv"), "field": "q"}]}})
    problems = [str(p) for p in validate_run(config, "run.yaml", write_check=False) if "decontaminate" in str(p)]
    assert problems == [f"run.yaml: mix.decontaminate.files.1: benchmark file {jsonl} has no field 'prompt'; "
                        "fields found: id, question",
                        f"run.yaml: mix.decontaminate.files.2: benchmark file not found: {tmp_path / 'gone.csv'}"]
