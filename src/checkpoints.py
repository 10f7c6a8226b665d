"""The checkpoint contract, in one place: what a checkpoint carries, what may change when it is
resumed or evaluated, how it is read safely, and how an older one is brought up to date.

A checkpoint of ``src.train`` carries, besides Lightning's own keys (``state_dict``, optimizer
and loop states, ``epoch``, ``global_step``, the ``callbacks``' states):

- ``hyper_parameters``: the LightningModule's arguments, class names included, and
  ``model_target``, its class: the model is rebuilt from these alone;
- ``datamodule_hyper_parameters`` and ``datamodule_target``: every data setting and the data
  module's class, so evaluation needs no config;
- the data module's ``state_dict`` under its class name: the seed of its training order, a flat
  folder's split, and the training set's pixel statistics where a setting uses them;
- ``random_states`` (and under DDP ``random_states_of_ranks``, every process's) and
  ``lr_scheduler``: what a resumed run needs to go on as one that never stopped;
- ``format_version``: ``upgrade`` brings any older checkpoint to ``FORMAT_VERSION`` as it is read.
"""

import errno
import inspect
import io
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, get_object
from lightning import LightningDataModule, LightningModule
from lightning.pytorch.plugins.io import TorchCheckpointIO

from src.data.batch_transform import BatchTransform
from src.models import cnn4
from src.utils import ConfigError, UserError
from src.utils.io import atomic_write, load_checkpoint
from src.utils.lightning_compat import every_process, trainer_of
from src.utils.randomness import random_states

log = logging.getLogger(__name__)

# 1: before versions were recorded (freeze and lr_mult could be null or absent, data keys added
# since were absent, MicrographDataModule lived in src.data.datamodule); 2: before
# bias_lr_mult, and CNN4 was the net of cnn4.LEGACY; 3: the training augmentation was three
# switches (augment, train_crop, pca_noise); 4: the network's class was ``arch`` and its
# arguments sat beside the classifier's; 5: this layout. A key added with a default needs no new
# version: a checkpoint without it gets the default (``with_defaults``), which must reproduce
# what the code did before the key existed.
FORMAT_VERSION = 5

# How a network is trained or run, not what it is: a resumed run may change them (a checkpoint
# trained on a GPU, with compile and channels-last, resumes on a CPU without them). pretrained is
# read only when a run starts from scratch: a resumed run takes the checkpoint's weights. Not
# freeze, lr_mult and bias_lr_mult: they decide the optimizer's parameter groups, whose momentum
# and (plateau-cut) rates the checkpoint restores group by group.
MODEL_KEYS_RESUME_MAY_CHANGE = (
    "optimizer", "scheduler", "max_lr_drops", "compile", "channels_last", "pretrained",
)  # fmt: skip
# What evaluating or resuming may change about a checkpoint's data is the data module's to say:
# its class's ``may_change`` (src/data/datamodule.py).

# Defaults of the keys added before versions were recorded: what those runs did without them.
_V1_MODEL_DEFAULTS = {
    "scheduler_monitor": "val/loss", "max_lr_drops": None, "compile": False,
    "channels_last": False, "pretrained": None,
}  # fmt: skip
_V1_DATA_DEFAULTS = {
    "pin_memory": False, "persistent_workers": True, "augment": True, "train_crop": "random",
    "augment_val": False, "ten_crop": False, "input_scale": "standardised", "pca_noise": 0.0,
    "backend": "pil", "cache_dir": "data/cache", "skip_bad_images": False, "val_fraction": 0.1,
    "test_fraction": 0.1, "split_seed": 0,
}  # fmt: skip
# Data modules that moved: a checkpoint names its class by where it was. Lightning files the
# state under the class's name, which did not change, so the state needs no move.
_MOVED = {
    "src.data.datamodule.MicrographDataModule": "src.data.micrographs.MicrographDataModule",
    "src.data.datamodule.ImageFolderDataModule": "src.data.folders.ImageFolderDataModule",
}
MODEL_TARGET = "src.models.classifier.ImageClassifier"
# how Hydra builds a node, not what it builds
HYDRA_FLAGS = ("_convert_", "_recursive_", "_partial_")
# The classifier's own keys in format 4; every other key was the network's (``arch``'s).
_V4_CLASSIFIER_KEYS = (
    "class_names", "scheduler_monitor", "max_lr_drops", "compile", "channels_last",
    "pretrained", "freeze", "lr_mult", "bias_lr_mult",
)  # fmt: skip


