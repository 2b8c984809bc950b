"""A run config from a YAML file: read (a key given twice is an error), ``--set`` pairs and overrides applied,
relative paths taken from the file's folder, validated as a ``RunConfig``.

PyYAML keeps the last of two equal keys without a word, so ``rounds:`` twice would silently take the second: the
loader here refuses it (recipes and prompt pack manifests are read with it too)."""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Hashable
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel

from storage import StorageSettings, resolve
from tasks.core.config import ConfigError, EnvSettings, RunConfig, parse_run_config
from tasks.core.data_config import benchmark_paths


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


def _section(annotation: Any) -> type[BaseModel] | type[dict] | None:
    """The model a field holds (``X | None`` included), ``dict`` for a free mapping, None for a plain value."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        if candidate is dict or get_origin(candidate) is dict:
            return dict
    return None


def check_set_key(key: str) -> None:
    """A ``--set`` key must name a config key: ``rounds``, ``sampling.evolve.max_tokens``, ``llm.engine_args.X``."""
    model: Any = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if model is dict:  # inside a free mapping (engine_args, field_map, operation_weights): any key
            return
        where = ".".join(parts[:i]) or "the config"
        if model is None:
            raise ConfigError(f"--set {key}: unknown key {key}: {where} is a value, it has no keys")
        if part not in model.model_fields:
            raise ConfigError(f"--set {key}: unknown key {'.'.join(parts[: i + 1])} ({where} has "
                              f"{', '.join(model.model_fields)})")
        model = _section(model.model_fields[part].annotation)


def apply_sets(data: dict[str, Any], sets: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (``--set``) merged into a config mapping: KEY is dotted (``sampling.evolve.max_tokens``),
    VALUE is read as YAML (``3``, ``0.5``, ``false``, ``[a, b]``, ``null``) and typed by the config's model."""
    out = copy.deepcopy(data)
    for pair in sets:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE (rounds=3, sampling.evolve.max_tokens=64), got {pair!r}")
        check_set_key(key)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        *sections, last = key.split(".")
        for part in sections:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return out


def load_run_config(uri: str | Path, overrides: dict[str, Any] | None = None, sets: list[str] | tuple[str, ...] = (),
                    settings: StorageSettings | None = None) -> RunConfig:
    """Load a RunConfig from a YAML file at a local path or a storage URI (``s3://``, ``memory://``).

    Relative ``seeds`` and ``output_root`` in it are taken from the file's folder, local or not. ``overrides`` replace
    top-level keys; ``sets`` are ``--set KEY=VALUE`` pairs (see :func:`apply_sets`)."""
    uri = str(uri)
    local = "://" not in uri or uri.startswith("file://")
    source = str(Path(uri.removeprefix("file://"))) if local else uri
    try:
        if local:
            text = Path(source).read_text(encoding="utf-8")
        else:
            fs, path = resolve(uri, settings or EnvSettings().storage)
            text = fs.cat_file(path).decode("utf-8")
        data = load_yaml(text)
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {source}") from None
    except DuplicateKeyError as err:
        raise ConfigError(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(err).split())}") from None
    except ValueError as err:
        raise ConfigError(f"can't read configuration {source}: {err}") from None
    if isinstance(data, dict):
        data = apply_sets({**data, **(overrides or {})}, sets)
        protocol, _, path = uri.partition("://")
        def located(value: Any) -> Any:
            if isinstance(value, str) and "://" not in value and not value.startswith("/"):
                return (str((Path(source).parent / value).resolve()) if local else
                        f"{protocol}://" + posixpath.normpath(posixpath.join(posixpath.dirname(path), value)))
            return value

        data = {k: located(v) if k in ("seeds", "output_root") else v for k, v in data.items()}
        if "mix" in data:  # the benchmark files of mix.decontaminate
            data["mix"] = benchmark_paths(data["mix"], located)
    return parse_run_config(data, source)
