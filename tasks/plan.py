"""What a run would do, read from its folder with the run's own stage keys, without Prefect (``evol plan``):
which stages are reused and which recomputed, the shards per round, and the token and engine-time estimate.

A stage is reused when its marker was written under the key the run would ask for and its shards verify.
Where the seed shards are not reused, the seed file is read into a temporary folder as ingest would read it,
so round 1's shard keys are known. Past a recomputed stage the plan can't know the new outputs: it counts the
stages after it as recomputed (at run time a stage whose output comes out byte-identical still lets later
stages be reused, so the plan is an upper bound on the work).
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

from pydantic import BaseModel

from prompts import load_pack
from storage import ShardRef, StorageSettings, read_shard, read_stage, resolve, stage_refs
from storage.shards import committed_marker, read_marker, write_file_atomic
from tasks.context import RunContext, build_context, content_key
from tasks.core.config import EnvSettings, RunConfig
from tasks.estimate import Estimate, Figures, cap_figures, estimate_rounds, previous_figures, token_counter
from tasks.export import dataset_card, export_key, reusable_export
from tasks.mix import MixSummary
from tasks.report import instruction_length_by_round
from tasks.round import RoundSummary, round_key

ESTIMATE_FILE = "estimate.json"


class StagePlan(BaseModel):
    """One stage of the plan: ``ingest``, ``round K``, ``mix`` or ``export``."""

    stage: str
    reused: bool
    shards: int = 0
    shards_reused: int = 0
    why: str = ""  # why it is recomputed


class RunPlan(BaseModel):
    run_uri: str
    stages: list[StagePlan]
    estimate: Estimate


def _exists(uri: str, settings: StorageSettings | None) -> bool:
    fs, path = resolve(uri, settings)
    return fs.exists(path)


def _why(ctx: RunContext, stage: str, marker_uri: str, settings: StorageSettings | None) -> str:
    if ctx.forced(stage):
        return "forced by --recompute"
    return "its inputs changed" if _exists(marker_uri, settings) else "not run yet"


def plan_stages(ctx: RunContext, seeds: list[ShardRef], ingest: StagePlan, estimate: Estimate | None,
                settings: StorageSettings | None = None) -> list[StagePlan]:
    """Walk the rounds, mix and export with the run's keys, from the seed shards (committed or read now) on;
    ``estimate`` is the one recorded in the run folder for this work (None: the run makes a new one)."""
    config, layout = ctx.config, ctx.layout
    stages = [ingest]
    pool: list[ShardRef] | None = seeds
    evolved: list[ShardRef] = []
    summaries: list[RoundSummary] = []
    upstream = ""  # the first stage recomputed: its outputs, and so the keys after it, are unknown
    for k in range(1, config.rounds + 1):
        name, marker = f"round={k}", layout.file(f"round={k}", "_round.json")
        if pool is None:
            stages.append(StagePlan(stage=f"round {k}", reused=False, shards=len(seeds), why=f"after {upstream}"))
            continue
        candidates = [None if ctx.forced(name) else committed_marker(
            layout.shard(k, "candidates", i), ctx.evolve_shard_key(ref.sha256, k), settings)
            for i, ref in enumerate(pool)]
        done = [ShardRef.of(c) for c in candidates if c is not None]
        record = None
        if len(done) == len(pool):
            key = round_key(done, pool, seeds + evolved + (pool if k > 1 else []))
            record = read_stage(marker, key, settings)
        stages.append(StagePlan(stage=f"round {k}", reused=record is not None, shards=len(pool),
                                shards_reused=len(done), why="" if record else _why(ctx, name, marker, settings)))
        if record is None:
            pool, upstream = None, f"round {k}"
            continue
        summaries.append(RoundSummary.model_validate(record["summary"]))
        pool = stage_refs(record, "pool")
        evolved += stage_refs(record, "evolved")
    mix_marker, export_marker = layout.file("final", "_mix.json"), layout.file("export", "_export.json")
    mix_record = None
    if pool is not None and not ctx.forced("mix"):
        inputs = (seeds if config.mix.include_seeds else []) + evolved
        data_key = ctx.mix_key([r.sha256 for r in inputs])
        mix_record = read_stage(mix_marker, data_key, settings)
    if mix_record is None:
        why = f"after {upstream}" if upstream else _why(ctx, "mix", mix_marker, settings)
        return stages + [StagePlan(stage="mix", reused=False, why=why),
                         StagePlan(stage="export", reused=False, why=f"after {upstream or 'mix'}")]
    stages.append(StagePlan(stage="mix", reused=True))
    if estimate is None:
        return stages + [StagePlan(stage="export", reused=False, why="the card gets a new estimate")]
    mix = MixSummary.model_validate(mix_record["summary"])
    lengths = instruction_length_by_round(seeds, summaries, settings)
    card = dataset_card(config, data_key, ctx.template_shas, summaries, mix, estimate, lengths)
    reused = not ctx.forced("export") and reusable_export(export_marker, export_key(mix, card.encode()),
                                                          settings) is not None
    return stages + [StagePlan(stage="export", reused=reused,
                               why="" if reused else _why(ctx, "export", export_marker, settings))]


def plan_ingest(ctx: RunContext, workdir: str, settings: StorageSettings | None = None) -> tuple[
        StagePlan, list[ShardRef], int]:
    """Ingest's plan, its seed shards and accepted rows: the committed ones when reused, else read now into
    ``workdir`` as ingest would write them."""
    from tasks.ingest import check_ingest_summary, ingest_seeds

    config, marker = ctx.config, ctx.layout.file("round=0", "_ingest.json")
    record = None if ctx.forced("ingest") else read_stage(marker, ctx.ingest_key, settings)
    if record is not None:
        refs = stage_refs(record, "pool")
        return StagePlan(stage="ingest", reused=True, shards=len(refs), shards_reused=len(refs)), refs, \
            record["summary"]["accepted"]
    summary = ingest_seeds(config.seeds, f"{workdir}/pool", f"{workdir}/rejected", config.shard_size,
                           config.field_map, settings, csv_header=config.ingest.csv_header)
    check_ingest_summary(summary, config.ingest.max_rejected_share)
    refs = [ShardRef.of(read_marker(uri, settings)) for uri in summary.shards]
    return StagePlan(stage="ingest", reused=False, shards=len(refs), why=_why(ctx, "ingest", marker, settings)), \
        refs, summary.accepted


def seed_sample(refs: list[ShardRef], limit: int, settings: StorageSettings | None = None,
                columns: list[str] | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` seed rows (``columns`` of them, default all), in shard order."""
    rows: list[dict[str, Any]] = []
    for ref in refs:
        if len(rows) >= limit:
            break
        table = read_shard(ref.uri, settings, columns=columns, expected=ref.model_dump())
        rows += table.slice(0, limit - len(rows)).to_pylist()
    return rows


