"""Plan-time validation and one-line errors: every config error is found before Prefect starts, with no run folder."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.cli_common import DEBUG
from prompts.pack import PACKS_DIR
from storage import resolve
from tasks.core.config import parse_run_config
from tasks.planning.validate import validate_run
from tests.conftest import free_port, moto_server

SEEDS = [{"instruction": f"Explain topic number {i} in two sentences.", "output": "Fine.", "Skill": "x"}
         for i in range(6)]


@pytest.fixture(autouse=True)
def _no_debug():
    DEBUG["on"] = False
    yield
    DEBUG["on"] = False


def write_run(tmp_path, **extra) -> str:
    seeds = tmp_path / "seeds.jsonl"
    if not seeds.exists():
        seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    config = {"name": "v", "seeds": str(seeds), "output_root": str(tmp_path / "runs"), "rounds": 1,
              "llm": {"backend": "scripted", "model": "demo"}, **extra}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args))


def error_lines(result) -> list[str]:
    """The error lines the command printed (log records that libraries emit in the same process, as in a
    full test session where Prefect's log handler is installed, are not the command's message)."""
    return [line for line in result.output.splitlines() if line.strip() and not _is_log_record(line)]


def only_error_line(result) -> str:
    lines = error_lines(result)
    assert len(lines) == 1, result.output
    return lines[0]


def _is_log_record(line: str) -> bool:
    return any(f"| {level}" in line for level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")) \
        or line.startswith(("DEBUG:", "INFO:", "WARNING:"))


@pytest.mark.parametrize("extra, expected", [
    ({"operation_weights": {"deepening": 1, "widening": 2}},
     "run.yaml: operation_weights: unknown operation(s) widening for prompt pack 'general'"),
    ({"operation_weights": {"deepening": float("inf")}},
     "run.yaml: operation_weights: Value error, weights must be finite"),
    ({"field_map": {"question": "Q"}},
     "run.yaml: field_map.question: unknown target field; use instruction, input, output"),
    ({"field_map": {"instruction": "instances.0.text"}},
     "run.yaml: field_map.instruction: no record of"),
    ({"llm": {"backend": "vllm", "model": "no-such-model"}},
     "run.yaml: llm.model: 'no-such-model' is not a model folder (with config.json)"),
    ({"llm": {"backend": "scripted", "model": "nobody"}},
     "run.yaml: llm.model: no scripted backend registered as 'nobody'"),
    ({"ingest": {"max_rejected_share": 2}},
     "run.yaml: ingest.max_rejected_share: Input should be less than or equal to 1"),
])
def test_config_errors_are_one_line_before_anything_starts(tmp_path, extra, expected):
    result = run_cli("run", write_run(tmp_path, **extra), "--no-progress")
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # no run folder, not even the output root


def test_seeds_missing_or_a_folder_and_output_root_not_writable(tmp_path):
    path = write_run(tmp_path, seeds=str(tmp_path / "missing.jsonl"))
    started = time.perf_counter()
    result = run_cli("run", path, "--no-progress")
    assert result.exit_code == 2 and time.perf_counter() - started < 10
    assert error_lines(result) == [f"error: {path}: seeds: {tmp_path / 'missing.jsonl'}: no such file"]
    (tmp_path / "folder.jsonl").mkdir()
    result = run_cli("run", write_run(tmp_path, seeds=str(tmp_path / "folder.jsonl")), "--no-progress")
    assert "seeds: " in result.output and "is a folder; give the seed file itself" in result.output
    (tmp_path / "a-file").write_text("x")
    result = run_cli("run", write_run(tmp_path, output_root=str(tmp_path / "a-file" / "runs")), "--no-progress")
    assert result.exit_code == 2 and "output_root: cannot write to" in result.output
    assert not (tmp_path / "runs").exists()


def test_undefined_template_variable_names_the_template(tmp_path):
    pack = tmp_path / "pack"
    shutil.copytree(PACKS_DIR / "general", pack)
    (pack / "equality.jinja2").write_text("Compare {{ first }} and {{ secnd }}. Answer Equal or Not Equal.")
    result = run_cli("run", write_run(tmp_path, prompt_pack=str(pack)), "--no-progress")
    assert result.exit_code == 2
    assert error_lines(result) == [f"error: {pack / 'equality.jinja2'}: equality: template 'equality' "
                                   f"(equality.jinja2) of prompt pack 'general': 'secnd' is undefined"]


def test_validate_run_collects_every_problem(tmp_path):
    config = parse_run_config({"seeds": str(tmp_path / "none.jsonl"), "output_root": str(tmp_path / "runs"),
                               "field_map": {"prompt": "x"}, "operation_weights": {"bogus": 1},
                               "llm": {"backend": "scripted", "model": "nobody"}})
    keys = [p.key for p in validate_run(config, "c.yaml")]
    assert keys == ["operation_weights", "field_map.prompt", "llm.model", "seeds"]


def test_valid_config_passes_and_leaves_nothing(tmp_path):
    config = parse_run_config({"seeds": write_run(tmp_path) and str(tmp_path / "seeds.jsonl"),
                               "output_root": str(tmp_path / "runs"), "field_map": {"instruction": "instruction"},
                               "llm": {"backend": "scripted", "model": "demo"}})
    assert validate_run(config, "c.yaml") == []
    assert list((tmp_path / "runs").iterdir()) == []  # the write check removed its file


def test_prefect_api_unreachable_is_one_line(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    result = run_cli("run", write_run(tmp_path), "--no-progress")
    assert result.exit_code == 2
    line = only_error_line(result)
    assert line.startswith(f"error: environment: PREFECT_API_URL={url}: no Prefect API answers there")
    assert "evol server" in line and "unset PREFECT_API_URL" in line


def test_empty_or_mostly_rejected_seeds_stop_the_run_before_round_1(prefect_harness, tmp_path):
    bad = [{"instruction": "Fine seed number one."}] + [{"instruction": ""}] * 2 + [{"text": "no instruction"}]
    (tmp_path / "seeds.jsonl").write_text("".join(json.dumps(s) + "\n" for s in bad))
    result = run_cli("run", write_run(tmp_path), "--no-progress")
    assert result.exit_code == 2, result.output
    assert (f"error: {tmp_path / 'seeds.jsonl'}: 3 of 4 rows rejected, more than ingest.max_rejected_share=0.5 "
            "(rejected: empty_instruction=2, missing_instruction=1)") in result.output
    fs, root = resolve(str(tmp_path / "runs"))
    assert fs.glob(f"{root}/*/round=0/pool/*.parquet") and not fs.glob(f"{root}/*/round=1")


def test_the_run_says_what_became_of_the_seed_rows(prefect_harness, tmp_path):
    good = [{"instruction": f"Write a short poem about the number {n} and a cat."} for n in range(6)]
    (tmp_path / "seeds.jsonl").write_text("".join(json.dumps(s) + "\n" for s in good[:3]) + "not json\n"
                                          + json.dumps(good[0]) + "\n" + '{"prompt": "x"}\n'
                                          + "".join(json.dumps(s) + "\n" for s in good[3:]))
    result = run_cli("run", write_run(tmp_path), "--no-progress")
    assert result.exit_code == 0, result.output
    quarantine = tmp_path / "runs" / "v" / "round=0" / "rejected_input" / "shard-00000.parquet"
    expected = (f"seeds: 9 read, 6 accepted, 3 rejected (duplicate=1, malformed_json=1, missing_instruction=1); "
                f"quarantined rows: {quarantine}")
    assert expected in result.output.replace("\n", "")


def test_the_runs_first_and_last_lines_are_one_line_each_when_piped(prefect_harness, tmp_path):
    import os

    name = "a-run-whose-name-is-long-enough-to-pass-eighty-columns"
    result = run_cli("run", write_run(tmp_path, name=name), "--no-progress")  # not a tty: 80 columns
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    api = os.environ.get("PREFECT_API_URL") or "a local Prefect API for this run"
    assert lines[0] == f"run {name} (1 round, scripted backend, model demo) on {api}"
    final = [line for line in lines if line.startswith("final rows: ")]
    assert len(final) == 1 and re.fullmatch(r"final rows: \d+ \(seeds and survivors after dedup\)", final[0])


@pytest.mark.server
def test_unusable_seeds_are_one_error_line_on_a_users_terminal(tmp_path):
    """``evol run`` as a user runs it (its own process, its private Prefect API, progress bars on): seeds it cannot
    use give the error line and nothing else of the failure, no traceback, no Prefect error record; the log file
    keeps the traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "seeds.jsonl").write_text('{"instruction": "Write a haiku about the sea at night."}\nnot json\n'
                                          '{"instruction": 5}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    evol = Path(sys.executable).parent / "evol"
    done = subprocess.run([str(evol), "run", write_run(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output and "ERROR" not in output and "EmptySeedsError" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {tmp_path / 'seeds.jsonl'}: 2 of 3 rows rejected")
    assert output.rstrip().splitlines()[-1].startswith("error:")  # no progress bar drawn after it
    (log,) = (tmp_path / "runs" / "v" / "logs").glob("run-*.log")
    assert "Traceback" in log.read_text() and "EmptySeedsError" in log.read_text()


def test_cli_ingest_empty_and_rejected_share(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    result = run_cli("ingest", str(tmp_path / "empty.jsonl"), str(tmp_path / "o1"))
    assert result.exit_code == 2 and "error: " in result.output and "0 of 0 rows accepted" in result.output
    (tmp_path / "half.jsonl").write_text('{"instruction": "a"}\n{"instruction": "b"}\nnope\n{"instruction": 3}\n'
                                         '{"instruction": "  "}\n')
    result = run_cli("ingest", str(tmp_path / "half.jsonl"), str(tmp_path / "o2"))
    assert result.exit_code == 2
    assert "3 of 5 rows rejected" in result.output
    assert "(rejected: empty_instruction=1, malformed_json=1, not_a_string=1)" in result.output
    result = run_cli("ingest", str(tmp_path / "half.jsonl"), str(tmp_path / "o3"), "--max-rejected-share", "0.6")
    assert result.exit_code == 0, result.output


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "d.jsonl").mkdir()
    plain = run_cli("ingest", str(tmp_path / "d.jsonl"), str(tmp_path / "o"))
    assert plain.exit_code == 2 and "Traceback" not in plain.output
    assert error_lines(plain) == [f"error: {tmp_path / 'd.jsonl'}: is a folder; give the seed file itself"]
    debug = run_cli("--debug", "ingest", str(tmp_path / "d.jsonl"), str(tmp_path / "o"))
    assert debug.exit_code == 2 and "Traceback" in debug.output


@pytest.fixture(scope="module")
def s3_with_auth():
    """A moto S3 server that checks credentials (any key it does not know is refused)."""
    with moto_server(INITIAL_NO_AUTH_ACTION_COUNT="0") as url:
        yield url


@pytest.mark.s3
def test_s3_missing_bucket_and_wrong_credentials_one_line(s3_settings, s3_with_auth, monkeypatch):
    result = run_cli("ingest", "s3://no-such-bucket-xyz/seeds.jsonl", "memory://o")
    assert result.exit_code == 2
    line = only_error_line(result)
    assert "bucket 'no-such-bucket-xyz' does not exist at http://127.0.0.1:" in line
    monkeypatch.setenv("EVOL_STORAGE__ENDPOINT_URL", s3_with_auth)
    monkeypatch.setenv("EVOL_STORAGE__KEY", "wrong")
    monkeypatch.setenv("EVOL_STORAGE__SECRET", "wrong")
    result = run_cli("ingest", "s3://some-bucket/seeds.jsonl", "memory://o")
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = only_error_line(result)
    assert line.startswith("error: s3://some-bucket/seeds.jsonl: cannot read: ")
    assert "check EVOL_STORAGE__KEY, EVOL_STORAGE__SECRET and EVOL_STORAGE__ENDPOINT_URL" in line
