"""What a config resolves to before anything runs: prompt pack, fingerprint, run folder."""

from __future__ import annotations

from dataclasses import dataclass

from prompts import load_pack
from storage import RunLayout
from tasks.core.config import RunConfig, run_fingerprint, run_id_for


@dataclass(frozen=True)
class RunPlan:
    """The fingerprint, template shas and layout of a run."""

    fingerprint: str
    template_shas: dict[str, str]
    layout: RunLayout


def plan_run(config: RunConfig) -> RunPlan:
    """Resolve a config: the same config (templates, model) always gives the same plan."""
    template_shas = load_pack(config.prompt_pack).template_shas()
    fingerprint = run_fingerprint(config, template_shas, config.llm.model)
    return RunPlan(fingerprint, template_shas, RunLayout(config.output_root, run_id_for(config, fingerprint)))
