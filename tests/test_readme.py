"""The README and the docs restate config values: every such statement is checked against the
configs, on the page where it lives."""

import functools
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from src.models.nets import build_net
from tests.conftest import ROOT, compose

README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
CLAIMS = (ROOT / "docs" / "claims.md").read_text()
DATA_PAGE = (ROOT / "docs" / "data.md").read_text()
MODELS = ("alexnet", "alexnet_owt", "alexnet_half", "cnn4")
DATA = ("imagefolder", "micrographs", "micrographs_64px", "cifar10")


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if OmegaConf.is_list(value):
        return "/".join(fmt(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@functools.cache
def preset(group: str, name: str) -> DictConfig:
    extra = ["data.root=x"] if name == "imagefolder" else []
    return compose("train", [f"{group}={name}", *extra])[group]


def grouped(group: str, names: tuple[str, ...], keys: list[str]) -> str:
    """The presets with each combination of values, as the switch table writes them:
    "`a`, `b`: 1, 2; `c`: 3, 4". Presets without the first key are left out; a key that is
    null ends the value list with "none"; a config node (a key that only says "present") is
    not shown, an operation's ``_target_`` by its class name; no preset with the key: "none"."""
    by_value: dict[str, list[str]] = {}
    for name in names:
        values = [OmegaConf.select(preset(group, name), key, default="missing") for key in keys]
        if values[0] == "missing":
            continue
        shown = []
        for key, value in zip(keys, values, strict=True):
            if value == "missing":
                break
            if key.endswith("._target_"):
                shown.append(value.rsplit(".", 1)[-1])
            elif not OmegaConf.is_dict(value):
                shown.append(fmt(value))
            if value is None:
                break
        by_value.setdefault(", ".join(shown), []).append(f"`{name}`")
    cells = [f"{', '.join(presets)}: {value}" for value, presets in by_value.items()]
    return "; ".join(cells) or "none"


SWITCHES = {
    "`model.net.widths`, `model.net.hidden`": ("model", ["net.widths", "net.hidden"]),
    "`model.net.groups`": ("model", ["net.groups"]),
    "`model.net.activation`": ("model", ["net.activation"]),
    "`model.net.lrn`": ("model", ["net.lrn"]),
    "`model.net.pool_kernel`, `model.net.pool_stride`": (
        "model", ["net.pool_kernel", "net.pool_stride"]
    ),
    "`model.net.dropout`": ("model", ["net.dropout"]),
    "`model.net.init`": ("model", ["net.init"]),
    "`model.net.init_std`": ("model", ["net.init_std"]),
    "`model.net.pools`, `model.net.act_after_pool`": ("model", ["net.pools", "net.act_after_pool"]),
    "`model.net.rnorm`, `.rnorm_size`, `.rnorm_scale`, `.rnorm_pow`": (
        "model", ["net.rnorm", "net.rnorm_size", "net.rnorm_scale", "net.rnorm_pow"]
    ),
    "`model.bias_lr_mult`": ("model", ["bias_lr_mult"]),
    "`model.optimizer.lr`, `.momentum`, `.weight_decay`": (
        "model", ["optimizer.lr", "optimizer.momentum", "optimizer.weight_decay"]
    ),
    "`model.scheduler.factor`, `.patience`": (
        "model", ["scheduler", "scheduler.factor", "scheduler.patience"]
    ),
    "`model.max_lr_drops`": ("model", ["max_lr_drops"]),
    "`data.resize_size`, `data.crop_size`": ("data", ["resize_size", "crop_size"]),
    "`data.augment.crop`, `data.augment.flip`": (
        "data", ["augment.crop._target_", "augment.flip._target_"]
    ),
    "`data.augment_val`": ("data", ["augment_val"]),
    "`data.ten_crop`": ("data", ["ten_crop"]),
    "`data.augment.pca_noise.std`": ("data", ["augment.pca_noise.std"]),
    "`data.input_scale`": ("data", ["input_scale"]),
    "`data.batch_size`": ("data", ["batch_size"]),
}  # fmt: skip


def switch_table() -> dict[str, str]:
    """Config-key cell (up to its first parenthesis) -> presets cell."""
    section = CONFIGURATION.split("## The paper, switch by switch")[1]
    table = section[section.index("| paper |") :].split("\n\n")[0]
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    return {cells[1].split(" (")[0]: cells[2].rstrip(" |") for cells in rows}


@pytest.mark.parametrize("key", SWITCHES)
def test_switch_table_states_the_presets_values(key):
    group, keys = SWITCHES[key]
    names = MODELS if group == "model" else DATA
    assert switch_table()[key] == grouped(group, names, keys)


def test_every_switch_row_is_checked():
    assert set(switch_table()) == set(SWITCHES)


@pytest.mark.parametrize(
    ("name", "classes"), [("alexnet", 1000), ("alexnet_owt", 1000), ("alexnet_half", 14)]
)
def test_parameter_counts_in_the_presets_table_are_the_models(name, classes):
    net = build_net(OmegaConf.to_container(preset("model", name).net), classes)
    count = sum(p.numel() for p in net.parameters())
    table = CONFIGURATION.split("### Presets")[1].split("\n### ")[0]
    row = next(line for line in table.splitlines() if line.startswith(f"| `{name}`"))
    assert row.endswith(f"| {count:,} at {classes} classes |")


def test_default_run_paragraph_states_the_default_config():
    cfg = compose("train", [])
    data, model = cfg.data, cfg.model
    paragraph = CLAIMS.split("## The default run")[1].split("Measured on")[0]
    paragraph = " ".join(paragraph.split())
    per_class = data.train_per_class * 14
    assert f"`{cfg.hydra.runtime.choices.model}` on the built-in micrographs" in paragraph
    assert f"{per_class:,} training images of {data.image_size} px" in paragraph
    assert f"random {data.crop_size}-px crops" in paragraph
    assert f"lr {model.optimizer.lr:g}, momentum {model.optimizer.momentum:g}" in paragraph
    assert f"weight decay {model.optimizer.weight_decay:.0e}".replace("e-04", "e-4") in paragraph
    assert f"has not improved for {model.scheduler.patience + 1} epochs" in paragraph
    assert f"global batch {data.batch_size}, {cfg.trainer.max_epochs} epochs" in paragraph


def test_quick_start_states_the_default_run():
    cfg = compose("train", [])
    quick_start = " ".join(README.split("## Quick start")[1].split("\n## ")[0].split())
    assert cfg.hydra.runtime.choices.model == "alexnet_half"
    assert "trains the half-width AlexNet" in quick_start
    assert f"for {cfg.trainer.max_epochs} epochs" in quick_start


def test_own_images_sections_state_the_split_and_cache_defaults():
    data = preset("data", "imagefolder")
    readme = " ".join(README.split("## Your own images")[1].split("\n## ")[0].split())
    assert f"{data.val_fraction:.0%} for validation, {data.test_fraction:.0%} for the test" in (
        readme.replace(" %", "%")
    )
    assert f"3 × {data.resize_size}² bytes per image" in readme
    page = " ".join(DATA_PAGE.split())
    assert f"`data.val_fraction` ({data.val_fraction:g})" in page
    assert f"`data.test_fraction` ({data.test_fraction:g})" in page
    assert f"`data.split_seed` ({data.split_seed})" in page
    assert f"`data.resize_size` ({data.resize_size})" in page
    assert f"`data.crop_size` ({data.crop_size})" in page
