"""DDP without a GPU: trainer=ddp_sim trains in two CPU processes (ddp_spawn over gloo)."""

import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from src.checkpoints import load_classifier
from src.train import train
from src.utils import ConfigError
from src.utils.io import load_checkpoint
from tests.conftest import (
    compose_config,
    imagefolder_overrides,
    job_dirs,
    quick_overrides,
    run_cli,
    scalars,
    with_tiny_net,
)


@pytest.fixture(scope="module")
def odd_overrides(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """An image tree with 15 val and 15 test images, which two processes cannot share evenly."""
    tmp = tmp_path_factory.mktemp("odd")
    root = tmp / "images"
    shutil.copytree(tiny_root, root)
    for split in ("val", "test"):
        image = next((root / split / "6.5").iterdir())
        shutil.copy(image, image.with_name(f"copy{image.suffix}"))
    quick = [
        o for o in quick_overrides(tmp / "logs") if o.split(".")[0] not in ("trainer", "paths")
    ]
    return with_tiny_net(imagefolder_overrides(root, tmp / "cache") + quick)


@pytest.fixture(scope="module")
def ddp_run(odd_overrides: list[str], tmp_path_factory: pytest.TempPathFactory):
    """Two epochs with trainer=ddp_sim as one job of a multirun (the trouble spot of Hydra with
    Lightning), started from the command line; both epochs' checkpoints kept."""
    tmp = tmp_path_factory.mktemp("ddp")
    result = run_cli(
        "-m", "trainer=ddp_sim", "trainer.max_epochs=2", "test=false", *odd_overrides,
        "+callbacks.model_checkpoint.save_top_k=-1", f"paths.log_dir={tmp}/logs", cwd=tmp,
    )  # fmt: skip
    (run,) = job_dirs(tmp / "logs")
    return run, result.stdout


@pytest.mark.slow
def test_ddp_sim_writes_one_run_once(ddp_run):
    run, stdout = ddp_run
    assert stdout.count("best val/acc") == 1
    assert (run / "class_indices.json").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run / "checkpoints").glob("epoch_*.ckpt"))) == 2
    assert len(list(run.rglob("hparams.yaml"))) == 1
    curves = scalars(run)
    assert len(curves["train/acc"]) == 2 and len(curves["val/acc"]) == 2


@pytest.mark.slow
def test_ddp_sim_val_acc_equals_one_process(ddp_run, odd_overrides, tmp_path):
    """Every val image counted once over both processes: the numbers of one process. (The test
    loader is built the same way.)"""
    run, _ = ddp_run
    curves = scalars(run)
    datamodule = instantiate(compose_config("train", odd_overrides, tmp_path).data)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    model, checkpoint = load_classifier(run / "checkpoints" / "last.ckpt")
    assert checkpoint["epoch"] == 1
    (val,) = trainer.validate(model, datamodule=datamodule, verbose=False)
    assert val["val/acc"] == pytest.approx(curves["val/acc"][-1], abs=1e-6)
    assert val["val/loss"] == pytest.approx(curves["val/loss"][-1], rel=1e-4)


@pytest.mark.slow
def test_each_process_draws_its_own_and_a_resume_continues_each(ddp_run, odd_overrides, tmp_path):
    """Each process has its own generators (process 0 the run's seed), both saved; the run
    resumed from its first epoch's checkpoint ends with its own weights, bit for bit."""
    run, _ = ddp_run
    expected = load_checkpoint(run / "checkpoints" / "last.ckpt")
    zero, one = expected["random_states_of_ranks"]
    assert not torch.equal(zero["torch"], one["torch"])
    assert torch.equal(expected["random_states"]["torch"], zero["torch"])
    ckpt = run / "checkpoints" / "epoch_000.ckpt"
    run_cli("-m", "trainer=ddp_sim", "test=false", *odd_overrides, "trainer.max_epochs=2",
            f"ckpt_path={ckpt}", f"paths.log_dir={tmp_path}/then", cwd=tmp_path)  # fmt: skip
    (resumed,) = job_dirs(tmp_path / "then")
    weights = load_checkpoint(resumed / "checkpoints" / "last.ckpt")["state_dict"]
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(weights[name], tensor), name


class PoisonOneProcess(L.Callback):
    """Process 1's weights turn NaN before the first epoch's last step: its loss alone is not
    finite at the epoch's check (process 0's would be a step later, from the gradients)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        last = trainer.current_epoch == 0 and batch_idx == trainer.num_training_batches - 1
        if trainer.global_rank == 1 and last:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


@pytest.mark.slow
def test_a_diverged_process_stops_every_process(odd_overrides, tmp_path):
    """The loss's finiteness is read at the checks, reduced over the processes: all stop there
    with the one message and no checkpoint (before: the diverged process raised alone, and under
    NCCL the others waited in the all-reduce until its timeout; on the CPU ddp_spawn ends them)."""
    result = run_cli(
        "trainer=ddp_sim", "trainer.max_epochs=2", "test=false", *odd_overrides,
        "+callbacks.poison._target_=tests.test_ddp.PoisonOneProcess", cwd=tmp_path, ok=False,
        timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Training diverged: the loss is" in output, output[-3000:]
    assert not list(tmp_path.rglob("*.ckpt"))


def test_ddp_inside_a_multirun_is_refused(train_config):
    """ddp re-runs the command line for its other processes, which would repeat the sweep."""
    cfg = train_config("hydra.mode=MULTIRUN", "trainer=ddp", "trainer.devices=2", "debug=fdr")
    with pytest.raises(ConfigError, match="cannot run inside a multirun.*ddp_spawn"):
        train(cfg)


@pytest.mark.slow
def test_ddp_command_line_relaunch_shares_one_run(tiny_overrides, tmp_path):
    """Outside a multirun, Lightning's ddp restarts the command for rank 1 in the same folder."""
    result = run_cli(
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.sync_batchnorm=false", "debug=fdr", "test=false", *with_tiny_net(tiny_overrides),
        cwd=tmp_path,
    )  # fmt: skip
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert result.stdout.count("best val/acc") == 1
    assert (run / "class_indices.json").is_file()
