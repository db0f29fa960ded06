# Two entry points that work on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format docs bench targets budget1000 throughput pretrained stress clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

format: $(STAMP)
	$(BIN)/ruff format src tests scripts
	$(BIN)/ruff check --fix src tests scripts

# regenerate docs/api.md, docs/model-cards.md and the tables of docs/when-to-use.md
# (tests/test_docs.py fails when they are stale)
docs: $(STAMP)
	$(BIN)/python scripts/gen_docs.py

# two pytest-xdist workers, one test module per worker at a time (tests/conftest.py
# collects the heavy modules first, and compiles with XLA's faster-compiling older CPU code
# generator; OPTIMUS_TEST_XLA_DEFAULTS=1 keeps XLA's defaults); plain `pytest` runs the
# same suite in one process
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

demo: $(STAMP)
	$(BIN)/optimus bench --quick --out bench_results/quick

# the full protocol of the spec (about 11 minutes on a 2-core AMD EPYC, 31 on a 2-core Intel Xeon @ 2.5 GHz)
bench: $(STAMP)
	$(BIN)/optimus bench --out bench_results/full

# the evaluation behind the README's issue-target numbers (about 6 minutes on a 2-core AMD EPYC, 15 on a 2-core Intel Xeon @ 2.5 GHz)
targets: $(STAMP)
	$(BIN)/optimus bench --variants transformed,offcentre --dims 2,10,30,100,300 --out bench_results/targets
	$(BIN)/optimus bench --variants canonical --dims 100 --out bench_results/canonical100
	$(BIN)/optimus bench --variants transformed --dims 1000 --seeds 3 --tune-seeds 1 \
		--functions sphere,quadratic,rosenbrock,rastrigin,levy,ackley --out bench_results/n1000

# the spec's second budget: 1000 evaluations per run, transformed n = 2 ... 300 and the
# canonical functions at n = 100 (about 7 minutes on a 2-core AMD EPYC, 25 on a 2-core Intel Xeon @ 2.5 GHz)
budget1000: $(STAMP)
	$(BIN)/optimus bench --variants transformed --dims 2,10,30,100,300 --steps 1000 \
		--out bench_results/budget1000/transformed
	$(BIN)/optimus bench --variants canonical --dims 100 --steps 1000 \
		--out bench_results/budget1000/canonical100

throughput: $(STAMP)
	$(BIN)/optimus throughput --out bench_results

# re-train the three shipped models (about 30 minutes on a 2-core AMD EPYC; not timed on the Intel Xeon, where benchmarks run about 3x slower; resumable)
pretrained: $(STAMP)
	scripts/train_pretrained.sh

# long reliability checks (property cases, fault objectives, determinism, 10 SIGKILL/resume
# trials, cost of the learned-step safeguard); writes bench_results/stress.{md,csv}
stress: $(STAMP)
	OPTIMUS_HYPOTHESIS_PROFILE=stress $(BIN)/python -m pytest -q tests/test_reliability.py
	$(BIN)/python scripts/stress.py --out bench_results

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
