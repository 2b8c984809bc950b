"""`evol deploy` without a server: which commands it runs, and a clear error when no API is set."""

from __future__ import annotations

import os
import re
import subprocess

from flows.cli_deploy import PREFECT, deploy_commands, deployment_specs
from tests.services import BIN, ROOT, pause_schedules


def test_overrides_go_to_the_nightly_deployment_only():
    specs = deployment_specs(ROOT)
    assert [s["name"] for s in specs] == ["nightly", "gpu", "cli"]
    assert deploy_commands(specs, None, None, None) == [[PREFECT, "--no-prompt", "deploy", "--all"]]
    nightly, gpu, cli = deploy_commands(specs, "s3://evol/configs/nightly.yaml", 60, "0 3 * * *")
    assert nightly == [PREFECT, "--no-prompt", "deploy", "--name", "nightly", "--params",
                       '{"config_uri": "s3://evol/configs/nightly.yaml"}', "--interval", "60", "--cron", "0 3 * * *"]
    assert gpu == [PREFECT, "--no-prompt", "deploy", "--name", "gpu"]
    assert cli == [PREFECT, "--no-prompt", "deploy", "--name", "cli"]


def test_deploying_again_keeps_the_parameters_a_deployment_has_unless_asked():
    specs = deployment_specs(ROOT)
    existing = {"nightly": {"config_uri": "s3://team/nightly.yaml", "rounds": 3}, "gpu": {"recipe": "smollm2"}}
    nightly, gpu, _cli = deploy_commands(specs, None, None, None, existing)
    assert nightly == [PREFECT, "--no-prompt", "deploy", "--name", "nightly", "--params",
                       '{"config_uri": "s3://team/nightly.yaml", "rounds": 3}']
    assert gpu == [PREFECT, "--no-prompt", "deploy", "--name", "gpu", "--params", '{"recipe": "smollm2"}']
    nightly, *_ = deploy_commands(specs, "configs/demo.yaml", None, None, existing)
    assert nightly[-1] == '{"config_uri": "configs/demo.yaml", "rounds": 3}'


def test_overlapping_runs_of_the_nightly_deployment_queue():
    nightly = next(s for s in deployment_specs(ROOT) if s["name"] == "nightly")
    assert nightly["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}


def test_every_deployment_heartbeats_often_enough_for_the_crash_automation():
    from flows.evol_instruct import evol_instruct
    from flows.server_run import DEPLOYMENT, deployment_spec, project_flow_names
    from tasks.runtime.crash_detection import HEARTBEAT_S, SILENCE_S, crash_automation

    for spec in deployment_specs(ROOT):  # a worker's flow run sends heartbeats at this interval
        assert int(spec["work_pool"]["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]) <= HEARTBEAT_S
    assert SILENCE_S >= 3 * HEARTBEAT_S  # three heartbeats lost before a live run could be taken for dead
    cli, pull = deployment_spec(ROOT)  # what `evol run` registers when the server lacks it
    path, function = cli["entrypoint"].split(":")
    assert cli["name"] == DEPLOYMENT and (ROOT / path).is_file() and function == evol_instruct.fn.__name__
    assert pull == [{"flows.deploy_steps.set_code_directory": {}}]
    trigger = crash_automation(project_flow_names()).trigger
    assert trigger.match_related["prefect.resource.name"] == sorted(
        ["evol-run", "evol-instruct", "evol-round", "evol-score", "train"])
    assert trigger.within.total_seconds() == SILENCE_S


def test_deploy_needs_an_api_url(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "COLUMNS": "400"}
    done = subprocess.run([str(BIN / "evol"), "deploy"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "set PREFECT_API_URL" in done.stderr
    done = subprocess.run([str(BIN / "evol"), "deploy", "--project-dir", str(tmp_path)], cwd=ROOT,
                          env=env | {"PREFECT_API_URL": "http://127.0.0.1:9/api"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and f"no prefect.yaml in {tmp_path}" in done.stderr


def test_deploy_twice_on_a_server_keeps_the_config_uri_and_sets_the_enqueue_limit(prefect_server, tmp_path):
    from prefect.client.orchestration import SyncPrefectClient

    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONPATH": str(ROOT), "COLUMNS": "400"}

    def deploy(*args: str) -> str:
        done = subprocess.run([str(BIN / "evol"), "deploy", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    def nightly():
        with SyncPrefectClient(api=prefect_server) as client:
            return client.read_deployment_by_name("evol-run/nightly")

    out = deploy("--config-uri", "s3://team/nightly.yaml")
    assert nightly().parameters == {"config_uri": "s3://team/nightly.yaml"}
    assert re.search(r"automation evol: mark Crashed .*: (created|exists)", out)  # `evol run` may have put it there
    out = deploy()  # again, without --config-uri: the team's config stays
    assert re.search(r"automation evol: mark Crashed .*: exists", out)
    assert "deployment nightly exists: keeping its parameters {'config_uri': 's3://team/nightly.yaml'}" in out
    deployment = nightly()
    assert deployment.parameters == {"config_uri": "s3://team/nightly.yaml"}
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy.value == "ENQUEUE"
    deploy("--config-uri", "configs/demo.yaml")  # asked: changed
    assert nightly().parameters == {"config_uri": "configs/demo.yaml"}
    # the session's other tests run process workers on this server: at 02:00 UTC one would run the demo
    pause_schedules(prefect_server, "evol-run/nightly")