def same_model_runs(ctx: RunContext, settings: StorageSettings | None = None) -> list[str]:
    """Run folders under the output root that ran the same backend and model: this run's first, then the
    others, latest first."""
    fs, root = resolve(ctx.config.output_root, settings)
    llm = ctx.config.llm.for_stage("evolve")
    found = []
    for path in fs.glob(f"{root}/*/config.json"):
        try:
            other = RunConfig.model_validate(json.loads(fs.cat_file(path))).llm.for_stage("evolve")
        except ValueError:
            continue
        if (other.backend, other.model) == (llm.backend, llm.model):
            run_uri = f"{ctx.config.output_root.rstrip('/')}/{path.rstrip('/').split('/')[-2]}"
            found.append((run_uri != ctx.layout.run_uri, -fs.modified(path).timestamp(), run_uri))
    return [uri for *_, uri in sorted(found)]


def make_estimate(ctx: RunContext, refs: list[ShardRef], accepted: int, figures: Figures | None = None,
                  settings: StorageSettings | None = None, env: EnvSettings | None = None) -> Estimate:
    """The run's estimate: figures given (a measured sample), else a previous run's, else the sampling caps."""
    from tasks.estimate import SAMPLE_ROWS

    env = env or EnvSettings()
    config = ctx.config
    counter = token_counter(config.llm.for_stage("evolve"), env.llm.models_dir)
    figures = figures or previous_figures(same_model_runs(ctx, settings), counter, settings) or \
        cap_figures(config.sampling, config.elimination)
    rows = seed_sample(refs, SAMPLE_ROWS, settings, ["id", "instruction", "input"])
    return estimate_rounds(rows, accepted, config.rounds, load_pack(config.prompt_pack), ctx.evolve, counter, figures)


def estimate_key(ctx: RunContext) -> str:
    """What a run's recorded estimate stands for: the seeds, everything an evolve shard reads, the rounds."""
    return content_key("estimate", ctx.ingest_key, ctx.evolve_key, ctx.config.rounds)


def stored_estimate(ctx: RunContext, settings: StorageSettings | None = None) -> Estimate | None:
    """The estimate recorded in the run folder for this work, if its key is the run's."""
    fs, path = resolve(ctx.layout.file(ESTIMATE_FILE), settings)
    try:
        record = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None
    return Estimate.model_validate(record["estimate"]) if record.get("key") == estimate_key(ctx) else None


def run_estimate(ctx: RunContext, refs: list[ShardRef], accepted: int,
                 settings: StorageSettings | None = None) -> Estimate:
    """The estimate a run records (``{run}/estimate.json``) when it starts: kept while the seeds, the evolve
    settings and the rounds stay the same (so the card does not change with reruns), else made now."""
    estimate = stored_estimate(ctx, settings)
    if estimate is None:
        estimate = make_estimate(ctx, refs, accepted, settings=settings)
        record = {"key": estimate_key(ctx), "estimate": estimate.model_dump(mode="json")}
        write_file_atomic(ctx.layout.file(ESTIMATE_FILE), json.dumps(record, indent=2).encode(), settings)
    return estimate


def make_plan(config: RunConfig, recompute: tuple[str, ...] = (), measure: int = 0,
              settings: StorageSettings | None = None) -> RunPlan:
    """The plan of a run of ``config``: stage by stage, and the estimate of what is still to compute."""
    ctx = build_context(config, tuple(recompute), settings=settings)
    with tempfile.TemporaryDirectory(prefix="evol-plan-") as workdir:
        ingest, refs, accepted = plan_ingest(ctx, workdir, settings)
        figures = None
        sample = seed_sample(refs, measure, settings) if measure else []
        if sample:
            from tasks.measure import measured_figures

            figures = measured_figures(ctx, sample)
        estimate = make_estimate(ctx, refs, accepted, figures, settings)
        stages = plan_stages(ctx, refs, ingest, stored_estimate(ctx, settings), settings)
    by_round = {s.stage: s for s in stages}
    shares = [1.0 - by_round[f"round {r.round}"].shards_reused / max(1, by_round[f"round {r.round}"].shards)
              if not by_round[f"round {r.round}"].reused else 0.0 for r in estimate.rounds]
    estimate = estimate.model_copy(update={"rounds": [r.model_copy(update={"share": s})
                                                      for r, s in zip(estimate.rounds, shares, strict=True)]})
    return RunPlan(run_uri=ctx.layout.run_uri, stages=stages, estimate=estimate)
