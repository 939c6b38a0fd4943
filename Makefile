# Two commands do everything on a fresh machine:
#   make demo   installs into .venv, fetches Fashion-MNIST if needed, runs the CPU study, writes a report
#   make test   installs into .venv and runs the whole test suite
# For the edit loop: make test-fast (skips tests marked slow).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= runs

.PHONY: venv demo test test-fast lint data bench clean browser bank

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	@echo "installing dsd2 and its dependencies into $(VENV) (several minutes)…"
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

# Fashion-MNIST for the demo: Debian's package when apt is available (as root), otherwise the
# checksum-verified download of `dsd2 fetch`.
data: venv
	@$(BIN)/dsd2 fetch fashion_mnist 2>/dev/null || { \
	  echo "Fashion-MNIST is not installed yet: installing it…"; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's dataset-fashion-mnist"; \
	    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)); \
	  fi; \
	  $(BIN)/dsd2 fetch fashion_mnist --download; }

demo: venv data
	$(BIN)/dsd2 demo --out $(OUT)

# Headless Chromium for the report's browser test (Debian's package, as root); the test skips
# with a message where it cannot be installed.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the browser test"; \
	    (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) || true; \
	  fi; }

# Lint, types, then every test (slow ones included).
test: venv browser lint
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

test-fast: venv
	$(BIN)/pytest -m "not slow" -x

# Re-measure the curve bank (about 1.5 h on 2 cores) and regenerate its tables in the docs.
bank: venv data
	$(BIN)/python benchmarks/curve_bank.py --out $(OUT)/bank --jobs 2
	$(BIN)/dsd2 stop-rules tests/data/curves --write docs/stop_rules.md
	$(BIN)/dsd2 stop-rules tests/data/curves --write docs/results.md

# Training loop vs the reference-style pipeline, peak FLOP/s, CPU variants, one IMP round broken down
# (about 15 min on 2 cores; results in benchmarks/results/bench_cpu.json). GPU: benchmarks/train_throughput.py --device cuda.
bench: venv data
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) build src/*.egg-info
