"""Where a run keeps its files: ``{root}/{run_id}/round={k}/{stage}/shard-{i:05d}.parquet``."""

from __future__ import annotations

from dataclasses import dataclass

from storage.shards import shard_name
from storage.uri import StorageSettings, join_uri, resolve, to_uri


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run under an output root."""

    root: str
    run_id: str

    @property
    def run_uri(self) -> str:
        return join_uri(to_uri(self.root), self.run_id)

    def stage_dir(self, round_index: int, stage: str) -> str:
        """Folder of a stage's shards in a round (round 0 holds the seeds)."""
        return join_uri(self.run_uri, f"round={round_index}", stage)

    def shard(self, round_index: int, stage: str, index: int) -> str:
        """URI of one shard of a stage in a round."""
        return join_uri(self.stage_dir(round_index, stage), shard_name(index))

    def run_shard(self, stage: str, index: int) -> str:
        """URI of a shard of a run-level stage (``final``, ``final_dropped``)."""
        return join_uri(self.run_uri, stage, shard_name(index))

    def file(self, *parts: str) -> str:
        """Any other file of the run (summaries, exports, the config)."""
        return join_uri(self.run_uri, *parts)

    # The stage markers (``storage.stages``): the record of each stage's key, summary and outputs.
    def ingest_marker(self) -> str:
        return self.file("round=0", "_ingest.json")

    def round_marker(self, round_index: int | str) -> str:
        """A round's marker (``"*"``: a glob of every round's)."""
        return self.file(f"round={round_index}", "_round.json")

    def score_shard(self, index: int) -> str:
        """A shard of the scoring stage (its ``.done`` marker is the stage's record of that shard)."""
        return self.run_shard("scores", index)

    def mix_marker(self) -> str:
        return self.file("final", "_mix.json")

    def export_marker(self) -> str:
        return self.file("export", "_export.json")


def round_index(folder: str) -> int | None:
    """``k`` of a ``round=k`` folder name (or path), else None."""
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    prefix, _, k = name.partition("=")
    return int(k) if prefix == "round" and k.isdigit() else None


def remove_rounds_beyond(layout: RunLayout, rounds: int, settings: StorageSettings | None = None) -> list[str]:
    """Remove the ``round=k`` folders with ``k > rounds`` (a run that had more rounds before), each marker before
    its files so none looks finished meanwhile: a glob over ``round=*`` then counts this run's rounds only.
    Returns the folders removed. Call it while holding the run's lease."""
    fs, path = resolve(layout.run_uri, settings)
    if not fs.exists(path):
        return []
    stale = sorted((e for e in fs.ls(path, detail=False) if (round_index(e) or 0) > rounds), key=round_index)
    for folder in stale:
        marker = f"{folder.rstrip('/')}/_round.json"
        if fs.exists(marker):
            fs.rm_file(marker)
        fs.rm(folder, recursive=True)
    return [join_uri(layout.run_uri, folder.rstrip("/").rsplit("/", 1)[-1]) for folder in stale]
