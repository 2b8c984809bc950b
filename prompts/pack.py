"""Prompt packs: a folder with a ``manifest.yaml`` and Jinja2 templates, validated and compiled once."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jinja2
import jinja2.meta
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.core.config import validation_message
from tasks.core.config_file import DuplicateKeyError, load_yaml

PACKS_DIR = Path(__file__).resolve().parent
MANIFEST = "manifest.yaml"
SPECIAL_TEMPLATES = ("system", "equality", "answer", "validity")
SCORING_TEMPLATES = ("complexity", "quality")  # the scoring stage's; not in ``template_shas`` (the evolve key)
KINDS = ("in_depth", "in_breadth")
_OPERATION_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class PromptPackError(ValueError):
    """A prompt pack that can't be used; the message names the file and the key."""


class PromptRenderError(ValueError):
    """A template that can't be rendered with the variables given (a missing variable, an unknown name)."""


@dataclass(frozen=True)
class OperationSpec:
    """One evolution operation of a pack: its template file, kind, default weight, output label and variants.

    ``label`` is the heading the template ends with (``#Rewritten Prompt#:``): the assistant's turn may be
    prefilled with it. ``variants`` are sets of extra template variables, one chosen per row (complicate-input:
    one named data format with its worked example per prompt).
    """

    name: str
    kind: Literal["in_depth", "in_breadth"]
    template: str
    weight: float
    label: str | None = None
    variants: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class RenderedPrompt:
    """A rendered template and the sha of its source (stable across rows)."""

    text: str
    sha: str


class _OperationEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str
    kind: Literal["in_depth", "in_breadth"]
    weight: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    label: str | None = Field(None, min_length=1)
    variants: tuple[dict[str, str], ...] = ()


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    description: str = ""
    system: str
    equality: str
    answer: str
    validity: str
    operations: dict[str, _OperationEntry] = Field(min_length=1)
    scoring: dict[Literal["complexity", "quality"], str] | None = None
    scaffolding_phrases: tuple[str, ...] = ()


def _read_manifest(path: Path) -> _Manifest:
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except DuplicateKeyError as err:
        raise PromptPackError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise PromptPackError(f"invalid YAML in prompt pack manifest {path}: {err}") from None
    if not isinstance(data, dict):
        raise PromptPackError(f"invalid prompt pack manifest {path}: expected a mapping of keys")
    try:
        manifest = _Manifest.model_validate(data)
    except ValidationError as err:
        raise PromptPackError(validation_message(str(path), err)) from None
    for name in manifest.operations:
        if name in SPECIAL_TEMPLATES or not _OPERATION_NAME.match(name):
            raise PromptPackError(
                f"invalid prompt pack manifest {path}: operations.{name}: operation names are lower-case "
                f"identifiers other than {', '.join(SPECIAL_TEMPLATES)}"
            )
    if not any(entry.weight > 0 for entry in manifest.operations.values()):
        raise PromptPackError(f"invalid prompt pack manifest {path}: operations: at least one weight must be > 0")
    return manifest


