"""Train a model, then test its best checkpoint: ``python -m src.train [overrides]``.

torch and Lightning are imported by ``train`` and ``fit_and_test`` when the task runs, not at the
top: the command line (``--help``, ``--cfg job``, a mistyped override) answers before they load.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src.utils import ConfigError, exit_on_user_error, instantiate_all
from src.utils.io import atomic_write
from src.utils.overrides import refuse_renamed

if TYPE_CHECKING:
    import lightning as L

    from src.cluster import StopSignals
    from src.models.classifier import DivergedError, ImageClassifier

log = logging.getLogger(__name__)


def print_summary(metrics: dict[str, float], trainer: L.Trainer, output_dir: Path) -> None:
    if not trainer.is_global_zero:
        return
    ckpt = trainer.checkpoint_callback
    labels = {
        "val/acc_best": "best val/acc",
        "test/acc": "test/acc",
        "test/acc_tencrop": "test/acc 10 crops",
    }
    lines = [f"{label:<16} {metrics[key]:.4f}" for key, label in labels.items() if key in metrics]
    if ckpt and ckpt.best_model_path:
        lines.append(f"best checkpoint  {ckpt.best_model_path}")
    lines += [
        f"run directory    {output_dir}",
        f"class indices    {output_dir / 'class_indices.json'}",
        f"curves           tensorboard --logdir {output_dir}",
    ]
    log.info("summary\n%s", "\n".join(lines))


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_launch(trainer: L.Trainer) -> None:
    """Two traps of multiruns whose jobs start processes: Lightning's ddp starts its other
    processes by re-running the command line, so each would repeat the whole sweep; and in a
    joblib worker, new processes inherit a start method they cannot load."""
    from src.utils.lightning_compat import relaunches_command_line

    if relaunches_command_line(trainer) and in_multirun():
        raise ConfigError(
            "trainer.strategy=ddp cannot run inside a multirun (-m or hparams_search): it starts "
            "its processes by re-running the command line, which would repeat the whole sweep. "
            "Use trainer.strategy=ddp_spawn (trainer=ddp_sim on the CPU), or "
            "hydra/launcher=slurm, where SLURM starts the processes."
        )
    if multiprocessing.get_start_method(allow_none=True) == "loky":
        # A joblib worker (hydra/launcher=parallel): data loader workers and ddp_spawn's
        # processes would start by joblib's own method and fail; back to Python's default.
        multiprocessing.set_start_method(None, force=True)


def config_summary(cfg: DictConfig, model: ImageClassifier, trainer: L.Trainer, start: str) -> str:
    """What the run is, in a few lines of its log: the chosen configs, what was typed, where it
    writes, what it resumed from. The whole composed config is in the run's .hydra/config.yaml."""
    lines = []
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        choices = hydra_cfg.runtime.choices
        picked = [f"{g}={choices[g]}" for g in ("model", "data", "trainer") if g in choices]
        lines += [" ".join(picked), f"overrides: {' '.join(hydra_cfg.overrides.task) or '-'}"]
    params = sum(p.numel() for p in model.parameters())
    lines += [
        f"{len(model.class_names)} classes, {params:,} parameters, {trainer.max_epochs} epochs "
        f"on {trainer.accelerator.__class__.__name__.removesuffix('Accelerator').lower()} "
        f"x {trainer.num_devices}",
        f"output: {cfg.paths.output_dir}",
        start,
    ]
    return "run\n" + "\n".join(lines)


def record_divergence(
    err: DivergedError, trainer: L.Trainer, output_dir: Path, optimized_metric: str | None
) -> dict[str, float]:
    """A diverged job of a multirun: ``diverged.json`` in its folder, NaN for the sweeper."""
    log.error("%s", err)
    if trainer.is_global_zero:
        record: dict[str, Any] = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "message": str(err),
        }
        atomic_write(output_dir / "diverged.json", json.dumps(record, indent=2))
    return {optimized_metric: math.nan} if optimized_metric else {}


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test as the config says; returns every logged metric as a float. A stop signal
    (``src.cluster``) ends it after a checkpoint of the step in progress, with exit status
    128 + the signal's number."""
    from lightning.pytorch.utilities import rank_zero_only
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from src.cluster import StopSignals
    from src.trackers import finished_tracker_runs
    from src.utils.lightning_compat import one_console_for_lightning

    one_console_for_lightning()
    signals = StopSignals(is_global_zero=rank_zero_only.rank == 0).install()
    try:
        with finished_tracker_runs():
            return fit_and_test(cfg, signals)
    except SIGTERMException:
        signals.exit()
        raise
    finally:
        signals.uninstall()


def fit_and_test(cfg: DictConfig, signals: StopSignals) -> dict[str, float]:
    import lightning as L

    from src.checkpoints import check_resume, restore_datamodule
    from src.cluster import checkpoint_to_resume
    from src.data.folders import write_class_indices
    from src.models.classifier import DivergedError
    from src.models.nets import check_input_size
    from src.trackers import tracker_loggers
    from src.utils.lightning_compat import batches_done

    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    if cfg.model.get("compile"):
        # each job of a multirun compiles its own graphs: in one process, those of the jobs
        # before would count towards Dynamo's recompile limit and switch compiling off
        import torch

        torch.compiler.reset()
    output_dir = Path(cfg.paths.output_dir)

    datamodule: L.LightningDataModule = instantiate(cfg.data)
    if cfg.get("train"):
        datamodule.operations()  # data.augment built now: a mistake stops the run before work
    classes = datamodule.classes
    model: ImageClassifier = instantiate(cfg.model, class_names=classes)
    check_input_size(model.net, model.hparams.net, datamodule.hparams.crop_size)
    ckpt_path = checkpoint_to_resume(cfg.get("ckpt_path"), output_dir)
    start = "started fresh"
    if ckpt_path:
        checkpoint = check_resume(ckpt_path, model, datamodule)
        restore_datamodule(datamodule, checkpoint)
        start = (
            f"resumed from {ckpt_path}: epoch {checkpoint['epoch']} (counting from 0), "
            f"step {checkpoint['global_step']}"
        )
        if done := batches_done(checkpoint):
            start += f", batch {done} of the epoch (mid-epoch: the loader skips the batches done)"
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_all(cfg.get("callbacks")),
        logger=tracker_loggers(cfg.get("logger"), output_dir, ckpt_path),
    )
    check_launch(trainer)
    signals.is_global_zero = trainer.is_global_zero
    if trainer.is_global_zero:
        log.info("%s", config_summary(cfg, model, trainer, start))
        write_class_indices(classes, output_dir / "class_indices.json")
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if not ckpt_path:
        model.load_pretrained()

    if cfg.get("train"):
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except DivergedError as err:
            if not in_multirun():
                raise
            # The sweep goes on, and its report shows this job as diverged.
            return record_divergence(err, trainer, output_dir, cfg.get("optimized_metric"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics |= {k: float(v) for k, v in trainer.callback_metrics.items()}
    print_summary(metrics, trainer, output_dir)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise ConfigError(f"optimized_metric={name!r} was not logged; logged: {sorted(metrics)}")
    return metrics[name]


if __name__ == "__main__":
    refuse_renamed()
    main()
