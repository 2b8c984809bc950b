"""The runs under an output root, read from their folders alone: the lease says whether one runs now or
died, the stage markers how far it got (``evol runs``); the dataset card is what ``evol show`` prints."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

from pydantic import BaseModel

from storage import RunLayout, StorageSettings, resolve
from storage.lease import LEASE_NAME, is_stale
from storage.uri import join_uri


class RunInfo(BaseModel):
    """One run folder: ``status`` is running, crashed (its process died holding the folder), done (exported)
    or stopped (interrupted, cancelled or failed before its export)."""

    name: str
    uri: str
    status: str
    rounds_done: int
    rounds: int | None
    rows: int | None
    started: str | None


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
    lease = _json(fs, f"{path}/{LEASE_NAME}")
    layout = RunLayout(*run_uri.rstrip("/").rsplit("/", 1))
    export, mix = (_json(fs, resolve(uri, settings)[1]) for uri in (layout.export_marker(), layout.mix_marker()))
    rounds_done = sum(1 for p in fs.glob(resolve(layout.round_marker("*"), settings)[1])
                      if not p.rstrip("/").split("/")[-2].endswith("=0"))
    if lease is not None:
        status = "crashed" if is_stale(lease) else "running"
        started = lease.get("started")
    else:
        status = "done" if export is not None else "stopped"
        started = fs.modified(f"{path}/config.json").astimezone(UTC).isoformat(timespec="seconds")
    rows = export["summary"]["rows"] if export else (mix["summary"]["final"] if mix else None)
    return RunInfo(name=run_uri.rstrip("/").rsplit("/", 1)[-1], uri=run_uri, status=status,
                   rounds_done=rounds_done, rounds=config.get("rounds"), rows=rows,
                   started=started[:19].replace("T", " ") if started else None)


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
