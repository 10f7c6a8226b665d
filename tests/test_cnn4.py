"""The four-layer net of Figure 1 as cuda-convnet's layers-18pct publishes it, built from the
composed ``experiment=relu_vs_tanh`` config and checked, object by object, against the files'
values; its rnorm and pooling against loops that follow cuda-convnet's arithmetic; CIFAR-10
with the mean image subtracted."""

import math
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from src.checkpoints import FORMAT_VERSION, MODEL_KEYS_RESUME_MAY_CHANGE, contradictions, upgrade
from src.data.cifar10 import CIFAR10Files
from src.data.statistics import pixel_mean_image
from src.models.classifier import ImageClassifier
from src.models.cnn4 import WithinMapNorm
from src.train import train
from src.utils import ConfigError
from tests.conftest import compose, compose_config, quick_overrides, scalars
from tests.test_cifar10 import write_cifar10

CLASSES = [str(i) for i in range(10)]
EXPERIMENT = ["experiment=relu_vs_tanh"]


def classifier(*overrides: str, seed: int = 0) -> ImageClassifier:
    """The LightningModule the composed train config builds, its weights drawn after ``seed``."""
    cfg = compose("train", list(overrides))
    torch.manual_seed(seed)
    return instantiate(cfg.model, class_names=CLASSES)


@pytest.fixture(scope="module")
def published() -> ImageClassifier:
    return classifier(*EXPERIMENT)


def test_layers_pooling_activations_and_rnorm_sit_where_the_file_has_them(published):
    f = published.net.features
    kinds = [(name, type(m).__name__) for name, m in f.named_children()]
    assert kinds == [
        ("conv1", "Conv2d"), ("pool1", "MaxPool2d"), ("act1", "ReLU"), ("rnorm1", "WithinMapNorm"),
        ("conv2", "Conv2d"), ("act2", "ReLU"), ("pool2", "AvgPool2d"), ("rnorm2", "WithinMapNorm"),
        ("conv3", "Conv2d"), ("act3", "ReLU"), ("pool3", "AvgPool2d"),
    ]  # fmt: skip
    for conv, maps in ((f.conv1, 32), (f.conv2, 32), (f.conv3, 64)):
        shape = (conv.out_channels, conv.kernel_size, conv.padding, conv.stride)
        assert shape == (maps, (5, 5), (2, 2), (1, 1))
    for pool in (f.pool1, f.pool2, f.pool3):
        assert (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) == (3, 2, 0, True)
    for norm in (f.rnorm1, f.rnorm2):
        assert (norm.size, norm.scale, norm.power) == (3, 5e-5, 0.75)
    assert published.net.fc.in_features == 64 * 4 * 4 and published.net.fc.out_features == 10
    assert published.net.dropout.p == 0.0
    # cuda-convnet's map sizes for a 32-px image: 32 -> 16 -> 8 -> 4
    sizes = {}
    for name in ("pool1", "pool2", "pool3"):
        getattr(f, name).register_forward_hook(
            lambda m, i, out, name=name: sizes.__setitem__(name, out.shape[-1])
        )
    published.net(torch.zeros(1, 3, 32, 32))
    assert sizes == {"pool1": 16, "pool2": 8, "pool3": 4}


def test_weights_start_at_the_files_init_and_biases_at_zero(published):
    net = published.net
    layers = {"conv1": 1e-4, "conv2": 0.01, "conv3": 0.01, "fc": 0.01}
    for name, std in layers.items():
        layer = net.get_submodule(f"features.{name}" if name != "fc" else name)
        w = layer.weight.detach()
        # 2,400 to 51,200 draws: the sample std is within 3 % of the drawn one
        assert float(w.std()) == pytest.approx(std, rel=0.05), name
        assert abs(float(w.mean())) < 4 * std / math.sqrt(w.numel()), name
        assert not layer.bias.any(), name


