# Every target installs what it needs first, so each works alone on a fresh clone.
VENV := .venv
BIN := $(VENV)/bin
MLFLOW_UI := .venv-mlflow
PYTHON ?= python3

.PHONY: install constraints train test test-all coverage docs reproduce tensorboard mlflow lint format bench soak clean

# the versions CI installs and tests (constraints.txt); make constraints regenerates the file
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --progress-bar off -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/.installed

## train with the defaults (add overrides with ARGS="key=value ...")
train: install
	$(BIN)/python -m src.train $(ARGS)

## the fast tier, after every change: the tests that start no process (docs/testing.md)
test: install
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

## every test, those that start processes too (command lines, signals, launchers, DDP,
## notebooks): what CI runs
test-all: install
	$(BIN)/python -m pytest $(ARGS)

## the fast tier's line coverage of src/, module by module (ARGS="-m ''" for every test, the
## processes they start included)
coverage: install
	$(BIN)/python -m pytest -m "not slow" --cov --cov-report=term-missing:skip-covered $(ARGS)

## every claim re-measured on the committed code, each into its results file, then the pages
## rendered (hours on a 2-core CPU; resumable: ONLY=default_run,ablate_tta for some)
reproduce: install
	$(BIN)/python -m src.experiments.reproduce --only "$(ONLY)"

## every marked table of the README, docs/ and bench/, rendered from its results file
## (docs/results/NAME.json, written by the command that measured it)
docs: install
	$(BIN)/python -m src.experiments.results

tensorboard: install
	$(BIN)/tensorboard --logdir logs

## the MLflow UI on logger=mlflow's local store. Its server is the full mlflow, which needs
## SQLAlchemy 2 where the project's Optuna sweeper needs 1.x: installed on first use into a venv
## of its own, at the version of the client that writes the store (mlflow-skinny), since an
## older UI refuses a store of a newer schema
mlflow: install
	version=$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("mlflow-skinny"))'); \
	$(MLFLOW_UI)/bin/python -c "import importlib.metadata as m; assert m.version('mlflow') == '$$version'" \
		2>/dev/null || { $(PYTHON) -m venv $(MLFLOW_UI) && \
		$(MLFLOW_UI)/bin/pip install --quiet --progress-bar off "mlflow==$$version"; }
	$(MLFLOW_UI)/bin/mlflow ui --backend-store-uri sqlite:///logs/mlflow/mlflow.db \
		--host 127.0.0.1 --port 5000

## bench/benchmark.py: input path (pil, cache) vs the seed article's, Lightning vs a plain loop,
## presets: bench/results.md (ARGS=--time-to-accuracy: seconds to 50 % val/acc per input path,
## bench/time_to_accuracy.md); the GPU version is bash bench/bench_gpu.sh
bench: install
	$(BIN)/python -m bench.benchmark $(ARGS)

## bench/soak.py: memory over epochs on 20,000 images, and the time to check them
## (writes bench/soak.md; ARGS="--images N --epochs N" for a smaller run)
soak: install
	$(BIN)/python -m bench.soak $(ARGS)

## constraints.txt anew: the newest versions pyproject.toml allows, installed into a fresh venv
## and frozen (then run make test-all, and commit the file if it passes)
constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install --quiet --upgrade pip
	.venv-constraints/bin/pip install --quiet --progress-bar off -e '.[dev]'
	{ echo "# The versions CI installs and tests: make install uses them, make constraints"; \
	  echo "# regenerates this file (docs/testing.md#versions)."; \
	  .venv-constraints/bin/pip freeze --exclude-editable; } > constraints.txt
	rm -rf .venv-constraints

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(MLFLOW_UI) .pytest_cache .ruff_cache
