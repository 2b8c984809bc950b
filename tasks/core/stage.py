"""One stage of a run (ingest, an evolve shard, a round's finish, mix, export): its name, its summary, its marker
(written last, under the stage key), and reuse: ``done`` is the recorded summary when the marker holds the key asked
for and every output still verifies. The flow runs each stage's task (``state``: ``Reused`` when it was reused);
`evol plan` asks the same stages (``tasks.runtime.stages``) what is done."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prefect import get_run_logger
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger
from prefect.states import Completed, State

from storage import StorageSettings, read_stage
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


def state(summary: S, message: str | None = None) -> S | State:
    """What a stage's Prefect task returns: the summary, in a state named ``Reused`` when it was not computed."""
    return Completed(data=summary, name="Reused", message=message) if summary.reused else summary
