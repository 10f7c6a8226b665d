"""On an NVIDIA GPU only (bench/bench_gpu.sh runs them): the GPU switches and the on-device
batch transforms where they are meant to run."""

from pathlib import Path

import pytest
import torch

from src.data.batch_transform import BatchTransform
from src.predict import predict
from src.train import train
from tests.conftest import compose_config
from tests.test_gpu_switches import ONE_STEP

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
]


def test_batch_transform_on_the_gpu_equals_the_cpu():
    images = torch.randint(0, 256, (8, 3, 72, 72), dtype=torch.uint8)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    transform = BatchTransform(64, mean, std)
    on_cpu = transform(images, "val")
    on_gpu = transform(images.cuda(), "val", channels_last=True)
    assert on_gpu.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu)


def test_every_gpu_switch_at_once(train_config, tiny_root, tmp_path):
    cfg = train_config(*ONE_STEP, "trainer.accelerator=gpu", "model=cnn4")
    assert (cfg.trainer.precision, cfg.model.compile, cfg.model.channels_last) == (
        "bf16-mixed", True, True,
    )  # fmt: skip
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    image = next((tiny_root / "val" / "8.0").iterdir())
    (result,) = predict(
        compose_config("predict", [f"ckpt_path={ckpt}", f"image={image}"], tmp_path)
    )
    assert all(0 < p < 1 for _, p in result["top"])


def test_crops_on_the_gpu_are_the_cpus_bit_for_bit():
    """One gather on the device, from the same CPU draws: the same crops and flips."""
    from src.data.augment import CROPS_AND_FLIPS, build_operations

    images = torch.randint(0, 256, (16, 3, 72, 72), dtype=torch.uint8)
    transform = BatchTransform(64, operations=build_operations(CROPS_AND_FLIPS))
    torch.manual_seed(0)
    on_cpu = transform(images, "train")
    torch.manual_seed(0)
    on_gpu = transform(images.cuda(), "train")
    assert torch.equal(on_gpu.cpu(), on_cpu)
