"""Run folders are relocatable: markers name the run's files relative to the run folder, so a copied or moved
folder verifies and reuses its own files (issue 25)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from flows.evol_instruct import evol_instruct
from storage.stages import RELATIVE, absolute_in_run, relative_to_run
from tasks.core.config import parse_run_config
from tasks.core.context import run_layout

MARKERS = ("round=0/_ingest.json", "round=1/_round.json", "round=2/_round.json", "final/_mix.json",
           "export/_export.json")


@pytest.fixture(scope="module")
def finished(scripted_run, tmp_path_factory):
    """A finished run (20 seeds, 2 rounds): its config (a dict) and its result."""
    tmp = tmp_path_factory.mktemp("relocatable")
    return scripted_run(tmp, "moved", "orig")


class Warnings(logging.Handler):
    """Warnings of Prefect's loggers (task and flow runs) while a rerun runs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture()
def warnings():
    handler = Warnings()
    logging.getLogger("prefect").addHandler(handler)
    yield handler.lines
    logging.getLogger("prefect").removeHandler(handler)


def rerun_at(config: dict, root: Path | str):
    return evol_instruct(parse_run_config({**config, "output_root": str(root)}))


def copy_run(config: dict, tmp_path: Path) -> Path:
    src = Path(run_layout(parse_run_config(config)).run_uri)
    shutil.copytree(src, tmp_path / "copy" / src.name)
    return tmp_path / "copy"


def test_markers_name_the_runs_files_relative_to_the_run_folder(finished):
    config, result = finished
    run = Path(result.run_uri)
    for name in MARKERS:
        text = (run / name).read_text()
        assert str(run) not in text, name
        assert f'"{RELATIVE}' in text, name


def test_relative_paths_round_trip_and_leave_other_strings_alone():
    record = {"uri": "s3://b/runs/r/round=1/pool/shard-00000.parquet", "source": "s3://b/seeds.jsonl",
              "list": ["/runs/r/x", "/runs/rx/y"], "n": 3}
    rel = relative_to_run(record, "/runs/r")
    assert rel["list"] == ["./x", "/runs/rx/y"] and rel["uri"] == record["uri"]
    assert absolute_in_run(relative_to_run(record, "s3://b/runs/r"), "s3://b/runs/r") == record
    assert absolute_in_run(relative_to_run(record, "s3://b/runs/r"), "/elsewhere/r")["uri"] == \
        "/elsewhere/r/round=1/pool/shard-00000.parquet"


def test_a_copied_folder_with_a_corrupted_export_repairs_its_own_file(finished, tmp_path, warnings):
    config, result = finished
    root = copy_run(config, tmp_path)
    copied = root / "moved" / "export" / "data.parquet"
    original = Path(result.export.files["parquet"]).read_bytes()
    copied.write_bytes(original[:-20] + b"\0" * 20)
    again = rerun_at(config, root)
    assert not again.export.reused
    assert copied.read_bytes() == original
    assert again.export.files["parquet"] == str(copied)
    assert again.mix.reused and all(r.reused for r in again.rounds) and again.ingest.reused
    assert again.run_uri == str(root / "moved")
    assert [w for w in warnings if "data.parquet" in w] == [
        f"export: export {copied} differs from the file recorded (its SHA-256 changed): writing the exports again"]
    assert Path(result.export.files["parquet"]).read_bytes() == original  # the original is untouched


def test_a_moved_folder_reruns_with_every_stage_reused(finished, tmp_path, warnings):
    config, result = finished
    root = copy_run(config, tmp_path)
    moved = tmp_path / "moved-root"
    shutil.move(root, moved)
    again = rerun_at(config, moved)
    assert again.ingest.reused and all(r.reused for r in again.rounds) and again.mix.reused and again.export.reused
    assert again.rounds[0].shards_reused == again.rounds[0].shards
    assert again.export.files["parquet"] == str(moved / "moved" / "export" / "data.parquet")
    assert all(ref.uri.startswith(str(moved)) for r in again.rounds for ref in r.pool_out + r.evolved_shards)
    assert again.mix.final_uri.startswith(str(moved)) and again.export.sha256 == result.export.sha256
    assert warnings == []


def test_an_older_absolute_marker_of_a_moved_folder_is_recomputed_with_a_warning(finished, tmp_path, warnings):
    config, result = finished
    root = copy_run(config, tmp_path)
    run = root / "moved"
    marker = run / "final" / "_mix.json"
    old = absolute_in_run(json.loads(marker.read_text()), result.run_uri)  # as an older version wrote it
    marker.write_text(json.dumps(old))
    again = rerun_at(config, root)
    assert all(r.reused for r in again.rounds) and not again.mix.reused
    assert again.mix.final_sha256 == result.mix.final_sha256 and again.export.sha256 == result.export.sha256
    assert f"{run}/final/_mix.json names {result.run_uri}/final/shard-00000.parquet, outside its run folder {run}" \
        in "\n".join(warnings)
    assert str(result.run_uri) not in marker.read_text()


def test_a_run_folder_copied_on_s3_repairs_its_own_export(prefect_harness, s3_bucket, s3_settings, tmp_path,
                                                          warnings):
    from storage import resolve
    from tests.flow_script import load_seeds

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps(s) for s in load_seeds(n=8)) + "\n")
    config = {"name": "s3copy", "seeds": str(seeds), "output_root": s3_bucket + "/a", "rounds": 1, "shard_size": 4,
              "llm": {"backend": "scripted", "model": "demo"}, "orchestration": {"retries": 0, "retry_delay_s": 0}}
    first = evol_instruct(parse_run_config(config))
    fs, bucket = resolve(s3_bucket, s3_settings)
    fs.copy(f"{bucket}/a/s3copy", f"{bucket}/b/s3copy", recursive=True)
    copied = f"{bucket}/b/s3copy/export/data.parquet"
    original = fs.cat_file(f"{bucket}/a/s3copy/export/data.parquet")
    fs.pipe_file(copied, original[:-20] + b"\0" * 20)
    again = rerun_at(config, s3_bucket + "/b")
    assert again.ingest.reused and all(r.reused for r in again.rounds) and again.mix.reused
    assert not again.export.reused and fs.cat_file(copied) == original
    assert again.export.files["parquet"] == f"{s3_bucket}/b/s3copy/export/data.parquet"
    assert again.export.sha256 == first.export.sha256
    assert any(f"export {s3_bucket}/b/s3copy/export/data.parquet differs" in w for w in warnings)
