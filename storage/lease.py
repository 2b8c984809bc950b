"""One run per run folder: a lease object (holder, host, pid, start, expiry) at ``{run}/_lease.json``.

The lease is created with an exclusive create (``O_EXCL`` locally, a conditional put on S3), renewed
by a heartbeat thread while the run lives, and deleted when it ends. A lease whose expiry has passed,
or whose holder was a process on this host that is gone, is stale and taken over."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from storage.errors import InfrastructureFailure
from storage.redact import redact
from storage.shards import write_file_atomic
from storage.uri import StorageSettings, join_uri, resolve

LEASE_NAME = "_lease.json"
_memory_lock = threading.Lock()


class LeaseHeld(InfrastructureFailure, RuntimeError):
    """Another live run holds the run folder."""


def _now() -> datetime:
    return datetime.now(UTC)


def _proc_start(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot), to tell a reused pid from the holder."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def is_stale(lease: dict[str, Any]) -> bool:
    """A lease past its expiry, or held by a process of this host that is gone (or a new one with its pid)."""
    if datetime.fromisoformat(lease["expires"]) < _now():
        return True
    if lease.get("host") != socket.gethostname():  # a holder on another host may still be running
        return False
    start = _proc_start(int(lease.get("pid", -1)))
    return start is None or start != lease.get("pid_start")


def held_message(run_uri: str, lease: dict[str, Any]) -> str:
    """What a run that finds the folder held says, whether it finds the lease before starting or loses the race
    for it to a run that started at the same time."""
    return (f"run folder {run_uri} is in use by {lease.get('purpose', 'a run')} (pid {lease.get('pid')} on "
            f"{lease.get('host')}, since {lease.get('started')}); wait for it to finish, or pass --take-over if "
            "that run is dead")


class RunLease:
    """Hold ``{run_uri}/_lease.json`` for the life of a run (a context manager)."""

    def __init__(self, run_uri: str, ttl_s: float = 120.0, settings: StorageSettings | None = None,
                 take_over: bool = False, purpose: str = "evol run", extra: dict[str, Any] | None = None):
        self.uri = join_uri(run_uri, LEASE_NAME)
        self.fs, self.path = resolve(self.uri, settings)
        self.ttl = ttl_s
        self.take_over = take_over
        self.record = {"holder": uuid.uuid4().hex, "purpose": purpose, "host": socket.gethostname(),
                       "pid": os.getpid(), "pid_start": _proc_start(os.getpid()), "started": _now().isoformat(),
                       **redact(extra or {})}  # extra: what the holder wants a successor to know (its flow run id)
        self.previous: dict[str, Any] | None = None  # a stale lease this run took over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _payload(self) -> bytes:
        return json.dumps({**self.record, "expires": (_now() + timedelta(seconds=self.ttl)).isoformat()}).encode()

    def _create(self) -> bool:
        data = self._payload()
        if isinstance(self.fs, LocalFileSystem):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        # memory: its exclusive create checks, then writes; "memory" in a str or a tuple of names
        try:
            with _memory_lock if "memory" in self.fs.protocol else contextlib.nullcontext():
                self.fs.pipe_file(self.path, data, mode="create")  # S3: If-None-Match: *
        except FileExistsError:
            return False
        return True

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except ValueError:  # a torn write: treat as expired
            return {"holder": "?", "host": "?", "pid": -1, "started": "?", "expires": _now().isoformat()}

    def acquire(self) -> RunLease:
        """Take the lease or raise LeaseHeld saying who holds it since when."""
        for _ in range(3):
            if self._create():
                self._thread = threading.Thread(target=self._beat, name="run-lease", daemon=True)
                self._thread.start()
                return self
            current = self.read()
            if current is None:
                continue
            if not (self.take_over or is_stale(current)):
                raise LeaseHeld(held_message(self.uri.rsplit("/", 1)[0], current))
            self.previous = current
            self.fs.rm_file(self.path)
        raise LeaseHeld(f"could not take the lease {self.uri}: another run keeps taking it")

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            current = self.read()
            if current is None or current.get("holder") != self.record["holder"]:
                return  # taken over: the other run owns the folder now
            write_file_atomic(self.uri, self._payload(), fs=self.fs)  # a reader never sees a torn lease

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current = self.read()
        if current is not None and current.get("holder") == self.record["holder"]:
            self.fs.rm_file(self.path)

    def __enter__(self) -> RunLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
