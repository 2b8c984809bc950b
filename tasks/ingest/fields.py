"""From one source record to instruction / input / output, and everything else kept as ``meta``.

Recognised without a map (keys compared case-insensitively): Alpaca (``instruction``, ``input``,
``output``), Dolly (``context``, ``response``), self-instruct seed tasks (``instances``: the first
instance's ``input`` and ``output``), chat (``messages`` with ``role``/``content``, ``conversations``
with ``from``/``value``). A field map names source *paths*: keys joined with dots, a segment of digits
indexing a list (``instances.0.input``). A map overrides only the targets it names.

Whatever a record holds beyond what became instruction / input / output stays in ``meta.fields``."""

from __future__ import annotations

import json
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
Hit = tuple[Any, Path, str]  # a target's value, its path in the record, its name in error messages


class Rejection(Exception):
    """A record that can't be used: the reason, the source field it concerns, a detail."""

    def __init__(self, reason: str, field: str | None, detail: str):
        super().__init__(detail)
        self.reason, self.field, self.detail = reason, field, detail


def field_map_problems(field_map: dict[str, str]) -> dict[str, str]:
    """target -> what is wrong with its entry: targets are instruction / input / output, sources field paths."""
    return {target: f"unknown target field; use {', '.join(TARGET_FIELDS)}" if target not in TARGET_FIELDS
            else "the source field is empty; give a field path such as instances.0.input"
            for target, source in field_map.items()
            if target not in TARGET_FIELDS or not isinstance(source, str) or not source.strip()}


def lookup(value: Any, text: str) -> tuple[Any, Path] | None:
    """The value at a field path and its concrete path, or None when the record does not have it (a top-level key
    that itself contains dots is matched first, as written)."""
    if isinstance(value, dict) and text in value:
        return value[text], (text,)
    current, path = value, []
    for part in text.split("."):
        if isinstance(current, dict) and part in current:
            path.append(part)
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            path.append(part := int(part))
        else:
            return None
        current = current[part]
    return current, tuple(path)


def _find_key(record: dict[str, Any], names: tuple[str, ...]) -> str | None:
    """The record's key for the first of ``names`` it has: as written, else the first key equal ignoring case."""
    for name in names:
        key = name if name in record else next((k for k in record if k.lower() == name), None)
        if key is not None:
            return key
    return None


