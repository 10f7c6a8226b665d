"""torchvision's AlexNet weights (ImageNet) in our ``alexnet_owt``, for fine-tuning.

torchvision names its layers by position (``features.0``); ours have names (``features.conv1``).
The table below is the whole translation, so a file of any other layout fails with the keys that
do not fit instead of loading half its tensors.
"""

import inspect
import logging
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.error import URLError

import torch
from torch import nn
from torchvision.models import AlexNet_Weights

from src.models.alexnet import AlexNet
from src.utils import ConfigError, UserError
from src.utils.io import load_checkpoint

log = logging.getLogger(__name__)

IMAGENET = "imagenet"
# torchvision's name -> ours, for the weight and the bias of each layer
TORCHVISION_LAYERS = {
    "features.0": "features.conv1",
    "features.3": "features.conv2",
    "features.6": "features.conv3",
    "features.8": "features.conv4",
    "features.10": "features.conv5",
    "classifier.1": "classifier.fc6",
    "classifier.4": "classifier.fc7",
    "classifier.6": "classifier.fc8",
}
# ImageNet's 1000-class layer: never loaded, the data set's own head starts fresh
HEAD = "classifier.6"
# what our AlexNet must be built with to have torchvision's layout: conf/model/alexnet_owt.yaml
TORCHVISION_ARCH = "src.models.alexnet.AlexNet"
TORCHVISION_LAYOUT: dict[str, Any] = {
    "widths": [64, 192, 384, 256, 256],
    "hidden": 4096,
    "groups": 1,
    "lrn": False,
    "pool_kernel": 3,
    "pool_stride": 2,
    "activation": "relu",
    "in_channels": 3,
}
# a download that hears nothing for this long fails, rather than a run that waits for ever
DOWNLOAD_TIMEOUT_S = 30
MAX_LISTED = 20


class PretrainedMismatchError(UserError):
    """A weights file whose names or shapes are not torchvision's AlexNet."""


def check_torchvision_layout(net: Mapping[str, Any]) -> None:
    """Before any work: only the network built as torchvision's can take its weights (LRN or
    another pooling would load every tensor and compute something else)."""
    if net.get("_target_") != TORCHVISION_ARCH:
        raise ConfigError(
            f"model.pretrained loads torchvision's AlexNet into this project's, not into "
            f"model.net={net.get('_target_')}: use model=alexnet_owt (its layout), "
            "model.net.weights for torchvision's own networks (model=torchvision), or "
            "model.pretrained=null"
        )
    defaults = {
        name: p.default for name, p in inspect.signature(AlexNet.__init__).parameters.items()
    }
    differ = []
    for key, wanted in TORCHVISION_LAYOUT.items():
        value = net.get(key, defaults[key])
        if (list(value) if isinstance(value, list | tuple) else value) != wanted:
            differ.append(f"model.net.{key}={value!r} (torchvision: {wanted!r})")
    if differ:
        raise ConfigError(
            f"model.pretrained loads torchvision's AlexNet, whose layout this model does not "
            f"have: {', '.join(differ)}. Use model=alexnet_owt, or model.pretrained=null."
        )


def imagenet_file() -> Path:
    """Where torchvision keeps the ImageNet weights: torch hub's checkpoints folder."""
    url = AlexNet_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def download_imagenet() -> Path:
    """torchvision's ImageNet weights into torch hub's cache, unless they are there already.

    A machine without internet fails within seconds with what to do instead.
    """
    path = imagenet_file()
    if path.is_file():
        return path
    url = AlexNet_Weights.IMAGENET1K_V1.url
    log.info("Downloading torchvision's ImageNet AlexNet weights from %s to %s", url, path)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        # torch hub's own cache and hash check (the hash prefix is in the file name)
        torch.hub.load_state_dict_from_url(
            url, model_dir=str(path.parent), progress=False, check_hash=True, weights_only=True
        )
    except (URLError, OSError, RuntimeError) as err:
        raise UserError(
            f"model.pretrained=imagenet could not download torchvision's ImageNet weights from "
            f"{url} ({err}). On a machine without internet, fetch that file elsewhere and put it "
            f"at {path} (torch hub's cache, where torchvision looks), or pass "
            "model.pretrained=PATH to a torchvision AlexNet state dict."
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    return path


def read_torchvision_state_dict(source: str) -> dict[str, torch.Tensor]:
    """The state dict at path ``source``, or torchvision's ImageNet one for ``imagenet``; read
    with ``weights_only=True``, so the file cannot run code."""
    path = download_imagenet() if source == IMAGENET else Path(source)
    if not path.is_file():
        raise UserError(
            f"model.pretrained={source}: no such file. Give the path of a torchvision AlexNet "
            "state dict (torch.save(torchvision.models.alexnet(weights=...).state_dict(), PATH)), "
            "or model.pretrained=imagenet."
        )
    state = load_checkpoint(path)
    if "state_dict" in state:
        raise PretrainedMismatchError(
            f"model.pretrained={source} is a training checkpoint, not a torchvision state dict: "
            "resume it with ckpt_path=PATH instead."
        )
    return state


def listed(keys: list[str]) -> str:
    more = len(keys) - MAX_LISTED
    return ", ".join(keys[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


def load_torchvision_alexnet(
    net: nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Every tensor of torchvision's AlexNet but its 1000-class head into ``net`` (our
    ``alexnet_owt``), by the table above; the head keeps its fresh initialisation."""
    ours = net.state_dict()
    wanted = {
        f"{tv}.{p}": f"{name}.{p}"
        for tv, name in TORCHVISION_LAYERS.items()
        for p in ("weight", "bias")
    }
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    shapes = []
    for tv_key, key in wanted.items():
        if tv_key not in state:
            continue
        got, expected = tuple(state[tv_key].shape), tuple(ours[key].shape)
        if tv_key.startswith(HEAD):
            # the head is discarded: any number of classes, but it must read fc7's output
            fits = got[1:] == expected[1:] and len(got) == len(expected)
        else:
            fits = got == expected
        if not fits:
            shapes.append(f"{tv_key} {list(got)} (needs {list(expected)} for {key})")
    problems = [
        f"{label}: {listed(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", shapes),
        )
        if keys
    ]
    if problems:
        raise PretrainedMismatchError(
            f"model.pretrained={source} is not torchvision's AlexNet state dict (the layout of "
            f"model=alexnet_owt): {'; '.join(problems)}"
        )
    body = {key: state[tv_key] for tv_key, key in wanted.items() if not tv_key.startswith(HEAD)}
    net.load_state_dict(body, strict=False)
    log.info(
        "Loaded torchvision's AlexNet weights from %s: %d tensors, conv1 to fc7; the head "
        "(classifier.fc8) starts fresh", source, len(body),
    )  # fmt: skip
