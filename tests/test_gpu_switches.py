"""The switches chosen on a GPU, each trained for one step on the CPU, saved and predicted with."""

from pathlib import Path

import pytest
import torch

from src.predict import predict
from src.train import train
from src.utils import on_gpu
from tests.conftest import compose_config

ONE_STEP = [
    "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1", "test=false",
    "callbacks.learning_rate_monitor=null",
]  # fmt: skip


@pytest.mark.parametrize(
    "switch",
    [
        ["trainer.precision=bf16-mixed"],
        ["model.channels_last=true"],
        ["model.channels_last=true", "data.backend=pil"],
        # inductor builds its kernels with the C++ compiler, a process of its own
        pytest.param(["model=cnn4", "model.compile=true"], marks=pytest.mark.slow),
        ["trainer.benchmark=true", "data.pin_memory=true"],
    ],
    ids=["bf16", "channels_last", "channels_last_pil", "compile", "benchmark_pin_memory"],
)
def test_switch_trains_saves_and_predicts(switch, train_config, tiny_root, tmp_path):
    cfg = train_config(*ONE_STEP, *switch)
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k]
    image = next((tiny_root / "val" / "8.0").iterdir())
    predict_cfg = compose_config("predict", [f"ckpt_path={ckpt}", f"image={image}"], tmp_path)
    (result,) = predict(predict_cfg)
    assert len(result["top"]) == 5 and all(0 < p < 1 for _, p in result["top"])  # not NaN


def test_gpu_switches_follow_the_accelerator(train_config):
    assert on_gpu("gpu", "bf16-mixed", "32-true") == "bf16-mixed"
    assert on_gpu("cpu", "bf16-mixed", "32-true") == "32-true"
    cfg = train_config()  # the tiny runs use trainer.accelerator=cpu
    assert (cfg.trainer.precision, cfg.trainer.benchmark) == ("32-true", False)
    assert not cfg.model.compile and not cfg.model.channels_last
    gpu = train_config("trainer.accelerator=gpu")
    assert (gpu.trainer.precision, gpu.model.compile, gpu.model.channels_last) == (
        "bf16-mixed", True, True,
    )  # fmt: skip
