"""What a training run puts into TensorBoard: images, scalars and the HPARAMS tab, read from the
event files and from the real TensorBoard server."""

import io
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.train import train
from src.utils import instantiate_all
from tests.conftest import compose_config, micrograph_overrides, quick_overrides, with_tiny_net

HPARAM_METRICS = ["val/acc_best", "val/acc", "val/loss", "train/loss", "test/acc"]


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    accumulator.Reload()
    return accumulator


def image(event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_root) -> tuple[Path, dict[str, float]]:
    """Two epochs on the tiny tree with every callback on, filters after each epoch."""
    tmp = tmp_path_factory.mktemp("tensorboard")
    overrides = micrograph_overrides(tiny_root) + quick_overrides(tmp / "logs", images=True)
    overrides += ["trainer.max_epochs=2", "callbacks.first_layer_filters.every_n_epochs=1"]
    overrides += ["trainer.log_every_n_steps=2"]
    cfg = compose_config("train", with_tiny_net(overrides), tmp / "run")
    return Path(cfg.paths.output_dir), train(cfg)


def test_run_logs_samples_filters_confusion_and_speed(run):
    run_dir, metrics = run
    logged = events(run_dir)
    samples = logged.Images("samples/train")
    assert len(samples) == 1 and samples[0].step == 0
    # 8 images of the first batch, 64 px crops shown at 96 px or more, labelled
    assert samples[0].width >= 8 * 96 and samples[0].height >= 96
    # at the start, then after each of the 2 epochs of 4 steps (28 images in batches of 8)
    epoch_ends = [4, 8]
    assert [e.step for e in logged.Images("filters/conv1")] == [0, *epoch_ends]
    # one per validation epoch: the sanity check is none
    matrices = logged.Images("val/confusion_matrix")
    assert [e.step for e in matrices] == epoch_ends
    assert image(matrices[0]).std() > 10
    # images/s of the process over each epoch, training seconds so far
    speed = logged.Scalars("train/images_per_sec")
    assert [e.step for e in speed] == [3, 7] and min(e.value for e in speed) > 0
    seconds = [e.value for e in logged.Scalars("train/time")]
    assert seconds == sorted(seconds) and seconds[0] > 0


def test_callbacks_switch_off_and_need_tensorboard(train_config):
    off = ["callbacks.training_samples=null", "callbacks.confusion_matrix=null"]
    cfg = train_config(*off, images=True)
    names = {type(c).__name__ for c in instantiate_all(cfg.callbacks)}
    assert "TrainingSamples" not in names and "ValidationConfusionMatrix" not in names
    assert {"FirstLayerFilters", "Throughput", "HyperparametersWithMetrics"} <= names
    # with the CSV logger only, the image callbacks stay quiet and training runs
    cfg = train_config("logger=csv", "+trainer.limit_train_batches=1", "test=false", images=True)
    assert "val/acc" in train(cfg)
    assert not list(Path(cfg.paths.output_dir).rglob("events.out.tfevents.*"))


def test_alexnet_filters_show_the_two_towers_as_two_blocks(train_config):
    """groups=2: conv1's first and last 48 kernels as two blocks with a blank band between."""
    quick = ["+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1", "test=false"]
    no_checkpoints = [
        "callbacks.model_checkpoint=null",
        "callbacks.last_checkpoint=null",
        "+trainer.enable_checkpointing=false",
    ]
    bands = {}
    for model in ("alexnet", "alexnet_half"):
        cfg = train_config(f"model={model}", *quick, *no_checkpoints, images=True)
        train(cfg)
        (first,) = events(Path(cfg.paths.output_dir)).Images("filters/conv1")
        pixels = image(first)
        blank_rows = (pixels == 255).all(axis=(1, 2))
        runs, length = [], 0
        for blank in blank_rows:
            length = length + 1 if blank else 0
            runs.append(length)
        bands[model] = (max(runs), int(np.argmax(runs)) - max(runs) // 2, len(pixels))
    widest, centre, height = bands["alexnet"]
    # 11-px kernels enlarged 4 times: a 44-px band, with as many kernel rows above as below
    assert widest >= 44 and abs(centre - height / 2) < 4
    # one tower: only the 4-px padding between kernels
    assert bands["alexnet_half"][0] < 10


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_tensorboard_server_serves_images_scalars_and_hparams(run, tmp_path):
    run_dir, metrics = run
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(run_dir)]
    command += ["--port", str(port), "--host", "127.0.0.1"]
    with open(tmp_path / "tensorboard.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        scalars: dict = {}
        while "test/acc" not in scalars.get("tensorboard", {}):
            assert server.poll() is None, (tmp_path / "tensorboard.log").read_text()
            assert time.monotonic() < deadline, "TensorBoard did not serve the run in 90 s"
            time.sleep(1)
            try:
                scalars = get(f"{url}/data/plugin/scalars/tags")
            except OSError:
                continue
        expected = {"val/acc", "train/loss", "train/images_per_sec"}
        assert expected <= set(scalars["tensorboard"])
        images = get(f"{url}/data/plugin/images/tags")["tensorboard"]
        assert {"samples/train", "filters/conv1", "val/confusion_matrix"} <= set(images)

        experiment = post(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""})
        hparams = {h["name"] for h in experiment["hparamInfos"]}
        assert {"model.optimizer.lr", "data.batch_size", "model.net._target_", "seed"} <= hparams
        ignored = ("callbacks.", "logger.", "paths.", "trainer.default_root_dir", "model._convert_",
                   "model._recursive_")  # fmt: skip
        assert not [h for h in hparams if h.startswith(ignored)]
        assert set(HPARAM_METRICS) <= {m["name"]["tag"] for m in experiment["metricInfos"]}

        statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
        body = {"experimentName": "", "allowedStatuses": statuses, "startIndex": 0}
        groups = post(f"{url}/data/plugin/hparams/session_groups", {**body, "sliceSize": 10})
        (group,) = groups["sessionGroups"]
        assert group["hparams"]["model.optimizer.lr"] == pytest.approx(0.01)
        assert group["hparams"]["data.batch_size"] == 8
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        for name in HPARAM_METRICS:
            assert values[name] == pytest.approx(metrics[name], rel=1e-6), name
    finally:
        server.terminate()
        server.wait(timeout=30)
