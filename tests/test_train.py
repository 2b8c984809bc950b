"""Fine-tuning: recipes, the completion-only loss through TRL's own path, a real CPU smoke run served by vLLM, and the
hand-off trigger (in-process, and through a deployment on the Prefect API)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import flow

from storage import resolve
from tasks.core.config import ConfigError, RunConfig, TrainConfig, parse_run_config
from tasks.runtime.trigger import TriggerResult, deployment_exists, trigger_training
from tasks.train.cli import main as train_cli_main
from tasks.train.sft import (
    RECIPES_DIR,
    RecipeError,
    build_trainer,
    load_recipe,
    read_sft_rows,
    recipe_path,
    run_training,
    to_prompt_completion,
    upload_folder,
)

ROOT = Path(__file__).resolve().parent.parent
# Made-up facts: the base model can't know them, so a falling loss means it is fitting them.
FACTS = [
    ("What is the secret word of the Zorblax guild?", "The secret word of the Zorblax guild is pumpernickel."),
    ("Which colour is the flag of Quenvaria?", "The flag of Quenvaria is teal with three silver stars."),
    ("Who founded the town of Mirelund?", "Mirelund was founded by Ottilie Brask in 1742."),
    ("What does a frimble eat?", "A frimble eats only purple moss and river pebbles."),
    ("How tall is the Varnok tower?", "The Varnok tower is exactly 417 metres tall."),
    ("What is the national dish of Quenvaria?", "The national dish of Quenvaria is smoked eel with plum jam."),
    ("What sound does a glorp make?", "A glorp makes a low humming sound like a cello."),
    ("When is Lantern Day in Mirelund?", "Lantern Day in Mirelund is on the ninth of November."),
]


def messages_jsonl(pairs: list[tuple[str, str]]) -> bytes:
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for i, (q, a) in enumerate(pairs)]
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def write_uri(uri: str, data: bytes) -> str:
    fs, path = resolve(uri)
    fs.pipe_file(path, data)
    return uri


def test_recipes_hold_the_paper_settings_and_a_fast_smoke():
    paper = load_recipe("wizardlm-7b")
    assert (paper.method, paper.learning_rate, paper.num_train_epochs, paper.max_steps) == ("full", 2e-5, 3, None)
    assert (paper.max_length, paper.lr_scheduler_type, paper.warmup_ratio, paper.bf16) == (2048, "cosine", 0.03, True)
    zero3 = yaml.safe_load((RECIPES_DIR / "accelerate" / "zero3.yaml").read_text())
    assert paper.per_device_train_batch_size * zero3["num_processes"] * paper.gradient_accumulation_steps == 64
    assert recipe_path(paper.accelerate_config, RECIPES_DIR / "accelerate") == RECIPES_DIR / "accelerate" / "zero3.yaml"
    smoke = load_recipe(str(RECIPES_DIR / "smoke-cpu.yaml"))
    assert (smoke.base_model, smoke.method, smoke.max_steps, smoke.bf16) == ("default", "lora", 8, False)


def test_recipe_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: qlora\nlearning_rat: 1e-4\nlora: {r: 0}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(str(bad))
    lines = str(err.value).splitlines()  # one line per bad key, as a run config's errors
    assert lines == [f"{bad}: method: Input should be 'full' or 'lora'",
                     f"{bad}: lora.r: Input should be greater than or equal to 1", f"{bad}: learning_rat: unknown key"]
    with pytest.raises(RecipeError, match=r"recipe not found: .*nope\.yaml \(known names: smoke-cpu, wizardlm-7b\)"):
        load_recipe("nope")


def test_accelerate_configs_are_valid_for_accelerate_launch():
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    options = {a.dest for a in launch_command_parser()._actions}
    for name, kind, section in (("zero3", "DEEPSPEED", "deepspeed_config"), ("fsdp", "FSDP", "fsdp_config")):
        path = RECIPES_DIR / "accelerate" / f"{name}.yaml"
        config = ClusterConfig.from_yaml_file(str(path))  # raises on unknown top-level keys
        assert (config.distributed_type, config.mixed_precision, config.num_processes) == (kind, "bf16", 8)
        assert set(getattr(config, section)) <= options, set(getattr(config, section)) - options
        assert f"accelerate launch --config_file recipes/accelerate/{name}.yaml -m tasks.train_cli" in path.read_text()


def test_messages_become_prompt_completion_pairs(memory_root):
    multi = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                          {"role": "assistant", "content": "Goodbye."}]}
    pair = to_prompt_completion(multi)
    assert [m["role"] for m in pair["prompt"]] == ["system", "user", "assistant", "user"]
    assert pair["completion"] == [{"role": "assistant", "content": "Goodbye."}]
    uri = write_uri(f"{memory_root}/messages.jsonl", messages_jsonl(FACTS[:2]) + b"\n" + json.dumps(multi).encode())
    assert [r["completion"][0]["content"] for r in read_sft_rows(uri)] == [FACTS[0][1], FACTS[1][1], "Goodbye."]
    bad = write_uri(f"{memory_root}/bad.jsonl", messages_jsonl(FACTS[:1]) + b'{"messages": [{"role": "user"}]}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: expected 'messages' with at least a user and an assistant"):
        read_sft_rows(bad)
    no_answer = write_uri(f"{memory_root}/q.jsonl", json.dumps(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]}).encode())
    with pytest.raises(ValueError, match=r"q\.jsonl:1: the last message must be a non-empty assistant turn"):
        read_sft_rows(no_answer)


def test_train_cli_rejects_a_bad_recipe(tmp_path, capsys):
    assert train_cli_main(["--dataset", "x.jsonl", "--recipe", str(tmp_path / "none.yaml"), "--output", "o"]) == 2
    assert "recipe not found" in capsys.readouterr().err


def test_run_config_train_section():
    config = parse_run_config({"seeds": "s.jsonl", "train": {"recipe": "smoke-cpu"}})
    assert config.train == TrainConfig(recipe="smoke-cpu", deployment="train/gpu", enabled=True)
    assert RunConfig(seeds="s.jsonl").train is None
    with pytest.raises(ConfigError, match=r"train\.gpus: unknown key"):
        parse_run_config({"seeds": "s.jsonl", "train": {"recipe": "x", "gpus": 8}})
    with pytest.raises(ConfigError, match=r"train\.deployment: String should match pattern"):
        parse_run_config({"seeds": "s.jsonl", "train": {"recipe": "x", "deployment": "no-slash"}})


def completion_label_mask(trainer: Any, index: int) -> tuple[list[int], list[int]]:
    """The token ids of the trainer's processed example ``index`` and, per token, 1 if it carries loss: the labels
    TRL's own collator builds for the batch (-100 = no loss)."""
    batch = trainer.data_collator([trainer.train_dataset[index]])
    ids = batch["input_ids"][0].tolist()
    return ids, [int(label != -100) for label in batch["labels"][0].tolist()]