def test_tanh_changes_only_the_neuron(published):
    tanh = classifier(*EXPERIMENT, "model.net.activation=tanh")
    relu_layers = dict(published.net.features.named_children())
    for name, layer in tanh.net.features.named_children():
        expected = nn.Tanh if name.startswith("act") else type(relu_layers[name])
        assert type(layer) is expected, name
    # drawn after the same seed: the very same initial weights
    for (name, p), q in zip(published.net.named_parameters(), tanh.net.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_optimizer_biases_at_twice_the_rate_and_no_weight_decay(published):
    optimizer = published.configure_optimizers()
    names = {id(p): n for n, p in published.net.named_parameters()}
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"base", "base.bias"}
    weights = sorted(names[id(p)] for p in groups["base"]["params"])
    biases = sorted(names[id(p)] for p in groups["base.bias"]["params"])
    assert all(n.endswith(".weight") for n in weights) and len(weights) == 4
    assert all(n.endswith(".bias") for n in biases) and len(biases) == 4
    assert groups["base"]["lr"] == pytest.approx(0.001)
    assert groups["base.bias"]["lr"] == pytest.approx(2 * groups["base"]["lr"])
    for group in optimizer.param_groups:
        assert group["weight_decay"] == 0 and group["momentum"] == 0.9
    # a rate of the sweep's grid: the biases follow it
    fast = classifier(*EXPERIMENT, "model.optimizer.lr=0.01").configure_optimizers()
    assert [g["lr"] for g in fast.param_groups] == pytest.approx([0.01, 0.02])


def test_bias_multiple_combines_with_lr_mult_and_the_plateau_cuts():
    module = classifier(
        "model=cnn4", "model/scheduler=plateau", "model.scheduler.patience=0",
        "model.lr_mult={fc: 10}", "model.freeze=[features.conv1]",
    )  # fmt: skip
    optimizer = module.configure_optimizers()
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx({"base": 1e-3, "base.bias": 2e-3, "fc": 1e-2, "fc.bias": 2e-2})
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in module.net.parameters() if p.requires_grad}
    for _ in range(2):
        module.lr_scheduler.step(1.0)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == pytest.approx(
        {k: v / 10 for k, v in lrs.items()}
    )
    assert module.lr_drops() == 1
    # group 0 a bias group: the count is the same
    module.lr_scheduler.optimizer.param_groups.reverse()
    assert module.lr_drops() == 1


def test_the_legacy_net_keeps_one_plain_group_and_bad_multiples_are_named():
    legacy = classifier("model=cnn4_legacy")
    f = legacy.net.features
    assert [type(f.get_submodule(f"pool{i}")) for i in (1, 2, 3)] == [nn.MaxPool2d] * 3
    assert not any(isinstance(m, WithinMapNorm) for m in f.modules())
    assert float(f.conv1.weight.std()) == pytest.approx(0.01, rel=0.05)
    (group,) = legacy.configure_optimizers().param_groups
    assert "name" not in group and group["lr"] == 0.01
    for key, value in (("bias_lr_mult", "0"), ("net.pools", "[max,avg]")):
        with pytest.raises(InstantiationException, match=f"model.{key}=") as err:
            classifier("model=cnn4", f"model.{key}={value}")
        assert isinstance(err.value.__cause__, ConfigError)


def test_a_checkpoint_of_the_old_net_resumes_as_cnn4_legacy_only():
    """A cnn4 checkpoint from before format 3 has none of the new keys: it was the legacy net,
    with one rate for weights and biases."""
    old_model = {
        "class_names": CLASSES, "arch": "src.models.cnn4.CNN4", "widths": [32, 32, 64],
        "activation": "relu", "dropout": 0.0, "init": "paper", "freeze": [], "lr_mult": {},
        "scheduler_monitor": "val/loss", "max_lr_drops": None, "compile": False,
        "channels_last": False, "pretrained": None,
    }  # fmt: skip
    saved = upgrade({"format_version": 2, "hyper_parameters": old_model})
    assert saved["format_version"] == FORMAT_VERSION
    saved = saved["hyper_parameters"]
    assert saved["bias_lr_mult"] == 1.0 and saved["net"]["pools"] == ["max"] * 3
    assert not saved["net"]["rnorm"] and saved["net"]["_target_"] == "src.models.cnn4.CNN4"

    def conflicts(*overrides: str) -> list[str]:
        model = classifier(*overrides)
        return contradictions("model", model.hparams, saved, MODEL_KEYS_RESUME_MAY_CHANGE)

    assert conflicts("model=cnn4_legacy") == []
    assert any(c.startswith("model.net.pools=") for c in conflicts("model=cnn4"))
    assert ImageClassifier(**saved).net.features.pool2.__class__ is nn.MaxPool2d


