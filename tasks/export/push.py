"""``evol push``: a run's export folder (data files, dataset card, plots) uploaded to a Hugging Face dataset repo with
``huggingface_hub``'s ``upload_folder``; the token is the library's own (``HF_TOKEN``, or ``hf auth login``)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi

from storage import StorageSettings, resolve
from storage.uri import join_uri, protocol_of

# Files of the export folder that are the pipeline's own bookkeeping, not the dataset's
NOT_PUSHED = ["_export.json", ".*"]


@dataclass(frozen=True)
class Pushed:
    repo_url: str
    commit_url: str
    files: list[str]


@contextmanager
def local_export(run_uri: str, settings: StorageSettings | None = None) -> Iterator[Path]:
    """The run's ``export/`` folder as a local folder: itself when local, else a temporary copy."""
    export_uri = join_uri(run_uri, "export")
    fs, path = resolve(export_uri, settings)
    if not fs.exists(path + "/README.md"):
        raise FileNotFoundError(f"{run_uri}: the run has no export yet (export/README.md): it has not finished")
    if protocol_of(export_uri) == "file":
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="evol-push-") as tmp:
        fs.get(path.rstrip("/") + "/", tmp + "/", recursive=True)
        yield Path(tmp)


def push_export(run_uri: str, repo_id: str, private: bool = False, endpoint: str | None = None,
                message: str | None = None, settings: StorageSettings | None = None) -> Pushed:
    """Create the dataset repo ``repo_id`` when it does not exist, then upload the run's export folder to it in one
    commit (the card as the repo's README.md, with its plots)."""
    api = HfApi(endpoint=endpoint)
    with local_export(run_uri, settings) as folder:
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                       if p.is_file() and p.name not in NOT_PUSHED and not p.name.startswith("."))
        repo = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="dataset",
                                   commit_message=message or f"Evol-Instruct data: {run_uri.rstrip('/')}",
                                   ignore_patterns=NOT_PUSHED)
    return Pushed(repo_url=str(repo), commit_url=str(getattr(commit, "commit_url", commit)), files=files)
