"""src.export: one self-contained ONNX file with a dynamic batch, its preprocessing written down,
onnxruntime's logits as PyTorch's on real images, and a script that classifies without PyTorch
as src.predict does."""

import csv
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from hydra.utils import instantiate

from src.checkpoints import evaluation_transform, load_classifier, read_checkpoint
from src.data.images import image_files, load_square
from src.export import export
from src.utils import ConfigError, UserError
from tests.conftest import compose, compose_config, micrograph_overrides
from tests.test_predict import read_csv, run_predict


@pytest.fixture
def ckpt(trained) -> Path:
    return trained("cnn4_mean_image")


def run_export(ckpt: Path, out: Path, *overrides: str) -> Path:
    return export(compose_config("export", [f"ckpt_path={ckpt}", f"output={out}", *overrides], out))


def untrained(
    ckpt: Path, tiny_root: Path, model: str, path: Path, input_scale: str = "standardised"
) -> Path:
    """The tiny checkpoint with the untrained network of ``model=MODEL`` (and another input
    scale) in place of its own: every model preset at the tiny tree's 64 px crop, AlexNet's
    fully connected layers narrowed to 256 (its convolutions, LRN and groups as they are)."""
    checkpoint = read_checkpoint(ckpt)
    narrow = ["model.net.hidden=256"] if model.startswith("alexnet") else []
    cfg = compose("train", [*micrograph_overrides(tiny_root), f"model={model}", *narrow])
    torch.manual_seed(0)
    module = instantiate(cfg.model, class_names=checkpoint["hyper_parameters"]["class_names"])
    checkpoint["hyper_parameters"] = dict(module.hparams)
    checkpoint["state_dict"] = module.state_dict()
    checkpoint["datamodule_hyper_parameters"]["input_scale"] = input_scale
    if input_scale == "mean_image":
        state = checkpoint[checkpoint["datamodule_target"].rsplit(".", 1)[-1]]
        state |= {
            "mean_image": torch.rand(3, 72, 72, generator=torch.Generator().manual_seed(0)),
            "eigvals": torch.ones(3),
            "eigvecs": torch.eye(3),
        }
    torch.save(checkpoint, path)
    return path


def classify_module(folder: Path) -> ModuleType:
    """The exported folder's classify.py, imported (here, where torch exists, for its
    preprocessing alone)."""
    spec = importlib.util.spec_from_file_location(f"classify_{folder.name}", folder / "classify.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("model", "input_scale"),
    [("alexnet_half", "standardised"), ("alexnet", "standardised"), ("cnn4", "raw"),
     ("cnn4", "mean_image")],
)  # fmt: skip
def test_onnxruntime_gives_pytorchs_logits_on_real_images(
    ckpt, tiny_root, tmp_path, model, input_scale
):
    path = untrained(ckpt, tiny_root, model, tmp_path / "model.ckpt", input_scale)
    out = run_export(path, tmp_path / "export")
    expected = {"model.onnx", "preprocessing.json", "classify.py", "README.md"}
    expected |= {"mean_image.npy"} if input_scale == "mean_image" else set()
    assert {p.name for p in out.iterdir()} == expected  # one file: no external data
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    onnx.checker.check_model(proto)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer)
    (dims,) = [i.type.tensor_type.shape.dim for i in proto.graph.input]
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 64]
    # real images, preprocessed as preprocessing.json says (classify.py's numpy steps) ...
    classify = classify_module(out)
    files = image_files(tiny_root / "val")
    inputs = np.concatenate([classify.preprocess(f) for f in files])
    # ... are exactly what src.predict feeds the network
    net, checkpoint = load_classifier(path)
    transform = evaluation_transform(checkpoint)
    squares = torch.stack([torch.from_numpy(load_square(f, 72)) for f in files])
    reference = transform(squares, "predict")
    np.testing.assert_allclose(inputs, reference.numpy(), rtol=0, atol=1e-5)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    (logits,) = session.run(["logits"], {"input": inputs})
    with torch.inference_mode():
        torch_logits = net(torch.from_numpy(inputs)).numpy()
    assert logits.shape == (len(files), 14)
    np.testing.assert_allclose(logits, torch_logits, rtol=0, atol=1e-4)
    # and any batch size
    (one,) = session.run(["logits"], {"input": inputs[:1]})
    np.testing.assert_allclose(one, torch_logits[:1], rtol=0, atol=1e-4)


def script_rows(out: Path, *args: str, monkeypatch: pytest.MonkeyPatch, capsys) -> list[dict]:
    """classify.py's table for ARGS, run in this process as its command line runs it."""
    monkeypatch.setattr(sys, "argv", ["classify.py", *args])
    capsys.readouterr()
    classify_module(out).main()
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


@pytest.mark.parametrize("ten_crop", [False, True])
def test_the_exported_script_agrees_with_predict(
    ckpt, tiny_root, tmp_path, ten_crop, monkeypatch, capsys
):
    out = run_export(ckpt, tmp_path / "export")
    readme = (out / "README.md").read_text()
    assert "python classify.py" in readme and "onnxruntime" in readme
    assert (out / "classify.py").read_text().strip() in readme
    folder = tiny_root / "test"
    args = [str(folder), "--batch-size", "5", *(["--ten-crop"] if ten_crop else [])]
    script = script_rows(out, *args, monkeypatch=monkeypatch, capsys=capsys)
    run_predict(ckpt, folder, tmp_path / "predict", f"ten_crop={ten_crop}")
    predicted = read_csv(tmp_path / "predict" / "predictions.csv")
    assert [r["path"] for r in script] == [r["path"] for r in predicted]
    assert [r["class"] for r in script] == [r["class"] for r in predicted]
    for mine, theirs in zip(script, predicted, strict=True):
        assert float(mine["probability"]) == pytest.approx(float(theirs["probability"]), abs=1e-5)


@pytest.mark.slow
def test_the_exported_script_runs_where_torch_is_not_installed(
    ckpt, tiny_root, tmp_path, monkeypatch, capsys
):
    out = run_export(ckpt, tmp_path / "export")
    blocked = tmp_path / "no-torch"
    blocked.mkdir()
    for name in ("torch", "torchvision", "lightning"):
        (blocked / f"{name}.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": str(blocked)}
    check = [sys.executable, "-c", "import torch"]
    assert subprocess.run(check, env=env, capture_output=True, cwd=tmp_path).returncode != 0
    args = [str(tiny_root / "test"), "--batch-size", "5"]
    result = subprocess.run([sys.executable, str(out / "classify.py"), *args], env=env,
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    alone = list(csv.DictReader(io.StringIO(result.stdout)))
    assert alone == script_rows(out, *args, monkeypatch=monkeypatch, capsys=capsys)


def test_export_names_the_extra_it_needs_and_the_formats(ckpt, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="format='tflite'"):
        run_export(ckpt, tmp_path, "format=tflite")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(UserError, match=r"onnxruntime.*pip install -e '\.\[export\]'"):
        run_export(ckpt, tmp_path)
