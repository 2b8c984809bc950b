"""The hub-ready export: the card's Hugging Face metadata header, ``datasets.load_dataset`` on the export folder,
and ``evol push`` (``huggingface_hub``'s own calls, against a fake hub on 127.0.0.1: there is no network here)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tasks.export.card import hub_metadata
from tasks.export.files import EXPORT_COLUMNS
from tests.hub_fake import fake_hub


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
    import datasets
    import huggingface_hub.constants

    # offline for this test only (the libraries read the variables once, at import)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)

    _, result, folder = exported
    train = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))["train"]
    assert train.num_rows == result.export.rows and train.column_names == EXPORT_COLUMNS
    assert train["id"] == pq.read_table(folder / "data.parquet")["id"].to_pylist()


def test_evol_push_uploads_the_export_folder_with_huggingface_hub(exported, monkeypatch):
    """The real ``HfApi`` calls, against a fake hub on 127.0.0.1 (``--endpoint``): the repo is created, the card's
    YAML validated, and one commit carries every export file, byte for byte, but ``_export.json``."""
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    _, result, folder = exported
    with fake_hub() as hub:
        out = CliRunner().invoke(app, ["push", result.run_uri, "me/evolved", "--private", "--endpoint", hub.url,
                                       "-m", "first push"])
    assert out.exit_code == 0, out.output
    assert hub.created == [{"name": "evolved", "organization": "me", "type": "dataset", "visibility": "private",
                            "authorization": "Bearer hf_test_token"}]
    card = (folder / "README.md").read_text()
    assert hub.validated == [card]
    (commit,) = hub.commits
    pushed = ["README.md", "alpaca.json", "data.parquet", "messages.jsonl", "plots/evolved_share.png",
              "plots/instruction_length.png", "plots/rejections.png"]
    assert (commit["repo"], commit["revision"], commit["message"], sorted(commit["files"])) == (
        "me/evolved", "main", "first push", pushed)
    assert all(commit["files"][name] == (folder / name).read_bytes() for name in pushed)
    assert f"pushed 7 files to {hub.url}/datasets/me/evolved" in out.output


def test_evol_push_of_a_run_without_an_export_says_so(tmp_path):
    with fake_hub() as hub:
        out = CliRunner().invoke(app, ["push", "nothing", "me/evolved", "--output-root", str(tmp_path),
                                       "--endpoint", hub.url])
    assert out.exit_code == 2 and "the run has no export yet" in out.output
    assert hub.created == hub.commits == []
