"""The dataset card (``export/README.md``): the Hugging Face metadata header, counts per round and operation,
rejections, instruction lengths, the plots, how the final rows were chosen, the estimate beside the actual tokens,
config, model, prompts. No wall-clock figures."""

from __future__ import annotations

from typing import Any

import yaml

from storage import ShardRef, StorageSettings, duck_connect, read_parquet_sql, total_rows
from storage.redact import redact_text
from tasks.core.config import ROLES, RunConfig
from tasks.core.elimination import RULE_NAMES
from tasks.core.options import without_unset_options
from tasks.core.summaries import Estimate, MixSummary, RoundSummary, engine_time_line, totals, whole_run
from tasks.core.text import md_table
from tasks.export.plots import PLOTS, SCORE_PLOTS
from tasks.export.scores import BIN_LABELS, ScoreBins

# Settings that do not shape the data: kept out of the card, so changing them leaves the exports as they are.
CARD_EXCLUDES = {"orchestration", "train", "output_root"}
# The exported data file the card's `configs` name, the one the hub's loader reads as the dataset (it reads every
# config of a folder with one builder, so the chat copy, messages.jsonl, can't be a config of its own): config -> file
DATA_FILES = {"default": "data.parquet"}
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]


def hub_metadata(config: RunConfig, rows: int) -> list[str]:
    """The card's opening lines: the Hugging Face YAML metadata header (license, language, task categories, size
    category, tags, and ``configs`` naming the data files, so ``datasets.load_dataset`` on the folder reads them)."""
    size = next((label for limit, label in SIZE_CATEGORIES if rows < limit), "n>100M")
    configs = [{"config_name": name, **({"default": True} if name == "default" else {}),
                "data_files": [{"split": "train", "path": path}]} for name, path in DATA_FILES.items()]
    meta = {"license": config.export.license, "language": list(config.export.language),
            "task_categories": list(config.export.task_categories), "size_categories": [size],
            "tags": list(config.export.tags), "configs": configs}
    return ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]


def selection_lines(config: RunConfig, mix: MixSummary) -> list[str]:
    """The card's section on how the final rows were chosen: near dedup, decontamination, sampling, and with
    ``mix.selection`` its settings."""
    dedup, decontam = config.dedup, config.mix.decontaminate
    lines = ["## Selection", "",
             f"- near dedup: MinHash ({dedup.num_perm} permutations, byte {dedup.shingle_size}-grams), Jaccard >= "
             f"{dedup.jaccard_threshold:g}" if dedup.near else "- near dedup: off",
             _sample_line(config), *_responses_line(config, mix)]
    if decontam is None:
        return [*lines, "- decontamination: none", "", *_diversity_lines(config)]
    lines += [f"- decontamination: rows sharing a {decontam.n}-word gram with a benchmark item are dropped "
              "(`contaminated`)", ""]
    paths = [redact_text(f.path) for f in decontam.files]  # as the dropped rows name them: credentials masked
    return lines + md_table(["benchmark file", "field", "rows dropped"],
                            [[f"`{p}`", f"`{f.field}`", mix.contaminated_by.get(p, 0)]
                             for p, f in zip(paths, decontam.files, strict=True)]) + ["", *_diversity_lines(config)]


def _diversity_lines(config: RunConfig) -> list[str]:
    """The settings of diversity-aware selection (``mix.selection``): budget, ranking, threshold, embedding model."""
    selection, size = config.mix.selection, config.mix.sample_size
    if selection is None:
        return []
    rows = [["budget (`mix.sample_size`)", f"{size} rows" if size else "none: every row that passes"],
            ["ranking", "complexity x quality, highest first (a missing score counts 0; ties by id)"],
            ["threshold (`mix.selection.threshold`)", f"cosine similarity < {selection.threshold:g} to every row "
             "taken before"],
            ["embedding model", f"`{embedding_model(config)}`"]]
    return ["Diversity-aware selection (`mix.selection`):", "", *md_table(["setting", "value"], rows), ""]


