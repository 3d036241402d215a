# make run: build .venv if needed, start aiosd on the default model, run the paper's three agents, stop.
# make test: build .venv if needed, run the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test lint perf clean venv

run: $(STAMP)
	$(BIN)/python -m aiosd.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -x --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .

perf: $(STAMP)
	for s in perf/syscall_latency.py perf/kernel_path.py perf/storage.py perf/tools.py perf/throughput.py perf/solo_vs_batched.py perf/context_switch.py \
	         perf/table4_consistency.py perf/table5_scheduling.py; do $(BIN)/python $$s --quick || exit 1; done

venv: $(STAMP)

# torch is pinned: pip takes the CPU build from this machine's disk; anything else downloads CUDA.
$(STAMP): requirements.txt requirements-nodeps.txt setup.cfg setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel setuptools
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || { \
	  echo "llama-cpp-python: one-time compile from source (about 12 minutes on 2 cores; pip caches the wheel)"; \
	  $(BIN)/pip install -q llama-cpp-python || echo "llama-cpp-python is not installed: --engine auto uses transformers"; }
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
