"""docker-compose.yml's team topology without containers: PostgreSQL, Prefect's server on it, an S3 server
(moto for MinIO), a bucket and a CPU process worker on the `default` pool, each started from packages with the
compose file's own commands, ports and variables. Then a deployment with an interval schedule runs on it
with its config, seeds and outputs on S3."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from flows.cli_server import server_venv
from tests.conftest import free_port, wait_for_port
from tests.services import BIN, ROOT, assert_export, background, postgres_bin_dir, postgres_cluster, prefect_server

IMAGE_SERVER_MAIN = "/opt/evol/server_main.py"  # where docker/Dockerfile.server puts flows/server_main.py

# Each compose service, and what stands in for it here; the GPU services can't run on a CPU machine.
STARTED_HERE = {
    "postgres": "Debian's postgresql: initdb and pg_ctl in a temporary folder",
    "prefect-server": "flows/server_main.py server start from .venv-server (requirements-server.txt, as its image)",
    "minio": "moto's S3 server",
    "minio-init": "the bucket, created through s3fs",
    "worker": "prefect worker start, in the environment's Python",
}
NOT_HERE = {"gpu-worker": "needs a GPU", "vllm": "needs a GPU",
            # the cluster profile: tests/test_workers.py starts a scheduler and `evol worker`s on CPUs
            "dask-scheduler": "cluster profile", **{f"evol-gpu{i}": "needs a GPU" for i in range(8)}}
VARIABLE = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


class Topology:
    """docker-compose.yml translated to this host: each service's container port becomes a free 127.0.0.1 port,
    each ``${VAR}`` a value from .env.example, each named volume a temporary folder."""

    def __init__(self, spec: dict, secrets: dict[str, str], volumes_root) -> None:
        self.services = spec["services"]
        self.secrets = secrets
        self.ports: dict[str, dict[int, int]] = {}  # service -> container port -> local port
        self.published: dict[int, tuple[str, int]] = {}  # host port -> (service, container port)
        for name, svc in self.services.items():
            for mapping in svc.get("ports", []):
                _, host, container = mapping.split(":")
                self.ports.setdefault(name, {})[int(container)] = free_port()
                self.published[int(host)] = (name, int(container))
        self.volumes = {v: volumes_root / v for v in spec.get("volumes", {})}

    def port(self, service: str, container: int) -> int:
        return self.ports.setdefault(service, {}).setdefault(container, free_port())

    def value(self, text: str) -> str:
        """A compose value on this host: variables filled in, service and published addresses local."""
        def variable(m: re.Match) -> str:
            name, kind, default = m.groups()
            if name in self.secrets:
                return self.secrets[name]
            assert kind == "-", f"{name} is required by docker-compose.yml and missing from .env.example"
            return default

        text = VARIABLE.sub(variable, text).replace("$$", "$")

        def address(m: re.Match) -> str:
            host, port = m.group(1), int(m.group(2))
            if host in self.services:
                return f"127.0.0.1:{self.port(host, port)}"
            if host in ("localhost", "127.0.0.1") and port in self.published:
                return f"127.0.0.1:{self.port(*self.published[port])}"
            return m.group(0)

        return re.sub(r"\b([a-z][\w.-]*):(\d+)\b", address, text)

    def env(self, service: str) -> dict[str, str]:
        """The service's environment on this host; paths inside named volumes become local folders."""
        svc = self.services[service]
        mounts = dict(reversed(v.split(":")) for v in svc.get("volumes", []) if v.split(":")[0] in self.volumes)
        out = {}
        for key, raw in (svc.get("environment") or {}).items():
            value = self.value(str(raw))
            out[key] = str(self.volumes[mounts[value]]) if value in mounts else value
        return out

    def command(self, service: str) -> list[str]:
        """The service's command on this host: listening on 127.0.0.1, on its local port; the server's ``prefect`` is
        the one of its own environment (its image installs requirements-server.txt, as .venv-server does)."""
        args = [self.value(a) for a in self.services[service]["command"]]
        args = ["127.0.0.1" if a == "0.0.0.0" else a for a in args]
        for container, local in self.ports.get(service, {}).items():
            args = [str(local) if a == str(container) else a for a in args]
        if args[:2] == ["python", IMAGE_SERVER_MAIN]:  # the server image's copy of flows/server_main.py
            return [str(server_venv() / "bin" / "python"), str(ROOT / "flows" / "server_main.py"), *args[2:]]
        if args[0] != "prefect":
            return args
        return [str(BIN / "prefect"), *args[1:]]


