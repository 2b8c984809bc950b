"""One stage of a run (ingest, an evolve shard, a round's finish, mix, export): its name, its summary, its marker
(written last, under the stage key), and reuse: ``done`` is the recorded summary when the marker holds the key asked
for and every output still verifies. The flow runs each stage's task (``state``: ``Reused`` when it was reused);
`evol plan` asks the same stages (``tasks.runtime.stages``) what is done."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pyarrow as pa
from prefect import get_run_logger
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger
from prefect.states import Completed, State

from storage import ShardCorrupt, ShardRef, StorageSettings, read_shard, read_stage
from storage.shards import read_marker
from tasks.core.summaries import Summary

S = TypeVar("S", bound=Summary)


@dataclass(frozen=True)
class Stage(Generic[S]):
    name: str  # as `--recompute` and `evol plan` name it
    summary: type[S]
    marker: Callable[..., str]  # (layout, *index) -> the marker's URI, a RunLayout method
    read: Callable[..., dict[str, Any] | None] = read_stage  # (uri, key, settings, problems) -> record

    def done(self, marker_uri: str, key: str, settings: StorageSettings | None = None,
             problems: list[str] | None = None, **update: Any) -> S | None:
        """The summary recorded under ``key`` (``update`` set on it), or None: the stage is to run. Why a marker was
        not accepted (a changed file, a moved folder) goes to ``problems``, or, without that list, is logged as a
        warning: a repair is never silent."""
        found: list[str] = [] if problems is None else problems
        record = self.read(marker_uri, key, settings, found)
        if problems is None:
            for problem in found:
                _logger().warning("%s: %s", self.name, problem)
        return None if record is None else self.summary.model_validate({**record["summary"], "reused": True, **update})


def _logger() -> Any:
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("evol.stage")


def shard_reader(counts: Callable[[ShardRef, pa.Table], dict[str, Any]]) -> Callable[..., dict[str, Any] | None]:
    """A ``Stage.read`` for a stage of one shard whose ``.done`` marker is its stage marker (an evolve shard, a score
    shard): the committed shard written under the key asked for, if it still verifies, as a record whose summary
    is ``counts(ref, table)`` (the ref at the shard's URI now: a moved run folder's markers keep the old one); None
    means compute it."""

    def read(uri: str, key: str, settings: StorageSettings | None = None,
             problems: list[str] | None = None) -> dict[str, Any] | None:
        try:
            marker = read_marker(uri, settings)
        except ShardCorrupt:
            return None  # never committed
        if marker.get("key") != key:
            return None
        try:
            table = read_shard(uri, settings, expected=marker)
        except ShardCorrupt as err:
            (problems if problems is not None else []).append(str(err))  # Stage.done warns
            return None
        return {"summary": {**counts(ShardRef.of(marker, uri), table), "seconds": 0.0}}

    return read


def state(summary: S, message: str | None = None) -> S | State:
    """What a stage's Prefect task returns: the summary, in a state named ``Reused`` when it was not computed."""
    return Completed(data=summary, name="Reused", message=message) if summary.reused else summary
