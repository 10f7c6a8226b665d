"""What the classifier asks of any network: built from its config node (``model.net``) for the
data's classes, the inputs it runs on, the module names ``model.freeze`` and ``model.lr_mult``
take, and the towers of its first layer.

A network is any ``nn.Module`` that maps (B, 3, H, W) images to (B, num_classes) scores, built by
a class or function that takes ``num_classes`` (this project's ``AlexNet`` and ``CNN4``,
``torchvision_net`` for torchvision's, a fork's own). One that also has a ``load_pretrained()``
method gets it called when a run starts from scratch, never when a checkpoint is read, so a
checkpoint never needs the weights file.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn
from torch.func import functional_call

from src.utils import ConfigError

# the largest input side min_input_size looks at
LARGEST_INPUT = 1024


def describe(net: Mapping[str, Any]) -> str:
    """``model.net`` in a message: its name where it has one, else its class."""
    return f"model.net.name={net['name']}" if "name" in net else f"model.net={net['_target_']}"


def build_net(net: Mapping[str, Any], num_classes: int) -> nn.Module:
    """The network of a ``model.net`` node for ``num_classes`` classes; a node that cannot be
    built is named with the reason."""
    if not isinstance(net, Mapping) or "_target_" not in net:
        raise ConfigError(
            f"model.net={net!r} must be a network, {{_target_: CLASS_OR_FUNCTION, ...its "
            "arguments}}: conf/model/*.yaml, docs/configuration.md#networks"
        )
    try:
        return instantiate(dict(net), num_classes=num_classes, _convert_="all")
    except Exception as err:  # noqa: BLE001 - Hydra wraps import and argument errors alike
        cause = err.__cause__ or err
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"{describe(net)} cannot be built: {cause}") from None


def runs_on(net: nn.Module, size: int) -> bool:
    """Whether ``net`` takes a (2, 3, size, size) input, found on the meta device: shapes only,
    no arithmetic and no copy of the weights."""
    meta = {
        name: torch.empty_like(tensor, device="meta")
        for name, tensor in (*net.named_parameters(), *net.named_buffers())
    }
    training = net.training
    net.eval()
    try:
        functional_call(net, meta, (torch.empty(2, 3, size, size, device="meta"),))
    except Exception:  # noqa: BLE001 - any failure of the forward pass is a verdict on the size
        return False
    finally:
        net.train(training)
    return True


def min_input_size(net: nn.Module) -> int | None:
    """The smallest square input side ``net`` runs on (up to ``LARGEST_INPUT``), or None where
    it runs on none or on one size only (a vision transformer's ``image_size``)."""
    low, high = 1, LARGEST_INPUT
    if not runs_on(net, high):
        return None
    while low < high:
        middle = (low + high) // 2
        if runs_on(net, middle):
            high = middle
        else:
            low = middle + 1
    return low


def check_input_size(net: nn.Module, net_config: Mapping[str, Any], crop_size: int) -> None:
    """Before any data is read: the crop must pass through the network."""
    if runs_on(net, crop_size):
        return
    need = min_input_size(net)
    if need is not None and need > crop_size:
        raise ConfigError(
            f"data.crop_size={crop_size} is too small for {describe(net_config)} with these "
            f"settings: its layers need inputs of at least {need} px. Set data.crop_size (and "
            f"data.resize_size) to {need} or more."
        )
    raise ConfigError(
        f"{describe(net_config)} does not run on {crop_size}-px inputs (data.crop_size); a "
        "network with a fixed input size (a vision transformer's model.net.image_size) needs "
        "data.crop_size to be that size."
    )


def trainable_modules(net: nn.Module) -> list[str]:
    """The names ``model.freeze`` and ``model.lr_mult`` accept: every module with parameters."""
    return [name for name, m in net.named_modules() if name and any(True for _ in m.parameters())]


def check_module_names(key: str, names: Sequence[str], net: nn.Module) -> None:
    valid = trainable_modules(net)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"model.{key} names no such module: {unknown}; valid names: {valid}")


def freeze_modules(net: nn.Module, names: Sequence[str]) -> None:
    """Frozen parameters get no gradient and stay out of the optimizer, so neither weight decay
    nor momentum moves them."""
    check_module_names("freeze", names, net)
    for name in names:
        net.get_submodule(name).requires_grad_(False)
    if not any(p.requires_grad for p in net.parameters()):
        raise ConfigError(f"model.freeze={list(names)} freezes every parameter: nothing to train")


def lr_groups(net: nn.Module, lr_mult: Mapping[str, float]) -> dict[str, list[str]]:
    """The trainable parameters' names by the ``lr_mult`` entry that covers them (the most
    specific one: ``classifier.fc8`` before ``classifier``), ``""`` for those at the base rate."""
    check_module_names("lr_mult", list(lr_mult), net)
    for name, mult in lr_mult.items():
        if isinstance(mult, bool) or not isinstance(mult, int | float) or not 0 < mult < math.inf:
            raise ConfigError(
                f"model.lr_mult.{name}={mult!r} must be a finite number above 0 (to keep a "
                "module as it is, put it in model.freeze)"
            )
    groups: dict[str, list[str]] = {"": [], **{name: [] for name in lr_mult}}
    for pname, p in net.named_parameters():
        if p.requires_grad:
            owners = [n for n in lr_mult if pname.startswith(f"{n}.")]
            groups[max(owners, key=len, default="")].append(pname)
    frozen = [name for name, params in groups.items() if name and not params]
    if frozen:
        raise ConfigError(f"model.lr_mult names modules that model.freeze freezes: {frozen}")
    return groups


def first_conv(net: nn.Module) -> nn.Conv2d | None:
    """The layer that looks at the pixels."""
    return next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)


def towers(net: nn.Module) -> int:
    """Into how many towers the first layer's kernels fall: the ``groups`` of the convolution
    that reads them (2 in the paper's AlexNet, whose conv2 reads each tower's half apart)."""
    conv1 = first_conv(net)
    readers = (
        m
        for m in net.modules()
        if isinstance(m, nn.Conv2d) and m is not conv1 and m.in_channels == conv1.out_channels
    )
    return next((m.groups for m in readers), 1) if conv1 is not None else 1
