"""What a cluster does to a run, without a cluster: SLURM's requeue signal and its SIGTERM and
SIGKILL, and submitit's own interruption, each to a command line (a plain SIGTERM, in the
test's own process: tests/test_checkpoints.py). Each stopped run saves mid-epoch, exits
non-zero, and its continuation ends with bit for bit the uninterrupted run's weights and
metrics."""

import os
import signal
import stat
from pathlib import Path

import pytest
import torch
from lightning import Callback, Trainer

from src.utils.io import load_checkpoint
from tests.conftest import (
    ROOT,
    compose,
    job_dirs,
    run_cli,
    scalars,
)

STOP_AT_STEP = 10  # of 7 per epoch: 3 batches into the second epoch


class SignalAtStep(Callback):
    """Sends a signal, as a scheduler would, once training has finished step ``step``: to the
    whole process group (``kill -SIG -PGID``, loader workers included) or to this process only
    (as submitit interrupts a job)."""

    def __init__(self, step: int, name: str, group: bool = True) -> None:
        self.step, self.signum, self.group = step, getattr(signal, name), group

    def on_train_batch_end(self, trainer: Trainer, *_: object) -> None:
        if trainer.global_step == self.step:
            if self.group:
                os.killpg(os.getpgrp(), self.signum)
            else:
                os.kill(os.getpid(), self.signum)


def signal_at(name: str, group: bool = True) -> list[str]:
    target = "+callbacks.signal_at"
    return [
        f"{target}._target_=tests.test_preemption.SignalAtStep", f"{target}.step={STOP_AT_STEP}",
        f"{target}.name={name}", f"{target}.group={str(group).lower()}",
    ]  # fmt: skip


def assert_same_end(run_dir: Path, reference: Path) -> None:
    expected = load_checkpoint(reference / "checkpoints" / "last.ckpt")
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert resumed["epoch"] == expected["epoch"] == 1
    assert resumed["global_step"] == expected["global_step"] == 14
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], tensor), name
    curves, resumed_curves = scalars(reference), scalars(run_dir)
    for tag in ("train/loss", "train/acc", "val/acc", "val/loss", "val/acc_best"):
        assert resumed_curves[tag][-1] == curves[tag][-1], tag


def assert_saved_mid_epoch(run_dir: Path) -> None:
    saved = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    progress = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"]
    assert (saved["epoch"], saved["global_step"], progress) == (1, STOP_AT_STEP, 3)


@pytest.fixture
def scontrol(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A stand-in for SLURM's ``scontrol``, first on PATH: it records its arguments, and for
    ``requeue`` does what SLURM then does to the job: SIGTERM to its processes, SIGKILL later."""
    calls, bin_dir = tmp_path / "scontrol_calls", tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(
        "#!/bin/bash\n"
        f'echo "$@" >> {calls}\n'
        'pgid=$(ps -o pgid= $PPID | tr -d " ")\n'
        '(sleep 0.5; kill -TERM -- -"$pgid"; sleep 20; kill -KILL -- -"$pgid") '
        ">/dev/null 2>&1 &\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    slurm = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "alexnet", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
    }  # fmt: skip
    return calls, slurm


@pytest.mark.slow
def test_slurm_requeue_signal_saves_requeues_and_the_rerun_continues(
    resume_args, uninterrupted, scontrol, tmp_path
):
    """pil backend with two loader workers, all signalled with the main process."""
    calls, slurm = scontrol
    run = [*resume_args, "data.backend=pil", "data.num_workers=2", *signal_at("SIGUSR1")]
    stopped = run_cli(*run, cwd=tmp_path, env=slurm, ok=False)
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    run_dir = tmp_path / "logs" / "train" / "runs" / "slurm-4242"
    assert_saved_mid_epoch(run_dir)

    # SLURM starts the same command again, counting the restart: no ckpt_path needed
    rerun = run_cli(*run, cwd=tmp_path, env=slurm | {"SLURM_RESTART_COUNT": "1"})
    log = (run_dir / "train.log").read_text()
    assert f"step {STOP_AT_STEP}, batch 3 of the epoch" in log
    assert "This job was requeued" in rerun.stderr + log
    assert_same_end(run_dir, uninterrupted)


@pytest.mark.slow
def test_submitit_interruption_requeues_the_job_into_its_own_folder(
    resume_args, uninterrupted, tmp_path
):
    """hydra/launcher=submitit_local; the job gets submitit's own signal (SIGUSR2), as
    ``LocalJob._interrupt`` sends it, and submitit restarts it."""
    sweep = ["-m", *resume_args, "data.num_workers=0", "hydra/launcher=submitit_local",
             "hydra.launcher.timeout_min=10", *signal_at("SIGUSR2", group=False)]  # fmt: skip
    run_cli(*sweep, cwd=tmp_path)
    (job,) = job_dirs(tmp_path / "logs")
    log = (job / "train.log").read_text()
    assert f"step {STOP_AT_STEP}, batch 3 of the epoch" in log
    assert_same_end(job, uninterrupted)
    # submitit's own log of the job holds the attempt that finished
    logs = [p.read_text() for p in (job.parent / ".submitit").glob("*/*_0_log.out")]
    assert any("best val/acc" in log for log in logs)


def test_the_sbatch_example_composes_into_a_folder_named_after_the_job(monkeypatch):
    """docs/examples/train.sbatch as SLURM would run it: its srun command composes, asks for
    the requeue signal, and every task and requeue of the job gets the same run folder."""
    script = (ROOT / "docs" / "examples" / "train.sbatch").read_text()
    assert "#SBATCH --signal=SIGUSR1@90" in script and "#SBATCH --requeue" in script
    data = script[script.index('DATA="') + 6 :].split('"')[0]
    command = script[script.index("srun python -m src.train") :].split("\n")[0].split()
    overrides = " ".join(command[4:]).replace("$DATA", data).replace("$USER", "someone").split()
    for name, value in {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0"}.items():
        monkeypatch.setenv(name, value)
    cfg = compose("train", overrides)
    assert cfg.data._target_ == "src.data.imagenet.ImageNetDataModule"
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 4
    assert cfg.hydra.run.dir.endswith("logs/train/runs/slurm-77.0")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "70")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert compose("train", overrides).hydra.run.dir.endswith("runs/slurm-70_3.0")
