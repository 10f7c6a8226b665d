import json
import logging
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from src.checkpoints import datamodule_from_checkpoint, load_classifier
from src.data.images import load_rgb
from src.data.micrographs import CLASSES
from src.eval import evaluate
from src.predict import predict
from src.train import train
from tests.conftest import (
    ROOT,
    compose_config,
    micrograph_overrides,
    quick_overrides,
    run_cli,
    scalars,
    with_tiny_net,
)


def test_fast_dev_run(train_config):
    cfg = train_config("debug=fdr")
    metrics = train(cfg)
    assert {"train/loss", "val/acc", "test/acc", "test/acc_top5"} <= set(metrics)
    classes = json.loads((Path(cfg.paths.output_dir) / "class_indices.json").read_text())
    assert list(classes.values()) == sorted(CLASSES) and classes["13"] == "9.5"


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, tiny_root):
    """Two epochs of the default run on the tiny tree, its test pass included, shared by the
    tests below."""
    tmp = tmp_path_factory.mktemp("default_run")
    overrides = micrograph_overrides(tiny_root) + quick_overrides(tmp / "logs")
    overrides = with_tiny_net([*overrides, "trainer.max_epochs=2"])
    cfg = compose_config("train", overrides, tmp / "run")
    return cfg, train(cfg), overrides


def test_training_logs_checkpoints_and_curves(default_run):
    cfg, metrics, _ = default_run
    run = Path(cfg.paths.output_dir)
    names = {"train/loss", "train/acc", "train/error", "val/loss", "val/acc", "val/acc_top5"}
    names |= {"val/acc_best", "test/loss", "test/acc", "test/acc_top5"}
    assert names <= set(metrics)
    curves = scalars(run)
    assert len(curves["train/acc"]) == 2 and len(curves["val/acc"]) == 2
    # the sanity check's batches never count towards the best validation accuracy
    assert curves["val/acc_best"][-1] == pytest.approx(max(curves["val/acc"]))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run / "checkpoints").glob("epoch_*.ckpt"))) == 1
    assert metrics["val/acc_best"] == pytest.approx(max(curves["val/acc"]))


def test_eval_reproduces_the_test_accuracy_from_the_checkpoint_alone(default_run, tmp_path):
    """No data overrides: data module, root and preprocessing all come from the checkpoint."""
    cfg, metrics, _ = default_run
    best = next((Path(cfg.paths.output_dir) / "checkpoints").glob("epoch_*.ckpt"))
    eval_cfg = compose_config("eval", [f"ckpt_path={best}", "trainer.accelerator=cpu"], tmp_path)
    results = evaluate(eval_cfg)
    assert results["test/acc"] == pytest.approx(metrics["test/acc"])
    assert results["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)


@pytest.mark.parametrize("backend", ["cache", "pil"])
def test_eval_ten_crop_scores_both_ways_in_one_pass(default_run, tmp_path, backend, caplog):
    """ten_crop=true adds the ten crops' accuracies beside the centre crop's metrics, which stay
    those of a centre-crop evaluation, on the test split and (split=val) the validation split."""
    cfg, _, _ = default_run
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    runs = iter(range(10))

    def run(*overrides: str) -> dict[str, float]:
        args = [f"ckpt_path={ckpt}", "trainer.accelerator=cpu", f"+data.backend={backend}"]
        return evaluate(compose_config("eval", [*args, *overrides], tmp_path / f"{next(runs)}"))

    caplog.set_level(logging.INFO, logger="src.eval")
    for split in ("test", "val"):
        centre = run(f"split={split}", "ten_crop=false")
        ten = run(f"split={split}", "ten_crop=true")
        assert f"{split}/acc_tencrop" not in centre
        assert {f"{split}/acc_tencrop", f"{split}/acc_top5_tencrop"} <= set(ten)
        assert ten[f"{split}/acc"] == centre[f"{split}/acc"]
        assert ten[f"{split}/acc_top5"] == centre[f"{split}/acc_top5"]
        assert ten[f"{split}/loss"] == pytest.approx(centre[f"{split}/loss"], rel=1e-5)
    assert "centre crop   ten crops" in caplog.text
    with pytest.raises(ValueError, match="ten_crop=true"):
        run("+data.ten_crop=true")
    with pytest.raises(ValueError, match="ten_crop='often'"):
        run("ten_crop=often")


def test_resume_continues_at_the_next_epoch(default_run, train_config, caplog):
    cfg, _, _ = default_run
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    before = torch.load(last, weights_only=False)
    resumed = train_config(f"ckpt_path={last}", "trainer.max_epochs=3", "test=false")
    caplog.set_level(logging.INFO, logger="src.train")
    train(resumed)
    # the log says what the run resumed from
    assert f"resumed from {last}: epoch 1 (counting from 0), step 8" in caplog.text
    after = torch.load(
        Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False
    )
    assert (before["epoch"], after["epoch"]) == (1, 2)
    assert after["global_step"] == before["global_step"] * 3 // 2
    assert len(scalars(Path(resumed.paths.output_dir))["train/acc"]) == 1


def test_predict_logs_top5_and_saves_the_picture(default_run, tiny_root, tmp_path, caplog):
    cfg, _, _ = default_run
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    image = next((tiny_root / "val" / "8.0").iterdir())
    pcfg = compose_config("predict", [f"ckpt_path={ckpt}", f"image={image}"], tmp_path)
    caplog.set_level(logging.INFO, logger="src.predict")
    (result,) = predict(pcfg)
    out = caplog.text
    assert str(image) in out and out.count("\n  ") >= 5
    # the probabilities the validation loop computes for the same file: predict preprocesses
    # exactly as training evaluated (crop, scale), from the checkpoint alone
    model, checkpoint = load_classifier(ckpt)
    datamodule = datamodule_from_checkpoint(checkpoint, {"backend": "pil"})
    datamodule.setup("validate")
    val = datamodule.datasets["val"]
    square, label = val[[p for p, _ in val.samples].index(str(image))]
    with torch.inference_mode():
        probs = model(datamodule.transform(square[None], "val")).softmax(-1)[0]
    top = probs.topk(5)
    expected = [(model.class_names[i], float(p)) for p, i in zip(*top, strict=True)]
    assert [name for name, _ in result["top"]] == [name for name, _ in expected]
    assert [p for _, p in result["top"]] == pytest.approx([p for _, p in expected], abs=1e-6)
    assert model.class_names[label] == "8.0"
    with Image.open(result["figure"]) as png:
        assert png.format == "PNG" and png.size[0] > 100
    assert json.loads((tmp_path / "predictions.json").read_text())[0]["path"] == image.name


def test_predict_ten_crop_averages_the_softmax_over_ten_crops(
    default_run, tiny_root, tmp_path, caplog
):
    cfg, _, _ = default_run
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    image = next((tiny_root / "val" / "8.0").iterdir())
    caplog.set_level(logging.INFO, logger="src.predict")
    top = {}
    for ten_crop in (False, True):
        args = [f"ckpt_path={ckpt}", f"image={image}", "top_k=14", f"ten_crop={ten_crop}"]
        (result,) = predict(compose_config("predict", args, tmp_path / str(ten_crop)))
        top[ten_crop] = dict(result["top"])
    assert "softmax averaged over 10 crops" in caplog.text
    assert top[True] != top[False]
    model, checkpoint = load_classifier(ckpt)
    data = checkpoint["datamodule_hyper_parameters"]
    # torchvision's per-image transforms, as an independent reference
    per_image = v2.Compose(
        [
            v2.Resize(data["resize_size"]),
            v2.CenterCrop(data["resize_size"]),
            v2.TenCrop(data["crop_size"]),
            lambda crops: torch.stack([v2.functional.pil_to_tensor(c) for c in crops]),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(data["mean"], data["std"]),
        ]
    )
    with torch.inference_mode():
        probs = model(per_image(load_rgb(image))).softmax(-1).mean(0)
    expected = {name: float(p) for name, p in zip(model.class_names, probs, strict=True)}
    assert top[True] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="ten_crop='often'"):
        predict(compose_config("predict", [*args[:3], "ten_crop=often"], tmp_path))


