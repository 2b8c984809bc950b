"""From one source record to instruction / input / output, and everything else kept as ``meta``.

Recognised without a map (keys compared case-insensitively): Alpaca (``instruction``, ``input``,
``output``), Dolly (``context``, ``response``), self-instruct seed tasks (``instances``: the first
instance's ``input`` and ``output``), chat (``messages`` with ``role``/``content``, ``conversations``
with ``from``/``value``). A field map names source *paths*: keys joined with dots, a segment of digits
indexing a list (``instances.0.input``). A map overrides only the targets it names.

Whatever a record holds beyond what became instruction / input / output stays in ``meta.fields``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tasks.core.text import has_lone_surrogate

TARGET_FIELDS = ("instruction", "input", "output")
# Source names recognised for each target, compared case-insensitively, in order of preference.
RECOGNISED = {"instruction": ("instruction",), "input": ("input", "context"), "output": ("output", "response")}
CHAT_KEYS = ("messages", "conversations")
INSTANCES_KEY = "instances"
USER_ROLES = {"user", "human"}
ASSISTANT_ROLES = {"assistant", "gpt", "model", "bot"}
SYSTEM_ROLES = {"system"}
KNOWN_NAMES = frozenset(n for names in RECOGNISED.values() for n in names) | set(CHAT_KEYS) | {INSTANCES_KEY}

Path = tuple[str | int, ...]


class Rejection(Exception):
    """A record that can't be used: the reason, the source field it concerns, a detail."""

    def __init__(self, reason: str, field: str | None, detail: str):
        super().__init__(detail)
        self.reason, self.field, self.detail = reason, field, detail


@dataclass
class Extracted:
    """The three target fields of one record and what is left of it."""

    instruction: str
    input: str
    output: str | None
    rest: dict[str, Any]


def lookup(value: Any, text: str) -> tuple[Any, Path] | None:
    """The value at a field path and its concrete path, or None when the record does not have it.

    A top-level key that itself contains dots is matched first, as written.
    """
    if isinstance(value, dict) and text in value:
        return value[text], (text,)
    current, path = value, []
    for part in text.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
            path.append(part)
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
            path.append(int(part))
        else:
            return None
    return current, tuple(path)


def _find_key(record: dict[str, Any], names: tuple[str, ...]) -> str | None:
    lowered = {}
    for key in record:
        lowered.setdefault(key.lower() if isinstance(key, str) else key, key)
    for name in names:
        if name in record:
            return name
        if name in lowered:
            return lowered[name]
    return None