def upgrade(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint`` brought to ``FORMAT_VERSION`` in place: the one place that knows older
    layouts, so nothing else needs defaults for keys an old file lacks."""
    version = checkpoint.get("format_version", 1)
    if version > FORMAT_VERSION:
        raise UserError(
            f"The checkpoint has format version {version}; this code reads up to "
            f"{FORMAT_VERSION}. Update the code to the version that wrote it."
        )
    if version == 1:
        model = checkpoint["hyper_parameters"]
        model |= {k: v for k, v in _V1_MODEL_DEFAULTS.items() if k not in model}
        model["freeze"] = list(model.get("freeze") or [])
        model["lr_mult"] = dict(model.get("lr_mult") or {})
        checkpoint.setdefault("model_target", MODEL_TARGET)
        data = checkpoint.setdefault("datamodule_hyper_parameters", {})
        checkpoint["datamodule_hyper_parameters"] = _V1_DATA_DEFAULTS | data
    if version < 3:
        model = checkpoint["hyper_parameters"]
        model.setdefault("bias_lr_mult", 1.0)
        if model.get("arch") == f"{cnn4.__name__}.CNN4":
            model |= {k: v for k, v in cnn4.LEGACY.items() if k not in model}
    if version < 4:
        data = checkpoint.setdefault("datamodule_hyper_parameters", {})
        data["augment"] = operations_of_switches(data)
    if version < 5:
        model = checkpoint["hyper_parameters"]
        target = model.pop("arch", "src.models.alexnet.AlexNet")
        arguments = {k: model.pop(k) for k in list(model) if k not in _V4_CLASSIFIER_KEYS}
        model["net"] = {"_target_": target, **arguments}
    target = checkpoint.get("datamodule_target")
    checkpoint["datamodule_target"] = _MOVED.get(target, target)
    checkpoint["format_version"] = FORMAT_VERSION
    return checkpoint


def operations_of_switches(data: dict[str, Any]) -> dict[str, Any]:
    """``data.augment`` of a format-3 checkpoint's three switches (removed from ``data``): the
    crop (random or random-resized) and the flip where ``augment`` was on, PCA colour noise
    where ``pca_noise`` was above 0, in the order they drew their random numbers."""
    ops: dict[str, Any] = {}
    crop = (
        "RandomResizedCrop"
        if data.pop("train_crop", "random") == "random_resized"
        else "RandomCrop"
    )
    if data.pop("augment", True):
        ops["crop"] = {"_target_": f"src.data.augment.{crop}"}
        ops["flip"] = {"_target_": "src.data.augment.HorizontalFlip"}
    noise = data.pop("pca_noise", 0.0)
    if noise:
        ops["pca_noise"] = {"_target_": "src.data.augment.PCANoise", "std": noise}
    return ops


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The training checkpoint at ``path``, read safely (``weights_only``: it cannot run code)
    and brought up to date by ``upgrade``."""
    checkpoint = load_checkpoint(path, map_location)
    if not isinstance(checkpoint, dict) or "hyper_parameters" not in checkpoint:
        raise UserError(
            f"'{path}' is not a checkpoint written by src.train (it has no hyper_parameters); "
            "point ckpt_path at one of a run's checkpoints/*.ckpt"
        )
    return upgrade(checkpoint)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic saves and ``read_checkpoint``'s safe, upgrading
    loads, so resuming and testing a checkpoint are as safe as ``src.predict``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            atomic_write(path, buffer.getvalue())
        except OSError as err:
            raise CheckpointWriteError(
                unwritten(Path(path), buffer.getbuffer().nbytes, err)
            ) from None

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # also Lightning's own files, such as ddp_spawn's weights handed back to the main process
        checkpoint = load_checkpoint(path, map_location=map_location or "cpu")
        return upgrade(checkpoint) if "hyper_parameters" in checkpoint else checkpoint


class CheckpointWriteError(UserError):
    """A checkpoint that could not be written: the run stops with one line, and the file it
    would have replaced is left as it was (``atomic_write``)."""


def unwritten(path: Path, size: int, err: OSError) -> str:
    """What stopped a checkpoint, and what is left: the file, the bytes it needs and those free
    on its disk, and the previous checkpoint, intact."""
    folder = next((p for p in (path.parent, *path.parents) if p.exists()), Path.cwd())
    free = shutil.disk_usage(folder).free
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause, remedy = "no permission to write there", "make the folder writable"
    else:
        cause, remedy = err.strerror or str(err), "free some space"
    previous = "is intact" if path.is_file() else "was never written (none)"
    return (
        f"Could not write the checkpoint '{path}': {cause} ({size:,} bytes needed, {free:,} "
        f"free on its disk). The previous checkpoint there {previous}; {remedy}, then resume "
        f"with ckpt_path=last hydra.run.dir={path.parent.parent}."
    )


def stamp(checkpoint: dict[str, Any], module: LightningModule) -> None:
    """What ``src.train`` adds to Lightning's checkpoint (the module's ``on_save_checkpoint``)."""
    checkpoint["format_version"] = FORMAT_VERSION
    checkpoint["model_target"] = _target(module)
    # every process's generators (src/utils/randomness.py): process 0's are what a run on one
    # device resumes from, as before; under DDP each process takes back its own
    checkpoint["random_states"] = random_states()  # process 0 writes the file
    trainer = trainer_of(module)
    if trainer is not None and trainer.world_size > 1:
        states = checkpoint["random_states"]
        checkpoint["random_states_of_ranks"] = every_process(states, trainer.world_size)
    if trainer is not None and trainer.datamodule is not None:
        checkpoint["datamodule_target"] = _target(trainer.datamodule)


def _target(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def contradictions(
    section: str, requested: Mapping[str, Any], saved: Mapping[str, Any], changeable: tuple = ()
) -> list[str]:
    """``section.key=value`` for every requested value that differs from the saved one, except
    keys in ``changeable`` and Hydra's flags; inside a node (the network, the training
    operations) every key of either side, so an operation removed or a class changed shows."""
    found = []
    for key, value in requested.items():
        if key in HYDRA_FLAGS or key in changeable:
            continue
        old = saved.get(key, "no such key")
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            inner = {k: old.get(k) for k in old if k not in value} | dict(value)
            found += contradictions(f"{section}.{key}", inner, old)
        elif old != value:
            found.append(f"{section}.{key}={value!r} (the checkpoint has {old!r})")
    return found


def signature_defaults(target: Any) -> dict[str, Any]:
    """The keyword defaults of a class (its ``__init__``s up the MRO, through ``**kwargs``) or a
    function: what a saved setting without that key stood for."""
    functions = [target]
    if isinstance(target, type):
        functions = [c.__dict__["__init__"] for c in target.__mro__ if "__init__" in c.__dict__]
    defaults: dict[str, Any] = {}
    for function in functions:
        for name, param in inspect.signature(function).parameters.items():
            if param.default is not inspect.Parameter.empty:
                defaults.setdefault(name, param.default)
    return defaults


def with_defaults(settings: Mapping[str, Any], target: Any = None) -> dict[str, Any]:
    """``settings`` with every default of ``target`` (a class or function; else the mapping's own
    ``_target_``) that it lacks, and the same for every ``{_target_: ...}`` node inside it (the
    training operations, say): two settings compare equal when they build the same thing, so a
    key added since a checkpoint was written never reads as a change."""
    if target is None and "_target_" in settings:
        try:
            target = get_object(settings["_target_"])
        except Exception:  # noqa: BLE001 - not importable here: compared as written
            target = None
    filled = signature_defaults(target) if target is not None else {}
    for key, value in settings.items():
        filled[key] = with_defaults(value) if isinstance(value, Mapping) else value
    return filled


def check_resume(
    ckpt_path: str | Path, model: LightningModule, datamodule: LightningDataModule
) -> dict[str, Any]:
    """A run resumes only the model and data it was trained with: a changed activation or crop
    size would load the weights into something else without a word. What the configured model
    and data module record (their hparams, empty values and defaults filled in) is compared with
    what the upgraded checkpoint recorded. Returns the checkpoint."""
    checkpoint = read_checkpoint(ckpt_path)
    conflicts = contradictions(
        "model",
        with_defaults(model.hparams, type(model)),
        with_defaults(checkpoint["hyper_parameters"], get_object(checkpoint["model_target"])),
        MODEL_KEYS_RESUME_MAY_CHANGE,
    )
    data_class = get_object(checkpoint["datamodule_target"])
    saved_data = with_defaults(checkpoint["datamodule_hyper_parameters"], data_class)
    requested = with_defaults(datamodule.hparams, type(datamodule))
    conflicts += contradictions("data", requested, saved_data, data_class.may_change)
    if conflicts:
        raise ConfigError(
            f"ckpt_path={ckpt_path} was trained with other settings: {'; '.join(conflicts)}. "
            "Resume with the run's own overrides (its .hydra/overrides.yaml)."
        )
    return checkpoint


def load_model(checkpoint: dict[str, Any], compile: bool | str = False) -> LightningModule:
    """The checkpoint's model, in eval mode on the CPU, from nothing but the checkpoint; compiled
    only as asked here (a GPU run's checkpoint records compile=true, which a laptop's CPU may
    not want)."""
    settings = checkpoint["hyper_parameters"] | {"compile": compile}
    model = get_class(checkpoint["model_target"])(**settings)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def datamodule_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The data module's ``state_dict`` in a checkpoint (Lightning files it under the class
    name): the seed of the training order and, where used, the training statistics and a flat
    folder's split."""
    return checkpoint.get(checkpoint["datamodule_target"].rsplit(".", 1)[-1], {})


def restore_datamodule(datamodule: LightningDataModule, checkpoint: dict[str, Any]) -> None:
    """The checkpoint's data state, before prepare_data and setup: they read its split (a
    resumed fit restores the state only after setup)."""
    state = datamodule_state(checkpoint)
    if state:
        datamodule.load_state_dict(state)


def datamodule_from_checkpoint(
    checkpoint: dict[str, Any], requested: Mapping[str, Any] | None = None
) -> LightningDataModule:
    """The data module a checkpoint was trained with, its preprocessing and state included, with
    only the keys its class's ``may_change`` names taken from ``requested`` (the command line):
    where its files are and how they are loaded."""
    data_class = get_class(checkpoint["datamodule_target"])
    requested = {k: v for k, v in (requested or {}).items() if v is not None}
    # ten crops are evaluation's own ten_crop=true
    allowed = [k for k in data_class.may_change if k != "ten_crop"]
    refused = sorted(set(requested) - set(allowed))
    if refused:
        raise ConfigError(
            f"{', '.join(f'data.{k}' for k in refused)}: evaluation takes the data settings from "
            f"the checkpoint; only {', '.join(f'data.{k}' for k in allowed)} may be given (and "
            "ten_crop=true for ten-crop testing)."
        )
    # keys the class no longer takes (a flat folder's split keys, which ImageNet and CIFAR-10
    # carried until format 5) describe nothing it does
    accepted = signature_defaults(data_class).keys() | inspect.signature(data_class).parameters
    saved = {k: v for k, v in checkpoint["datamodule_hyper_parameters"].items() if k in accepted}
    datamodule = data_class(**(saved | requested))
    restore_datamodule(datamodule, checkpoint)
    return datamodule


def evaluation_transform(checkpoint: dict[str, Any]) -> BatchTransform:
    """The batch transform the checkpoint's model was validated with, its training operations
    left out: its sizes, normalisation and, where used, the training set's mean image it
    carries. Call it with stage ``predict`` (the centre crop) or ``ten_crop=True``."""
    return datamodule_from_checkpoint(checkpoint).evaluation_transform()


def load_classifier(
    path: str | Path, compile: bool | str = False
) -> tuple[LightningModule, dict[str, Any]]:
    """The model of the checkpoint at ``path`` (see ``load_model``) and the checkpoint itself."""
    checkpoint = read_checkpoint(path)
    return load_model(checkpoint, compile), checkpoint
