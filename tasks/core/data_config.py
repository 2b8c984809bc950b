"""The config sections that shape the final data past the rounds: near dedup (``dedup``), the mix (``mix``) with its
decontamination against benchmark files (``mix.decontaminate``), and the dataset card's Hugging Face metadata
(``export``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field, model_validator

from tasks.core.config_base import StrictModel
from tasks.core.options import SelectionConfig


class BenchmarkFile(StrictModel):
    """One benchmark file (JSONL, Parquet or CSV, local or remote, compressed or not) and the field holding its
    items' text (a top-level field or column)."""

    path: str = Field(min_length=1)
    field: str = Field(min_length=1)


class DecontamConfig(StrictModel):
    """Drop final rows whose instruction (with its input) shares an ``n``-word gram with a benchmark item (GPT-3 and
    Open-Platypus: 13). Words: lower-cased runs of letters and digits; a text under ``n`` words is one gram."""

    files: tuple[BenchmarkFile, ...] = Field(min_length=1)
    n: int = Field(13, ge=1, le=64)

    @model_validator(mode="before")
    @classmethod
    def _list_of_files(cls, data: Any) -> Any:
        """``decontaminate: [{path, field}, ...]`` is short for ``decontaminate: {files: [...]}``."""
        return {"files": data} if isinstance(data, list) else data


class DedupConfig(StrictModel):
    """Near dedup of the final data with MinHash + LSH (exact dedup always runs: at ingest and in each round)."""

    near: bool = True
    jaccard_threshold: float = Field(0.8, gt=0.0, le=1.0)
    shingle_size: int = Field(5, ge=1)
    num_perm: int = Field(128, ge=8)


class MixConfig(StrictModel):
    """The final data: seeds plus every round's survivors, shuffled, optionally sampled (or ``selection``)."""

    include_seeds: bool = True
    sample_size: int | None = Field(None, ge=1)
    selection: SelectionConfig | None = None
    decontaminate: DecontamConfig | None = None  # benchmark files whose items the final rows must not overlap


class ExportConfig(StrictModel):
    """The Hugging Face metadata the dataset card opens with (the hub's ids: ``license: apache-2.0``)."""

    license: str = "unknown"
    language: tuple[str, ...] = ("en",)
    task_categories: tuple[str, ...] = ("text-generation",)
    tags: tuple[str, ...] = ("evol-instruct", "synthetic")


def benchmark_paths(mix: Any, located: Callable[[Any], Any]) -> Any:
    """A config's ``mix`` mapping with each benchmark file's ``path`` passed through ``located`` (relative paths are
    taken from the config file's folder); anything else is left for validation to judge."""
    if not isinstance(mix, dict) or "decontaminate" not in mix:
        return mix
    spec = mix["decontaminate"]
    files = spec if isinstance(spec, list) else spec.get("files") if isinstance(spec, dict) else None
    if not isinstance(files, list):
        return mix
    files = [{**f, "path": located(f["path"])} if isinstance(f, dict) and "path" in f else f for f in files]
    return {**mix, "decontaminate": {**spec, "files": files} if isinstance(spec, dict) else files}
