"""Plan-time validation: everything about a run that can be checked without a model, before anything starts.

Each problem is one line, ``<file>: <key>: <what>``: the config file (or template, or environment
variable) and the key that is wrong, and what to do about it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prompts import PromptPack, PromptPackError, PromptRenderError, load_pack
from storage import StorageSettings, join_uri, resolve
from storage.errors import StorageUnreachable, check_reachable
from tasks.core.config import EnvSettings, RunConfig
from tasks.evolve.operations import resolve_weights
from tasks.ingest.fields import field_map_problems
from tasks.ingest.read import check_source
from tasks.ingest.seeds import IngestError, find_unmatched_paths
from tasks.mix.benchmarks import BenchmarkError, read_benchmark

SAMPLE = {"instruction": "Name three primary colours.", "input": "Answer in one line.",
          "first": "Name three primary colours.", "second": "List the three primary colours in one line."}


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    what: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.what}"


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def validate_run(config: RunConfig, config_file: str, settings: StorageSettings | None = None,
                 env: EnvSettings | None = None, write_check: bool = True) -> list[Problem]:
    """Every problem found in ``config`` (empty when the run can start); with ``write_check`` writes (and removes)
    one small file under the output root, which creates the output root; a plan passes ``False``: it writes
    nothing there."""
    env = env or EnvSettings()
    settings = settings or env.storage
    problems: list[Problem] = []

    def check(key: str, call: Callable[[], Any], errors: type[Exception] | tuple[type[Exception], ...]) -> Any:
        try:
            return call()
        except errors as err:
            problems.append(Problem(config_file, key, _one_line(err)))

    for key, uri in (("seeds", config.seeds), ("output_root", config.output_root)):
        try:  # storage that does not answer is the one problem worth saying: every other check would wait on it
            check_reachable(uri, settings)
        except StorageUnreachable as err:
            return [Problem(config_file, key, str(err))]
    pack = check("prompt_pack", lambda: load_pack(config.prompt_pack), PromptPackError)
    if pack is not None:
        check("operation_weights", lambda: resolve_weights(pack, config.operation_weights), ValueError)
        problems += _render_templates(pack)
        evolving = config.score.evolve_responses if config.score is not None else None
        if evolving is not None:
            check("score.evolve_responses.operations", lambda: pack.response_shas(evolving.operations),
                  PromptPackError)
    problems += [Problem(config_file, f"field_map.{target}", what)
                 for target, what in field_map_problems(config.field_map).items()]
    if config.llm.backend == "scripted":
        from tasks.llm.base import BackendError
        from tasks.llm.scripted import scripted_backend

        check("llm.model", lambda: scripted_backend(config.llm.model), BackendError)
    elif (what := _model_problem(config, env)) is not None:
        problems.append(Problem(config_file, "llm.model", what))
    check("seeds", lambda: check_source(config.seeds, settings), IngestError)
    if config.field_map and not problems:  # a seed file that can't be read (an unbalanced CSV quote): its line
        unmatched, fields = check("seeds", lambda: find_unmatched_paths(config.seeds, config.field_map, settings,
                                                                        config.ingest.csv_header), IngestError) \
            or ([], [])
        for target, path in config.field_map.items():
            if path in unmatched:
                problems.append(Problem(config_file, f"field_map.{target}", f"no record of {config.seeds} has "
                                        f"'{path}'; fields found: {', '.join(fields[:30]) or '(none)'}"))
    for i, spec in enumerate(config.mix.decontaminate.files if config.mix.decontaminate else ()):
        check(f"mix.decontaminate.files.{i}", lambda spec=spec: read_benchmark(spec, settings), BenchmarkError)
    if config.train is not None:
        from tasks.train.sft import RecipeError, load_recipe

        check("train.recipe", lambda: load_recipe(config.train.recipe), RecipeError)
    if write_check and not problems:  # the one write, last: nothing is created for a config that can't run
        problems += _check_writable(config, config_file, settings)
    return problems


def _render_templates(pack: PromptPack) -> list[Problem]:
    """Render every template once with sample values: an undefined variable is found now, not after a round."""
    files = getattr(pack, "_files", {})
    manifest = str(pack.folder / "manifest.yaml")
    out = []
    calls = [(f"operations.{op}.template", op, lambda op=op: pack.evolve_messages(op, SAMPLE["instruction"],
                                                                                 SAMPLE["input"]))
             for op in pack.operations]
    calls += [("answer", "answer", lambda: pack.answer_messages(SAMPLE["instruction"], SAMPLE["input"])),
              ("equality", "equality", lambda: pack.equality_messages(SAMPLE["first"], SAMPLE["second"]))]
    for key, name, render in calls:
        try:
            render()
        except PromptRenderError as err:
            file = str(pack.folder / files[name]) if name in files else manifest
            out.append(Problem(file, key, _one_line(err)))
    return out


def _model_problem(config: RunConfig, env: EnvSettings) -> str | None:
    """What is wrong with the model setting, if anything (an OpenAI-compatible server is asked when the run starts)."""
    llm = config.llm
    if llm.backend != "vllm":
        return None
    from tasks.llm.models import DEFAULT_MODEL, DEFAULT_MODEL_DIRNAME, ModelPreparationError, bundled_gguf

    if llm.model == DEFAULT_MODEL:
        if (Path(env.llm.models_dir) / DEFAULT_MODEL_DIRNAME / "config.json").is_file():
            return None
        try:
            bundled_gguf()
        except ModelPreparationError as err:
            return _one_line(err)
        return None
    path = Path(llm.model).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        return f"{path} has no config.json; give a Hugging Face model folder"
    if path.is_dir() or _in_hf_cache(llm.model):
        return None
    return (f"'{llm.model}' is not a model folder (with config.json) and not in the Hugging Face cache; use 'default' "
            "(the bundled model) or a local model folder")


def _in_hf_cache(name: str) -> bool:
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # no hub library, or an id it refuses: not cached either
        return False


def _check_writable(config: RunConfig, config_file: str, settings: StorageSettings) -> list[Problem]:
    """One small write (and its removal) under the output root, which must outlive this process."""
    if config.output_root.startswith("memory://"):
        return [Problem(config_file, "output_root", f"{config.output_root}: memory:// lives only as long as this "
                        "process, so every output would vanish when it exits; give a local folder or s3:// "
                        "(memory:// is for tests that call the flow in their own process)")]
    probe = join_uri(config.output_root, f".evol-write-check-{uuid.uuid4().hex[:12]}")
    try:
        fs, path = resolve(probe, settings)
        fs.pipe_file(path, b"ok")
        fs.rm(path)
    except Exception as err:  # any storage failure means the run could not write its outputs
        reason = _one_line(err) or type(err).__name__
        return [Problem(config_file, "output_root", f"cannot write to {config.output_root}: {reason[:200]}")]
    return []


def check_prefect_api(timeout_s: float = 5.0) -> list[Problem]:
    """With ``PREFECT_API_URL`` set, the API must answer its health check."""
    url = os.environ.get("PREFECT_API_URL", "").strip()
    if not url:
        return []
    import httpx

    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout_s)
        if response.status_code == 200:
            return []
        reason = f"HTTP {response.status_code} from {url}/health"
    except httpx.HTTPError as err:
        reason = _one_line(err) or type(err).__name__
    return [Problem("environment", f"PREFECT_API_URL={url}", f"no Prefect API answers there ({reason}); start one "
                    "with `evol server` and set PREFECT_API_URL to its /api URL, or unset PREFECT_API_URL "
                    "to use Prefect's ephemeral local API")]


def check_cluster(config: RunConfig, timeout_s: float = 5.0) -> list[Problem]:
    """A run on a cluster needs a Prefect server the workers reach (a run's private local API changes with every
    run, and a long-lived worker stays bound to the first API it reported to) and a scheduler that answers."""
    import socket
    from urllib.parse import urlsplit

    address = config.orchestration.cluster_address(EnvSettings().cluster)
    if address is None:
        return []
    problems = []
    if not os.environ.get("PREFECT_API_URL", "").strip():
        problems.append(Problem("environment", "PREFECT_API_URL", f"shards go to the cluster at {address}: its "
                                "workers report to Prefect, so start a server (`evol server`) and set "
                                "PREFECT_API_URL to its /api URL, the same for the run and its workers"))
    parts = urlsplit(address)
    if parts.scheme == "tcp" and parts.hostname:
        try:
            socket.create_connection((parts.hostname, parts.port or 8786), timeout=timeout_s).close()
        except OSError as err:
            problems.append(Problem("orchestration", "cluster", f"no Dask scheduler answers at {address} ({err}); "
                                    "start one with `dask scheduler` and workers with `evol worker ADDRESS`"))
    return problems
