"""Fine-tuning torchvision's AlexNet: its weights by name into ours, frozen modules, per-module
learning rates. The weights here are a randomly initialised torchvision AlexNet, saved as
torchvision's ImageNet file is: the ImageNet one cannot be downloaded offline."""

import socket
from pathlib import Path

import pytest
import torch
import torchvision
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from src.checkpoints import check_resume, load_classifier
from src.eval import evaluate
from src.models import pretrained
from src.models.classifier import ImageClassifier
from src.models.pretrained import (
    TORCHVISION_LAYERS,
    PretrainedMismatchError,
    load_torchvision_alexnet,
    read_torchvision_state_dict,
)
from src.predict import predict
from src.train import train
from src.utils import ConfigError, UserError
from tests.conftest import (
    FEW_STEPS,
    ROOT,
    compose,
    compose_config,
    imagefolder_overrides,
    scalars,
)

CLASSES = [str(i) for i in range(14)]
TV_BODY = [k for k in TORCHVISION_LAYERS if k != pretrained.HEAD]


@pytest.fixture(scope="module")
def tv_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.alexnet().state_dict()


@pytest.fixture
def tv_file(tv_state, tmp_path) -> Path:
    path = tmp_path / "alexnet-tv.pth"
    torch.save(tv_state, path)
    return path


def model(*overrides: str, classes: list[str] = CLASSES) -> ImageClassifier:
    """The config's model; its config error as raised, not wrapped by Hydra."""
    try:
        return instantiate(compose("train", list(overrides)).model, class_names=classes)
    except InstantiationException as err:
        raise err.__cause__ from None


def test_every_torchvision_tensor_lands_in_its_layer(tv_state, tv_file):
    net = model("model=alexnet_owt", f"model.pretrained={tv_file}", classes=CLASSES[:3])
    fresh_head = net.net.classifier.fc8.weight.detach().clone()
    net.load_pretrained()
    ours = net.net.state_dict()
    for tv_name, name in TORCHVISION_LAYERS.items():
        for p in ("weight", "bias"):
            if tv_name == pretrained.HEAD:
                assert ours[f"{name}.{p}"].shape[0] == 3
            else:
                assert torch.equal(ours[f"{name}.{p}"], tv_state[f"{tv_name}.{p}"])
    assert torch.equal(net.net.classifier.fc8.weight, fresh_head)
    # the same function as torchvision's network, once the head is the same too
    tv = torchvision.models.alexnet(num_classes=3).eval()
    head = {"classifier.6.weight": fresh_head, "classifier.6.bias": ours["classifier.fc8.bias"]}
    tv.load_state_dict(tv_state | head)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), tv(x))


def renamed(state: dict, old: str, new: str) -> dict:
    return {(new if k == old else k): v for k, v in state.items()}


@pytest.mark.parametrize(
    ("change", "listed"),
    [
        (lambda s: renamed(s, "features.3.weight", "features.4.weight"),
         ["missing keys: features.3.weight", "unexpected keys: features.4.weight"]),
        (lambda s: s | {"features.6.weight": torch.zeros(384, 192, 5, 5)},
         ["wrong shapes: features.6.weight [384, 192, 5, 5] (needs [384, 192, 3, 3]"]),
        (lambda s: model("model=alexnet_owt").net.state_dict(),
         ["missing keys: classifier.1.bias", "unexpected keys: classifier.fc6.bias"]),
    ],
    ids=["renamed", "reshaped", "our-names"],
)  # fmt: skip
def test_another_layout_is_refused_with_its_keys(tv_state, change, listed):
    net = model("model=alexnet_owt")
    before = net.net.features.conv1.weight.detach().clone()
    with pytest.raises(PretrainedMismatchError) as err:
        load_torchvision_alexnet(net.net, change(dict(tv_state)), "x.pth")
    assert all(text in str(err.value) for text in listed), err.value
    assert torch.equal(net.net.features.conv1.weight, before)


@pytest.mark.parametrize("preset", ["alexnet_half", "alexnet", "cnn4"])
def test_only_torchvisions_layout_takes_the_weights(preset):
    with pytest.raises(ConfigError, match="model=alexnet_owt"):
        model(f"model={preset}", "model.pretrained=x.pth")


def test_a_training_checkpoint_is_not_a_pretrained_file(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, path)
    with pytest.raises(PretrainedMismatchError, match="ckpt_path"):
        read_torchvision_state_dict(str(path))
    with pytest.raises(UserError, match="no such file"):
        read_torchvision_state_dict(str(tmp_path / "absent.pth"))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, and an empty torch hub cache of the test's own."""

    def refuse(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "offline (test)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))


def test_imagenet_offline_says_where_to_put_the_file(offline, tv_state, tmp_path):
    cached = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert pretrained.imagenet_file() == cached
    with pytest.raises(UserError) as err:
        read_torchvision_state_dict("imagenet")
    assert str(cached) in str(err.value) and "model.pretrained=PATH" in str(err.value)
    # a file put there by hand is what torchvision's cache holds: read without the network
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tv_state, cached)
    assert read_torchvision_state_dict("imagenet").keys() == tv_state.keys()


