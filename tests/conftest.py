"""Real Hydra composition of the project's configs at tiny sizes."""

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from src.data.micrographs import ensure_micrographs

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
TINY_DATA = {"train_per_class": 2, "val_per_class": 1, "test_per_class": 1, "image_size": 72}


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """The config ``python -m src.<name> OVERRIDES`` would run with, writing into output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micrograph tree: 2 train, 1 val, 1 test image per class, 72 px."""
    return ensure_micrographs(tmp_path_factory.mktemp("data") / "micrographs", seed=0, **TINY_DATA)


def quick_overrides(log_dir: Path) -> list[str]:
    """What every tiny run sets, whatever its data: small batches, one CPU epoch, quiet."""
    return [
        "data.batch_size=8",
        "data.num_workers=0",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        f"paths.log_dir={log_dir}",
    ]


def micrograph_overrides(root: Path) -> list[str]:
    """The tiny micrograph tree at 72 px, cropped to 64, its decoded cache beside it."""
    data = [f"data.{k}={v}" for k, v in TINY_DATA.items()]
    sizes = ["data.resize_size=72", "data.crop_size=64"]
    return [*data, f"data.root={root}", f"data.cache_dir={root.parent / 'cache'}", *sizes]


@pytest.fixture
def tiny_overrides(tiny_root: Path, tmp_path: Path) -> list[str]:
    return micrograph_overrides(tiny_root) + quick_overrides(tmp_path / "logs")


@pytest.fixture
def train_config(tiny_overrides: list[str], tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose train.yaml with the tiny overrides plus the test's own, in a fresh run folder."""
    runs = iter(range(100))

    def make(*overrides: str, name: str = "train") -> DictConfig:
        return compose_config(name, [*tiny_overrides, *overrides], tmp_path / f"run{next(runs)}")

    return make
