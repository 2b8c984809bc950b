"""Prompt packs: a folder with a ``manifest.yaml`` and Jinja2 templates, validated and compiled once."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jinja2
import jinja2.meta

from prompts.manifest import MANIFEST, SCORING_TEMPLATES, SPECIAL_TEMPLATES, PromptPackError, read_manifest

PACKS_DIR = Path(__file__).resolve().parent


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


class PromptPack:
    """A loaded prompt pack. Use :func:`load_pack` to build one."""

    def __init__(self, folder: Path, manifest_path: Path) -> None:
        manifest = read_manifest(manifest_path)
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
        self.response_operations: tuple[str, ...] = tuple(manifest.response_evolution or ())
        files.update({f"response.{op}": file for op, file in (manifest.response_evolution or {}).items()})
        keys |= {f"response.{op}": f"response_evolution.{op}" for op in self.response_operations}
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
        return {k: v for k, v in self._shas.items() if k not in SCORING_TEMPLATES and not k.startswith("response.")}

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

    def response_pack(self) -> PromptPack:
        """The pack whose response-evolution templates this one uses: itself, or the bundled ``general`` pack."""
        return self if self.response_operations else load_pack("general")

    def response_shas(self, operations: tuple[str, ...]) -> dict[str, str]:
        """The shas of the templates that rewrite a response by ``operations`` (the scoring stage's key with
        ``score.evolve_responses``); an operation the pack has no template for is an error."""
        pack = self.response_pack()
        if unknown := [op for op in operations if op not in pack.response_operations]:
            raise PromptPackError(f"score.evolve_responses: prompt pack '{pack.name}' has no response evolution "
                                  f"template for {unknown} (known: {', '.join(pack.response_operations)})")
        return {op: pack._shas[f"response.{op}"] for op in operations}

    def rewrite_messages(self, operation: str, question: str, response: str) -> tuple[list[dict[str, str]], str]:
        """The conversation that rewrites ``response`` (to ``question``) by one response evolution operation, and
        the template sha."""
        pack = self.response_pack()
        if operation not in pack.response_operations:
            raise PromptRenderError(f"prompt pack '{pack.name}' has no response evolution operation '{operation}' "
                                    f"(known: {', '.join(pack.response_operations)})")
        return pack._messages(f"response.{operation}", question=question, response=response)

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
