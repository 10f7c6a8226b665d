"""Weights & Biases and MLflow next to TensorBoard: Lightning's loggers with what a research run
needs on top, one tracker run across a resume, and images for every logger that takes them.

- ``WandbLogger``: offline unless asked, without touching ``WANDB_MODE``; the best checkpoint's
  path in the run's summary. ``finished_tracker_runs`` ends each job's W&B run.
- ``MLFlowLogger``: the store and the experiment created under a file lock, so parallel jobs
  share them; the params of a resumed run kept; the full config as an artifact.
- ``tracker_loggers``: the ``logger`` group built, every tracker continuing the run that the
  resumed checkpoint's run folder records in ``tracker_runs.json``.
- ``log_image``: one image into TensorBoard, W&B and MLflow, each through its own API.

Neither library sends anything on its own unless the environment asks: W&B's error reports and
MLflow's usage telemetry are off by default (``WANDB_ERROR_REPORTING=true`` and
``MLFLOW_DISABLE_TELEMETRY=false`` turn them on). W&B and MLflow need the optional extra:
``pip install -e '.[trackers]'``.
"""

import importlib.util
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any
from weakref import WeakSet

import numpy as np
import torch
from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from src.utils import ConfigError, UserError, flatten
from src.utils.io import atomic_write

log = logging.getLogger(__name__)

# Set before either library is imported (MLflow reads its switch on import); a value the user
# set is kept.
for _name, _value in {"WANDB_ERROR_REPORTING": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
    os.environ.setdefault(_name, _value)

EXTRA = "pip install -e '.[trackers]'"
RUNS_FILE = "tracker_runs.json"
# the record's key and the constructor argument that continues a run, per tracker
TRACKERS = {"wandb": (LightningWandbLogger, "id"), "mlflow": (LightningMLFlowLogger, "run_id")}
IMAGE_LOGGERS = (TensorBoardLogger, LightningWandbLogger, LightningMLFlowLogger)


def require(module: str, logger: str) -> None:
    """The tracker's package, or one line saying which extra installs it."""
    if importlib.util.find_spec(module) is None:
        raise UserError(
            f"logger.{logger} needs the package {module}, which the optional extra 'trackers' "
            f"installs: {EXTRA} (the dev install, '.[dev]', includes it)"
        )


def sweep_name() -> str | None:
    """``${sweep_name:}``: the sweep folder's name in a multirun (its jobs' W&B group and MLflow
    tag), null in a single run."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir).name


def git_commit() -> str | None:
    """``${git_commit:}``: the commit of the checkout this code runs from, null outside one."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True
        )
    except OSError:  # no git on this machine
        return None
    return result.stdout.strip() if result.returncode == 0 else None


OmegaConf.register_new_resolver("sweep_name", sweep_name, replace=True)
OmegaConf.register_new_resolver("git_commit", git_commit, use_cache=True, replace=True)


