"""Choosing where shards run (embedded threads or a Dask cluster) and what `evol worker` starts; no processes."""

from __future__ import annotations

import pytest
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from flows.runners import cluster_address, release_future, round_task_runner
from tasks.core.config import ConfigError, EnvSettings, OrchestrationConfig, parse_run_config
from tasks.runtime.worker import parse_cpus, worker_plan


def test_embedded_by_default_and_the_config_wins_over_the_environment():
    assert cluster_address(OrchestrationConfig(), EnvSettings(cluster=None)) is None
    assert cluster_address(OrchestrationConfig(), EnvSettings(cluster="tcp://h:8786")) == "tcp://h:8786"
    assert cluster_address(OrchestrationConfig(cluster="embedded"), EnvSettings(cluster="tcp://h:8786")) is None
    assert cluster_address(OrchestrationConfig(cluster="tcp://a:1"), EnvSettings(cluster="tcp://h:8786")) == "tcp://a:1"


def test_environment_variable_names_the_cluster(monkeypatch):
    monkeypatch.setenv("EVOL_CLUSTER", "tcp://10.0.0.1:8786")
    assert cluster_address(OrchestrationConfig()) == "tcp://10.0.0.1:8786"


def test_cluster_address_must_be_a_scheduler_url():
    with pytest.raises(ConfigError, match="cluster"):
        parse_run_config({"seeds": "s.jsonl", "orchestration": {"cluster": "10.0.0.1:8786"}})


def test_round_task_runner_matches_the_setting():
    threads = round_task_runner(OrchestrationConfig(max_parallel_shards=3), EnvSettings())
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    dask = round_task_runner(OrchestrationConfig(cluster="tcp://127.0.0.1:8786"), EnvSettings())
    assert isinstance(dask, DaskTaskRunner) and dask.address == "tcp://127.0.0.1:8786"


def test_release_future_releases_a_dask_future_and_ignores_others():
    class Wrapped:
        released = 0

        def release(self):
            self.released += 1

    class Future:
        wrapped_future = Wrapped()

    future = Future()
    release_future(future)
    release_future(object())
    assert future.wrapped_future.released == 1


def test_parse_cpus():
    assert parse_cpus("0-2,5") == [0, 1, 2, 5]
    assert parse_cpus("3") == [3]
    for bad in ("a", "2-1", "1-", ""):
        with pytest.raises(ValueError):
            parse_cpus(bad)


def test_worker_plan_one_thread_pinned_and_non_daemonic():
    plan = worker_plan("tcp://s:8786", name="gpu0", cpus="2-3", gpu="0", preload=["my.backends"],
                       warm_config="run.yaml", base_env={"PATH": "/bin"})
    argv = plan.argv
    assert argv[1:4] == ["-m", "distributed.cli.dask_worker", "tcp://s:8786"]
    assert argv[argv.index("--nthreads") + 1] == "1" and argv[argv.index("--nworkers") + 1] == "1"
    assert argv[argv.index("--name") + 1] == "gpu0" and "--nanny" in argv
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--preload"] == ["tasks.worker", "my.backends"]
    assert plan.cpus == [2, 3]
    assert plan.env["VLLM_CPU_OMP_THREADS_BIND"] == "2-3" and plan.env["OMP_NUM_THREADS"] == "2"
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "0" and plan.env["EVOL_WORKER_WARM"] == "run.yaml"
    assert plan.env["DASK_DISTRIBUTED__WORKER__DAEMON"] == "False" and plan.env["PATH"] == "/bin"
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "1" and plan.env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    sized = worker_plan("tcp://s:8786", cpus="0", base_env={"VLLM_CPU_KVCACHE_SPACE": "8", "OMP_NUM_THREADS": "9"})
    assert sized.env["VLLM_CPU_KVCACHE_SPACE"] == "8"  # the user's KV cache size stays
    assert sized.env["OMP_NUM_THREADS"] == "1" and sized.env["VLLM_CPU_OMP_THREADS_BIND"] == "0"  # the pinning's
    bare = worker_plan("tcp://s:8786", nanny=False, base_env={})
    assert "--no-nanny" in bare.argv and "--name" not in bare.argv and bare.cpus is None
    assert "CUDA_VISIBLE_DEVICES" not in bare.env and "VLLM_CPU_OMP_THREADS_BIND" not in bare.env


def test_a_cluster_run_needs_a_prefect_server_and_a_scheduler_that_answers(monkeypatch):
    import socket

    from tasks.planning.validate import check_cluster

    monkeypatch.delenv("EVOL_CLUSTER", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert check_cluster(parse_run_config({"seeds": "s.jsonl"})) == []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    config = parse_run_config({"seeds": "s.jsonl", "orchestration": {"cluster": f"tcp://127.0.0.1:{port}"}})
    problems = [str(p) for p in check_cluster(config, timeout_s=1)]
    assert len(problems) == 2
    assert "PREFECT_API_URL" in problems[0] and "no Dask scheduler answers" in problems[1]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
        address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        ok = parse_run_config({"seeds": "s.jsonl", "orchestration": {"cluster": address}})
        assert check_cluster(ok) == []
