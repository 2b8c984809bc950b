"""Regenerate the README's pictures of the Prefect UI with headless Chromium (Debian: `apt-get install chromium`).

Starts the documented Prefect server (`evol server`) on a free 127.0.0.1 port (its own PREFECT_HOME,
PREFECT_API_URL set to its own address), runs `evol run CONFIG` against it, then takes a screenshot of each page
in a 1280-pixel window after checking the page's text: the run's graph, the table and sample
artifacts and the run's summary artifact (its plots must be shown as images).

    .venv/bin/python docs/screenshots.py                      # configs/demo.yaml: the real model, minutes
    .venv/bin/python docs/screenshots.py --config my.yaml --out docs/images
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chromium(explicit: str | None) -> str:
    for name in ([explicit] if explicit else ["chromium", "chromium-browser", "google-chrome"]):
        if path := shutil.which(name):
            return path
    sys.exit("no Chromium found: apt-get install chromium (or pass --chromium PATH)")


def chromium(binary: str, url: str, *args: str, size: str) -> str:
    """Load ``url`` headless, let its scripts settle, and run one output action (--dump-dom, --screenshot=...)."""
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--run-all-compositor-stages-before-draw", f"--window-size={size}", "--virtual-time-budget=20000",
           *args, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        sys.exit(f"chromium failed on {url}:\n{done.stderr[-2000:]}")
    return done.stdout


def _evolved_in_sample(artifacts, flow_run_id) -> int:
    import json

    for a in artifacts:
        if a.type == "table" and a.flow_run_id == flow_run_id and a.key.endswith("-samples"):
            rows = json.loads(a.data) if isinstance(a.data, str) else a.data
            return sum(1 for row in rows if row.get("outcome") == "evolved")
    return -1


async def find_pages(api_url: str) -> dict[str, str]:
    """UI paths of the run's graph, a round's table and sample artifacts (the round with the most evolved rows in its
    sample) and the run's summary artifact."""
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api=api_url) as client:
        runs = await client.read_flow_runs(limit=200)
        parents = [r for r in runs if r.parent_task_run_id is None]
        if len(parents) != 1:
            sys.exit(f"expected one top-level flow run, found {[r.name for r in parents]}")
        parent = parents[0]
        rounds = sorted((r for r in runs if r.parent_task_run_id is not None), key=lambda r: r.start_time)
        artifacts = await client.read_artifacts(limit=200)
    # the round whose sample shows the most evolved rows (the bundled model's output varies from run to run)
    shown = max(rounds, key=lambda r: _evolved_in_sample(artifacts, r.id), default=None)
    in_round = [a for a in artifacts if a.type == "table" and shown is not None and a.flow_run_id == shown.id]
    tables = [a for a in in_round if not a.key.endswith("-samples")]
    samples = [a for a in in_round if a.key.endswith("-samples")]
    summaries = [a for a in artifacts if a.type == "markdown" and a.flow_run_id == parent.id]
    if not parent.state.is_completed() or not tables or not samples or not summaries:
        sys.exit(f"run {parent.name} is {parent.state.type.value}; round tables {len(tables)}, "
                 f"samples {len(samples)}, summaries {len(summaries)}")
    return {"run-graph": f"runs/flow-run/{parent.id}", "round-artifact": f"artifacts/artifact/{tables[0].id}",
            "round-samples": f"artifacts/artifact/{samples[0].id}",
            "summary-artifact": f"artifacts/artifact/{summaries[0].id}", "_name": parent.name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/demo.yaml"), help="run config for `evol run`")
    parser.add_argument("--out", default=str(ROOT / "docs/images"), help="folder for the PNG files")
    parser.add_argument("--chromium", help="browser binary (default: chromium on PATH)")
    parser.add_argument("--size", default="1280,900", help="window size WIDTH,HEIGHT (the samples table must fit "
                        "1280 pixels)")
    args = parser.parse_args()
    browser = find_chromium(args.chromium)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    home = Path(tempfile.mkdtemp(prefix="evol-screens-"))
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api_url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server = subprocess.Popen([str(BIN / "evol"), "server", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or server.poll() is not None:
                sys.exit("the Prefect server did not start")
            time.sleep(1)
        config = Path(args.config)
        out_root = home / "runs"
        done = subprocess.run([str(BIN / "evol"), "run", str(config), "--no-progress", "--output-root", str(out_root)],
                              env=env, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"evol run failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        pages = asyncio.run(find_pages(api_url))
        # the summary's plots are data: images; the page must show them as <img> elements, not as text
        expected = {"run-graph": [pages["_name"], "Completed"], "round-artifact": ["pool in", "evolved"],
                    "round-samples": ["outcome", "operation", "parent", "evolution", "each row in full"],
                    "summary-artifact": ["Evol-Instruct run", "Rejections by reason",
                                         'src="data:image/png;base64,']}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, words in expected.items():
            url = f"http://127.0.0.1:{port}/{pages[name]}"
            dom = chromium(browser, url, "--dump-dom", size=args.size)
            missing = [w for w in words if w not in dom]
            if missing or "Oops" in dom:
                sys.exit(f"{url} does not show {missing or 'the page'} (Oops: {'Oops' in dom})")
            chromium(browser, url, f"--screenshot={out / (name + '.png')}", size=args.size)
            print(f"{out / (name + '.png')}: {url}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
