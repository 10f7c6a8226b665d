"""Small helpers shared by the entry points."""

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Build every ``_target_`` entry of a config group such as ``callbacks`` or ``logger``,
    skipping entries a user switched off with ``callbacks.NAME=null``."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]
