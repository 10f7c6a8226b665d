"""W&B and MLflow, read back from what they wrote: MLflow through its client on the local store,
an offline W&B run through ``wandb leet inspect --json``, the reader of a run's ``.wandb`` log
that wandb 0.31 ships (it dropped ``wandb sync --view`` and its Python datastore reader)."""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from src.trackers import RUNS_FILE, finish_wandb, git_commit, tracker_loggers
from src.train import train
from src.utils import ConfigError, UserError
from tests.conftest import (
    compose_config,
    job_dirs,
    micrograph_overrides,
    quick_overrides,
    run_cli,
)

EXPERIMENT = "alexnet-lightning"
IMAGES = ("samples/train", "filters/conv1", "val/confusion_matrix")


def raised(excinfo: pytest.ExceptionInfo) -> BaseException:
    """The project's error under Hydra's InstantiationException, which wraps what a constructor
    raises."""
    err = excinfo.value
    while not isinstance(err, UserError) and err.__cause__ is not None:
        err = err.__cause__
    return err


def test_wandb_keeps_the_users_wandb_mode_and_uploads_checkpoints_only_online(
    train_config, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = train_config("logger=wandb")
    output_dir = Path(cfg.paths.output_dir)
    try:
        (logger,) = tracker_loggers(cfg.logger, output_dir, None)
        assert type(logger.experiment).__name__ == "NoopRun"  # disabled: no files, no service
    finally:
        finish_wandb(exit_code=0)
    assert os.environ["WANDB_MODE"] == "disabled"
    assert json.loads((output_dir / RUNS_FILE).read_text()) == {"wandb": logger.experiment.id}

    # offline by default: a checkpoint upload cannot happen, so it is refused before any work
    monkeypatch.delenv("WANDB_MODE")
    cfg = train_config("logger=wandb", "logger.wandb.log_model=true")
    with pytest.raises(Exception) as excinfo:
        tracker_loggers(cfg.logger, output_dir, None)
    err = raised(excinfo)
    message = str(err)
    assert isinstance(err, ConfigError) and "logger.wandb.log_model=True" in message
    assert "logger.wandb.offline=false" in message and "\n" not in message
    assert "WANDB_MODE" not in os.environ


@pytest.mark.parametrize("logger, package", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_missing_tracker_package_is_one_line_naming_the_extra(
    train_config, monkeypatch, logger, package
):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    cfg = train_config(f"logger={logger}")
    with pytest.raises(Exception) as excinfo:
        tracker_loggers(cfg.logger, Path(cfg.paths.output_dir), None)
    message = str(raised(excinfo))
    assert message.startswith(f"logger.{logger} needs the package {package}")
    assert "pip install -e '.[trackers]'" in message and "\n" not in message


@pytest.fixture(scope="module")
def sweep(tiny_root, tmp_path_factory) -> tuple[Path, list[str], subprocess.CompletedProcess]:
    """Two jobs of logger=many at once in their own processes (hydra/launcher=parallel), on one
    new MLflow store: the setting that races to create its tables and experiment."""
    cwd = tmp_path_factory.mktemp("trackers")
    log_dir = cwd / "logs"
    overrides = micrograph_overrides(tiny_root) + quick_overrides(log_dir, images=True)
    overrides += ["logger=many", "model=cnn4", "test=false"]
    result = run_cli("-m", *overrides, "hydra/launcher=parallel", "seed=1,2", cwd=cwd)
    return log_dir, overrides, result


def mlflow_client(log_dir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{log_dir}/mlflow/mlflow.db")


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of the offline W&B runs in a run folder, oldest run first, read by wandb's
    own reader: ``wandb leet inspect --json``, one JSON object per record."""
    records = []
    for offline_run in sorted((run_dir / "wandb").glob("offline-run-*")):
        command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline_run)]
        lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        records += [json.loads(line) | {"folder": offline_run} for line in lines.splitlines()]
    return records


def of_type(records: list[dict], kind: str) -> list[dict]:
    return [r[kind] | {"folder": r["folder"]} for r in records if r["type"] == kind]


@pytest.mark.slow
def test_parallel_jobs_share_one_mlflow_experiment_and_wandb_group(sweep):
    log_dir, _, result = sweep
    assert "database is locked" not in result.stdout + result.stderr
    jobs = job_dirs(log_dir)
    sweep_name = jobs[0].parent.name
    # every job its own run folder; microseconds in the sweep's name: two sweeps started in the
    # same second never share a folder
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{6}", sweep_name)
    assert (jobs[0].parent / "multirun.yaml").is_file() and [j.name for j in jobs] == ["0", "1"]
    for seed, job in enumerate(jobs, start=1):
        assert yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["seed"] == seed
        assert len(list((job / "tensorboard").glob("events.out.tfevents.*"))) == 1
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert len(list((job / "checkpoints").glob("epoch_*.ckpt"))) == 1
        assert (job / "class_indices.json").is_file()
    ids = [json.loads((job / RUNS_FILE).read_text()) for job in jobs]

    client = mlflow_client(log_dir)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], order_by=["params.seed"])
    assert [run.info.run_id for run in runs] == [i["mlflow"] for i in ids]
    commit = git_commit()
    for seed, run in enumerate(runs, start=1):
        assert run.info.status == "FINISHED"
        assert run.data.params["seed"] == str(seed)
        assert run.data.params["model.optimizer.lr"] == "0.001"  # model=cnn4's
        assert 0 <= run.data.metrics["val/acc"] <= 1
        assert run.data.tags["sweep"] == sweep_name and f"seed={seed}" in run.info.run_name
        assert f"seed={seed}" in run.data.tags["overrides"]
        assert run.data.tags.get("git_commit") == commit
        # artifacts beside the store, never in the working directory
        assert run.info.artifact_uri == f"{log_dir}/mlflow/artifacts/{run.info.run_id}/artifacts"
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
        for tag in IMAGES:
            assert any(p.startswith(f"images/{tag.replace('/', '~')}+step+") for p in images)
    assert sorted(p.name for p in log_dir.parent.iterdir()) == ["logs"]

    # W&B: one offline run per job, in its own folder, its job's id, the sweep as its group
    for job, job_ids in zip(jobs, ids, strict=True):
        (run,) = of_type(wandb_records(job), "run")
        assert run["run_id"] == job_ids["wandb"] and run["run_group"] == sweep_name
        assert run["folder"].parent == job / "wandb"
    assert ids[0]["wandb"] != ids[1]["wandb"]


@pytest.mark.slow
def test_a_resumed_job_continues_its_wandb_and_mlflow_runs(sweep, monkeypatch, caplog, tmp_path):
    """Job 0 of the sweep, resumed from its last.ckpt for a second epoch in this process."""
    log_dir, overrides, _ = sweep
    job = job_dirs(log_dir)[0]
    recorded = json.loads((job / RUNS_FILE).read_text())
    monkeypatch.delenv("WANDB_MODE", raising=False)
    caplog.set_level(logging.INFO, logger="src.trackers")
    cfg = compose_config(
        "train", [*overrides, "seed=1", "ckpt_path=last", "trainer.max_epochs=2"], job
    )
    train(cfg)

    assert json.loads((job / RUNS_FILE).read_text()) == recorded
    import wandb

    # the job's W&B run is finished, and WANDB_MODE is as the user left it
    assert wandb.run is None and "WANDB_MODE" not in os.environ
    assert "CSVLogger takes no images: the image callbacks skip it" in caplog.messages

    client = mlflow_client(log_dir)
    run = client.get_run(recorded["mlflow"])
    assert run.info.status == "FINISHED"
    accuracy = client.get_metric_history(run.info.run_id, "val/acc")
    assert len(accuracy) == 2 and accuracy[0].step < accuracy[1].step
    # MLflow keeps the first params; this start's config is the artifact config.yaml
    assert run.data.params["ckpt_path"] == "None"
    assert run.data.params["trainer.max_epochs"] == "1"
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    config = yaml.safe_load(Path(config).read_text())
    assert config["ckpt_path"] == "last" and config["trainer"]["max_epochs"] == 2
    assert run.data.tags["best_checkpoint"].startswith(str(job / "checkpoints" / "epoch_"))
    # a resume whose recorded MLflow run the store does not hold: one line, before any work
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / RUNS_FILE).write_text(json.dumps({"mlflow": "0" * 32}))
    mlflow_only = [o for o in overrides if o != "logger=many"] + ["logger=mlflow"]
    cfg = compose_config("train", mlflow_only, tmp_path / "new")
    with pytest.raises(ConfigError, match="delete the 'mlflow' entry of tracker_runs.json"):
        tracker_loggers(cfg.logger, tmp_path / "new", str(stale / "checkpoints" / "last.ckpt"))

    # W&B: a second offline run of the same id; val/acc of both epochs across the two
    records = wandb_records(job)
    starts = of_type(records, "run")
    assert [r["run_id"] for r in starts] == [recorded["wandb"]] * 2
    history = [h["item"] for h in of_type(records, "history")]
    epochs = {int(item["epoch"]): item["val/acc"] for item in history if "val/acc" in item}
    assert sorted(epochs) == [0, 1] and all(0 <= acc <= 1 for acc in epochs.values())
    for tag in IMAGES:
        assert any(f"{tag}._type" in item for item in history), tag
    exits = of_type(records, "exit")
    assert len(exits) == 2 and all(e.get("exit_code", 0) == 0 for e in exits)
