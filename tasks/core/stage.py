"""One stage of a run: its name, its marker, reuse, its run and its summary.

Ingest, an evolve shard, a round's finish, mix and export are each a ``Stage``. Each is keyed by the content it
depends on (``tasks.core.context``); its marker records the key, the summary and the outputs, written after them.
``done`` reads the marker back: the recorded summary (``reused``) when it was written under the key asked for and
every output still verifies, else None. ``get`` reuses or runs; a Prefect task returns ``state(summary)``, so a
reused stage shows as ``Reused``. The flow runs the stages of ``tasks.runtime.stages`` and `evol plan` asks the same
stages what is done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prefect.states import Completed, State

from storage import StorageSettings, read_stage
from tasks.core.summaries import Summary

S = TypeVar("S", bound=Summary)
Reader = Callable[[str, str, StorageSettings | None, list[str] | None], dict[str, Any] | None]


@dataclass(frozen=True)
class Stage(Generic[S]):
    name: str  # as `--recompute` and `evol plan` name it
    summary: type[S]
    marker: Callable[..., str]  # (layout, *index) -> the marker's URI, a RunLayout method
    read: Reader = read_stage  # the verified record under a key, or None

    def done(self, marker_uri: str, key: str, settings: StorageSettings | None = None,
             problems: list[str] | None = None, **update: Any) -> S | None:
        """The summary recorded under ``key`` (``update`` set on it), or None: the stage is to run."""
        record = self.read(marker_uri, key, settings, problems)
        return None if record is None else self.summary.model_validate({**record["summary"], "reused": True, **update})

    def get(self, marker_uri: str, key: str, force: bool, run: Callable[[], S],
            settings: StorageSettings | None = None, problems: list[str] | None = None, **update: Any) -> S:
        """The recorded summary, unless ``force`` or there is none: then ``run()``'s."""
        return (None if force else self.done(marker_uri, key, settings, problems, **update)) or run()


def state(summary: S, message: str | None = None) -> S | State:
    """What a stage's Prefect task returns: the summary, in a state named ``Reused`` when it was not computed."""
    return Completed(data=summary, name="Reused", message=message) if summary.reused else summary
