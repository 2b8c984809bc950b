"""Prompt templates as data (one folder per pack) and their loader."""

from prompts.manifest import KINDS, SPECIAL_TEMPLATES, PromptPackError
from prompts.pack import (
    OperationSpec,
    PromptPack,
    PromptRenderError,
    RenderedPrompt,
    bundled_packs,
    load_pack,
)

__all__ = [
    "KINDS",
    "SPECIAL_TEMPLATES",
    "OperationSpec",
    "PromptPack",
    "PromptPackError",
    "PromptRenderError",
    "RenderedPrompt",
    "bundled_packs",
    "load_pack",
]