def test_freeze_and_lr_mult_name_real_modules():
    with pytest.raises(ConfigError, match=r"no such module: \['features.0'\].*features.conv1"):
        model("model.freeze=[features.0]")
    with pytest.raises(ConfigError, match="no such module"):
        model("model.lr_mult={classifier.fc9: 10}")
    with pytest.raises(ConfigError, match="above 0"):
        model("model.lr_mult={classifier.fc8: 0}")
    with pytest.raises(ConfigError, match=r"freeze freezes: \['features.conv1'\]"):
        model("model.freeze=[features]", "model.lr_mult={features.conv1: 2}")
    with pytest.raises(ConfigError, match="nothing to train"):
        model("model.freeze=[features, classifier]")


def test_groups_take_their_multiple_and_the_plateau_cuts_them_all():
    net = model(
        "model.freeze=[features.conv1]",
        "model.lr_mult={classifier: 10, classifier.fc8: 100, features.conv2: 0.5}",
        "model.scheduler.patience=0",
    )
    optimizer = net.configure_optimizers()
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx(
        {"base": 0.01, "classifier": 0.1, "classifier.fc8": 1.0, "features.conv2": 0.005}
    )
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert params == {id(p) for p in net.parameters() if p.requires_grad}
    assert not any(id(p) in params for p in net.net.features.conv1.parameters())
    net.lr_scheduler.step(1.0)
    net.lr_scheduler.step(1.0)
    cut = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert cut == pytest.approx({k: v / 10 for k, v in lrs.items()})
    assert net.lr_drops() == 1


def test_finetune_trains_resumes_and_predicts_without_the_file(
    tv_state, tv_file, tiny_root, train_config, tmp_path
):
    data = imagefolder_overrides(tiny_root, tmp_path / "cache")
    overrides = ["experiment=finetune", f"model.pretrained={tv_file}", "test=false", *FEW_STEPS]
    cfg = train_config(*overrides, "callbacks.model_checkpoint=null", data=data)
    train(cfg)
    run = Path(cfg.paths.output_dir)
    ckpt = run / "checkpoints" / "last.ckpt"
    trained, _ = load_classifier(ckpt)
    state = trained.net.state_dict()
    for tv_name in TV_BODY:
        name = TORCHVISION_LAYERS[tv_name]
        same = torch.equal(state[f"{name}.weight"], tv_state[f"{tv_name}.weight"])
        # the experiment freezes the convolutions; the fully connected layers learn
        assert same == name.startswith("features"), name
    curves = scalars(run)
    assert curves["lr-SGD/base"] == pytest.approx([0.001])
    assert curves["lr-SGD/classifier.fc8"] == pytest.approx([0.01])

    tv_file.unlink()
    image = next((tiny_root / "val" / "8.0").iterdir())
    (result,) = predict(compose_config("predict", [f"ckpt_path={ckpt}", f"image={image}"], run))
    assert len(result["top"]) == 5
    metrics = evaluate(compose_config("eval", [f"ckpt_path={ckpt}", "split=val"], run / "eval"))
    assert 0 <= metrics["val/acc"] <= 1
    # resumed with the same command line: the checkpoint's weights, the file not read
    resumed = train_config(*overrides, f"ckpt_path={ckpt}", "trainer.max_epochs=2",
                           "callbacks.model_checkpoint=null", data=data)  # fmt: skip
    train(resumed)
    # freeze decides the optimizer's groups, which the checkpoint restores: it may not change
    with pytest.raises(ConfigError, match=r"model.freeze=\[\]"):
        train(train_config(*overrides, f"ckpt_path={ckpt}", "model.freeze=[]", data=data))
    # a checkpoint from before these keys existed was trained with none: unset, empty or null
    old = torch.load(ckpt, weights_only=True)
    del old["format_version"]
    model = old["hyper_parameters"]
    for key in ("pretrained", "freeze", "lr_mult"):
        del model[key]
    net = model.pop("net")  # the network's arguments sat beside the classifier's then
    model |= {"arch": net.pop("_target_"), **net}
    torch.save(old, tmp_path / "old.ckpt")
    none = ["model.freeze=[]", "model.lr_mult=null", f"ckpt_path={tmp_path / 'old.ckpt'}"]
    cfg = train_config(*overrides, *none, data=data)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, class_names=datamodule.classes)
    check_resume(cfg.ckpt_path, model, datamodule)


def test_docs_state_the_finetune_recipe():
    cfg = compose("train", ["experiment=finetune", "data.root=x"])
    section = " ".join((ROOT / "docs" / "finetuning.md").read_text().split())
    model_cfg = cfg.model
    assert f"lr {model_cfg.optimizer.lr:g}" in section
    assert f"`classifier.fc8` ×{model_cfg.lr_mult['classifier.fc8']:g}" in section
    assert f"{cfg.trainer.max_epochs} epochs" in section
    assert "was not measured" in section