def embedding_model(config: RunConfig) -> str:
    """``backend:model`` of the embeddings selection compares: ``score.embedding_model`` on the scoring backend
    (``llm.score``), or the scoring model."""
    score = config.llm.for_role("score")
    return f"{score.backend}:{config.score and config.score.embedding_model or score.model}"


def score_lines(config: RunConfig, scores: ScoreBins) -> list[str]:
    """The card's section on a scored run's scores: rows per score bin of each kind, over every scored row and over
    the exported rows, and their plots (``plots/{kind}_scores.png``); no blank line at its end."""
    model = config.llm.for_role("score")
    lines = ["## Scores", ""]
    if not scores.kinds:
        return [*lines, "No row has a complexity or quality score."]
    lines += [f"Scores 1-6 by `{model.backend}:{model.model}` (`llm.score`) of the {scores.rows()} scored rows (the "
              f"seeds and every round's evolutions) and of the {scores.rows('final')} exported rows, each counted at "
              "its nearest whole number (a half upward); `none`: no score.", ""]
    header = ["score", *(f"{kind}: {which}" for kind in scores.kinds for which in ("scored", "exported"))]
    lines += md_table(header, [[label, *(counts[kind][i] for kind in scores.kinds
                                         for counts in (scores.scored, scores.final))]
                               for i, label in enumerate(BIN_LABELS)])
    for kind in scores.kinds:
        name = f"{kind}_scores.png"
        lines += ["", f"![{SCORE_PLOTS[name]}](plots/{name})"]
    return lines


def _responses_line(config: RunConfig, mix: MixSummary) -> list[str]:
    evolving = config.score.evolve_responses if config.score is not None else None
    if evolving is None:
        return []
    replaced = ", ".join(f"{op} {n}" for op, n in mix.responses_replaced.items()) or "none"
    return [f"- responses: each rewritten by {', '.join(evolving.operations)} (response evolution) and scored with "
            f"the original; a rewrite scored higher replaced it in {sum(mix.responses_replaced.values())} final "
            f"row(s) ({replaced})"]


def _sample_line(config: RunConfig) -> str:
    size, selection = config.mix.sample_size, config.mix.selection
    if selection is not None:
        taken = f"up to {size} rows" if size else "rows"
        return (f"- sample: {taken} by diversity-aware selection (complexity x quality, cosine similarity < "
                f"{selection.threshold:g} to every row taken before; the others `not_selected`)")
    return f"- sample: {size} rows at random" if size else "- sample: all rows"


def _model_lines(config: RunConfig) -> list[str]:
    """One line when every stage uses the same model, else one line per stage (evolve, respond, judge)."""
    stages = {stage: config.llm.for_role(stage) for stage in ROLES}
    names = {stage: f"{c.backend}:{c.model}" for stage, c in stages.items()}
    if len(set(names.values())) == 1:
        return [f"- model: `{names['evolve']}` (evolve, respond, judge)"]
    return [f"- {stage} model: `{name}`" for stage, name in names.items()]


def _elimination_line(config: RunConfig) -> str:
    """The elimination profile and the rules that ran, in their order."""
    on = config.elimination.enabled_rules()
    names = ", ".join(f"`{name}`" for name in RULE_NAMES if name in on)
    return f"- elimination profile: `{config.elimination.profile}` (rules: {names})"