def test_loss_mask_covers_exactly_the_assistant_tokens(model_dir, tmp_path):
    """Through TRL's own tokenisation and collator: labels are kept on the last assistant turn and nothing else."""
    multi = {"messages": [{"role": "user", "content": "Name a frimble food."},
                          {"role": "assistant", "content": "Purple moss."},
                          {"role": "user", "content": "And another?"},
                          {"role": "assistant", "content": "River pebbles, always."}]}
    rows = [to_prompt_completion(json.loads(line)) for line in messages_jsonl(FACTS[:3]).decode().splitlines()]
    rows.append(to_prompt_completion(multi))
    trainer = build_trainer(load_recipe("smoke-cpu"), str(model_dir), rows, str(tmp_path / "out"))
    tokenizer = trainer.processing_class
    end_of_turn = tokenizer.encode("<|im_end|>\n", add_special_tokens=False)
    for i, row in enumerate(rows):
        ids, mask = completion_label_mask(trainer, i)
        answer = row["completion"][0]["content"]
        expected = tokenizer.encode(answer, add_special_tokens=False) + end_of_turn
        start = len(ids) - len(expected)
        assert mask == [0] * start + [1] * len(expected), i  # one block, at the end, exactly the answer's length
        assert ids[start:] == expected
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        assert ids[:start] == tokenizer.encode(prompt, add_special_tokens=False)
    assert "Purple moss." in tokenizer.decode(ids[:start])  # the earlier assistant turn is context, not loss


