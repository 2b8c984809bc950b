"""What a run folder says is what it holds: a failed rerun is not listed as done, fewer rounds leave no stale round
folder, the card names the seed path the rows carry, an empty export warns, an export's files change together."""

from __future__ import annotations

import json
import re
import shutil

import duckdb
import pytest

import flows.evol_instruct as flow_module
import tasks.export.files as export_files
from flows.evol_instruct import evol_instruct
from storage import read_shard, resolve
from tasks.core.config import parse_run_config
from tasks.llm.scripted import ScriptedBackend, register_scripted_backend
from tasks.reporting.monitor import empty_export_warning
from tasks.reporting.run_index import list_runs
from tests.flow_script import PlannedScript, load_seeds


def make_config(tmp_path, name: str, seeds_name: str = "seeds.jsonl", **extra):
    seeds = load_seeds()
    src = tmp_path / seeds_name
    if not src.exists():
        src.write_text("\n".join(json.dumps(s) for s in seeds))
    register_scripted_backend(ScriptedBackend(PlannedScript(seeds)), name)
    data = {"name": name, "seeds": str(src), "output_root": str(tmp_path / "runs"), "rounds": 1, "shard_size": 10,
            "random_seed": 5, "llm": {"backend": "scripted", "model": name},
            "orchestration": {"retries": 0, "retry_delay_s": 0}, **extra}
    return parse_run_config(data)


def listed(tmp_path) -> list[tuple]:
    return [(r.name, r.status, r.rounds_done, r.rounds, r.rows, r.error) for r in list_runs(str(tmp_path / "runs"))]


def test_a_rerun_that_fails_at_mix_is_listed_failed_not_done(prefect_harness, tmp_path, monkeypatch):
    first = evol_instruct(make_config(tmp_path, "fails"))
    assert listed(tmp_path) == [("fails", "done", 1, 1, first.export.rows, None)]

    def broken_mix(*args, **kwargs):
        raise OSError("disk gone\nsecond line")

    monkeypatch.setattr("tasks.mix.final.mix_final", broken_mix)
    monkeypatch.setattr(flow_module, "mix_final_task", flow_module.mix_final_task.with_options(retries=0))
    state = evol_instruct(make_config(tmp_path, "fails", mix={"sample_size": 5}), return_state=True)
    assert state.is_failed()
    assert listed(tmp_path) == [("fails", "failed", 1, 1, None, "OSError: disk gone")]
    monkeypatch.undo()
    evol_instruct(make_config(tmp_path, "fails", mix={"sample_size": 5}))
    assert listed(tmp_path) == [("fails", "done", 1, 1, 5, None)]


def test_fewer_rounds_remove_the_rounds_beyond_and_every_reader_counts_two(prefect_harness, tmp_path):
    evol_instruct(make_config(tmp_path, "shrink", rounds=3))
    run = tmp_path / "runs" / "shrink"
    assert (run / "round=3" / "_round.json").exists()
    result = evol_instruct(make_config(tmp_path, "shrink", rounds=2))
    assert sorted(p.name for p in run.glob("round=*")) == ["round=0", "round=1", "round=2"]
    assert listed(tmp_path) == [("shrink", "done", 2, 2, result.export.rows, None)]
    rounds = duckdb.sql(f"SELECT DISTINCT round FROM '{run}/round=*/evolved/*.parquet' ORDER BY 1").fetchall()
    assert rounds == [(1,), (2,)]
    assert sorted(result.mix.by_round) == ["0", "1", "2"]


def test_a_moved_seed_file_card_and_rows_name_the_same_path(prefect_harness, tmp_path):
    first = evol_instruct(make_config(tmp_path, "moved"))
    old = str(tmp_path / "seeds.jsonl")
    shutil.move(old, tmp_path / "elsewhere.jsonl")
    new = str(tmp_path / "elsewhere.jsonl")
    result = evol_instruct(make_config(tmp_path, "moved", seeds_name="elsewhere.jsonl"))
    assert result.ingest.reused and result.mix.reused and result.data_key == first.data_key
    sources = {json.loads(m)["source"] for m in read_shard(result.mix.final_uri)["meta"].to_pylist()
               if json.loads(m).get("source")}
    assert sources == {old}
    fs, path = resolve(result.export.files["card"])
    card = fs.cat_file(path).decode()
    assert f"- seeds: read from `{old}` (every row's `meta.source`); the config now names `{new}`, the same " \
           "content" in card
    assert f"\nseeds: {old}\n" in card and new not in card.split("## Configuration")[1]


def test_zero_rounds_without_seeds_exports_nothing_and_says_so(prefect_harness, tmp_path):
    result = evol_instruct(make_config(tmp_path, "empty", rounds=0, mix={"include_seeds": False}))
    assert result.export.rows == 0
    assert empty_export_warning(result.export.rows, 0, False) == (
        "the export holds 0 rows: rounds: 0 with mix.include_seeds: false leaves nothing to export; set rounds "
        "above 0 or mix.include_seeds: true")
    assert empty_export_warning(0, 2, True) == ("the export holds 0 rows: no row survived the rounds and the mix; "
                                                "check the rejections in the card")
    assert empty_export_warning(3, 0, False) is None


