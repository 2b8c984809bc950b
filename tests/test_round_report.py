"""The pieces behind a round's report without Prefect: sample rows, the plots, the engine-start step."""

from __future__ import annotations

from storage import RunLayout, ShardRef, write_shard
from storage.schema import records_table
from tasks.core.config import LLMConfig, RunConfig
from tasks.core.context import EvolveSpec
from tasks.core.summaries import RoundSummary
from tasks.evolve.shard import evolve_runtime_built, reset_evolve_runtimes
from tasks.export.plots import evolved_share_png, rejections_png, run_plots
from tasks.export.scores import ScoreBins, bin_counts
from tasks.llm.factory import RoleBackends
from tasks.llm.scripted import ScriptedBackend, demo_responder
from tasks.reporting.samples import round_samples, samples_markdown, samples_table, trim
from tasks.runtime.engine import EngineStart, engine_labels, needs_engine_start, pending_shards, start_engines


def test_trim_keeps_start_and_end_on_one_line():
    assert trim(" a\n\tb  c ", 20) == "a b c"
    assert trim(None, 10) == ""
    text = "start " + "x" * 100 + " the end"
    assert trim(text, 23) == "start xxxxxx … the end"  # 12 of the start, 8 of the end, " … " between
    assert len(trim(text, 23)) <= 23


def row(i: int, status: str, reason: str | None = None, parent: str = "p") -> dict:
    return {"id": f"{parent}{i:02d}" if status == "pool" else f"c{i:02d}", "root_id": "r", "parent_id": f"p{i:02d}",
            "round": 1, "operation": "deepening", "instruction": f"instruction {i}", "input": "",
            "content_key": f"instruction {i}",
            "response": None if reason else f"answer {i}", "status": "evolved" if status == "pool" else status,
            "reject_reason": reason}


def summary(evolved: list[ShardRef], rejected: list[ShardRef]) -> RoundSummary:
    return RoundSummary(round=1, shards=1, pool_in=8, evolved=2, carried=6, rejected={}, operations={},
                        prompt_tokens=0, completion_tokens=0, wall_seconds=0, shard_seconds=0,
                        evolved_shards=evolved, rejected_shards=rejected)


def shard(uri: str, rows: list[dict]) -> ShardRef:
    return ShardRef.of(write_shard(uri, records_table(rows)))


def test_round_samples_take_evolved_by_id_and_rejected_one_reason_at_a_time(memory_root):
    pool = shard(f"{memory_root}/pool.parquet", [row(i, "pool") for i in range(8)])
    evolved = shard(f"{memory_root}/evolved.parquet", [row(5, "evolved"), row(1, "evolved")])
    reasons = {0: "empty_evolution", 2: "duplicate", 3: "empty_evolution", 4: "duplicate", 6: "empty_evolution",
               7: "llm_error"}
    rejected = shard(f"{memory_root}/rejected.parquet", [row(i, "rejected", r) for i, r in reasons.items()])
    empty = shard(f"{memory_root}/empty.parquet", [])
    rows = round_samples([pool], summary([empty, evolved], [rejected]), per_status=4)
    assert [(r["parent"], r["evolution"], r["response"], r["reason"]) for r in rows] == [
        ("instruction 1", "instruction 1", "answer 1", ""),
        ("instruction 5", "instruction 5", "answer 5", ""),
        ("instruction 2", "instruction 2", "", "duplicate"),
        ("instruction 0", "instruction 0", "", "empty_evolution"),
        ("instruction 7", "instruction 7", "", "llm_error"),
        ("instruction 4", "instruction 4", "", "duplicate"),
    ]
    assert {r["status"] for r in rows[:2]} == {"evolved"} and {r["status"] for r in rows[2:]} == {"rejected"}
    assert round_samples([pool], summary([empty], [empty])) == []


def rounds() -> list[RoundSummary]:
    return [RoundSummary(round=k, shards=1, pool_in=20, evolved=e, carried=20 - e, rejected=rej, operations={},
                         prompt_tokens=0, completion_tokens=0, wall_seconds=1.5 * k, shard_seconds=1.0)
            for k, e, rej in ((1, 6, {"duplicate": 2, "empty_evolution": 12}), (2, 0, {"llm_error": 20}))]


def test_plots_are_pngs_with_the_same_bytes_for_the_same_run():
    first = run_plots(rounds(), {"seeds": 12.5, "round 1": 20.0})
    assert list(first) == ["evolved_share.png", "instruction_length.png", "rejections.png"]
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in first.values())
    assert run_plots(rounds(), {"seeds": 12.5, "round 1": 20.0}) == first
    # wall-clock figures are not plotted: a slower run draws the same pictures
    slower = [r.model_copy(update={"wall_seconds": 99.0}) for r in rounds()]
    assert rejections_png(slower) == first["rejections.png"]
    assert evolved_share_png(rounds()[:1]) != first["evolved_share.png"]
    nothing = run_plots([], {})
    assert all(png.startswith(b"\x89PNG") for png in nothing.values())


