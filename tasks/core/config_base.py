"""The base of every config model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A frozen model whose unknown keys are errors (configs, recipes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
