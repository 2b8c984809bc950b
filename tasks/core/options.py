"""Options added to the run config after runs were made (the scoring stage's): diversity-aware selection's settings,
and how a config's dump leaves such options out while they are unset, so the stage keys and the dataset card of a
run without them stay byte for byte what they were."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# (section, ..., key) of each such option
UNSET_OPTIONS = (("score",), ("score", "embedding_model"), ("llm", "score"), ("mix", "selection"))


class SelectionConfig(BaseModel):
    """Diversity-aware selection (Deita): rows by complexity x quality, each taken only when its embedding's cosine
    similarity to every row taken before is below ``threshold``, until ``mix.sample_size`` rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.9, gt=0.0, le=1.0)


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