def dataset_card(config: RunConfig, data_key: str, template_shas: dict[str, str],
                 rounds: list[RoundSummary], mix: MixSummary, estimate: Estimate | None = None,
                 lengths: dict[str, float] | None = None, seeds_source: str | None = None,
                 scores: ScoreBins | None = None) -> str:
    """A Markdown dataset card: counts per round and operation, rejections, instruction lengths, the plots
    (``plots/*.png`` next to it), the estimate made when the run started beside the actual tokens, config,
    model, prompts. ``seeds_source``: the path the seed rows were read from (their ``meta.source``); the card
    names it, and the config's ``seeds`` too when the file has moved since (same content: the rows were reused).
    ``scores``: a scored run's score bins (``tasks.export.scores``), shown as a table and two plots.

    It holds no wall-clock figures, so the same data (and estimate) always gives the same card."""
    source = seeds_source or config.seeds
    moved = [f"- seeds: read from `{source}` (every row's `meta.source`); the config now names `{config.seeds}`, "
             "the same content"] if source != config.seeds else [f"- seeds: `{source}`"]
    lines = [*hub_metadata(config, mix.final), f"# Evol-Instruct data: {config.name or data_key}", "",
             f"- data key: `{data_key}`", *_model_lines(config), f"- prompt pack: `{config.prompt_pack}`",
             *moved, _elimination_line(config), f"- rows: {mix.final}", "", "## Rounds", ""]
    lines += md_table(["round", "pool in", "evolved", "carried", "prompt tokens", "completion tokens"],
                      [[r.round, r.pool_in, r.evolved, r.carried, r.prompt_tokens, r.completion_tokens]
                       for r in rounds])
    rejected = totals(rounds, "rejected")
    lines += ["", "## Rejections by reason", "",
              *(md_table(["reason", "rows"], rejected.items()) if rejected else ["No evolution was rejected."])]
    lines += ["", "## Plots", ""]
    for name, title in PLOTS.items():
        lines += [f"![{title}](plots/{name})", ""]
    lines += md_table(["instructions", "mean length (words)"], [[k, f"{v:g}"] for k, v in (lengths or {}).items()])
    lines += ["", *score_lines(config, scores)] if scores is not None else []
    lines += ["", "## Final data", "", *md_table(["round", "rows"], mix.by_round.items())]
    lines += ["", *md_table(["operation", "rows"], mix.by_operation.items())]
    selected = f", {mix.not_selected} not selected (diversity-aware selection)" if config.mix.selection else ""
    lines += ["", f"Dropped while mixing: {mix.no_response} without a response, {mix.contaminated} contaminated, "
              f"{mix.near_duplicates} near duplicates, {mix.sampled_out} sampled out{selected}.", ""]
    lines += selection_lines(config, mix)
    lines += estimate_markdown(estimate, rounds) if estimate is not None else []
    lines += ["## Prompt templates", "",
              *md_table(["template", "sha"], [[k, f"`{v}`"] for k, v in sorted(template_shas.items())])]
    lines += ["", "## Configuration", "", "```yaml",
              yaml.safe_dump(without_unset_options(config.model_dump(mode="json", exclude=CARD_EXCLUDES))
                             | {"seeds": source},
                             sort_keys=True).rstrip(),
              "```", ""]
    return "\n".join(lines)


def estimate_markdown(estimate: Estimate, actual: list[Any]) -> list[str]:
    """The dataset card's section: the estimate made when the run started beside each round's actual tokens."""
    by_round, whole = {r.round: r for r in actual}, whole_run(estimate)
    rows = [[e.round, e.prompt_tokens, getattr(by_round.get(e.round), "prompt_tokens", "-"), e.completion_tokens,
             getattr(by_round.get(e.round), "completion_tokens", "-")] for e in estimate.rounds]
    rows.append(["total", whole.total("prompt_tokens"), sum(r.prompt_tokens for r in actual),
                 whole.total("completion_tokens"), sum(r.completion_tokens for r in actual)])
    return ["## Estimate and actual", "", f"Estimated when the run started, from the seeds' token lengths "
            f"({estimate.tokenizer}); completions: {estimate.completions}.", "",
            *md_table(["round", "prompt tokens (est.)", "prompt tokens", "completion tokens (est.)",
                       "completion tokens"], rows), "", engine_time_line(whole), ""]


def instruction_length_by_round(seeds: list[ShardRef], rounds: list[RoundSummary],
                                settings: StorageSettings | None = None) -> dict[str, float]:
    """Mean instruction length in words: the seeds, then each round's evolutions (rounds with none left out)."""
    out: dict[str, float] = {}
    for label, refs in [("seeds", seeds)] + [(f"round {r.round}", r.evolved_shards) for r in rounds]:
        if not total_rows(refs):
            continue
        uris = [r.uri for r in refs]
        con = duck_connect(*uris, settings=settings)
        mean = con.execute(
            f"SELECT avg(len(string_split(trim(instruction), ' '))) FROM {read_parquet_sql(uris)}"
        ).fetchone()[0]
        out[label] = round(mean, 1)
    return out
