"""Multiruns as users start them: the command line, Hydra's sweepers and launchers, tiny data."""

import re
import shlex

import pytest
import torch
import torchvision
import yaml
from omegaconf.errors import ValidationError

from tests.conftest import (
    CONF_DIR,
    ROOT,
    compose,
    imagefolder_overrides,
    job_dirs,
    micrograph_overrides,
    quick_overrides,
    run_cli,
    with_tiny_net,
)

SEARCHED = {
    "model.optimizer.lr",
    "data.batch_size",
    "model.net.dropout",
    "model.optimizer.weight_decay",
}


def without(overrides: list[str], key: str) -> list[str]:
    return [o for o in overrides if not o.startswith(f"{key}=")]


@pytest.mark.slow
def test_optuna_search_saves_the_best_parameters_and_continues_from_its_database(
    tiny_overrides, tmp_path
):
    import optuna

    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["hparams_search=optuna", f"hydra.sweeper.storage={db}", "hydra.sweeper.study_name=t",
            "data.batch_size=choice(4,8)", "debug=fdr", "test=false",
            *without(with_tiny_net(tiny_overrides), "data.batch_size")]  # fmt: skip
    result = run_cli(*args, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    out = result.stdout + result.stderr
    # a trial whose return value is not a float is logged as failed, not raised
    assert "Failed experiment" not in out
    assert out.count("best val/acc") == 2 and len(job_dirs(tmp_path / "logs")) == 2
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == SEARCHED
    assert best["best_params"]["data.batch_size"] in (4, 8)
    assert isinstance(best["best_value"], float) and 0.0 <= best["best_value"] <= 1.0
    assert f"Best parameters: {best['best_params']}" in out
    # the same command again: one more trial in the same study
    run_cli(*args, "hydra.sweeper.n_trials=1", cwd=tmp_path)
    trials = optuna.load_study(study_name="t", storage=db).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert all(isinstance(t.value, float) for t in trials)


@pytest.mark.slow
def test_every_experiment_runs_as_the_docs_print_it(tiny_root, tmp_path):
    """The every-experiment check of docs/scaling.md, its commands run as printed, offline, on
    tiny data: PATH is the tiny micrograph tree read as any image folder, FILE a torchvision
    AlexNet file made here (ImageNet's weights cannot be downloaded offline). Together the
    commands must cover every config in conf/experiment/."""
    section = (ROOT / "docs" / "scaling.md").read_text().split("## Every experiment at once")[1]
    lines = section.split("```bash\n")[1].split("```")[0].strip().splitlines()
    commands = [line.partition(" #")[0] for line in lines]  # without "# jobs: N"
    weights = tmp_path / "alexnet-torchvision.pth"
    torch.save(torchvision.models.alexnet().state_dict(), weights)
    folders = [o for o in imagefolder_overrides(tiny_root, tmp_path / "cache") if "root" not in o]
    ran = []
    for command in commands:
        words = shlex.split(command.replace("PATH", str(tiny_root)).replace("FILE", str(weights)))
        assert words[:3] == ["python", "-m", "src.train"], command
        data = folders if "data.root" in command else micrograph_overrides(tiny_root)
        result = run_cli(*words[3:], *data, *quick_overrides(tmp_path / "logs"), cwd=tmp_path)
        out = result.stdout + result.stderr
        names = re.findall(r"#\d+ : experiment=(\S+)", out)
        names = names or [w.split("=")[1] for w in words if w.startswith("experiment=")]
        assert out.count("best val/acc") == len(names), command
        ran += names
    assert sorted(ran) == sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.slow
def test_parallel_launcher_runs_two_jobs_at_once(tiny_overrides, tmp_path):
    # one job of a single process and one of two (ddp_spawn), in two joblib workers, each
    # with a data loader worker: processes started from inside a joblib worker
    result = run_cli(
        "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "trainer=cpu,ddp_sim",
        "debug=fdr", "test=false", *with_tiny_net(tiny_overrides), "data.num_workers=1",
        cwd=tmp_path,
    )  # fmt: skip
    assert "Joblib.Parallel(n_jobs=2" in result.stdout
    jobs = job_dirs(tmp_path / "logs")
    assert [j.name for j in jobs] == ["0", "1"]
    for job in jobs:
        assert (job / "class_indices.json").is_file()
        assert f"run directory    {job}" in result.stdout


def test_slurm_launcher_follows_the_trainer():
    cfg = compose("train", [
        "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30",
    ])  # fmt: skip
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert (launcher.partition, launcher.timeout_min) == ("gpu", 30)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.num_nodes == 2
    # SLURM needs a task count: trainer.devices=auto fails when the launcher is built
    auto = compose("train", ["hydra/launcher=slurm", "trainer=ddp"])
    with pytest.raises(ValidationError, match="'auto'"):
        _ = auto.hydra.launcher.tasks_per_node