def _chat(record: dict[str, Any], key: str) -> tuple[dict[str, Any], dict[str, Path], list[Path]]:
    """Chat turns: system turns before the first user turn as context, the first user turn, the first answer."""
    turns = record[key]
    if not isinstance(turns, list):
        raise Rejection("not_a_list", key, f"{key} must be a list of turns, got {type(turns).__name__}")
    found: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    system: list[tuple[int, Any]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            continue
        role_key = _find_key(turn, ("role", "from"))
        content_key = _find_key(turn, ("content", "value"))
        role = str(turn.get(role_key, "")).lower() if role_key else ""
        content = turn.get(content_key) if content_key else None
        if role in SYSTEM_ROLES and "instruction" not in found:
            system.append((i, content))
        elif role in USER_ROLES and "instruction" not in found:
            found["instruction"], paths["instruction"] = content, (key, i)
        elif role in ASSISTANT_ROLES and "instruction" in found:
            found["output"], paths["output"] = content, (key, i)
            break
    if system and "instruction" in found:
        texts = [c for _, c in system]
        if not all(isinstance(t, str) for t in texts):
            raise Rejection("not_a_string", f"{key}.{system[0][0]}", "a system turn's content is not a string")
        found["input"] = "\n\n".join(t.strip() for t in texts if t.strip())
        paths["input"] = (key, system[0][0])
    return found, paths, [(key, i) for i, _ in system[1:]]


def extract_fields(value: Any, field_map: dict[str, str]) -> Extracted:
    """instruction / input / output of one source record, and the rest of it; raises Rejection when unusable."""
    if not isinstance(value, dict):
        raise Rejection("not_an_object", None, f"expected an object, got {type(value).__name__}")
    found: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    names: dict[str, str] = {}  # target -> source name, for error messages
    more_paths: list[Path] = []  # further system turns of a chat record
    for target in TARGET_FIELDS:
        if target in field_map:
            names[target] = field_map[target]
            hit = lookup(value, field_map[target])
            if hit is not None:
                found[target], paths[target] = hit
            continue
        key = _find_key(value, RECOGNISED[target])
        if key is not None:
            found[target], paths[target], names[target] = value[key], (key,), key
    if "instruction" not in field_map and "instruction" not in found:
        chat_key = _find_key(value, CHAT_KEYS)
        if chat_key is not None:
            chat, chat_paths, system_paths = _chat(value, chat_key)
            for target, v in chat.items():
                if target not in found and target not in field_map:
                    found[target], paths[target] = v, chat_paths[target]
                    names[target] = ".".join(str(p) for p in chat_paths[target][:2])
                    if target == "input":
                        more_paths = system_paths
    instances = _find_key(value, (INSTANCES_KEY,))
    if instances is not None and isinstance(value[instances], list) and value[instances] \
            and isinstance(value[instances][0], dict):
        first = value[instances][0]
        for target in ("input", "output"):
            key = _find_key(first, RECOGNISED[target])
            if target not in found and target not in field_map and key is not None:
                found[target], paths[target] = first[key], (instances, 0, key)
                names[target] = f"{instances}.0.{key}"
    for target in TARGET_FIELDS:
        v = found.get(target)
        name = names.get(target, target)
        if target == "instruction" and v is None:
            raise Rejection("missing_instruction", name, "record has no instruction")
        if v is not None and not isinstance(v, str):
            raise Rejection("not_a_string", name, f"{name} is {type(v).__name__}, expected a string")
        if isinstance(v, str) and has_lone_surrogate(v):
            raise Rejection("invalid_utf8", name, f"{name} holds bytes that are not valid UTF-8")
    if not found["instruction"].strip():
        raise Rejection("empty_instruction", names["instruction"], "instruction is empty or only whitespace")
    return Extracted(found["instruction"].strip(), (found.get("input") or "").strip(), found.get("output"),
                     _prune(value, [*paths.values(), *more_paths]))


def _prune(record: dict[str, Any], paths: list[Path]) -> dict[str, Any]:
    """The record less the values at ``paths``; containers emptied by that are dropped too."""
    removals: dict[Path, set[str | int]] = {}
    for path in paths:
        removals.setdefault(path[:-1], set()).add(path[-1])
    # deepest parents first, so emptied containers are seen by their own parent's pass
    for parent in sorted(removals, key=len, reverse=True):
        container = _get(record, parent)
        if container is None:
            continue
        for key in sorted(removals[parent], key=lambda k: (isinstance(k, int), k), reverse=True):
            if isinstance(container, list) and isinstance(key, int) and key < len(container):
                del container[key]
            elif isinstance(container, dict) and key in container:
                del container[key]
        for depth in range(len(parent), 0, -1):
            node = _get(record, parent[:depth])
            if node in ({}, []):
                holder = _get(record, parent[:depth - 1])
                if isinstance(holder, (dict, list)):
                    del holder[parent[depth - 1]]
    return record


def _get(record: Any, path: Path) -> Any:
    for part in path:
        try:
            record = record[part]
        except (KeyError, IndexError, TypeError):
            return None
    return record


def meta_json(source_json: str, line: int, fields_json: str) -> str:
    """The ``meta`` column: ``{"source": ..., "line": ..., "fields": {...}}``; one text for every reader."""
    return f'{{"source": {source_json}, "line": {line}, "fields": {fields_json}}}'


def dumps(value: Any) -> str:
    """JSON text as stored in ``meta`` (UTF-8 kept, values that JSON lacks written as strings)."""
    return json.dumps(value, ensure_ascii=False, default=str)
