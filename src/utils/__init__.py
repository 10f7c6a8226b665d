"""Small helpers shared by the entry points, and the config resolver they need."""

from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Build every ``_target_`` entry of a config group such as ``callbacks`` or ``logger``,
    skipping entries a user switched off with ``callbacks.NAME=null``."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def on_gpu(accelerator: str, if_gpu: Any, otherwise: Any) -> Any:
    """``${on_gpu:${trainer.accelerator},A,B}`` in a config: A where the trainer runs on an NVIDIA
    GPU (accelerator gpu or cuda, or auto with CUDA available), else B. For the switches that pay
    off only there (bf16, channels-last, torch.compile, cudnn benchmark), so that ``make train``,
    ``trainer=gpu`` and ``trainer=ddp`` all get them and CPU runs stay as they were."""
    uses_gpu = accelerator in ("gpu", "cuda") or (
        accelerator == "auto" and torch.cuda.is_available()
    )
    return if_gpu if uses_gpu else otherwise


OmegaConf.register_new_resolver("on_gpu", on_gpu, replace=True)