def test_scores_count_at_their_nearest_whole_number_and_plot_only_the_kinds_scored():
    nan = float("nan")
    assert bin_counts([1.0, 1.49, 1.5, 2.5, 3.2, 5.5, 6.0, nan]) == [2, 1, 2, 0, 0, 2, 1]
    assert bin_counts([]) == [0] * 7
    bins = ScoreBins(scored={"quality": [1, 0, 2, 0, 0, 3, 1]}, final={"quality": [0, 0, 1, 0, 0, 3, 0]})
    assert (bins.kinds, bins.rows(), bins.rows("final")) == (["quality"], 7, 4)
    plots = run_plots(rounds(), {"seeds": 12.5}, bins)
    assert list(plots)[3:] == ["quality_scores.png"]
    assert plots["quality_scores.png"].startswith(b"\x89PNG\r\n\x1a\n")
    assert run_plots(rounds(), {"seeds": 12.5}, bins) == plots


def test_engine_labels_name_each_distinct_backend_once():
    assert engine_labels(LLMConfig(backend="vllm", model="default")) == ["vllm default"]
    split = LLMConfig(backend="vllm", model="small", judge={"backend": "openai", "model": "big"})
    assert engine_labels(split) == ["vllm small", "openai big"]


class StartableBackend(ScriptedBackend):
    def __init__(self):
        super().__init__(demo_responder, model_name="startable")
        self.starts = 0

    def start(self) -> None:
        self.starts += 1


def test_stage_backends_start_each_engine_once_and_skip_backends_without_one():
    engine, scripted = StartableBackend(), ScriptedBackend(demo_responder)
    assert RoleBackends(engine, engine, scripted).start() == ["startable"]
    assert engine.starts == 1
    assert RoleBackends.single(scripted).start() == []


def test_pending_shards_reads_markers_and_the_engine_starts_once_per_run(tmp_path):
    layout = RunLayout(str(tmp_path), "r")
    uris = [layout.shard(1, "candidates", i) for i in range(3)]
    write_shard(uris[0], records_table([]), key="k0")
    write_shard(uris[1], records_table([]), key="old")
    assert pending_shards(uris, ["k0", "k1", "k2"]) == 2  # a stale key and a missing shard
    assert pending_shards(uris[:1], ["k0"]) == 0
    assert pending_shards(uris[:1], ["k0"], force=True) == 1

    spec = EvolveSpec.of(RunConfig(seeds="s.jsonl", llm={"backend": "scripted", "model": "demo"}))
    reset_evolve_runtimes()
    assert not needs_engine_start(spec, uris[:1], ["k0"])  # nothing to compute: nothing to start
    assert needs_engine_start(spec, uris, ["k0", "k1", "k2"])
    started = start_engines(spec)
    assert isinstance(started, EngineStart) and started.engines == [] and started.backends == ["scripted demo"]
    assert evolve_runtime_built(spec) and not needs_engine_start(spec, uris, ["k0", "k1", "k2"])
    assert started.model_copy(update={"seconds": 0.04}).note() == "backend scripted demo ready in 0.0 s"
    assert EngineStart(backends=["vllm default"], engines=["smollm2"], seconds=31.26).note() == \
        "engine smollm2 ready in 31.3 s"
    reset_evolve_runtimes()



def test_the_top_level_run_links_to_its_subflows_artifacts():
    from tasks.reporting.report import run_links_markdown

    text = run_links_markdown("Demo", "/runs/Demo", 1, {"data": "/runs/Demo/export/data.parquet"},
                              "http://127.0.0.1:4200/")
    assert text.splitlines() == [
        "# Run Demo", "", "Outputs under `/runs/Demo`. The artifacts below belong to this run's subflows.", "",
        "| artifact | what |", "| --- | --- |",
        "| [demo-summary](http://127.0.0.1:4200/artifacts/key/demo-summary) | the run's summary and plots |",
        "| [demo-round-1](http://127.0.0.1:4200/artifacts/key/demo-round-1) | round 1: its table |",
        "| [demo-round-1-samples](http://127.0.0.1:4200/artifacts/key/demo-round-1-samples) | round 1: evolved and "
        "rejected samples |",
        "| [demo-round-1-rows](http://127.0.0.1:4200/artifacts/key/demo-round-1-rows) | round 1: the samples' rows in "
        "full |",
        "| [demo-round-1-progress](http://127.0.0.1:4200/artifacts/key/demo-round-1-progress) | round 1: progress |",
        "", "| file | uri |", "| --- | --- |", "| data | `/runs/Demo/export/data.parquet` |"]
    assert "| `demo-summary` | the run's summary and plots |" in run_links_markdown("Demo", "/r", 1, {}, None)


def test_the_sample_table_has_short_cells_and_the_markdown_each_row_in_full():
    long = "Explain " + "very " * 30 + "carefully why ```code``` matters."
    rows = [{"status": "rejected", "reason": "duplicate", "operation": "deepening", "parent": "p", "evolution": long,
             "response": ""}]
    assert samples_table(rows) == [{"#": 1, "outcome": "duplicate", "operation": "deepening", "parent": "p",
                                    "evolution": "Explain … ters."}]
    assert samples_markdown(rows, "Round 1") == "\n".join([
        "# Round 1", "", "## 1. duplicate · deepening", "", "**parent**", "", "```text", "p", "```", "",
        "**evolution**", "", "````text", long, "````", "", "**response**", "", "```text", "", "```", ""])
