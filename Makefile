# Every target installs what it needs first, so each works alone on a fresh clone.
VENV := .venv
BIN := $(VENV)/bin
MLFLOW_UI := .venv-mlflow
PYTHON ?= python3

.PHONY: install train test tensorboard mlflow lint format bench soak clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --progress-bar off -e '.[dev]'
	touch $@

install: $(BIN)/.installed

## train with the defaults (add overrides with ARGS="key=value ...")
train: install
	$(BIN)/python -m src.train $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

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

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(MLFLOW_UI) .pytest_cache .ruff_cache
