"""Checkpoints as files from strangers and as the thing a killed run resumes from."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from src.checkpoints import FORMAT_VERSION, SafeCheckpointIO, read_checkpoint
from src.eval import evaluate
from src.predict import predict
from src.train import train
from src.utils import UserError
from src.utils.io import UnsafeCheckpointError, atomic_write, load_checkpoint
from tests.conftest import ROOT, TRAINED, compose_config, run_cli
from tests.test_preemption import assert_same_end, assert_saved_mid_epoch, signal_at


class RunsCode:
    """Unpickling this calls ``os.system``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint-shaped file whose pickle would create ``marker`` when loaded."""
    marker = tmp_path / "code_ran"
    path = tmp_path / "shared.ckpt"
    payload = {"state_dict": {}, "hyper_parameters": {}, "extra": RunsCode(marker)}
    torch.save(payload, path)
    # the planted file really would run code without weights_only
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_eval_predict_and_resume_refuse_a_checkpoint_that_would_run_code(
    planted, train_config, tmp_path
):
    path, marker = planted
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    predict_cfg = compose_config("predict", [f"ckpt_path={path}", f"image={image}"], tmp_path)
    with pytest.raises(UnsafeCheckpointError, match=rf"Refusing to load '{path}'.*posix.system"):
        predict(predict_cfg)
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        evaluate(compose_config("eval", [f"ckpt_path={path}"], tmp_path / "eval"))
    with pytest.raises(UnsafeCheckpointError):
        train(train_config(f"ckpt_path={path}"))
    # the trainer's own loader, used by fit/test(ckpt_path=...), is the safe one
    trainer = instantiate(train_config().trainer)
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)
    with pytest.raises(UnsafeCheckpointError):
        trainer.strategy.checkpoint_io.load_checkpoint(path)
    assert not marker.exists()


WRITER = """
import sys, torch
from src.checkpoints import SafeCheckpointIO
big = {"state_dict": {"w": torch.ones(int(sys.argv[2]))}}
SafeCheckpointIO().save_checkpoint(big, sys.argv[1])
"""


@pytest.mark.slow
def test_a_kill_during_a_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(50_000_000)],  # 200 MB
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".last.ckpt.tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert list(tmp_path.glob(".last.ckpt.tmp-*")), "the writer never started writing"
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.zeros(3))


def test_atomic_write_replaces_whole_files(tmp_path):
    path = atomic_write(tmp_path / "sub" / "a.json", '{"a": 1}')
    atomic_write(path, b"2")
    assert path.read_text() == "2" and [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_a_run_stopped_mid_epoch_continues_to_exactly_the_uninterrupted_result(
    resume_args, uninterrupted, tmp_path
):
    """SIGTERM three batches into the second epoch (the cache backend, a loader worker):
    last.ckpt of that point, exit 143, and ``ckpt_path=last`` ends with the uninterrupted run's
    weights and metrics, bit for bit."""
    args = [*resume_args, "data.backend=cache", "data.num_workers=1"]
    with pytest.raises(SystemExit) as stop:
        train(compose_config("train", [*args, *signal_at("SIGTERM", group=False)], tmp_path))
    assert stop.value.code == 143
    assert_saved_mid_epoch(tmp_path)
    # the same folder again without ckpt_path: refused, nothing overwritten
    with pytest.raises(UserError, match="ckpt_path=last"):
        train(compose_config("train", args, tmp_path))
    assert_saved_mid_epoch(tmp_path)
    train(compose_config("train", [*args, "ckpt_path=last"], tmp_path))
    assert_same_end(tmp_path, uninterrupted)


@pytest.mark.slow
def test_a_killed_run_resumes_to_exactly_the_uninterrupted_result(
    resume_args, uninterrupted, tmp_path
):
    """SIGKILL in the second epoch, resume from the first epoch's last.ckpt: the uninterrupted
    run's end, at the default number of loader workers (fresh ones each epoch)."""
    args = [o for o in resume_args if not o.startswith("paths.log_dir")]
    broken = tmp_path / "broken"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "src.train", *args, f"hydra.run.dir={broken}"]
    victim = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL)
    last = broken / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert load_checkpoint(last)["epoch"] == 0

    run_cli(*args, f"ckpt_path={last}", f"hydra.run.dir={broken}", cwd=tmp_path)
    assert_same_end(broken, uninterrupted)


def as_written_before_versions(checkpoint: dict) -> dict:
    """What the code before format versions wrote: no ``format_version`` or ``model_target``,
    the network as ``arch`` and its arguments beside the classifier's, ``lr_mult`` null, the
    micrograph module under ``src.data.datamodule``, and (older still) none of the data keys
    added over time (the training augmentation then was the default ``augment=true``, a
    switch)."""
    old = {k: v for k, v in checkpoint.items() if k not in ("format_version", "model_target")}
    model = dict(checkpoint["hyper_parameters"])
    net = dict(model.pop("net"))  # the network's arguments sat beside the classifier's
    old["hyper_parameters"] = model | {"arch": net.pop("_target_"), **net, "lr_mult": None}
    old["datamodule_target"] = "src.data.datamodule.MicrographDataModule"
    data = checkpoint["datamodule_hyper_parameters"]
    old["datamodule_hyper_parameters"] = {
        k: v for k, v in data.items() if k not in ("split_seed", "augment", "augment_val")
    }
    return old


def test_a_checkpoint_of_the_previous_format_is_upgraded_to_evaluate_and_resume(
    trained, train_config, tmp_path
):
    last = trained("cnn4_mean_image")
    old = tmp_path / "old.ckpt"
    torch.save(as_written_before_versions(torch.load(last, weights_only=True)), old)

    upgraded = read_checkpoint(old)
    assert upgraded["format_version"] == FORMAT_VERSION
    assert upgraded["hyper_parameters"]["lr_mult"] == {}
    assert upgraded["datamodule_target"] == "src.data.micrographs.MicrographDataModule"
    assert upgraded["datamodule_hyper_parameters"]["split_seed"] == 0
    args = ["trainer.accelerator=cpu", "ten_crop=true"]
    new_metrics = evaluate(compose_config("eval", [f"ckpt_path={last}", *args], tmp_path / "a"))
    old_metrics = evaluate(compose_config("eval", [f"ckpt_path={old}", *args], tmp_path / "b"))
    assert old_metrics == new_metrics
    resumed = train_config(*TRAINED["cnn4_mean_image"], "test=false", f"ckpt_path={old}",
                           "trainer.max_epochs=3")  # fmt: skip
    train(resumed)
    written = read_checkpoint(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert written["epoch"] == 2 and written["format_version"] == FORMAT_VERSION
    with pytest.raises(UserError, match="format version 99"):
        torch.save({**upgraded, "format_version": 99}, old)
        read_checkpoint(old)