def test_predict_needs_a_real_checkpoint(tmp_path):
    pcfg = compose_config("predict", [f"ckpt_path={tmp_path}/x.ckpt", "image=."], tmp_path)
    with pytest.raises(FileNotFoundError, match="x.ckpt' not found"):
        predict(pcfg)


@pytest.mark.slow
def test_command_line_run_writes_a_run_directory(tiny_overrides, tmp_path):
    """The real entry point: Hydra's own run directory, config and logs."""
    result = run_cli("debug=limit", *with_tiny_net(tiny_overrides), cwd=tmp_path)
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "class_indices.json").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert f"tensorboard --logdir {run.resolve()}" in result.stdout
    # the summary is logged, so the run's log file holds it too
    assert f"tensorboard --logdir {run.resolve()}" in (run / "train.log").read_text()


def imported(result: subprocess.CompletedProcess) -> set[str]:
    """The top-level packages a ``python -X importtime`` run imported."""
    lines = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    return {name.split(".")[0] for name in lines if name and not name.startswith("import")}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("entry", "args", "printed"),
    [("src.train", ["model=alexnet"], "widths:\n    - 96"),
     ("src.eval", ["ckpt_path=x"], "ckpt_path: x"),
     ("src.predict", ["ckpt_path=x", "image=y"], "image: 'y'"),
     ("src.export", ["ckpt_path=x"], "format: onnx")],
)  # fmt: skip
def test_the_command_line_answers_before_torch_loads(entry, args, printed, tmp_path):
    """--cfg job prints the config these overrides compose and --help lists the config groups
    with their options, neither importing torch (so both answer in about a second)."""
    timed = ("-X", "importtime")
    out = run_cli("--cfg", "job", *args, module=entry, cwd=tmp_path, python_args=timed)
    assert printed in out.stdout and "torch" not in imported(out)
    helped = run_cli("--help", module=entry, cwd=tmp_path, python_args=timed)
    assert "torch" not in imported(helped)
    groups = helped.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    if entry == "src.train":
        models = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
        assert f"model: {', '.join(models)}" in groups


def test_paper_schedule_cuts_the_rate_then_stops(train_config):
    """Section 5: lr / 10 when validation error stalls, three times in all (one here), then stop.
    A rate of 1e-6 leaves the error where it is, so every epoch after the first stalls."""
    cfg = train_config(
        "model.optimizer.lr=1e-6", "model.scheduler.patience=0", "model.max_lr_drops=1",
        "model.scheduler_monitor=val/error", "trainer.max_epochs=10", "test=false",
    )  # fmt: skip
    train(cfg)
    curves = scalars(Path(cfg.paths.output_dir))
    assert len(curves["val/error"]) == 3
    assert curves["lr-SGD"] == pytest.approx([1e-6, 1e-6, 1e-7])
