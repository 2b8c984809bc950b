"""Options added to the run config after runs were made (the scoring stage's): the scoring stage's settings with
response evolution, diversity-aware selection's settings, and how a config's dump leaves such options out while
they are unset, so the stage keys and the dataset card of a run without them stay byte for byte what they were."""

from __future__ import annotations

import copy
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.core.config_base import SamplingParams, StrictModel

# (section, ..., key) of each such option
UNSET_OPTIONS = (("score",), ("score", "embedding_model"), ("llm", "score"), ("mix", "selection"),
                 ("score", "evolve_responses"))
# Response evolution's operations in the bundled packs (distilabel's EvolQuality names DEEPENING what is `depth` here).
RESPONSE_OPERATIONS: tuple[str, ...] = ("helpfulness", "relevance", "depth", "creativity", "details")
ORIGINAL_RESPONSE = "original"  # the candidate that is a row's own response (no operation takes the name)
SCORE_CHOICES: tuple[str, ...] = ("1", "2", "3", "4", "5", "6")  # a score is a forced choice of one of these


class SelectionConfig(BaseModel):
    """Diversity-aware selection (Deita): rows by complexity x quality, each taken only when its embedding's cosine
    similarity to every row taken before is below ``threshold``, until ``mix.sample_size`` rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.9, gt=0.0, le=1.0)


class ResponseEvolutionConfig(StrictModel):
    """Response evolution (EvolQuality): each response rewritten once by each of ``operations`` (the prompt pack's
    ``response_evolution`` templates) with ``sampling``; the quality scorer scores the rewrites with the original and
    the best is kept."""

    operations: tuple[str, ...] = Field(RESPONSE_OPERATIONS, min_length=1)
    sampling: SamplingParams = SamplingParams()

    @field_validator("operations")
    @classmethod
    def _operations_valid(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"each operation once: {list(value)}")
        if bad := [op for op in value if not re.fullmatch(r"[a-z][a-z0-9_]*", op) or op == ORIGINAL_RESPONSE]:
            raise ValueError(f"operation names are lower-case identifiers other than `original`: {bad}")
        return value


class ScoreConfig(StrictModel):
    """The scoring stage (Deita): complexity per root, quality per row (1-6), the embeddings selection compares, and
    optionally response evolution (``evolve_responses``: a list of operations, or ``{operations, sampling}``)."""

    complexity: bool = True
    quality: bool = True
    embeddings: bool = True
    # the model the embeddings come from, on the scoring backend (vllm: a name or path as ``llm.model`` takes it, on
    # vLLM's pooling runner; openai: a model id of the server's ``/embeddings``); None: the scoring model
    embedding_model: str | None = None
    sampling: SamplingParams = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=1)
    evolve_responses: ResponseEvolutionConfig | None = None  # off unless given

    @field_validator("evolve_responses", mode="before")
    @classmethod
    def _operations_list(cls, value: Any) -> Any:
        return {"operations": value} if isinstance(value, list | tuple) else value

    @model_validator(mode="after")
    def _evolution_needs_quality(self) -> ScoreConfig:
        if self.evolve_responses is not None and not self.quality:
            raise ValueError("score.evolve_responses keeps the response the quality scorer rates best: set "
                             "score.quality to true")
        return self


def without_unset_options(data: dict[str, Any]) -> dict[str, Any]:
    """A config's JSON dump (or a part of it) without the later options that are unset (None)."""
    out = copy.deepcopy(data)
    for path in UNSET_OPTIONS:
        node = out
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node and node[path[-1]] is None:
            del node[path[-1]]
    return out


def check_selection(selection: SelectionConfig | None, score: Any) -> None:
    """``ValueError`` when a run selects by scores (``mix.selection``) without scoring with embeddings (``score``)."""
    if selection is not None and (score is None or not score.embeddings):
        raise ValueError("mix.selection ranks rows by their scores and compares their embeddings: give a `score:` "
                         "section (with embeddings: true)")
