"""A prompt pack's ``manifest.yaml``: its keys, read and checked (each error names the file and the key)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.core.config import validation_message
from tasks.core.config_file import DuplicateKeyError, load_yaml
from tasks.core.options import ORIGINAL_RESPONSE

MANIFEST = "manifest.yaml"
SPECIAL_TEMPLATES = ("system", "equality", "answer", "validity")
SCORING_TEMPLATES = ("complexity", "quality")  # the scoring stage's; not in ``template_shas`` (the evolve key)
KINDS = ("in_depth", "in_breadth")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class PromptPackError(ValueError):
    """A prompt pack that can't be used; the message names the file and the key."""


class OperationEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str
    kind: Literal["in_depth", "in_breadth"]
    weight: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    label: str | None = Field(None, min_length=1)
    variants: tuple[dict[str, str], ...] = ()


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    description: str = ""
    system: str
    equality: str
    answer: str
    validity: str
    operations: dict[str, OperationEntry] = Field(min_length=1)
    scoring: dict[Literal["complexity", "quality"], str] | None = None
    # response evolution (``score.evolve_responses``): operation name -> template rewriting a response
    response_evolution: dict[str, str] | None = None
    scaffolding_phrases: tuple[str, ...] = ()


def read_manifest(path: Path) -> Manifest:
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except DuplicateKeyError as err:
        raise PromptPackError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise PromptPackError(f"invalid YAML in prompt pack manifest {path}: {err}") from None
    if not isinstance(data, dict):
        raise PromptPackError(f"invalid prompt pack manifest {path}: expected a mapping of keys")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as err:
        raise PromptPackError(validation_message(str(path), err)) from None
    for name in manifest.operations:
        if name in SPECIAL_TEMPLATES or not _NAME.match(name):
            raise PromptPackError(
                f"invalid prompt pack manifest {path}: operations.{name}: operation names are lower-case "
                f"identifiers other than {', '.join(SPECIAL_TEMPLATES)}"
            )
    for name in manifest.response_evolution or {}:
        if not _NAME.match(name) or name == ORIGINAL_RESPONSE:
            raise PromptPackError(f"invalid prompt pack manifest {path}: response_evolution.{name}: operation names "
                                  f"are lower-case identifiers other than {ORIGINAL_RESPONSE}")
    if not any(entry.weight > 0 for entry in manifest.operations.values()):
        raise PromptPackError(f"invalid prompt pack manifest {path}: operations: at least one weight must be > 0")
    return manifest
