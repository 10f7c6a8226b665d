"""Each private or undocumented part of Lightning the project relies on, called against the
installed Lightning: an upgrade that moves one fails here, by name."""

import logging
from pathlib import Path

import torch
from lightning import Callback, Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard.summary import hparams

from src.utils import lightning_compat as compat

STEPS = 6


class Probe(Callback):
    """What the helpers read in the middle of the first epoch, and a checkpoint written there."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, {}

    def on_train_batch_end(self, trainer: Trainer, module, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch == 1 and batch_idx == 2:
            self.seen = {
                "batches": compat.batches_in_epoch(trainer),
                "epochs": compat.epochs_done(trainer),
                "trainer": compat.trainer_of(module),
                "sigterm": compat.lightning_sigterm_handler(),
            }
            trainer.save_checkpoint(self.path)


def fit(tmp_path: Path, **kwargs) -> tuple[Trainer, BoringModel]:
    model = BoringModel()
    trainer = Trainer(
        accelerator="cpu", max_epochs=2, limit_train_batches=STEPS, limit_val_batches=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, **kwargs,
    )  # fmt: skip
    trainer.fit(model)
    return trainer, model


def test_the_fit_loops_progress_and_the_checkpoints_loop_state(tmp_path):
    probe = Probe(tmp_path / "mid.ckpt")
    trainer, model = fit(tmp_path, callbacks=[probe])
    # at the end of the third batch, before Lightning counts it as completed
    assert probe.seen["batches"] == 2 and probe.seen["epochs"] == 1
    assert probe.seen["trainer"] is trainer
    assert compat.batches_done(torch.load(probe.path, weights_only=False)) == 2
    trainer.save_checkpoint(tmp_path / "end.ckpt")
    assert compat.batches_done(torch.load(tmp_path / "end.ckpt", weights_only=False)) == 0
    assert compat.batches_done({}) == 0  # a checkpoint from outside Lightning
    assert compat.trainer_of(BoringModel()) is None


def test_lightnings_sigterm_handler_is_there_while_fitting_only(tmp_path):
    probe = Probe(tmp_path / "mid.ckpt")
    fit(tmp_path, callbacks=[probe])
    assert callable(probe.seen["sigterm"])
    assert compat.lightning_sigterm_handler() is None


def test_the_subprocess_launcher_is_recognised():
    relaunching = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    assert compat.relaunches_command_line(relaunching)
    for strategy in ("auto", "ddp_spawn"):
        trainer = Trainer(accelerator="cpu", devices=2 if strategy != "auto" else 1,
                          strategy=strategy, logger=False)  # fmt: skip
        assert not compat.relaunches_command_line(trainer)


def test_the_unrepeated_sampler_gives_every_image_once():
    shares = [list(compat.unrepeated_sampler(list(range(10)), 3, rank)) for rank in range(3)]
    assert sorted(i for share in shares for i in share) == list(range(10))
    assert [len(share) for share in shares] == [4, 3, 3]


def test_lightnings_records_go_to_the_root_handlers_alone():
    package = logging.getLogger("lightning")
    console = logging.StreamHandler()
    package.addHandler(console)
    root = logging.getLogger()
    added = logging.NullHandler()
    root.addHandler(added)
    try:
        compat.one_console_for_lightning()
        assert console not in package.handlers
    finally:
        root.removeHandler(added)
        package.removeHandler(console)


def test_a_ready_made_summary_reaches_the_event_file(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="", version="")
    _, session_start, _ = hparams({"lr": 0.01}, {})
    compat.write_tensorboard_summary(logger, session_start)
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert "_hparams_/session_start_info" in events.summary_metadata


def test_every_process_gathers_any_value(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        assert compat.every_process({"rng": [1, 2]}, 1) == [{"rng": [1, 2]}]
    finally:
        dist.destroy_process_group()