def _chat(record: dict[str, Any], key: str) -> tuple[dict[str, Hit], list[Path]]:
    """Chat turns: system turns before the first user turn as input (joined), the first user turn, the first
    answer after it; and the paths of the system turns after the first."""
    turns = record[key]
    if not isinstance(turns, list):
        raise Rejection("not_a_list", key, f"{key} must be a list of turns, got {type(turns).__name__}")
    hits: dict[str, Hit] = {}
    system: list[tuple[int, Any]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            continue
        role_key, content_key = _find_key(turn, ("role", "from")), _find_key(turn, ("content", "value"))
        role = str(turn[role_key]).lower() if role_key else ""
        hit = (turn[content_key] if content_key else None, (key, i), f"{key}.{i}")
        if role in SYSTEM_ROLES and "instruction" not in hits:
            system.append((i, hit[0]))
        elif role in USER_ROLES and "instruction" not in hits:
            hits["instruction"] = hit
        elif role in ASSISTANT_ROLES and "instruction" in hits:
            hits["output"] = hit
            break
    if not system or "instruction" not in hits:
        return hits, []
    texts, first = [c for _, c in system], system[0][0]
    if not all(isinstance(t, str) for t in texts):
        raise Rejection("not_a_string", f"{key}.{first}", "a system turn's content is not a string")
    hits["input"] = ("\n\n".join(t.strip() for t in texts if t.strip()), (key, first), f"{key}.{first}")
    return hits, [(key, i) for i, _ in system[1:]]


def extract_fields(value: Any, field_map: dict[str, str]) -> tuple[str, str, str | None, dict[str, Any]]:
    """(instruction, input, output, the rest) of one source record; raises Rejection when unusable."""
    if not isinstance(value, dict):
        raise Rejection("not_an_object", None, f"expected an object, got {type(value).__name__}")
    hits: dict[str, Hit] = {}
    for target in TARGET_FIELDS:
        if target in field_map:
            if (hit := lookup(value, field_map[target])) is not None:
                hits[target] = (*hit, field_map[target])
        elif (key := _find_key(value, RECOGNISED[target])) is not None:
            hits[target] = (value[key], (key,), key)
    more_paths: list[Path] = []  # further system turns of a chat record
    if "instruction" not in field_map and "instruction" not in hits \
            and (key := _find_key(value, CHAT_KEYS)) is not None:
        chat, system_paths = _chat(value, key)
        chat = {t: hit for t, hit in chat.items() if t not in hits and t not in field_map}
        hits |= chat
        more_paths = system_paths if "input" in chat else []
    key = _find_key(value, (INSTANCES_KEY,))
    first = value[key][0] if key is not None and isinstance(value[key], list) and value[key] else None
    for target in ("input", "output") if isinstance(first, dict) else ():
        inner = _find_key(first, RECOGNISED[target])
        if target not in hits and target not in field_map and inner is not None:
            hits[target] = (first[inner], (key, 0, inner), f"{key}.0.{inner}")
    for target in TARGET_FIELDS:
        v, _, name = hits.get(target, (None, (), field_map.get(target, target)))
        if target == "instruction" and v is None:
            raise Rejection("missing_instruction", name, "record has no instruction")
        if v is not None and not isinstance(v, str):
            raise Rejection("not_a_string", name, f"{name} is {type(v).__name__}, expected a string")
        if isinstance(v, str) and has_lone_surrogate(v):
            raise Rejection("invalid_utf8", name, f"{name} holds bytes that are not valid UTF-8")
    instruction = hits["instruction"][0].strip()
    if not instruction:
        raise Rejection("empty_instruction", hits["instruction"][2], "instruction is empty or only whitespace")
    return (instruction, (hits.get("input", ("",))[0] or "").strip(), hits.get("output", (None,))[0],
            _prune(value, [hit[1] for hit in hits.values()] + more_paths))


def _prune(record: dict[str, Any], paths: list[Path]) -> dict[str, Any]:
    """The record less the values at ``paths``; containers emptied by that are dropped too.

    Last path first: removing a list item leaves the indices of the items before it, and a container is
    emptied only once every path under it is gone."""
    for path in sorted(set(paths), key=lambda p: [(isinstance(k, int), k) for k in p], reverse=True):
        nodes = [record]
        for part in path[:-1]:
            nodes.append(nodes[-1][part])
        del nodes[-1][path[-1]]
        for depth in range(len(path) - 1, 0, -1):
            if nodes[depth] not in ({}, []):
                break
            del nodes[depth - 1][path[depth - 1]]
    return record


_KEYS_TWICE = [0]  # objects parsed with a key twice, by any thread: a value is searched only when this grew


class _KeyTwice(dict):
    """A JSON object that had a key twice (``key``); the reader rejects its record instead of keeping one value.
    Its items are the pairs as written, so ``json.dumps`` (the quarantined row's raw text) keeps every value."""

    key: str
    pairs: list[tuple[str, Any]]

    def items(self):  # type: ignore[override]
        return self.pairs


def object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json``'s ``object_pairs_hook``: a dict, marked when a key came twice."""
    value = dict(pairs)
    if len(value) == len(pairs):
        return value
    seen: set[str] = set()
    twice = _KeyTwice(value)
    twice.pairs = pairs
    twice.key = next(k for k, _ in pairs if k in seen or seen.add(k))
    _KEYS_TWICE[0] += 1
    return twice


def _key_twice(value: Any, path: str = "") -> str | None:
    """The field path of the first key an object in ``value`` has twice, or None."""
    if isinstance(value, _KeyTwice):
        return f"{path}{value.key}"
    items = dict.items(value) if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return next((hit for k, v in items if (hit := _key_twice(v, f"{path}{k}.")) is not None), None)


def check_unique_keys(value: Any) -> Any:
    """``value`` unchanged, or a Rejection (``duplicate_key``) when one of its objects had a key twice."""
    if (path := _key_twice(value)) is not None:
        raise Rejection("duplicate_key", path, f"key {path!r} appears twice in one object; which value is meant "
                        "is unknown: keep one, or rename the other")
    return value


def loads_marking(text: str) -> tuple[Any, bool]:
    """``json.loads`` with every object that had a key twice marked, and whether there was one."""
    before = _KEYS_TWICE[0]
    value = json.loads(text, object_pairs_hook=object_pairs)
    return value, _KEYS_TWICE[0] != before


def strict_json(text: str) -> Any:
    """``json.loads``, but an object with a key twice is a Rejection (``duplicate_key``), never the last value."""
    value, twice = loads_marking(text)
    return check_unique_keys(value) if twice else value


def dumps(value: Any) -> str:
    """JSON text as stored in ``meta`` (UTF-8 kept, values that JSON lacks written as strings)."""
    return json.dumps(value, ensure_ascii=False, default=str)