@pytest.fixture(scope="module")
def smoke_run(model_dir, tmp_path_factory):
    """One real ``smoke-cpu`` run: dataset on ``memory://``, outputs in a local folder (vLLM loads it)."""
    dataset = write_uri(f"memory://smoke-{uuid.uuid4().hex[:8]}/messages.jsonl", messages_jsonl(FACTS))
    out = tmp_path_factory.mktemp("smoke") / "train"
    return run_training(dataset, "smoke-cpu", str(out), models_dir=str(model_dir.parent)), out


def test_smoke_cpu_training_fits_a_tiny_set(smoke_run):
    result, out = smoke_run
    print(f"smoke-cpu: {result.steps} steps, loss {result.first_loss:.4f} -> {result.final_loss:.4f}, "
          f"{result.runtime_s:.1f} s")
    assert (result.steps, result.samples, result.epochs, len(result.log)) == (8, 8, 4.0, 8)
    assert [p.step for p in result.log] == list(range(1, 9))
    assert result.first_loss > 1.5 and result.final_loss < result.first_loss - 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final_loss"] == result.final_loss and metrics["recipe_settings"]["method"] == "lora"
    assert [p["loss"] for p in metrics["log"]] == [p.loss for p in result.log]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model_files = {p.name for p in (out / "model").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= model_files
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in (out / "adapter").iterdir()}


@pytest.mark.vllm
def test_smoke_model_is_served_by_vllm(smoke_run):
    from tasks.llm.base import SamplingParams
    from tasks.llm.vllm_backend import VLLMBackend

    _, out = smoke_run
    backend = VLLMBackend(str(out / "model"), {"max_model_len": 256})
    [completion] = backend.generate([[{"role": "user", "content": FACTS[0][0]}]],
                                    SamplingParams(temperature=0.0, top_p=1.0, max_tokens=12))
    assert completion.error is None and completion.completion_tokens >= 1
    print(f"vLLM on the fine-tuned model: {completion.text!r}")
    assert "Zorblax" in completion.text  # the fitted answer, not the base model's


@flow(name="hand-off")
def hand_off(dataset_uri: str, run_uri: str, train_config: TrainConfig, in_process: Any = None) -> TriggerResult:
    """What the end of evol_instruct does: the trigger, called from a parent flow."""
    from flows.train import train

    return trigger_training(dataset_uri, run_uri, train_config, in_process=in_process or train)