class PromptPack:
    """A loaded prompt pack. Use :func:`load_pack` to build one."""

    def __init__(self, folder: Path, manifest_path: Path) -> None:
        manifest = _read_manifest(manifest_path)
        self.folder = folder
        self.name: str = manifest.name or folder.name
        self.description: str = manifest.description
        self.scaffolding_phrases: tuple[str, ...] = tuple(manifest.scaffolding_phrases)
        self._operations = {
            name: OperationSpec(name, entry.kind, entry.template, entry.weight, entry.label, entry.variants)
            for name, entry in manifest.operations.items()
        }
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(folder, encoding="utf-8"),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )
        files = {name: getattr(manifest, name) for name in SPECIAL_TEMPLATES}
        files.update({name: spec.template for name, spec in self._operations.items()})
        self.has_scoring = manifest.scoring is not None and set(manifest.scoring) == set(SCORING_TEMPLATES)
        files.update(manifest.scoring or {})
        keys = {name: name for name in SPECIAL_TEMPLATES} | {n: f"operations.{n}.template" for n in self._operations}
        keys |= {name: f"scoring.{name}" for name in manifest.scoring or {}}
        self._files = files
        self._templates: dict[str, jinja2.Template] = {}
        self._shas: dict[str, str] = {}
        for name, file in files.items():
            where = f"prompt pack manifest {manifest_path}: {keys[name]}"
            if not (folder / file).is_file():
                raise PromptPackError(f"{where}: template file '{file}' not found in {folder}")
            try:
                self._templates[name] = self._env.get_template(file)
                variants = self._operations[name].variants if name in self._operations else ()
                self._shas[name] = self._template_sha(file, variants)
            except jinja2.TemplateSyntaxError as err:
                raise PromptPackError(f"{where}: syntax error in '{file}' line {err.lineno}: {err.message}") from None
            except jinja2.TemplateNotFound as err:
                raise PromptPackError(f"{where}: '{file}' includes '{err.name}', which is not in {folder}") from None
        try:
            self._system_text = self.render("system").text.rstrip()
        except PromptRenderError as err:
            raise PromptPackError(f"prompt pack manifest {manifest_path}: system: {err}") from None

    def __repr__(self) -> str:
        return f"PromptPack(name={self.name!r}, folder={str(self.folder)!r}, operations={list(self._operations)})"

    @property
    def operations(self) -> dict[str, OperationSpec]:
        """Operation name -> spec, in the manifest's order."""
        return dict(self._operations)

    def template_shas(self) -> dict[str, str]:
        """Template name (operations, ``system``, ``equality``, ``answer``) -> sha; for the run fingerprint."""
        return {k: v for k, v in self._shas.items() if k not in SCORING_TEMPLATES}

    def scoring_pack(self) -> PromptPack:
        """The pack whose scoring templates this one uses: itself, or the bundled ``general`` pack."""
        return self if self.has_scoring else load_pack("general")

    def scoring_shas(self) -> dict[str, str]:
        """The scoring templates' shas (the scoring stage's key)."""
        pack = self.scoring_pack()
        return {k: pack._shas[k] for k in SCORING_TEMPLATES}

    def score_messages(self, kind: str, **variables: Any) -> list[dict[str, str]]:
        """The conversation of one scoring request: ``complexity`` (``questions``, ``target``: 1-based) or
        ``quality`` (``question``, ``response``)."""
        if kind not in SCORING_TEMPLATES:
            raise PromptRenderError(f"no scoring template {kind!r} (known: {', '.join(SCORING_TEMPLATES)})")
        return self.scoring_pack()._messages(kind, **variables)[0]

    def _template_sha(self, file: str, variants: tuple[dict[str, str], ...] = ()) -> str:
        # Text with normalised newlines, so a checkout with CRLF endings gives the same sha. Templates that
        # include or extend others hash those too, so an edit to a shared part changes the fingerprint; an
        # operation's variants are part of what it renders, so they are hashed with it.
        parts: list[str] = [f"\0variants\0{json.dumps(variants, sort_keys=True)}"] if variants else []
        seen: set[str] = set()
        pending = [file]
        while pending:
            current = pending.pop(0)
            if current in seen:
                continue
            seen.add(current)
            source = self._env.loader.get_source(self._env, current)[0].replace("\r\n", "\n")
            parts.append(source if current == file else f"\0{current}\0{source}")
            refs = jinja2.meta.find_referenced_templates(self._env.parse(source))
            pending.extend(sorted(ref for ref in refs if ref is not None))
        return hashlib.sha256("".join(parts).encode("utf-8")).hexdigest()[:16]

    def render(self, template_name: str, **variables: Any) -> RenderedPrompt:
        """Render a template by its manifest name; a variable it uses but is not given is an error."""
        template = self._templates.get(template_name)
        if template is None:
            known = ", ".join(self._templates)
            raise PromptRenderError(f"prompt pack '{self.name}' has no template '{template_name}' (known: {known})")
        try:
            text = template.render(**variables)
        except jinja2.UndefinedError as err:
            file = self._files[template_name]
            where = f"template '{template_name}' ({file}) of prompt pack '{self.name}'"
            raise PromptRenderError(f"{where}: {err}") from None
        return RenderedPrompt(text=text, sha=self._shas[template_name])

    def _messages(self, template_name: str, **variables: Any) -> tuple[list[dict[str, str]], str]:
        # Chat templates add their own turn separators, so turns carry no trailing whitespace.
        rendered = self.render(template_name, **variables)
        messages = [
            {"role": "system", "content": self._system_text},
            {"role": "user", "content": rendered.text.rstrip()},
        ]
        return messages, rendered.sha

    def evolve_messages(self, operation: str, instruction: str, input: str = "", prefill: bool = False,
                        variant: int = 0) -> tuple[list[dict[str, str]], str]:
        """The conversation that evolves ``instruction`` (and its input) with ``operation``, and the template sha.

        ``prefill``: the assistant's turn is opened with the operation's label, so the model writes the rewrite
        right after it. ``variant``: which of the operation's variants (taken modulo their number).
        """
        spec = self._operations.get(operation)
        if spec is None:
            known = ", ".join(self._operations)
            raise PromptRenderError(f"prompt pack '{self.name}' has no operation '{operation}' (known: {known})")
        extra = spec.variants[variant % len(spec.variants)] if spec.variants else {}
        messages, sha = self._messages(operation, **extra, instruction=instruction, input=input or "")
        if prefill and spec.label:
            messages.append({"role": "assistant", "content": self.label(operation, variant)})
        return messages, sha

    def label(self, operation: str, variant: int = 0) -> str | None:
        """The operation's output label as the prompt shows it (variant variables filled in), or None."""
        spec = self._operations[operation]
        if spec.label is None:
            return None
        extra = spec.variants[variant % len(spec.variants)] if spec.variants else {}
        try:
            return self._env.from_string(spec.label).render(**extra)
        except jinja2.UndefinedError as err:
            raise PromptRenderError(f"label of operation '{operation}' of prompt pack '{self.name}': {err}") from None

    def answer_messages(self, instruction: str, input: str = "") -> tuple[list[dict[str, str]], str]:
        """The conversation that asks for a response to ``instruction`` (and its input), and the template sha."""
        return self._messages("answer", instruction=instruction, input=input or "")

    def equality_messages(self, first: str, second: str, paper: bool = False) -> tuple[list[dict[str, str]], str]:
        """The conversation asking whether two instructions are equal, and the template sha. ``paper``: the
        template may word it as the paper does (the bundled packs do; a template that ignores it is fine)."""
        return self._messages("equality", first=first, second=second, paper=paper)

    def validity_messages(self, parent: str, candidate: str) -> tuple[list[dict[str, str]], str]:
        """The conversation asking whether ``candidate`` (a rewrite of ``parent``) is an instruction, and the sha."""
        return self._messages("validity", parent=parent, candidate=candidate)


def bundled_packs() -> tuple[str, ...]:
    """Names of the packs shipped with the project (folders next to this file with a manifest)."""
    return tuple(sorted(p.parent.name for p in PACKS_DIR.glob(f"*/{MANIFEST}")))


def load_pack(name_or_path: str | Path) -> PromptPack:
    """Load a bundled pack by name (``general``, ``code``) or a user's pack folder (or its manifest file).

    A bundled name wins over a folder of the same name in the working directory; write ``./general`` for that.
    """
    text = str(name_or_path)
    if text in bundled_packs():
        folder = PACKS_DIR / text
        return PromptPack(folder, folder / MANIFEST)
    path = Path(text).expanduser()
    if path.is_file():
        return PromptPack(path.resolve().parent, path.resolve())
    if path.is_dir():
        manifest = path / MANIFEST
        if not manifest.is_file():
            raise PromptPackError(f"prompt pack folder {path} has no {MANIFEST}")
        return PromptPack(path.resolve(), manifest.resolve())
    raise PromptPackError(
        f"unknown prompt pack '{text}': not a bundled pack ({', '.join(bundled_packs())}) and not a folder or file"
    )
