"""CIFAR-10 data module and the four-layer network, on tiny files in CIFAR-10's own format."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from src.data.cifar10 import CLASSES, CIFAR10DataModule
from src.models.cnn4 import CNN4
from src.train import train
from src.utils import ConfigError
from tests.conftest import compose_config, quick_overrides


def write_cifar10(root: Path, per_batch: int = 4, test: int = 6, seed: int = 0) -> Path:
    """Random 32x32 images in the python-pickle layout: five training batches, a test batch
    and batches.meta under root/cifar-10-batches-py."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(name: str, n: int) -> None:
        data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(i % len(CLASSES)) for i in range(n)]
        entry = {"batch_label": name, "labels": labels, "data": data, "filenames": []}
        (folder / name).write_bytes(pickle.dumps(entry))

    for i in range(1, 6):
        batch(f"data_batch_{i}", per_batch)
    batch("test_batch", test)
    meta = {"label_names": list(CLASSES), "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return root


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("cifar10"))


def test_offline_error_names_the_files_and_folder(tmp_path):
    dm = CIFAR10DataModule(root=str(tmp_path / "cifar10"))
    assert dm.classes[0] == "airplane" and len(dm.classes) == 10
    with pytest.raises(FileNotFoundError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "cifar-10-batches-py" in message and "data_batch_1" in message
    assert "batches.meta" in message and "data.download=true" in message


def test_reads_the_pickle_format(cifar_root):
    dm = CIFAR10DataModule(root=str(cifar_root), batch_size=4, num_workers=0, augment=None)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 20 and len(dm.datasets["val"]) == 6
    squares, y = next(iter(dm.train_dataloader()))
    assert squares.shape == (4, 3, 32, 32) and squares.dtype == torch.uint8
    x = dm.transform(squares, "train")
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert int(y.max()) < 10


def test_cnn4_shapes_and_paper_init():
    net = CNN4(num_classes=10, activation="tanh")
    assert sum(p.numel() for p in net.parameters()) == 89_578
    for size in (32, 64):
        assert net(torch.randn(2, 3, size, size)).shape == (2, 10)
    assert float(net.features.conv2.weight.std()) == pytest.approx(0.01, rel=0.1)
    assert float(net.fc.bias.abs().max()) == 0.0
    with pytest.raises(ValueError, match="model.net.init"):
        CNN4(init="xavier")


def test_cnn4_trains_on_cifar10_config(cifar_root, tmp_path):
    overrides = ["model=cnn4", "data=cifar10", f"data.root={cifar_root}"]
    overrides += quick_overrides(tmp_path / "logs")
    metrics = train(compose_config("train", overrides, tmp_path / "run"))
    assert {"train/error", "val/error", "test/acc"} <= set(metrics)


def test_a_data_file_that_would_run_code_is_refused(tmp_path):
    from tests.test_checkpoints import RunsCode

    root = write_cifar10(tmp_path / "cifar10")
    marker = tmp_path / "code_ran"
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({"data": RunsCode(marker), "labels": []}))
    dm = CIFAR10DataModule(root=str(root), num_workers=0)
    with pytest.raises(ConfigError, match="posix.system"):
        dm.setup("fit")
    assert not marker.exists()
