"""The hub-ready export: the card's Hugging Face metadata header, ``datasets.load_dataset`` on the export folder,
and ``evol push`` (its ``huggingface_hub`` calls, recorded by a stand-in for ``HfApi``: there is no network here)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tasks.export.card import hub_metadata
from tasks.export.files import EXPORT_COLUMNS


@pytest.fixture(scope="module")
def exported(scripted_run, tmp_path_factory):
    """One finished scripted run: its config, result and export folder."""
    config, result = scripted_run(tmp_path_factory.mktemp("hub"), "hub", "runs")
    return config, result, Path(result.run_uri) / "export"


def card_metadata(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_the_card_opens_with_the_hub_metadata(exported):
    _, result, folder = exported
    meta = card_metadata((folder / "README.md").read_text())
    assert meta == {"license": "unknown", "language": ["en"], "task_categories": ["text-generation"],
                    "size_categories": ["n<1K"], "tags": ["evol-instruct", "synthetic"],
                    "configs": [{"config_name": "default", "default": True,
                                 "data_files": [{"split": "train", "path": "data.parquet"}]}]}
    assert "## Selection\n\n- near dedup: MinHash (128 permutations, byte 5-grams), Jaccard >= 0.8\n" \
           "- sample: all rows\n- decontamination: none\n" in (folder / "README.md").read_text()


def test_the_metadata_follows_the_export_config_and_the_row_count(exported):
    from tasks.core.config import parse_run_config

    config = parse_run_config({**exported[0], "export": {"license": "apache-2.0", "language": ["en", "fr"],
                                                         "tags": ["math"]}})
    meta = card_metadata("\n".join(hub_metadata(config, 12_345)))
    assert (meta["license"], meta["language"], meta["tags"], meta["size_categories"]) == (
        "apache-2.0", ["en", "fr"], ["math"], ["10K<n<100K"])
    assert [card_metadata("\n".join(hub_metadata(config, n)))["size_categories"] for n in (999, 1000, 10**8)] == [
        ["n<1K"], ["1K<n<10K"], ["n>100M"]]


def test_load_dataset_reads_the_export_as_the_card_names_it(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    _, result, folder = exported
    train = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))["train"]
    assert train.num_rows == result.export.rows and train.column_names == EXPORT_COLUMNS
    assert train["id"] == pq.read_table(folder / "data.parquet")["id"].to_pylist()


class RecordingHfApi:
    """Stands in for ``huggingface_hub.HfApi`` at the call boundary: records each call and what the folder held."""

    calls: list = []

    def __init__(self, endpoint=None, token=None):
        self.calls.append(("HfApi", {"endpoint": endpoint}))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://hub.example/datasets/{repo_id}"

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        self.calls.append(("upload_folder", {**kwargs, "present": files}))
        return "https://hub.example/datasets/commit/1"


def test_evol_push_uploads_the_export_folder_with_huggingface_hub(exported, monkeypatch):
    monkeypatch.setattr("tasks.export.push.HfApi", RecordingHfApi)
    RecordingHfApi.calls = []
    _, result, folder = exported
    out = CliRunner().invoke(app, ["push", result.run_uri, "me/evolved", "--private", "--endpoint",
                                   "http://127.0.0.1:9", "-m", "first push"])
    assert out.exit_code == 0, out.output
    (_, api), (_, create), (_, upload) = RecordingHfApi.calls
    assert api == {"endpoint": "http://127.0.0.1:9"}
    assert create == {"repo_id": "me/evolved", "repo_type": "dataset", "private": True, "exist_ok": True}
    assert {k: v for k, v in upload.items() if k != "present"} == {
        "repo_id": "me/evolved", "folder_path": str(folder), "repo_type": "dataset", "commit_message": "first push",
        "ignore_patterns": ["_export.json", ".*"]}
    pushed = ["README.md", "alpaca.json", "data.parquet", "messages.jsonl", "plots/evolved_share.png",
              "plots/instruction_length.png", "plots/rejections.png"]
    assert [f for f in upload["present"] if f != "_export.json"] == pushed
    assert "pushed 7 files to https://hub.example/datasets/me/evolved" in out.output


def test_evol_push_of_a_run_without_an_export_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr("tasks.export.push.HfApi", RecordingHfApi)
    RecordingHfApi.calls = []
    out = CliRunner().invoke(app, ["push", "nothing", "me/evolved", "--output-root", str(tmp_path)])
    assert out.exit_code == 2 and "the run has no export yet" in out.output
    assert [c[0] for c in RecordingHfApi.calls] == ["HfApi"]
