"""The run's log file takes what bypasses Python's logging while an engine starts (raw stderr, child processes)."""

from __future__ import annotations

import os
import subprocess
import sys

from tasks.core.runlog import ENGINE_LOG_ENV, engine_output_to_log


def test_engine_output_goes_to_the_log_and_the_terminal_gets_its_stderr_back(tmp_path, monkeypatch, capfd):
    log = tmp_path / "run.log"
    monkeypatch.setenv(ENGINE_LOG_ENV, str(log))
    with engine_output_to_log():
        os.write(2, b"raw C-level warning\n")
        # a child spawned meanwhile keeps writing to the log after the engine has started
        child = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(0.5); "
                                  "sys.stderr.write('engine core line\\n')"])
    os.write(2, b"back on the terminal\n")
    assert child.wait(timeout=30) == 0
    text = log.read_text()
    assert "raw C-level warning" in text and "engine core line" in text
    terminal = capfd.readouterr().err
    assert terminal == "back on the terminal\n"


def test_without_a_run_log_nothing_is_redirected(monkeypatch, capfd):
    monkeypatch.delenv(ENGINE_LOG_ENV, raising=False)
    with engine_output_to_log():
        os.write(2, b"shown\n")
    assert capfd.readouterr().err == "shown\n"


def test_the_engine_log_drops_vllm_per_weight_dtype_warnings(tmp_path):
    """The run log's vLLM configuration, applied to a logger of its own: one warning per weight is dropped, the
    engine's other warnings (a weight of the wrong shape among them) are kept."""
    import logging
    import logging.config

    from tasks.core.runlog import RunLog

    log = RunLog(local=tmp_path / "run.log", uri=str(tmp_path / "run.log"))
    config = log.vllm_config()
    config["loggers"] = {"evol-test-vllm": config["loggers"]["vllm"]}
    logging.config.dictConfig(config)
    logger = logging.getLogger("evol-test-vllm")
    logger.warning("Attempted to load weight %s with dtype %s into %s", "norm.weight", "torch.float32", "bf16")
    logger.warning("Attempted to load weight (torch.Size([3])) into parameter (torch.Size([4]))")
    logger.warning("KV cache space is small")
    for handler in logger.handlers:
        handler.close()
    lines = (tmp_path / "run.log").read_text().splitlines()
    assert [line.split(" - ", 1)[1] for line in lines] == [
        "Attempted to load weight (torch.Size([3])) into parameter (torch.Size([4]))", "KV cache space is small"]


def test_finishing_the_run_log_restores_the_environment(tmp_path, monkeypatch):
    """An engine started after a run in the same process (tests, notebooks) must not read the deleted config."""
    from tasks.core.runlog import RunLog

    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH", raising=False)
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "INFO")
    log = RunLog.for_run(str(tmp_path / "run"))
    log.start(verbose=False)
    config = os.environ["VLLM_LOGGING_CONFIG_PATH"]
    assert os.path.exists(config) and os.environ[ENGINE_LOG_ENV] == str(log.local)
    log.finish()
    assert not os.path.exists(config)
    assert "VLLM_LOGGING_CONFIG_PATH" not in os.environ and ENGINE_LOG_ENV not in os.environ
    assert os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] == "INFO"


def test_the_terminal_gets_errors_as_one_line_and_no_seed_file_errors():
    import logging

    from tasks.core.runlog import OneLineFormatter, TerminalFilter
    from tasks.ingest.seeds import EmptySeedsError

    def record(message, exc=None):
        exc_info = (type(exc), exc, None) if exc else None
        return logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, message, None, exc_info)

    try:
        raise RuntimeError("engine died")
    except RuntimeError as err:
        crash = record("Encountered exception during execution", err)
        crash.exc_info = (RuntimeError, err, err.__traceback__)
    one_line = OneLineFormatter(logging.Formatter("%(levelname)s %(message)s"))
    assert one_line.format(crash) == "ERROR Encountered exception during execution (traceback in the run's log)"
    assert "Traceback" in logging.Formatter().format(crash)  # the record itself keeps it for the log file
    keep = TerminalFilter()
    assert keep.filter(crash) and keep.filter(record("round 1 evolved only 2 of 96 rows"))
    assert not keep.filter(record("Encountered exception", EmptySeedsError("s.jsonl: 2 of 3 rows rejected")))
    assert not keep.filter(record("Finished in state Failed('Task run encountered an exception EmptySeedsError: x')"))


def test_a_remote_run_log_is_uploaded_and_its_local_copy_removed(memory_root, monkeypatch):
    from storage import resolve
    from tasks.core.runlog import RunLog

    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH", raising=False)
    log = RunLog.for_run(f"{memory_root}/run")
    assert log.local.parent.name.startswith("evol-log-")
    log.start(verbose=True)
    log.local.write_text("a line\n")
    log.finish()
    fs, path = resolve(log.uri)
    assert fs.cat_file(path) == b"a line\n"
    assert not log.local.parent.exists()


def test_a_failed_log_upload_keeps_the_local_copy_and_names_it(memory_root, monkeypatch, capsys):
    import shutil

    from storage import resolve
    from tasks.core.runlog import RunLog

    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH", raising=False)
    log = RunLog.for_run(f"{memory_root}/run")
    log.start(verbose=True)

    def refuse(*args, **kwargs):
        raise PermissionError("Access Denied\nmore")

    monkeypatch.setattr(type(resolve(log.uri)[0]), "put_file", refuse)
    log.finish()
    assert capsys.readouterr().err == (f"warning: the run's log could not be uploaded to {log.uri} (Access Denied); "
                                       f"it stays at {log.local}\n")
    assert log.local.exists()
    shutil.rmtree(log.local.parent)


def test_a_cancelled_run_finishes_its_open_logs_before_exiting(memory_root, monkeypatch):
    """``cancel_and_exit`` ends the process with ``os._exit``: no ``finally`` runs, so it finishes the logs first."""
    from storage import resolve
    from tasks.core.runlog import RunLog, finish_active_logs

    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH", raising=False)
    log = RunLog.for_run(f"{memory_root}/run")
    log.start(verbose=True)
    log.local.write_text("cancelled\n")
    finish_active_logs()
    fs, path = resolve(log.uri)
    assert fs.cat_file(path) == b"cancelled\n" and not log.local.parent.exists()
    finish_active_logs()  # nothing left open: nothing happens


def test_sigterm_during_a_run_command_exits_through_finally(memory_root, monkeypatch):
    """`evol run` turns SIGTERM into SystemExit(143): the run log's ``finally`` uploads it and removes the copy."""
    import signal

    import pytest

    from flows.cli_common import sigterm_as_exit
    from storage import resolve
    from tasks.core.runlog import RunLog

    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH", raising=False)
    before = signal.getsignal(signal.SIGTERM)
    log = RunLog.for_run(f"{memory_root}/run")
    with pytest.raises(SystemExit) as exited, sigterm_as_exit():
        log.start(verbose=True)
        try:
            log.local.write_text("terminated\n")
            signal.raise_signal(signal.SIGTERM)
        finally:
            log.finish()
    assert exited.value.code == 143 and signal.getsignal(signal.SIGTERM) is before
    fs, path = resolve(log.uri)
    assert fs.cat_file(path) == b"terminated\n" and not log.local.parent.exists()