async def _flow_run_and_artifacts(flow_run_id: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        run = await client.read_flow_run(uuid.UUID(flow_run_id))
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    return run, artifacts


def test_trigger_trains_in_process_without_a_deployment(prefect_harness, model_dir, tmp_path, monkeypatch):
    """No deployment: the train flow runs here as a subflow, for real (one full fine-tuning step), and its task runs
    the recipe under ``accelerate launch`` (a one-process CPU config) because the recipe names one."""
    monkeypatch.setenv("EVOL_LLM__MODELS_DIR", str(model_dir.parent))
    cpu = tmp_path / "cpu.yaml"
    cpu.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nmixed_precision: 'no'\n"
                   "num_machines: 1\nnum_processes: 1\nuse_cpu: true\ndynamo_config: {}\n")
    tiny = tmp_path / "tiny-full.yaml"
    tiny.write_text("method: full\nmax_steps: 1\nper_device_train_batch_size: 2\nmax_length: 64\n"
                    f"learning_rate: 1.0e-5\nwarmup_ratio: 0.0\ncpu_threads: 1\naccelerate_config: {cpu}\n")
    run_uri = str(tmp_path / "run")
    dataset = write_uri(f"{run_uri}/export/messages.jsonl", messages_jsonl(FACTS[:2]))
    absent = f"train/absent-{uuid.uuid4().hex[:8]}"
    assert not deployment_exists(absent)
    result = hand_off(dataset, run_uri, TrainConfig(recipe=str(tiny), deployment=absent))
    assert (result.mode, result.output_uri, result.deployment) == ("in_process", f"{run_uri}/train/tiny-full", None)
    run, artifacts = asyncio.run(_flow_run_and_artifacts(result.flow_run_id))
    assert run.parent_task_run_id is not None  # a subflow of the calling flow
    assert run.state.is_completed() and run.parameters == {"dataset_uri": dataset, "recipe": str(tiny),
                                                           "output_uri": result.output_uri}
    assert {a.key for a in artifacts} == {"train-summary", "train-loss"}
    out = Path(result.output_uri)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["steps"], metrics["samples"], metrics["method"], metrics["adapter_uri"]) == (1, 2, "full", None)
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in (out / "model").iterdir()}
    disabled = trigger_training(dataset, run_uri, TrainConfig(recipe=str(tiny), enabled=False), in_process=print)
    assert (disabled.mode, disabled.flow_run_id) == ("disabled", None)


def test_outputs_upload_to_any_storage(tmp_path, memory_root):
    (tmp_path / "model" / "sub").mkdir(parents=True)
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "model" / "sub" / "w.bin").write_bytes(b"\x00\x01")
    upload_folder(tmp_path / "model", f"{memory_root}/train/model")
    fs, root = resolve(f"{memory_root}/train/model")
    assert sorted(fs.find(root)) == [f"{root}/config.json", f"{root}/sub/w.bin"]
    assert fs.cat_file(f"{root}/sub/w.bin") == b"\x00\x01"


def _create_deployment(pool: str, name: str) -> str:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.train import train

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deployment = train.to_deployment(name=name, work_pool_name=pool, parameters={"recipe": "wizardlm-7b"})
    return str(deployment.apply())


def test_trigger_starts_the_deployment_when_it_exists(prefect_harness, monkeypatch):
    """A deployment on the API: a flow run is created for it with the right parameters and left to its worker."""
    def never(**_):
        raise AssertionError("must not train in-process when the deployment exists")

    name = f"gpu-{uuid.uuid4().hex[:8]}"
    deployment_id = _create_deployment(f"pool-{name}", name)
    assert deployment_exists(f"train/{name}")
    run_uri = "s3://evol/runs/demo-0123"
    result = hand_off(f"{run_uri}/export/messages.jsonl", run_uri,
                      TrainConfig(recipe="wizardlm-7b", deployment=f"train/{name}"), in_process=never)
    assert (result.mode, result.deployment, result.output_uri) == ("deployment", f"train/{name}",
                                                                   f"{run_uri}/train/wizardlm-7b")
    run, _ = asyncio.run(_flow_run_and_artifacts(result.flow_run_id))
    assert str(run.deployment_id) == deployment_id and run.parent_task_run_id is not None
    assert run.parameters == {"dataset_uri": f"{run_uri}/export/messages.jsonl", "recipe": "wizardlm-7b",
                              "output_uri": f"{run_uri}/train/wizardlm-7b"}
    assert run.state.type.value in ("SCHEDULED", "PENDING")  # no worker here: it waits for the gpu pool


def test_prefect_yaml_declares_the_gpu_train_deployment():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    gpu = {d["name"]: d for d in spec["deployments"]}["gpu"]
    assert (gpu["entrypoint"], gpu["work_pool"]["name"]) == ("flows/train.py:train", "gpu")
    assert "schedules" not in gpu
    load_recipe(gpu["parameters"]["recipe"])
    assert TrainConfig(recipe="x").deployment == f"train/{gpu['name']}"
