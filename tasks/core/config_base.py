"""The base of every config model, and the sampling parameters every LLM call takes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StrictModel(BaseModel):
    """A frozen model whose unknown keys are errors (configs, recipes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class SamplingParams(StrictModel):
    """The project's sampling parameters; each backend translates them."""

    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(2048, ge=1)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # A forced choice: the output must be exactly one of these (constrained decoding where the backend can).
    choices: tuple[str, ...] | None = None

    @field_validator("choices")
    @classmethod
    def _choices_valid(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and (len(value) < 2 or len(set(value)) != len(value) or not all(c.strip() for c in value)):
            raise ValueError("choices must be at least two distinct non-blank strings")
        return value
