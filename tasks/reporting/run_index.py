"""The runs under an output root, read from their folders alone: the lease says whether one runs now or
died, ``_attempt.json`` how the last attempt ended, the stage markers how far it got (``evol runs``); the dataset
card is what ``evol show`` prints."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from storage import RunLayout, StorageSettings, resolve
from storage.layout import round_index
from storage.lease import LEASE_NAME, is_stale
from storage.shards import write_file_atomic
from storage.uri import join_uri

ATTEMPT_NAME = "_attempt.json"


class RunInfo(BaseModel):
    """One run folder: ``status`` is running, crashed (its process died holding the folder), done (its last
    attempt exported), failed (its last attempt raised ``error``; an export there is an earlier attempt's) or
    stopped (interrupted or cancelled before its export)."""

    name: str
    uri: str
    status: str
    rounds_done: int
    rounds: int | None
    rows: int | None
    started: str | None
    error: str | None = None  # the last attempt's error, when it failed


def record_attempt(run_uri: str, outcome: str, error: BaseException | None = None,
                   settings: StorageSettings | None = None) -> None:
    """Write how this attempt stands (``running``, ``done``, ``failed`` with the error's first line) to the run
    folder's ``_attempt.json``: a run whose last attempt failed is not listed as done with an older export."""
    record = {"outcome": outcome, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    if error is not None:
        record["error"] = f"{type(error).__name__}: " + ((str(error).strip().splitlines() or [""])[0][:300])
    write_file_atomic(join_uri(run_uri, ATTEMPT_NAME), json.dumps(record).encode(), settings)


def _json(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


def run_info(run_uri: str, settings: StorageSettings | None = None) -> RunInfo | None:
    """What a run folder holds; None when it is no run folder (no ``config.json``)."""
    fs, path = resolve(run_uri, settings)
    config = _json(fs, f"{path}/config.json")
    if config is None:
        return None
    lease, attempt = _json(fs, f"{path}/{LEASE_NAME}"), _json(fs, f"{path}/{ATTEMPT_NAME}")
    layout = RunLayout(*run_uri.rstrip("/").rsplit("/", 1))
    export, mix = (_json(fs, resolve(uri, settings)[1]) for uri in (layout.export_marker(), layout.mix_marker()))
    rounds = config.get("rounds")
    done = [round_index(p.rstrip("/").rsplit("/", 1)[0]) for p in fs.glob(resolve(layout.round_marker("*"),
                                                                                   settings)[1])]
    rounds_done = sum(1 for k in done if k and (rounds is None or k <= rounds))  # a folder beyond: not this run's
    if lease is not None:
        status = "crashed" if is_stale(lease) else "running"
        started = lease.get("started")
    else:
        outcome = (attempt or {}).get("outcome", "done")  # a folder without _attempt.json: its export says
        status = outcome if outcome == "failed" else "done" if export is not None and outcome == "done" \
            else "stopped"
        started = fs.modified(f"{path}/config.json").astimezone(UTC).isoformat(timespec="seconds")
    rows = None if status == "failed" else export["summary"]["rows"] if export else \
        (mix["summary"]["final"] if mix else None)
    return RunInfo(name=run_uri.rstrip("/").rsplit("/", 1)[-1], uri=run_uri, status=status,
                   rounds_done=rounds_done, rounds=rounds, rows=rows,
                   started=started[:19].replace("T", " ") if started else None,
                   error=(attempt or {}).get("error") if status == "failed" else None)


def list_runs(output_root: str, settings: StorageSettings | None = None) -> list[RunInfo]:
    """Every run folder directly under ``output_root``, by name."""
    fs, root = resolve(output_root, settings)
    if not fs.exists(root):
        raise FileNotFoundError(f"{output_root}: no such output root")
    runs = []
    for entry in sorted(fs.ls(root, detail=True), key=lambda e: e["name"]):
        if entry["type"] == "directory":
            info = run_info(join_uri(output_root, entry["name"].rstrip("/").rsplit("/", 1)[-1]), settings)
            if info is not None:
                runs.append(info)
    return runs


def run_card(run_uri: str, settings: StorageSettings | None = None) -> str:
    """A run's dataset card (``export/README.md``); a clear error when the run has not exported yet."""
    fs, path = resolve(run_uri, settings)
    if _json(fs, f"{path}/config.json") is None:
        raise FileNotFoundError(f"{run_uri}: no run folder here (no config.json)")
    try:
        return fs.cat_file(f"{path}/export/README.md").decode()
    except FileNotFoundError:
        raise FileNotFoundError(f"{run_uri}: the run has no dataset card yet (export/README.md): it has not "
                                "finished; `evol runs` shows how far it got") from None
