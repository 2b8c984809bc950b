"""One redaction for every secret (issue 25): URL credentials and settings named key, token, secret or password never
reach the terminal, the logs (local and uploaded), markers, leases, the card, config.json or Prefect."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from storage.lease import RunLease
from storage.redact import MASK, redact, redact_text, remember_secret, secret_name
from tasks.core.config import parse_run_config
from tasks.core.runlog import install_redaction

BIN = Path(sys.executable).parent
API_PASSWORD = "pw-prefect-9731"
HF_TOKEN = "hf_planted_token_5521"
SEEDS_PASSWORD = "pw-seeds-4417"


def test_secret_names_are_words_not_substrings():
    assert all(secret_name(n) for n in ("hf_token", "api_key", "aws_secret_access_key", "password", "authToken"))
    assert not any(secret_name(n) for n in ("max_tokens", "prompt_tokens", "keyword", "monkey", "tokenizer"))


def test_redact_masks_url_credentials_secret_names_and_remembered_values():
    assert redact_text("PREFECT_API_URL=http://user:pass@host:4200/api") == "PREFECT_API_URL=http://***@host:4200/api"
    assert redact_text("s3://key:secret@bucket/seeds.jsonl and http://host/api") == \
        "s3://***@bucket/seeds.jsonl and http://host/api"
    value = {"engine_args": {"hf_token": "abc123", "max_model_len": 10}, "max_tokens": 8, "urls": ["http://u:p@h"]}
    assert redact(value) == {"engine_args": {"hf_token": MASK, "max_model_len": 10}, "max_tokens": 8,
                             "urls": [f"http://{MASK}@h"]}
    remember_secret("remembered-secret-1")
    assert redact_text("vLLM args: {'hf_token': 'remembered-secret-1'}") == "vLLM args: {'hf_token': '***'}"


def test_the_config_json_form_masks_secrets_and_the_object_keeps_them():
    config = parse_run_config({"seeds": "s3://b/seeds.jsonl",
                               "llm": {"engine_args": {"hf_token": HF_TOKEN},
                                       "judge": {"engine_args": {"api_key": "judge-key-778"}}}})
    dumped = json.dumps(config.model_dump(mode="json"))
    assert HF_TOKEN not in dumped and "judge-key-778" not in dumped
    assert config.llm.engine_args["hf_token"] == HF_TOKEN  # the engine still gets it
    assert json.loads(dumped)["llm"]["engine_args"] == {"hf_token": MASK}
    assert redact_text(f"engine failed with token {HF_TOKEN}") == f"engine failed with token {MASK}"


def test_a_lease_never_holds_a_url_password(tmp_path):
    lease = RunLease(str(tmp_path / "run"), extra={"prefect_api": f"http://user:{API_PASSWORD}@h/api"})
    with lease:
        text = (tmp_path / "run" / "_lease.json").read_text()
    assert API_PASSWORD not in text and json.loads(text)["prefect_api"] == "http://***@h/api"


def test_log_records_and_their_tracebacks_are_masked():
    install_redaction()
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    logger = logging.getLogger("evol.test.redaction")
    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning("api %s", f"http://user:{API_PASSWORD}@h/api")
        try:
            raise RuntimeError(f"cannot read s3://k:{SEEDS_PASSWORD}@bucket/x")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert records[0] == "api http://***@h/api"
    assert "cannot read s3://***@bucket/x" in records[1] and SEEDS_PASSWORD not in records[1]


def run_cli(config: dict, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([str(BIN / "evol"), "run", str(path), "--no-progress"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)


async def prefect_records(url: str, name: str) -> tuple[list[dict], list[str]]:
    """The parameters of the run named ``name``'s flow runs (its rounds' included) and their log lines."""
    async with PrefectClient(api=url) as client:
        runs = [f for f in await client.read_flow_runs(limit=200) if f.name.startswith(name)]
        parents = {f.id for f in runs}
        runs += [f for f in await client.read_flow_runs(limit=200) if f.parent_task_run_id is not None
                 and f.id not in parents]
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[f.id for f in runs])))
        return [f.parameters for f in runs], [log.message for log in logs]


def test_planted_secrets_reach_no_output_terminal_bucket_or_prefect(prefect_server, s3_bucket, s3_settings,
                                                                     tmp_path):
    from storage import resolve

    api = prefect_server.replace("http://", f"http://evol:{API_PASSWORD}@")
    config = {"name": "leaky", "seeds": str(Path("data/demo_seeds.jsonl").resolve()),
              "output_root": s3_bucket + "/runs", "rounds": 1, "shard_size": 50,
              "llm": {"backend": "scripted", "model": "demo", "engine_args": {"hf_token": HF_TOKEN}}}
    done = run_cli(config, tmp_path, {"PREFECT_API_URL": api})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"on http://{MASK}@127.0.0.1" in done.stdout
    secrets = (API_PASSWORD, HF_TOKEN)
    assert not [s for s in secrets if s in done.stdout + done.stderr]
    fs, root = resolve(s3_bucket + "/runs/leaky", s3_settings)
    files = fs.find(root)
    assert any("/logs/run-" in f for f in files) and any(f.endswith("config.json") for f in files)
    leaks = [(f, s) for f in files for s in secrets if s.encode() in fs.cat_file(f)]
    assert leaks == []
    assert json.loads(fs.cat_file(f"{root}/config.json"))["llm"]["engine_args"] == {"hf_token": MASK}
    parameters, logs = asyncio.run(prefect_records(prefect_server, "leaky"))
    assert parameters and logs
    assert not [s for s in secrets if s in json.dumps(parameters) + "\n".join(logs)]
    assert any(p.get("config", {}).get("llm", {}).get("engine_args") == {"hf_token": MASK} for p in parameters)


def test_a_password_in_the_seeds_url_is_not_echoed(s3_bucket, s3_settings, tmp_path):
    seeds = f"s3://reader:{SEEDS_PASSWORD}@{s3_bucket[5:]}/seeds.jsonl"
    config = {"name": "seedpw", "seeds": seeds, "output_root": str(tmp_path / "runs"), "rounds": 1,
              "llm": {"backend": "scripted", "model": "demo"}}
    done = run_cli(config, tmp_path, {"PREFECT_API_URL": "", "PREFECT_HOME": str(tmp_path / "ph")})
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert SEEDS_PASSWORD not in done.stdout + done.stderr
    assert done.stderr.replace("\n", " ").split() == (
        f"error: {tmp_path}/run.yaml: seeds: Value error, s3://{MASK}@{s3_bucket[5:]}/seeds.jsonl: credentials in a "
        "storage URL are not supported; give them in EVOL_STORAGE__KEY and EVOL_STORAGE__SECRET").split()


def test_the_engine_still_gets_the_token_inside_the_round_flows(prefect_harness, tmp_path, monkeypatch):
    import tasks.evolve.shard as shard
    from flows.evol_instruct import evol_instruct
    from tests.flow_script import load_seeds

    seen: list[dict] = []
    real = shard.role_backends

    def recording(llm, **kwargs):
        seen.append(dict(llm.engine_args))
        return real(llm, **kwargs)

    monkeypatch.setattr(shard, "role_backends", recording)
    shard.reset_evolve_runtimes()
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps(s) for s in load_seeds(n=4)) + "\n")
    evol_instruct(parse_run_config({"name": "tok", "seeds": str(seeds), "output_root": str(tmp_path / "runs"),
                                    "rounds": 1, "llm": {"backend": "scripted", "model": "demo",
                                                         "engine_args": {"hf_token": HF_TOKEN}}}))
    assert seen == [{"hf_token": HF_TOKEN}]