def rnorm_by_loops(x: torch.Tensor, size: int, scale: float, power: float) -> torch.Tensor:
    """cuda-convnet's rnorm unit by unit: the window starts size // 2 before the unit and is cut
    at the map's edge; scale is divided by size^2 whatever the cut."""
    out = torch.empty_like(x)
    n, c, h, w = x.shape
    for b, m, y, z in ((b, m, y, z) for b in range(n) for m in range(c) for y in range(h)
                       for z in range(w)):  # fmt: skip
        top, left = y - size // 2, z - size // 2
        total = sum(
            float(x[b, m, i, j]) ** 2
            for i in range(max(0, top), min(h, top + size))
            for j in range(max(0, left), min(w, left + size))
        )
        out[b, m, y, z] = x[b, m, y, z] * (1 + scale / size**2 * total) ** -power
    return out


@pytest.mark.parametrize("size", [3, 4])
def test_rnorm_is_the_within_map_formula(size):
    x = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scale, power = 0.5, 0.75  # large enough that every unit is changed visibly
    got = WithinMapNorm(size, scale, power)(x)
    assert torch.allclose(got, rnorm_by_loops(x, size, scale, power), rtol=1e-12, atol=0)
    # not across maps: the other maps do not matter
    shuffled = x.clone()
    shuffled[:, 1:] = torch.randn_like(shuffled[:, 1:])
    assert torch.equal(WithinMapNorm(size, scale, power)(shuffled)[:, 0], got[:, 0])


@pytest.mark.parametrize(("kind", "size"), [("avg", 32), ("avg", 16), ("avg", 9), ("max", 32)])
def test_pooling_is_cuda_convnets_arithmetic(published, kind, size):
    """outputsX=0: ceil((size - 3) / 2) + 1 windows per side, clipped at the far edge, where an
    average divides by the part inside the map."""
    pool = published.net.features.pool2 if kind == "avg" else published.net.features.pool1
    x = torch.randn(1, 2, size, size, generator=torch.Generator().manual_seed(1))
    outputs = math.ceil((size - 3) / 2) + 1
    expected = torch.empty(1, 2, outputs, outputs)
    for i in range(outputs):
        for j in range(outputs):
            window = x[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3]
            reduced = window.mean((2, 3)) if kind == "avg" else window.amax((2, 3))
            expected[:, :, i, j] = reduced
    assert torch.allclose(pool(x), expected, atol=1e-6)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("cifar10"), per_batch=8, test=6)


def test_cifar10_subtracts_the_mean_image_of_all_training_images(cifar_root, tmp_path):
    cfg = compose_config(
        "train", [*EXPERIMENT, "data=cifar10", f"data.root={cifar_root}"], tmp_path
    )
    datamodule = instantiate(cfg.data, num_workers=0, batch_size=4)
    datamodule.prepare_data()
    datamodule.setup("fit")
    pixels = torch.from_numpy(CIFAR10Files(str(cifar_root)).data).permute(0, 3, 1, 2)
    mean = pixels.double().mean(0) / 255
    assert torch.allclose(datamodule.statistics["mean_image"], mean)
    squares, _ = next(iter(datamodule.val_dataloader()))
    inputs = datamodule.transform(squares, "val")
    assert torch.allclose(inputs, squares.float() - pixel_mean_image(mean), atol=1e-4)
    # the mean image is carried with the data module's state, as checkpoints carry it
    assert torch.equal(datamodule.state_dict()["mean_image"], datamodule.statistics["mean_image"])


def test_the_experiment_trains_on_cifar10_and_logs_the_bias_rate(cifar_root, tmp_path):
    overrides = [*EXPERIMENT, "data=cifar10", f"data.root={cifar_root}"]
    overrides += quick_overrides(tmp_path / "logs")
    # the experiment turns the rate monitor off; on here, to see the groups it logs
    monitor = "lightning.pytorch.callbacks.LearningRateMonitor"
    overrides += [f"callbacks.learning_rate_monitor={{_target_:{monitor}}}"]
    cfg = compose_config("train", overrides, tmp_path / "run")
    metrics = train(cfg)
    assert 0 <= float(metrics["train/error"]) <= 1
    curves = scalars(Path(cfg.paths.output_dir))
    assert curves["lr-SGD/base"] == pytest.approx([0.001])
    assert curves["lr-SGD/base.bias"] == pytest.approx([0.002])