def _old_export(export):
    export.mkdir(parents=True)
    for name in ("data.parquet", "alpaca.json", "README.md"):
        (export / name).write_text(f"old {name}")
    (export / "_export.json").write_text("old marker")


PAYLOADS = {"parquet": ("data.parquet", b"new parquet"), "alpaca": ("alpaca.json", b"new alpaca"),
            "card": ("README.md", b"new card"), "plot": ("plots/rounds.png", b"new png")}


def test_an_export_killed_while_staging_leaves_the_old_set_whole(tmp_path, monkeypatch):
    export = tmp_path / "export"
    _old_export(export)
    real, calls = export_files.write_file_atomic, []

    def dies_on_the_third(uri, data, settings=None):
        calls.append(uri)
        if len(calls) == 3:
            raise OSError("killed")
        return real(uri, data, settings)

    monkeypatch.setattr(export_files, "write_file_atomic", dies_on_the_third)
    with pytest.raises(OSError, match="killed"):
        export_files.publish_together(str(export), str(export / "_export.json"), PAYLOADS)
    assert {p.name: p.read_text() for p in export.iterdir() if p.is_file()} == {
        "data.parquet": "old data.parquet", "alpaca.json": "old alpaca.json", "README.md": "old README.md",
        "_export.json": "old marker"}
    assert sorted(p.name for p in (export / ".staging").iterdir()) == ["alpaca.json", "data.parquet"]
    monkeypatch.undo()
    files, hashes = export_files.publish_together(str(export), str(export / "_export.json"), PAYLOADS)
    assert sorted(str(p.relative_to(export)) for p in export.rglob("*")) == [
        "README.md", "alpaca.json", "data.parquet", "plots", "plots/rounds.png"]
    assert files["plot"] == str(export / "plots" / "rounds.png") and (export / "data.parquet").read_bytes() == \
        b"new parquet"
    assert set(hashes) == set(PAYLOADS)


def test_an_export_killed_while_moving_leaves_no_old_file_and_no_marker(tmp_path, monkeypatch):
    export = tmp_path / "export"
    _old_export(export)
    fs, _ = resolve(str(export))
    real, moved = type(fs).mv, []

    def dies_on_the_second(self, src, dst, **kwargs):
        moved.append(dst)
        if len(moved) == 2:
            raise OSError("killed")
        return real(self, src, dst, **kwargs)

    monkeypatch.setattr(type(fs), "mv", dies_on_the_second)
    with pytest.raises(OSError, match="killed"):
        export_files.publish_together(str(export), str(export / "_export.json"), PAYLOADS)
    assert {p.name: p.read_bytes() for p in export.iterdir() if p.is_file()} == {"data.parquet": b"new parquet"}


def test_runs_and_show_say_the_last_attempt_failed(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app
    from tasks.reporting.run_index import record_attempt

    run = tmp_path / "runs" / "demo"
    (run / "export").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"rounds": 1}))
    (run / "export" / "_export.json").write_text(json.dumps({"key": "k", "summary": {"rows": 33}}))
    (run / "export" / "README.md").write_text("# Evol-Instruct data: demo\n")
    record_attempt(str(run), "failed", OSError("disk gone\nmore"))
    runner = CliRunner()
    listed = runner.invoke(app, ["runs", str(tmp_path / "runs")])
    assert listed.exit_code == 0
    assert [re.split(r"\s*│\s*", line.strip("│ "))[:4] for line in listed.output.splitlines()
            if "│ demo" in line] == [["demo", "failed", "0/1", "-"]]
    assert listed.output.endswith("demo: the last attempt failed: OSError: disk gone\n")
    shown = runner.invoke(app, ["show", "demo", "--output-root", str(tmp_path / "runs")])
    assert shown.exit_code == 0
    assert shown.output == (f"warning: the last attempt of {run} failed (OSError: disk gone); this card is an "
                            "earlier attempt's\n# Evol-Instruct data: demo\n")


@pytest.mark.server
def test_sigterm_during_a_run_exits_143_through_its_clean_up(prefect_server, tmp_path):
    from tests.test_crash_recovery import evol_run, write_config

    config = write_config(tmp_path, tmp_path / "runs")
    proc = evol_run(config, {"PREFECT_API_URL": prefect_server, "EVOL_FAULT_KILL_AT": "4",
                             "EVOL_FAULT_SIGNAL": "SIGTERM"})
    assert proc.returncode == 143, proc.stderr[-3000:]
    run = tmp_path / "runs" / "crash"
    assert not (run / "_lease.json").exists()  # given back: the next run needs no take-over
    assert [(r.name, r.status) for r in list_runs(str(tmp_path / "runs"))] == [("crash", "stopped")]
    assert len(list((run / "logs").glob("run-*.log"))) == 1
