"""torchvision's classification networks by name, for the data's classes:
``python -m src.train model=torchvision model.net.name=resnet18`` (``conf/model/torchvision.yaml``).

Every family that trains as a plain classifier at the data's crop size is supported; GoogLeNet
and Inception v3 without their auxiliary classifiers (``aux_logits=False``), and the vision
transformers at the crop size (their ``image_size``). Any other name stops the run with the
families that work. Module names are torchvision's own (``fc``, ``layer4``, ``classifier.6``),
as ``model.freeze`` and ``model.lr_mult`` take them.

``weights`` (``DEFAULT``, ``IMAGENET1K_V1``, ... or a state dict file of the same network) are
read when a run starts from scratch (``load_pretrained``), never when a checkpoint is read:
every tensor whose shape fits, the classifier's last layer left fresh for the data's classes.
"""

import logging
import socket
from functools import partial
from pathlib import Path
from typing import Any
from urllib.error import URLError

import torch
from torch import nn
from torchvision import models

from src.utils import ConfigError, UserError
from src.utils.io import load_checkpoint

log = logging.getLogger(__name__)

# torchvision.models module of a family -> what its networks need to train as plain classifiers
FAMILIES: dict[str, dict[str, Any]] = {
    "alexnet": {}, "resnet": {}, "vgg": {}, "densenet": {}, "mobilenetv2": {},
    "mobilenetv3": {}, "efficientnet": {}, "regnet": {}, "convnext": {}, "shufflenetv2": {},
    "squeezenet": {}, "googlenet": {"aux_logits": False}, "inception": {"aux_logits": False},
    "vision_transformer": {}, "swin_transformer": {},
}  # fmt: skip
# families whose networks take their input size, and fix it
SIZED = ("vision_transformer",)
# families whose pretrained weights expect inputs transformed inside the network
TRANSFORMS_INPUT = ("googlenet", "inception")
# a download that hears nothing for this long fails, rather than a run that waits for ever
DOWNLOAD_TIMEOUT_S = 30


def family(name: str) -> str:
    """The torchvision module of the network ``name``, which must be a supported family's."""
    try:
        builder = models.get_model_builder(name)
    except ValueError:
        builder = None
    found = builder.__module__.rsplit(".", 1)[-1] if builder is not None else None
    if found not in FAMILIES or name not in models.list_models(module=models):
        what = (
            "is not a torchvision classification model"
            if found is None
            else (f"is a {found} network, which does not train as a plain classifier here")
        )
        raise ConfigError(
            f"model.net.name={name!r} {what}; the families that do: {', '.join(FAMILIES)} "
            "(names: torchvision.models.list_models(module=torchvision.models))"
        )
    return found


def enum_weights(name: str, weights: str) -> Any | None:
    """torchvision's weights entry ``weights`` of ``name`` (``DEFAULT``, ``IMAGENET1K_V1``), or
    None where ``weights`` names a file."""
    if Path(weights).suffix or "/" in weights:
        return None
    try:
        return models.get_model_weights(name)[weights]
    except KeyError:
        known = ["DEFAULT", *models.get_model_weights(name).__members__]
        raise ConfigError(
            f"model.net.weights={weights!r}: {name} has the weights {known}, or give a state "
            "dict file of the network"
        ) from None


def torchvision_net(
    name: str, num_classes: int, weights: str | None = None, image_size: int | None = None
) -> nn.Module:
    """torchvision's network ``name`` with ``num_classes`` outputs, shaped as ``weights``
    expect them (a vision transformer at their ``image_size``, GoogLeNet's and Inception's input
    transform), which ``load_pretrained()`` then reads."""
    kind = family(name)
    kwargs = dict(FAMILIES[kind])
    known = enum_weights(name, weights) if weights else None
    if kind in SIZED and image_size is not None:
        trained_at = known.meta["min_size"][0] if known is not None else image_size
        if image_size != trained_at:
            raise ConfigError(
                f"model.net.weights={weights}: {name} was trained on {trained_at}-px inputs and "
                f"takes no other; set data.crop_size={trained_at} (model.net.image_size follows)"
            )
        kwargs["image_size"] = image_size
    if kind in TRANSFORMS_INPUT:
        kwargs |= {"transform_input": known is not None, "init_weights": known is None}
    net = models.get_model(name, num_classes=num_classes, **kwargs)
    if weights:
        net.load_pretrained = partial(load_pretrained, net, name, weights, num_classes)
    return net


def pretrained_state(name: str, weights: str) -> dict[str, torch.Tensor]:
    """The weights' state dict: torchvision's download (cached in torch hub's folder), or a
    file read with ``weights_only=True``."""
    known = enum_weights(name, weights)
    if known is None:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"model.net.weights={weights}: no such file")
        return load_checkpoint(path)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / known.url.rsplit("/", 1)[-1]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return known.get_state_dict(progress=False, check_hash=True)
    except (URLError, OSError, RuntimeError) as err:
        raise UserError(
            f"model.net.weights={weights}: could not download {name}'s weights from {known.url} "
            f"({err}). Offline, fetch that file elsewhere and put it at {cache} (torch hub's "
            "cache, where torchvision looks), or pass model.net.weights=PATH to a state dict."
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def load_pretrained(net: nn.Module, name: str, weights: str, num_classes: int) -> None:
    """Every tensor of the weights whose shape fits into ``net``; the classifier's last layer,
    shaped for other classes, stays fresh. Any other misfit stops the run naming the tensors."""
    state, ours = pretrained_state(name, weights), net.state_dict()
    missing = sorted(set(ours) - set(state))
    differ = [k for k in ours if k in state and state[k].shape != ours[k].shape]
    head = [
        k for k in differ
        if ours[k].shape[0] == num_classes and state[k].shape[1:] == ours[k].shape[1:]
    ]  # fmt: skip
    misfit = [
        f"{k} {list(state[k].shape)} (needs {list(ours[k].shape)})" for k in differ if k not in head
    ]
    if missing or misfit:
        raise UserError(
            f"model.net.weights={weights} do not fit {name}: missing {missing[:10]}, other "
            f"shapes {misfit[:10]}. Give the weights of this very network."
        )
    fitting = {k: v for k, v in state.items() if k in ours and k not in head}
    net.load_state_dict(fitting, strict=False)
    unused = sorted(set(state) - set(ours))
    log.info(
        "Loaded %s's weights %s: %d tensors; fresh for the %d classes: %s%s", name, weights,
        len(fitting), num_classes, ", ".join(head) or "none",
        f"; not used: {len(unused)} ({', '.join(unused[:3])}...)" if unused else "",
    )  # fmt: skip
