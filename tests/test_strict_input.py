"""Input that would be merged or dropped silently is refused instead: seed files (an unbalanced CSV quote, a CSV
column named twice, a JSON key given twice), a config key given twice, an output root that dies with the process,
a run name too long for a folder."""

from __future__ import annotations

import json

import pytest
import yaml

from storage import read_shard
from tasks.core.config import ConfigError
from tasks.core.config_file import load_run_config
from tasks.ingest.seeds import IngestError, ingest_seeds
from tests.test_validate import error_lines, run_cli, write_run

HEADER = "instruction,output\n"
ROWS = [f"Explain topic {i} in a sentence.,Fine {i}.\n" for i in range(5)]


def test_an_unbalanced_csv_quote_is_an_error_naming_the_file_and_line(tmp_path):
    seeds = tmp_path / "seeds.csv"
    seeds.write_text(HEADER + ROWS[0] + '"Explain the water cycle,Fine.\n' + '"Name a planet",Mars.\n' + ROWS[1])
    with pytest.raises(IngestError) as err:
        ingest_seeds(str(seeds), str(tmp_path / "o"))
    assert str(err.value) == (f"{seeds}: line 3: unbalanced quote: a quoted field opened in the record at line 3 "
                              "does not close properly (',' expected after '\"', line 4); close it, or write a quote "
                              'inside a quoted field as ""')


def test_a_quote_left_open_to_the_end_of_the_file_is_an_error_too(tmp_path):
    seeds = tmp_path / "seeds.csv"
    seeds.write_text(HEADER + ROWS[0] + '"Explain the water cycle,Fine.\n' + "".join(ROWS[1:]))
    with pytest.raises(IngestError, match=r"seeds.csv: line 3: unbalanced quote: .*\(unexpected end of data, "
                                          r"line 7\)"):
        ingest_seeds(str(seeds), str(tmp_path / "o"))


def test_a_quoted_field_over_several_lines_still_reads(tmp_path):
    seeds = tmp_path / "seeds.csv"
    seeds.write_text(HEADER + '"Write a haiku\nabout rain.",Drops.\n' + ROWS[0])
    summary = ingest_seeds(str(seeds), str(tmp_path / "o"))
    rows = read_shard(summary.shards[0]).to_pylist()
    assert [r["instruction"] for r in rows] == ["Write a haiku\nabout rain.", "Explain topic 0 in a sentence."]


def test_a_csv_header_naming_a_column_twice_is_an_error(tmp_path):
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("instruction,output, instruction\nA,B,C\n")
    with pytest.raises(IngestError) as err:
        ingest_seeds(str(seeds), str(tmp_path / "o"))
    assert str(err.value) == (f"{seeds}: line 1: the header names 'instruction' more than once (columns 1, 3); "
                              "rename all but one, or the values of the others would be lost")


@pytest.mark.parametrize("vectorised", [True, False])
def test_a_jsonl_key_given_twice_quarantines_the_row_with_both_values(tmp_path, vectorised):
    seeds = tmp_path / "seeds.jsonl"
    good = [json.dumps({"instruction": f"Explain topic {i}.", "output": "Fine."}) for i in range(3)]
    twice = '{"instruction": "First text.", "instruction": "Second text.", "output": "x"}'
    nested = '{"instruction": "Nested.", "meta": {"tag": "a", "tag": "b"}}'
    seeds.write_text("\n".join([good[0], twice, good[1], nested, good[2]]) + "\n")
    summary = ingest_seeds(str(seeds), str(tmp_path / "o"), vectorised=vectorised)
    assert (summary.read, summary.accepted, summary.rejected) == (5, 3, {"duplicate_key": 2})
    rejected = read_shard(summary.rejected_uri).to_pylist()
    assert [(r["line"], r["field"], r["reason"], r["raw"]) for r in rejected] == [
        (2, "instruction", "duplicate_key", twice), (4, "meta.tag", "duplicate_key", nested)]
    assert rejected[0]["detail"] == ("key 'instruction' appears twice in one object; which value is meant is "
                                     "unknown: keep one, or rename the other")