def test_compose_services_are_the_topology_started_here(tmp_path):
    spec = compose()
    assert set(spec["services"]) == set(STARTED_HERE) | set(NOT_HERE)
    topo = Topology(spec, env_example(), tmp_path)
    worker = topo.env("worker")
    assert worker["PREFECT_API_URL"] == f"http://127.0.0.1:{topo.port('prefect-server', 4200)}/api"
    assert worker["EVOL_STORAGE__ENDPOINT_URL"] == f"http://127.0.0.1:{topo.port('minio', 9000)}"
    assert worker["EVOL_STORAGE__KEY"] == env_example()["MINIO_ROOT_USER"]
    assert worker["EVOL_LLM__MODELS_DIR"] == str(tmp_path / "models")
    assert worker["PREFECT_API_AUTH_STRING"] == topo.env("prefect-server")["PREFECT_SERVER_API_AUTH_STRING"]
    db_url = topo.env("prefect-server")["PREFECT_API_DATABASE_CONNECTION_URL"]
    postgres = topo.env("postgres")
    assert db_url == (f"postgresql+asyncpg://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
                      f"@127.0.0.1:{topo.port('postgres', 5432)}/{postgres['POSTGRES_DB']}")
    assert topo.command("worker")[1:] == ["worker", "start", "--pool", "default", "--type", "process", "--limit", "1"]
    server = topo.command("prefect-server")
    assert server[2:] == ["server", "start", "--host", "127.0.0.1", "--port", str(topo.port("prefect-server", 4200))]
    # the environment and the entry point `evol server` runs; the image copies that file where the command finds it
    assert server[:2] == [str(server_venv() / "bin" / "python"), str(ROOT / "flows" / "server_main.py")]
    assert f"COPY flows/server_main.py {IMAGE_SERVER_MAIN}" in (ROOT / "docker" / "Dockerfile.server").read_text()
    # every address given to a started service names a started service, except the optional vLLM server
    owners = {local: service for service, ports in topo.ports.items() for local in ports.values()}
    elsewhere = {(name, key) for name in STARTED_HERE for key, value in topo.env(name).items()
                 for port in re.findall(r"127\.0\.0\.1:(\d+)", value) if owners[int(port)] not in STARTED_HERE}
    assert elsewhere == {("worker", "EVOL_LLM__BASE_URL")}


async def wait_for_scheduled_run(api_url: str, auth: str, deployment: str, timeout: float):
    """The first run the scheduler made for ``deployment`` once it reaches a final state."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.time() + timeout
    async with PrefectClient(api=api_url, auth_string=auth) as client:
        scheduled = []
        while time.time() < deadline:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=200)
            scheduled = [r for r in runs if r.auto_scheduled]
            if scheduled and scheduled[0].state.is_final():
                return scheduled
            await asyncio.sleep(2)
    raise TimeoutError(f"no scheduled run of {deployment} finished in {timeout} s: "
                       f"{[(r.name, r.state.type.value) for r in scheduled[:5]]}")


@pytest.mark.server
@pytest.mark.s3
@pytest.mark.skipif(postgres_bin_dir() is None,
                    reason="PostgreSQL binaries (initdb, pg_ctl) not installed: apt-get install postgresql "
                           "(`make test` does it as root)")
def test_scheduled_deployment_on_the_team_topology(tmp_path):
    from storage import StorageSettings, resolve

    topo = Topology(compose(), env_example(), tmp_path)
    postgres, server_env, worker_env = topo.env("postgres"), topo.env("prefect-server"), topo.env("worker")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "EVOL_"))}
    base |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "AWS_DEFAULT_REGION": "us-east-1",
             "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    s3_port = topo.port("minio", 9000)
    bucket = topo.env("minio-init")["EVOL_BUCKET"]
    storage = StorageSettings(endpoint_url=f"http://127.0.0.1:{s3_port}", key=worker_env["EVOL_STORAGE__KEY"],
                              secret=worker_env["EVOL_STORAGE__SECRET"])
    api_url = f"http://127.0.0.1:{topo.port('prefect-server', 4200)}/api"  # the published port, as users see it
    auth = server_env["PREFECT_SERVER_API_AUTH_STRING"]
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    user_env = base | {"PREFECT_API_URL": api_url, "PREFECT_API_AUTH_STRING": auth,
                       "PREFECT_HOME": str(tmp_path / "user-prefect")}

    moto = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)]
    with postgres_cluster(topo.port("postgres", 5432), postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"],
                          postgres["POSTGRES_DB"]), \
            background(moto, base, tmp_path / "s3.log"):
        wait_for_port(s3_port)
        fs, _ = resolve(f"s3://{bucket}", storage)
        fs.mkdir(bucket)  # minio-init
        fs.put_file(str(ROOT / "data/demo_seeds.jsonl"), f"{bucket}/seeds/demo_seeds.jsonl")
        fs.pipe_file(f"{bucket}/configs/nightly.yaml", yaml.safe_dump({
            "name": "nightly", "seeds": "../seeds/demo_seeds.jsonl", "output_root": "../runs", "rounds": 1,
            "shard_size": 48, "llm": {"backend": "scripted", "model": "demo"}}).encode())
        server_run_env = base | server_env | {"PREFECT_HOME": str(tmp_path / "server-prefect")}
        with prefect_server(topo.command("prefect-server"), server_run_env, api_url, tmp_path / "server.log",
                            headers=headers):
            deploy = subprocess.run([str(BIN / "evol"), "deploy", "--config-uri", f"s3://{bucket}/configs/nightly.yaml",
                                     "--interval", "15"], cwd=ROOT, env=user_env, capture_output=True, text=True,
                                    timeout=300)
            assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
            worker_run_env = base | worker_env | {"PREFECT_HOME": str(tmp_path / "worker-prefect"),
                                                  "PREFECT_WORKER_QUERY_SECONDS": "2"}
            with background(topo.command("worker"), worker_run_env, tmp_path / "worker.log", cwd=tmp_path):
                runs = asyncio.run(wait_for_scheduled_run(api_url, auth, "nightly", timeout=300))
            first = runs[0]
            worker_log = (tmp_path / "worker.log").read_text()
            assert first.state.is_completed(), f"{first.state}\n{worker_log[-3000:]}"
            assert first.parameters == {"config_uri": f"s3://{bucket}/configs/nightly.yaml"}
            assert len(runs) >= 3  # the scheduler keeps runs queued ahead
        assert "sqlalchemy.exc" not in (tmp_path / "server.log").read_text()
        assert_export(f"s3://{bucket}/runs", seeds=96, settings=storage)