class WandbLogger(LightningWandbLogger):
    """Lightning's W&B logger, offline unless ``offline=false``, its files in ``save_dir``.

    Lightning's own ``offline=True`` writes ``WANDB_MODE=dryrun`` into the process's
    environment: a ``WANDB_MODE`` the user set is lost, and every later job of a sweep in the
    process inherits it. Here the mode goes to ``wandb.init`` alone, and a ``WANDB_MODE`` the
    user set decides over ``offline``. The best checkpoint's path goes into the run's summary
    (``best_checkpoint``); the file itself only with ``log_model``, which needs online.
    """

    def __init__(
        self,
        offline: bool = True,
        log_model: bool | str = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        require("wandb", "wandb")
        mode = os.environ.get("WANDB_MODE") or ("offline" if offline else "online")
        if log_model and mode in ("offline", "dryrun"):
            raise ConfigError(
                f"logger.wandb.log_model={log_model} uploads checkpoints, which needs W&B online: "
                "set logger.wandb.offline=false (and WANDB_MODE=online if you set WANDB_MODE), "
                "or leave log_model=false: the best checkpoint's path is logged either way"
            )
        if "WANDB_MODE" not in os.environ:
            kwargs["mode"] = mode
        super().__init__(name=name or None, offline=False, log_model=log_model, **kwargs)

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        super().after_save_checkpoint(checkpoint_callback)
        if checkpoint_callback.monitor and checkpoint_callback.best_model_path:
            best = str(Path(checkpoint_callback.best_model_path).resolve())
            self.experiment.summary["best_checkpoint"] = best


def store_lock(tracking_uri: str) -> FileLock | nullcontext:
    """A lock beside a local MLflow store (SQLite file or ``file:`` folder). MLflow creates its
    tables and an experiment without one: two jobs starting together on a new store (Hydra's
    parallel launcher) would both migrate it, or both create the experiment and one fail."""
    for prefix in ("sqlite:///", "file://", "file:"):
        if tracking_uri.startswith(prefix):
            store = Path(tracking_uri.removeprefix(prefix))
            lock = store.parent / f".{store.name}.lock"
            lock.parent.mkdir(parents=True, exist_ok=True)
            return FileLock(lock)
    return nullcontext()


class MLFlowLogger(LightningMLFlowLogger):
    """Lightning's MLflow logger, safe for jobs that start together on one store, with a
    resumed run's params kept (MLflow refuses to change a param's value: ``ckpt_path`` or
    ``trainer.max_epochs`` often change on a resume) and the whole config as the artifact
    ``config.yaml`` (Lightning cuts each param's value at 250 characters). The best
    checkpoint's path is the tag ``best_checkpoint``; the file itself only with ``log_model``.
    """

    def __init__(
        self,
        tracking_uri: str,
        run_name: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        require("mlflow", "mlflow")
        tags = {k: str(v) for k, v in (tags or {}).items() if v not in (None, "")}
        with store_lock(tracking_uri):  # the client opens, and may create, the store
            super().__init__(
                tracking_uri=tracking_uri, run_name=run_name or None, tags=tags, **kwargs
            )

    @property
    def experiment(self) -> Any:
        if self._initialized or rank_zero_only.rank != 0:
            return super().experiment
        from mlflow.exceptions import MlflowException

        resumed = self._run_id
        with store_lock(self._tracking_uri):
            try:
                client = super().experiment
            except MlflowException as err:
                if resumed and err.error_code == "RESOURCE_DOES_NOT_EXIST":
                    raise ConfigError(
                        f"MLflow run {resumed}, recorded in the resumed run's {RUNS_FILE}, is not "
                        f"in logger.mlflow.tracking_uri={self._tracking_uri}: resume with the "
                        f"store it was logged to, or delete the 'mlflow' entry of {RUNS_FILE} to "
                        "start a new MLflow run"
                    ) from None
                raise
        if resumed:
            client.update_run(resumed, status="RUNNING")
        return client

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        config = OmegaConf.to_container(params) if isinstance(params, DictConfig) else params
        # keys as typed on the command line (model.optimizer.lr), not Lightning's model/optimizer
        flat = {key: str(value)[:250] for key, value in flatten(config).items()}
        logged = self.experiment.get_run(self.run_id).data.params
        changed = sorted(k for k, v in flat.items() if k in logged and logged[k] != v)
        if changed:
            log.info(
                "MLflow keeps a resumed run's first params: %s changed and keep their first "
                "values there (this start's are in its artifact config.yaml)",
                ", ".join(changed),
            )
        super().log_hyperparams({k: v for k, v in flat.items() if k not in logged})
        self.experiment.log_dict(self.run_id, config, "config.yaml")

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        super().after_save_checkpoint(checkpoint_callback)
        if checkpoint_callback.monitor and checkpoint_callback.best_model_path:
            best = str(Path(checkpoint_callback.best_model_path).resolve())
            self.experiment.set_tag(self.run_id, "best_checkpoint", best)


def tracker_of(logger: type | Logger) -> str | None:
    """``wandb``, ``mlflow`` or None, for a logger or its class."""
    cls = logger if isinstance(logger, type) else type(logger)
    return next((name for name, (base, _) in TRACKERS.items() if issubclass(cls, base)), None)


def recorded_runs(ckpt_path: str | None) -> dict[str, str]:
    """The tracker runs that the checkpoint's run folder (``<run>/checkpoints/x.ckpt``) records."""
    record = Path(ckpt_path).parent.parent / RUNS_FILE if ckpt_path else None
    return json.loads(record.read_text()) if record and record.is_file() else {}


def tracker_loggers(
    group: DictConfig | None, output_dir: Path, ckpt_path: str | None
) -> list[Logger]:
    """Every logger of the ``logger`` group. When resuming, each W&B and MLflow logger continues
    the run its checkpoint's run folder records, so a resumed or requeued run's curves stay one;
    the runs' ids go into this run folder's ``tracker_runs.json``."""
    resumed = recorded_runs(ckpt_path)
    loggers = []
    for entry in (group or {}).values():
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            continue
        tracker = tracker_of(get_class(entry._target_))
        if tracker in resumed:
            log.info("Continuing the %s run %s", tracker, resumed[tracker])
            loggers.append(instantiate(entry, **{TRACKERS[tracker][1]: resumed[tracker]}))
        else:
            loggers.append(instantiate(entry))
    if rank_zero_only.rank == 0:
        record_runs(loggers, output_dir / RUNS_FILE)
    return loggers


def record_runs(loggers: list[Logger], record: Path) -> None:
    """Starts the W&B and MLflow runs now, to write their ids before training: a run stopped at
    any point can be continued."""
    runs = {}
    for logger in loggers:
        tracker = tracker_of(logger)
        if tracker == "wandb":
            runs[tracker] = logger.experiment.id
        elif tracker == "mlflow":
            runs[tracker] = logger.run_id
    if runs:
        earlier = json.loads(record.read_text()) if record.is_file() else {}
        atomic_write(record, json.dumps(earlier | runs, indent=2))


@contextmanager
def finished_tracker_runs() -> Iterator[None]:
    """Ends this job's W&B run however the job ends: Lightning leaves it open, and the next job
    of a sweep in the same process (Hydra's basic launcher) would log into it."""
    try:
        yield
    except BaseException:
        finish_wandb(exit_code=1)
        raise
    finish_wandb(exit_code=0)


def finish_wandb(exit_code: int) -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


# loggers already named in the log as taking no images
_no_images: WeakSet[Logger] = WeakSet()


def image_loggers(trainer: Trainer) -> list[Logger]:
    """The trainer's loggers that take images; any other (CSV) is named once in the log."""
    takes = [lg for lg in trainer.loggers if isinstance(lg, IMAGE_LOGGERS)]
    for logger in trainer.loggers:
        if logger not in takes and logger not in _no_images and trainer.is_global_zero:
            _no_images.add(logger)
            log.info("%s takes no images: the image callbacks skip it", type(logger).__name__)
    return takes


def log_image(
    trainer: Trainer, tag: str, image: torch.Tensor | np.ndarray, dataformats: str = "CHW"
) -> None:
    """One image at the trainer's step into every logger that takes images, through its own
    API: TensorBoard's ``add_image``, W&B's ``log_image``, MLflow's ``log_image`` (an artifact
    under ``images/`` with its step)."""
    step = trainer.global_step
    for logger in image_loggers(trainer):
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, step, dataformats=dataformats)
            continue
        pixels = image.cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if dataformats == "CHW":
            pixels = pixels.transpose(1, 2, 0)
        if pixels.dtype != np.uint8:  # 0-1, as TensorBoard takes it
            pixels = (pixels * 255).clip(0, 255).astype(np.uint8)
        if isinstance(logger, LightningWandbLogger):
            logger.log_image(tag, [pixels], step=step)
        else:
            logger.experiment.log_image(logger.run_id, pixels, key=tag, step=step)
