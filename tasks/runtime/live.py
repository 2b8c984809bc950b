"""A round's progress from its shards still running in this process (their rows so far, on the shard board)."""

from __future__ import annotations

from tasks.evolve.progress import shard_progress
from tasks.reporting.monitor import RoundProgress


def refresh_live_rows(progress: RoundProgress, candidate_uris: list[str]) -> bool:
    """Copy the rows so far of the round's running shards into ``progress``; whether anything changed. A shard
    running in another process (a cluster worker) is not on this process's board: it counts when it finishes."""
    changed = False
    for i, uri in enumerate(candidate_uris):
        shard = shard_progress(uri)
        if shard is not None:
            changed |= progress.set_live(i, *shard.snapshot())
    return changed

