"""The run's log file: Prefect's and vLLM's logs go to ``{run}/logs/run-{start}-{pid}.log`` instead of the terminal.

The terminal keeps warnings and errors (the low-evolution warning among them), the progress bars and the
round tables; ``evol run --verbose`` shows every log line as well. vLLM's engine runs in a spawned process:
it reads its logging configuration from ``VLLM_LOGGING_CONFIG_PATH``, which the parent sets before the
engine starts, so the child appends to the same file. A run folder on S3 gets the file when the run ends."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from storage import resolve
from storage.redact import redact_text
from storage.uri import join_uri

FORMAT = "%(asctime)s %(levelname)-7s %(name)s - %(message)s"
# Set while a run logs to its file (not with --verbose): engines started then write their raw output there.
ENGINE_LOG_ENV = "EVOL_ENGINE_LOG"
_REDIRECT_LOCK = threading.Lock()
_ACTIVE: list[RunLog] = []  # started, not finished: what an exit that skips ``finally`` (a cancel) finishes


@contextmanager
def engine_output_to_log() -> Iterator[None]:
    """While an engine is imported and started, send file descriptor 2 to the run's log file.

    What bypasses Python's logging goes there: C++ and Python warnings, progress bars of model loading, and,
    for their whole life, everything the processes spawned meanwhile (vLLM's engine core) write to stderr,
    since they inherit the descriptor. Without a run log (``--verbose``, tests) nothing changes."""
    path = os.environ.get(ENGINE_LOG_ENV)
    if not path:
        yield
        return
    with _REDIRECT_LOCK:
        sys.stderr.flush()
        saved = os.dup(2)
        target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(target, 2)
        os.close(target)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


@dataclass
class RunLog:
    """Where this process writes its log (``local``) and where the file belongs (``uri``, in the run folder)."""

    local: Path
    uri: str
    handler: logging.Handler | None = None
    saved_env: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def for_run(cls, run_uri: str, when: datetime | None = None) -> RunLog:
        # the pid: two runs started in the same second (one of them loses the lease) never share a file
        name = f"run-{(when or datetime.now()):%Y%m%d-%H%M%S}-{os.getpid()}.log"
        uri = join_uri(run_uri, "logs", name)
        fs, path = resolve(uri)
        if "file" in fs.protocol:
            local = Path(path)
        else:  # written locally, uploaded when the run ends
            local = Path(tempfile.mkdtemp(prefix="evol-log-")) / name
        local.parent.mkdir(parents=True, exist_ok=True)
        return cls(local=local, uri=uri)

    def _vllm_config_path(self) -> Path:
        return Path(tempfile.gettempdir()) / f"evol-vllm-logging-{os.getpid()}.json"

    def vllm_config(self) -> dict:
        """vLLM's logging configuration (``logging.config.dictConfig``): everything of ``vllm`` to the file."""
        return {"version": 1, "disable_existing_loggers": False,
                "formatters": {"plain": {"format": FORMAT}},
                "filters": {"weights": {"()": f"{__name__}.WeightLoadNoise"}},
                "handlers": {"file": {"class": "logging.FileHandler", "filename": str(self.local), "mode": "a",
                                      "formatter": "plain", "filters": ["weights"]}},
                "loggers": {"vllm": {"handlers": ["file"], "level": "INFO", "propagate": False}}}

    def start(self, verbose: bool) -> None:
        """Send this process's logs (and vLLM's engine process's) to the file; the terminal keeps warnings
        unless ``verbose``."""
        install_redaction()
        config_path = self._vllm_config_path()
        config_path.write_text(json.dumps(self.vllm_config()))
        if not verbose:
            updates = {ENGINE_LOG_ENV: str(self.local), "VLLM_LOGGING_CONFIG_PATH": str(config_path),
                       "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}
            self.saved_env = {name: os.environ.get(name) for name in updates}
            os.environ.update(updates)
            quiet_prefect_console()
        _ACTIVE.append(self)
        self.handler = logging.FileHandler(self.local, mode="a")
        self.handler.setFormatter(logging.Formatter(FORMAT))
        self.handler.setLevel(logging.INFO)
        logging.getLogger().addHandler(self.handler)

    def finish(self) -> None:
        """Close the file; upload it to the run folder when that is not local, and remove the local copy then (a
        failed upload keeps it, and the error names it)."""
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            self.handler.close()
            self.handler = None
        self._vllm_config_path().unlink(missing_ok=True)
        for name, value in self.saved_env.items():  # an engine started later must not read the deleted file
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.saved_env = {}
        fs, path = resolve(self.uri)
        if "file" not in fs.protocol:
            try:
                fs.put_file(str(self.local), path)
            except Exception as err:  # the run's own outcome must not be hidden by its log's upload
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                print(f"warning: the run's log could not be uploaded to {self.uri} ({reason}); it stays at "
                      f"{self.local}", file=sys.stderr)
                return
            shutil.rmtree(self.local.parent, ignore_errors=True)  # the local copy (``evol-log-*``), uploaded


def finish_active_logs() -> None:
    """Finish every run log of this process still open: before ``os._exit`` (a cancelled run), which runs no
    ``finally``, so an S3 run's log still reaches its folder and the local copy goes."""
    for log in list(_ACTIVE):
        log.finish()


_BASE_FACTORY = logging.getLogRecordFactory()


def _redacted_record(*args: object, **kwargs: object) -> logging.LogRecord:
    """A log record whose message and traceback have every secret masked (``storage.redact``), made once for
    every handler: the terminal, the run's log file, Prefect's API (its log table)."""
    record = _BASE_FACTORY(*args, **kwargs)
    try:
        record.msg, record.args = redact_text(record.getMessage()), None
    except Exception:  # a malformed log call: logging reports it itself
        return record
    if record.exc_info and record.exc_info[1] is not None:
        record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
    return record


def _redacted_excepthook(kind: type[BaseException], value: BaseException, tb: object) -> None:
    import traceback

    sys.stderr.write(redact_text("".join(traceback.format_exception(kind, value, tb))))


def install_redaction() -> None:
    """Mask secrets in every log record this process makes and in an uncaught exception's traceback."""
    logging.setLogRecordFactory(_redacted_record)
    sys.excepthook = _redacted_excepthook


# Errors the CLI reports in one ``error:`` line of its own: the terminal gets nothing else of them. The seeds' and
# the infrastructure's (``storage.errors``: storage unreachable, a full disk, the run folder held by another run).
USER_ERRORS = ("IngestError", "EmptySeedsError", "LeaseHeld", "StorageUnreachable", "DiskFull")


class WeightLoadNoise(logging.Filter):
    """Drops vLLM's per-weight dtype warning ("Attempted to load weight ... with dtype ..."): one line for each of a
    model's hundreds of weights whenever its file's dtype is not the engine's (the bundled model: float32 weights,
    bfloat16 engine on CPU); they would bury the engine's real messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()  # formatted: the redaction filter may have merged its arguments already
        return not (message.startswith("Attempted to load weight ") and " with dtype " in message)


class TerminalFilter(logging.Filter):
    """What of a run's warnings and errors the terminal shows: no record of a seed-file or infrastructure error (the
    CLI's own error line says it), and any other error as its one-line message; its traceback stays in the log
    file."""

    def filter(self, record: logging.LogRecord) -> bool:
        from storage.errors import infrastructure_message

        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and (any(c.__name__ in USER_ERRORS for c in type(exc).__mro__)
                                or infrastructure_message(exc, "") is not None):
            return False
        return not any(f"exception {name}:" in record.getMessage() for name in USER_ERRORS)


class OneLineFormatter(logging.Formatter):
    """A console formatter that leaves out tracebacks (the log file's formatter writes them)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            text = self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        return f"{text} (traceback in the run's log)" if saved[0] else text


def quiet_prefect_console(level: int = logging.WARNING) -> None:
    """Raise the level of Prefect's console handlers (set up already, or later from the environment), and give
    them the terminal's filter and one-line formatter."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    for logger in [logging.getLogger(), *[logging.getLogger(n) for n in logging.root.manager.loggerDict]]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(level)
                if not any(isinstance(f, TerminalFilter) for f in handler.filters):
                    handler.addFilter(TerminalFilter())
                if not isinstance(handler.formatter, OneLineFormatter):
                    handler.setFormatter(OneLineFormatter(handler.formatter))
