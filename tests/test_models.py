from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from src.models.alexnet import AlexNet
from tests.conftest import compose_config


def build(tmp_path: Path, preset: str, classes: int, *overrides: str) -> torch.nn.Module:
    cfg = compose_config("train", [f"model={preset}", *overrides], tmp_path)
    return instantiate(cfg.model, class_names=[str(i) for i in range(classes)]).net


@pytest.mark.parametrize(
    ("preset", "classes", "params"),
    [
        ("alexnet", 1000, 60_965_224),
        ("alexnet_owt", 1000, 61_100_840),
        ("alexnet_half", 14, 14_610_126),
    ],
)
def test_presets_have_the_published_parameter_counts(tmp_path, preset, classes, params):
    net = build(tmp_path, preset, classes)
    assert sum(p.numel() for p in net.parameters()) == params
    assert net(torch.randn(2, 3, 224, 224)).shape == (2, classes)


def test_owt_matches_the_library_alexnet():
    from torchvision.models import alexnet

    reference = sum(p.numel() for p in alexnet().parameters())
    ours = AlexNet(widths=(64, 192, 384, 256, 256), groups=1, lrn=False, init="default")
    assert sum(p.numel() for p in ours.parameters()) == reference


@pytest.mark.parametrize("size", [63, 100, 224, 300])
def test_any_input_from_63_px(size):
    net = AlexNet(num_classes=5, widths=(8, 16, 16, 16, 8), hidden=32)
    assert net(torch.randn(1, 3, size, size)).shape == (1, 5)


def test_paper_layers_and_switches(tmp_path):
    net = build(tmp_path, "alexnet", 10)
    f = net.features
    assert isinstance(f.lrn1, torch.nn.LocalResponseNorm) and isinstance(
        f.lrn2, torch.nn.LocalResponseNorm
    )
    assert (f.lrn1.size, f.lrn1.alpha, f.lrn1.beta, f.lrn1.k) == (5, 1e-4, 0.75, 2.0)
    assert [f.conv2.groups, f.conv3.groups, f.conv4.groups, f.conv5.groups] == [2, 1, 2, 2]
    assert (f.pool1.kernel_size, f.pool1.stride) == (3, 2)
    assert net.classifier.drop6.p == 0.5
    for name in ("conv2", "conv4", "conv5"):
        assert torch.all(getattr(f, name).bias == 1)
    assert torch.all(f.conv1.bias == 0) and torch.all(net.classifier.fc8.bias == 0)
    assert torch.all(net.classifier.fc6.bias == 1)
    assert abs(net.classifier.fc6.weight.std().item() - 0.01) < 1e-3

    plain = build(
        tmp_path,
        "alexnet",
        10,
        "model.net.activation=tanh",
        "model.net.lrn=false",
        "model.net.pool_kernel=2",
        "model.net.groups=1",
        "model.net.dropout=0",
        "model.net.init=default",
    )
    assert isinstance(plain.features.act1, torch.nn.Tanh)
    assert not hasattr(plain.features, "lrn1")
    assert plain.features.pool1.kernel_size == 2 and plain.features.conv2.groups == 1
    assert plain.classifier.drop6.p == 0
    assert not torch.all(plain.features.conv2.bias == 1)


def test_unknown_switch_values_are_named():
    with pytest.raises(ValueError, match="model.net.activation='swish'"):
        AlexNet(activation="swish")
    with pytest.raises(ValueError, match="model.net.init='xavier'"):
        AlexNet(init="xavier")
