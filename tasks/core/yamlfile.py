"""YAML as configs are read: PyYAML's safe loader, with a key given twice in one mapping an error.

PyYAML keeps the last of two equal keys without a word, so ``rounds:`` twice would silently take the second.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names a key twice; the message names the key and both lines."""


class UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a mapping with a key twice (merge keys, ``<<``, still override as YAML says)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base constructor says what is wrong with it
            line = key_node.start_mark.line + 1
            if key in first:
                raise DuplicateKeyError(f"line {line}: key {key!r} is given twice (first at line {first[key]}); "
                                        "keep one")
            first[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """The YAML document in ``text``; a key twice in one mapping raises DuplicateKeyError."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