def test_a_json_document_key_given_twice_quarantines_that_record_keeping_both_values(tmp_path):
    seeds = tmp_path / "seeds.json"
    seeds.write_text('[{"instruction": "Explain rain.", "output": "Water."},\n'
                     ' {"instruction": "A", "output": "x", "output": "y"}]')
    summary = ingest_seeds(str(seeds), str(tmp_path / "o"))
    assert (summary.read, summary.accepted, summary.rejected) == (2, 1, {"duplicate_key": 1})
    [row] = read_shard(summary.rejected_uri).to_pylist()
    assert (row["line"], row["field"]) == (2, "output")
    assert row["raw"] == '{"instruction": "A", "output": "x", "output": "y"}'


def test_a_config_key_given_twice_is_one_line_exit_2(tmp_path):
    path = write_run(tmp_path)
    with open(path, "a") as f:
        f.write("rounds: 3\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert str(err.value) == f"{path}: line 8: key 'rounds' is given twice (first at line 6); keep one"
    result = run_cli("run", path, "--no-progress")
    assert result.exit_code == 2
    assert error_lines(result) == [f"error: {path}: line 8: key 'rounds' is given twice (first at line 6); keep one"]


def test_a_nested_config_key_given_twice_and_merge_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seeds: s.jsonl\nllm:\n  backend: scripted\n  model: a\n  model: b\n")
    with pytest.raises(ConfigError, match=r"run.yaml: line 5: key 'model' is given twice \(first at line 4\)"):
        load_run_config(path)
    path.write_text("base: &b {rounds: 2}\n")
    assert yaml.safe_load(path.read_text()) == {"base": {"rounds": 2}}
    path.write_text("seeds: s.jsonl\nllm: &l {backend: scripted, model: a}\nsampling:\n  evolve: {max_tokens: 9}\n")
    assert load_run_config(path).sampling.evolve.max_tokens == 9


def test_a_memory_output_root_is_refused_by_evol_run(tmp_path):
    path = write_run(tmp_path, output_root="memory://runs")
    result = run_cli("run", path, "--no-progress")
    assert result.exit_code == 2
    assert error_lines(result) == [
        f"error: {path}: output_root: memory://runs: memory:// lives only as long as this process, so every output "
        "would vanish when it exits; give a local folder or s3:// (memory:// is for tests that call the flow in "
        "their own process)"]


def test_a_run_name_too_long_for_a_folder_is_refused_at_validation(tmp_path):
    path = write_run(tmp_path, name="n" * 300)
    result = run_cli("run", path, "--no-progress")
    assert result.exit_code == 2
    assert error_lines(result) == [f"error: {path}: name: String should have at most 100 characters"]
    assert not (tmp_path / "runs").exists()


def test_a_field_map_check_that_meets_an_unbalanced_quote_is_one_line(tmp_path):
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("q,a\n" + '"Explain rain,Water.\n' + '"Name a planet",Mars.\n')
    path = write_run(tmp_path, seeds=str(seeds), field_map={"instruction": "q"})
    result = run_cli("run", path, "--no-progress")
    assert result.exit_code == 2
    assert error_lines(result) == [f"error: {path}: seeds: {seeds}: line 2: unbalanced quote: a quoted field opened "
                                   "in the record at line 2 does not close properly (',' expected after '\"', line "
                                   '3); close it, or write a quote inside a quoted field as ""']


def test_a_parquet_schema_naming_a_column_twice_is_an_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    seeds = tmp_path / "seeds.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["A"]), pa.array(["B"])], names=["instruction", "instruction"]),
                   seeds)
    with pytest.raises(IngestError) as err:
        ingest_seeds(str(seeds), str(tmp_path / "o"))
    assert str(err.value) == (f"{seeds}: the Parquet schema names 'instruction' more than once (columns "
                              "1, 2); rename all but one, or the values of the others would be lost")


def test_a_recipe_key_given_twice_names_the_recipe_and_line(tmp_path):
    from tasks.train.sft import RecipeError, load_recipe

    recipe = tmp_path / "mine.yaml"
    recipe.write_text("base_model: default\nmethod: lora\nmethod: full\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(str(recipe))
    assert str(err.value) == f"{recipe}: line 3: key 'method' is given twice (first at line 2); keep one"
