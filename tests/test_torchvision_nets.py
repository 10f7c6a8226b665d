"""model=torchvision: torchvision's classification networks by name, one of each supported
family trained a step at a tiny size, the names and sizes it refuses at config time, weights read
only at a fresh start, and two families exported to ONNX."""

from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from src.export import export
from src.models.classifier import ImageClassifier
from src.models.nets import check_input_size
from src.models.torchvision_net import FAMILIES
from src.train import train
from src.utils import ConfigError, UserError
from tests.conftest import FEW_STEPS, compose, compose_config

# one network of every supported family (module of torchvision.models), at the smallest crop
# each runs on here
NETWORKS = {
    "alexnet": 64, "resnet18": 32, "vgg11": 32, "densenet121": 32, "mobilenet_v2": 32,
    "mobilenet_v3_small": 32, "efficientnet_b0": 32, "regnet_x_400mf": 32, "convnext_tiny": 32,
    "shufflenet_v2_x0_5": 32, "squeezenet1_1": 32, "googlenet": 32, "inception_v3": 75,
    "vit_b_16": 32, "swin_t": 32,
}  # fmt: skip
SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01, "momentum": 0.9}


def net_config(name: str, crop: int, *overrides: str) -> dict:
    """model.net as ``model=torchvision model.net.name=NAME data.crop_size=CROP`` composes it."""
    sizes = [f"data.crop_size={crop}", f"data.resize_size={crop}"]
    cfg = compose("train", ["model=torchvision", f"model.net.name={name}", *sizes, *overrides])
    return OmegaConf.to_container(cfg.model.net, resolve=True)


def test_every_supported_family_is_tested():
    families = {
        torchvision.models.get_model_builder(name).__module__.rsplit(".", 1)[-1]
        for name in NETWORKS
    }
    assert families == set(FAMILIES)


@pytest.mark.parametrize(("name", "crop"), NETWORKS.items())
def test_each_family_trains_a_step_at_the_crop_size(name, crop):
    net = net_config(name, crop)
    torch.manual_seed(0)
    model = ImageClassifier(["a", "b", "c"], net, optimizer=SGD)
    check_input_size(model.net, net, crop)
    optimizer = model.configure_optimizers()
    x, y = torch.randn(2, 3, crop, crop), torch.tensor([0, 2])
    before = [p.detach().clone() for p in model.net.parameters()]
    loss = model.training_step((x, y), 0)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and model.net(x).shape == (2, 3)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.net.parameters(), strict=True))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("maxvit_t", "is a maxvit network, which does not train as a plain classifier here"),
        ("raft_small", "is a raft network, which does not train as a plain classifier here"),
        ("resnet19", "is not a torchvision classification model"),
    ],
)
def test_other_names_are_refused_with_the_families_that_work(name, message):
    with pytest.raises(ConfigError, match=message) as err:
        ImageClassifier(["a", "b"], net_config(name, 32))
    assert "resnet, vgg" in str(err.value) and "\n" not in str(err.value)


def test_a_crop_smaller_than_the_network_takes_is_refused_before_any_work():
    net = net_config("vgg11", 16)
    model = ImageClassifier(["a", "b"], net)
    with pytest.raises(
        ConfigError, match=r"data.crop_size=16 .* model.net.name=vgg11 .* at least 32 px"
    ):
        check_input_size(model.net, net, 16)
    fixed = net_config("vit_b_16", 64, "model.net.image_size=224")
    vit = ImageClassifier(["a", "b"], fixed)
    with pytest.raises(ConfigError, match="vit_b_16 does not run on 64-px inputs"):
        check_input_size(vit.net, fixed, 64)
    with pytest.raises(ConfigError, match="vit_b_16 was trained on 224-px inputs"):
        ImageClassifier(["a", "b"], net_config("vit_b_16", 64, "model.net.weights=DEFAULT"))


def test_weights_from_a_file_are_read_at_a_fresh_start_only(tmp_path, monkeypatch):
    """A state dict of the same network: every tensor but the 1000-class head, at a fresh start
    (load_pretrained); building the model, as a checkpoint does, reads nothing. Offline,
    DEFAULT's download is one line naming the URL and where to put the file."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    net = net_config("resnet18", 32, f"model.net.weights={path}")
    model = ImageClassifier(["a", "b", "c"], net)
    assert not torch.equal(model.net.conv1.weight, state["conv1.weight"])
    head = model.net.fc.weight.detach().clone()
    model.load_pretrained()
    assert torch.equal(model.net.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(model.net.fc.weight, head) and model.net.fc.out_features == 3
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    offline = ImageClassifier(["a", "b"], net_config("resnet18", 32, "model.net.weights=DEFAULT"))
    with pytest.raises(UserError, match="could not download resnet18's weights from https") as err:
        offline.load_pretrained()
    assert str(tmp_path / "hub" / "hub" / "checkpoints") in str(err.value)
    with pytest.raises(ConfigError, match="model.net.weights='IMAGENET9K'"):
        ImageClassifier(["a", "b"], net_config("resnet18", 32, "model.net.weights=IMAGENET9K"))


@pytest.mark.parametrize("name", ["resnet18", "squeezenet1_1"])
def test_a_torchvision_network_trains_and_exports(name, train_config, tmp_path):
    cfg = train_config("model=torchvision", f"model.net.name={name}", "test=false", *FEW_STEPS)
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    out = export(compose_config("export", [f"ckpt_path={ckpt}"], tmp_path / "export"))
    assert (out / "model.onnx").stat().st_size > 0  # export compares onnxruntime's logits
