"""Chat templates for training. A recipe's ``chat_template`` names a format (``recipes/templates/NAME.jinja``:
``alpaca``, ``wizardlm``) or a Jinja file; it replaces the tokenizer's own. A tokenizer with no template (a base model)
and a recipe that names none is an error that says so, before any model is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
TEMPLATES_DIR = RECIPES_DIR / "templates"
TEMPLATE_SUFFIXES = (".jinja", ".j2")


class RecipeError(ValueError):
    """A recipe that can't be used; the message names the file and the keys."""


class NoChatTemplateError(RecipeError):
    """The model's tokenizer has no chat template and the recipe names none."""


def template_names() -> list[str]:
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.jinja"))


def template_path(value: str, recipe_file: Path) -> Path:
    """A named format -> ``recipes/templates/NAME.jinja``; a path ending in ``.jinja``/``.j2`` -> that file, a
    relative one taken from the recipe's folder. An unknown name or a missing file is a ``RecipeError``."""
    if Path(value).suffix in TEMPLATE_SUFFIXES:
        path = (recipe_file.parent / Path(value).expanduser()).resolve()
        if not path.is_file():
            raise RecipeError(f"{recipe_file}: chat_template: file not found: {path}")
        return path
    if value not in template_names():
        raise RecipeError(f"{recipe_file}: chat_template: unknown format {value!r} (named formats: "
                          f"{', '.join(template_names())}; or a path to a .jinja file)")
    return TEMPLATES_DIR / f"{value}.jinja"


def apply_template(tokenizer: Any, chat_template: str | None, where: str, model: str) -> str:
    """Put the recipe's template (a resolved file path) on ``tokenizer``; without one the tokenizer must have its
    own. Returns where the template in use comes from."""
    if chat_template:
        tokenizer.chat_template = Path(chat_template).read_text(encoding="utf-8")
        return chat_template
    if not getattr(tokenizer, "chat_template", None):
        raise NoChatTemplateError(f"{where}: the tokenizer of {model} has no chat template (a base model?): set "
                                  f"chat_template in the recipe to a named format ({', '.join(template_names())}) or "
                                  "a .jinja file")
    return "the tokenizer's own"


def training_tokenizer(chat_template: str | None, model_path: str, where: str) -> Any:
    """The model's tokenizer with the template training uses (see ``apply_template``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    apply_template(tokenizer, chat_template, where, model_path)
    return tokenizer


def render(template_text: str, messages: list[dict[str, str]], generation_prompt: bool, tokenizer: Any = None) -> str:
    """``messages`` rendered as training renders them: through ``tokenizer`` (its template set) when there is one,
    else ``template_text`` alone with ``<bos>``/``<eos>`` standing for the special tokens."""
    if tokenizer is not None:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
    from transformers.utils.chat_template_utils import render_jinja_template

    [text], _ = render_jinja_template([messages], chat_template=template_text, add_generation_prompt=generation_prompt,
                                      bos_token="<bos>", eos_token="<eos>")
    return text
