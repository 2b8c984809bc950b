"""Infrastructure failures, each said in one line that names what failed: storage that does not answer (its URI and
the first cause), a full disk (the path being written), a run folder held by another run (``storage.lease``).

``check_reachable`` asks a location once before a run starts, within the S3 client's own retry budget; the
command line turns any of these failures met later (``infrastructure_message``) into its one ``error:`` line."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from storage.redact import redact_text
from storage.uri import StorageSettings, protocol_of, resolve


class InfrastructureFailure(Exception):
    """A failure of what a run stands on, not of its data: said in one line (``str``), exit 2."""


class StorageUnreachable(InfrastructureFailure, OSError):
    """A storage location does not answer (an S3 endpoint down or unreachable)."""


class DiskFull(InfrastructureFailure, OSError):
    """No space left on the device a run writes to; the message names the path (``errno`` stays ENOSPC)."""

    def __str__(self) -> str:
        return str(self.strerror)


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _is_connection_error(err: BaseException) -> bool:
    names = {c.__name__ for c in type(err).__mro__}
    return bool(names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                         "ServerDisconnectedError", "ConnectionError"})


def first_cause(err: BaseException) -> str:
    """The innermost error of a chain in one line: what actually went wrong (a refused connection)."""
    root = list(_chain(err))[-1]
    text = " ".join(str(root).split()) or type(root).__name__
    return redact_text(f"{type(root).__name__}: {text}"[:300])


def unreachable(uri: str, err: BaseException, settings: StorageSettings | None = None) -> StorageUnreachable:
    endpoint = (settings or StorageSettings()).endpoint_url or "AWS S3"
    where = f" (endpoint {redact_text(endpoint)})" if protocol_of(uri) == "s3" else ""
    return StorageUnreachable(f"storage unreachable: {redact_text(uri)}{where}: {first_cause(err)}")


def check_reachable(uri: str, settings: StorageSettings | None = None) -> None:
    """Raise StorageUnreachable unless the storage of ``uri`` answers (S3: its bucket is listed once; a missing
    bucket or a refusal is an answer). Local and memory locations always answer."""
    if protocol_of(uri) != "s3":
        return
    fs, path = resolve(uri, settings)
    try:
        fs.ls(path.split("/", 1)[0], detail=False)
    except Exception as err:
        if any(_is_connection_error(e) for e in _chain(err)):
            raise unreachable(uri, err, settings) from err


@contextmanager
def naming_path(path: str) -> Iterator[None]:
    """Turn a full disk met while writing ``path`` into DiskFull naming it (``OSError 28`` alone names nothing)."""
    try:
        yield
    except OSError as err:
        if err.errno == errno.ENOSPC and not isinstance(err, DiskFull):
            raise DiskFull(errno.ENOSPC, f"no space left on the device writing {redact_text(path)}", path) from err
        raise


def infrastructure_message(err: BaseException, uri: str, settings: StorageSettings | None = None) -> str | None:
    """The one line for an infrastructure failure anywhere in ``err``'s chain (``uri``: the location the run was
    using, named when the failure does not name one), or None for any other error."""
    for e in _chain(err):
        if isinstance(e, InfrastructureFailure):
            return redact_text(str(e))
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return redact_text(f"no space left on the device writing {e.filename or uri}")
        if _is_connection_error(e):
            return str(unreachable(uri, err, settings))
    return None
