"""Export a checkpoint to run without PyTorch: ``python -m src.export ckpt_path=PATH
[format=onnx] [output=DIR]``.

Writes into ``output`` (default: this run's folder):

- ``model.onnx``: the network alone, one self-contained file (no external data), a dynamic batch
  dimension, input ``input`` float32 (batch, 3, crop, crop), the normalised crop; output
  ``logits`` (batch, classes). Made by ``torch.onnx.export`` with the exporter torch recommends
  (``dynamo=True``, through ``torch.export``), checked by ``onnx.checker`` and compared with
  PyTorch's logits by onnxruntime.
- ``preprocessing.json``: the class names in index order, the resize and crop sizes, mean, std,
  input scale, and every step from the file to the network's input, in order;
  ``mean_image.npy`` beside it when the checkpoint subtracts the training set's mean image.
- ``classify.py``: classifies files or folders with onnxruntime, numpy and Pillow alone, exactly
  as ``src.predict`` does (the same top-1 class); ``README.md`` says how to run it.

Needs the optional extra: ``pip install -e '.[export]'``.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import numpy as np
from omegaconf import DictConfig

from src.utils import ConfigError, UserError, exit_on_user_error
from src.utils.io import atomic_write
from src.utils.overrides import refuse_renamed

if TYPE_CHECKING:  # torch loads when the export runs: the command line answers before it does
    import torch

    from src.data.batch_transform import BatchTransform

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
# copied into every exported folder as classify.py: it runs without this package or PyTorch
CLASSIFY_SCRIPT = (Path(__file__).parent / "classify_onnx.py").read_text()
EXTRA = "pip install -e '.[export]'"
# what the exporter (dynamo=True) and the check need
EXPORT_MODULES = ("onnx", "onnxruntime", "onnxscript")
INPUT, OUTPUT = "input", "logits"
QUIET_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")
CENTRE = (
    "top = int(round((height - size) / 2)), left = int(round((width - size) / 2)), halves "
    "rounded to even as Python's round does (4.5 -> 4)"
)
# onnxruntime against PyTorch on the same inputs
TOLERANCE = 1e-4


def require_export_modules() -> dict[str, Any]:
    """The export dependencies, or one line saying which extra installs them."""
    modules, missing = {}, []
    for name in EXPORT_MODULES:
        try:
            modules[name] = importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(
            f"src.export needs {', '.join(missing)}, which the optional extra 'export' installs: "
            f"{EXTRA} (the dev install, '.[dev]', includes it)"
        )
    return modules


def normalisation(transform: BatchTransform) -> dict[str, list[float]] | None:
    """(x / 255 - mean) / std as ``normalise`` computes it (``raw``: std 1/255), or None where
    the crop is taken as it is (``mean_image``)."""
    if transform.input_scale == "mean_image":
        return None
    std = [1 / 255] * 3 if transform.input_scale == "raw" else list(transform.std)
    return {"mean": [float(m) for m in transform.mean], "std": [float(s) for s in std]}


def preprocessing(
    transform: BatchTransform, resize_size: int, classes: list[str], mean_image: str | None
) -> dict[str, Any]:
    """What ``preprocessing.json`` holds: enough to reproduce the network's input in any
    language, step by step."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    crop = transform.crop_size
    norm = normalisation(transform)
    steps: list[dict[str, Any]] = [
        {"step": "decode", "to": "8-bit RGB",
         "how": "EXIF orientation applied; palette images converted; 16-bit greyscale scaled by "
                "1/257 and rounded; transparency composited onto white"},
        {"step": "resize", "short_side": resize_size, "interpolation": "bilinear, antialiased "
         "(training used torchvision's uint8 kernel; Pillow's Image.BILINEAR is within one grey "
         "level of it)",
         "how": "the short side to short_side, the long side to int(short_side * long / short) "
                "(rounded down); skipped when the size is already that"},
        {"step": "centre_crop", "size": resize_size, "how": CENTRE},
        {"step": "to_float", "layout": "CHW (channels first, R, G, B)", "dtype": "float32",
         "how": "the 0-255 values as they are"},
    ]  # fmt: skip
    if mean_image is not None:
        steps.append(
            {"step": "subtract_mean_image", "file": mean_image,
             "shape": [3, resize_size, resize_size],
             "how": "x - mean_image, both on the 0-255 scale"}
        )  # fmt: skip
    steps.append(
        {"step": "centre_crop", "size": crop, "how": CENTRE}
    )  # fmt: skip
    if norm is not None:
        steps.append(
            {"step": "normalise", **norm,
             "how": "(x * (1 / 255) - mean[c]) / std[c] per channel c, in float32"}
        )  # fmt: skip
    steps.append(
        {"step": "batch", "shape": ["batch", 3, crop, crop], "input": INPUT,
         "how": "stack the images of a batch along a new first axis (NCHW)"}
    )  # fmt: skip
    return {
        "model": "model.onnx",
        "input": {"name": INPUT, "shape": ["batch", 3, crop, crop], "dtype": "float32"},
        "output": {
            "name": OUTPUT, "shape": ["batch", len(classes)],
            "meaning": "unnormalised scores; softmax over the last axis gives the probabilities",
        },
        "classes": classes,
        "resize_size": resize_size,
        "crop_size": crop,
        "mean": [float(m) for m in transform.mean],
        "std": [float(s) for s in transform.std],
        "input_scale": transform.input_scale,
        "mean_image": mean_image,
        "normalise": norm,
        "extensions": list(IMG_EXTENSIONS),
        "steps": steps,
        "ten_crop": "optional (classify.py --ten-crop), in place of the last centre_crop: the "
        "four corner crops and the centre crop of the resize_size square and of its left-right "
        "mirror image, each normalised; the softmax averaged over the ten",
    }  # fmt: skip


def export_onnx(net: torch.nn.Module, crop: int, path: Path, opset: int | None) -> None:
    """``net`` as one self-contained ONNX file with a dynamic batch dimension, written
    atomically."""
    import torch

    example = torch.zeros(2, 3, crop, crop)
    # the exporter's passes log every rewrite at INFO: the run's log keeps only its warnings
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        program = torch.onnx.export(
            net, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
            external_data=False, verbose=False,
        )  # fmt: skip
    except Exception as err:  # noqa: BLE001 - the exporter's reason, named in one line
        reason = next((line for line in str(err).splitlines() if line.strip()), repr(err))
        raise UserError(
            f"torch's ONNX exporter cannot export {type(net).__name__} at opset "
            f"{opset or 'its default'}: {reason.strip()}"
        ) from None
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        program.save(tmp, external_data=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def compare(session: Any, net: torch.nn.Module, inputs: torch.Tensor) -> float:
    """The largest difference between onnxruntime's and PyTorch's logits on ``inputs``, relative
    to the largest logit where that is above 1."""
    import torch

    (onnx_logits,) = session.run([OUTPUT], {INPUT: inputs.numpy()})
    with torch.inference_mode():
        torch_logits = net(inputs).numpy()
    scale = max(1.0, float(np.abs(torch_logits).max()))
    return float(np.abs(onnx_logits - torch_logits).max()) / scale


def export(cfg: DictConfig) -> Path:
    """Write the exported model folder (see the module's docstring); returns it."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r} is not one of {list(FORMATS)}")
    modules = require_export_modules()
    import torch

    from src.checkpoints import evaluation_transform, load_classifier

    model, checkpoint = load_classifier(cfg.ckpt_path)
    transform = evaluation_transform(checkpoint)
    data = checkpoint["datamodule_hyper_parameters"]
    out = Path(cfg.output or cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = model.net.eval()
    crop = transform.crop_size
    export_onnx(net, crop, out / "model.onnx", cfg.get("opset"))
    modules["onnx"].checker.check_model(str(out / "model.onnx"), full_check=True)
    session = modules["onnxruntime"].InferenceSession(
        str(out / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    difference = compare(session, net, torch.randn(3, 3, crop, crop, generator=torch.Generator()))
    if difference > TOLERANCE:
        raise UserError(
            f"onnxruntime's logits differ from PyTorch's by {difference:.2g} (more than "
            f"{TOLERANCE}): the export of this network is not faithful; please report it"
        )
    mean_image = "mean_image.npy" if transform.input_scale == "mean_image" else None
    if mean_image is not None:
        # the 0-255 float32 image the batch transform subtracts, value for value
        buffer = io.BytesIO()
        np.save(buffer, transform.mean_image_on(torch.device("cpu")).numpy().astype(np.float32))
        atomic_write(out / mean_image, buffer.getvalue())
    else:
        (out / "mean_image.npy").unlink(missing_ok=True)  # an earlier export's, into this folder
    spec = preprocessing(transform, data["resize_size"], model.class_names, mean_image)
    atomic_write(out / "preprocessing.json", json.dumps(spec, indent=2) + "\n")
    atomic_write(out / "classify.py", CLASSIFY_SCRIPT)
    atomic_write(out / "README.md", readme(spec, cfg.ckpt_path))
    size = (out / "model.onnx").stat().st_size
    log.info(
        "exported %s: model.onnx (%.1f MB, input %s (batch, 3, %d, %d), output %s (batch, %d); "
        "onnxruntime matches PyTorch to %.1g), preprocessing.json, classify.py, README.md in %s",
        cfg.ckpt_path, size / 1e6, INPUT, crop, crop, OUTPUT, len(model.class_names), difference,
        out,
    )  # fmt: skip
    return out


def describe(step: dict[str, Any]) -> str:
    """One step of preprocessing.json as a line of markdown."""
    values = ", ".join(f"{k}: {v}" for k, v in step.items() if k not in ("step", "how"))
    return f"`{step['step']}` ({values}): {step['how']}"


def readme(spec: dict[str, Any], ckpt_path: str) -> str:
    steps = "\n".join(f"{i}. {describe(step)}" for i, step in enumerate(spec["steps"], 1))
    mean_file = (
        f"\n- `{spec['mean_image']}`: the training set's mean image, float32 (3, "
        f"{spec['resize_size']}, {spec['resize_size']}) on the 0-255 scale, subtracted before "
        "the crop."
        if spec["mean_image"]
        else ""
    )
    return f"""# {len(spec["classes"])}-class image classifier, exported to ONNX

Exported by `python -m src.export` from `{ckpt_path}`. Files:

- `model.onnx`: the network; input `{INPUT}`, float32 (batch, 3, {spec["crop_size"]}, \
{spec["crop_size"]}); output `{OUTPUT}`, float32 (batch, {len(spec["classes"])}), unnormalised
  (softmax gives the probabilities); any batch size.
- `preprocessing.json`: the class names in index order (`classes`), the sizes, mean, std,
  input scale (`{spec["input_scale"]}`) and the ordered `steps` from an image file to
  `{INPUT}`.{mean_file}
- `classify.py`: all of it with onnxruntime, numpy and Pillow alone.

## Run it

```bash
pip install onnxruntime numpy pillow
python classify.py path/to/image.jpg                 # path, class, probability, top 5
python classify.py path/to/folder --csv predictions.csv --batch-size 32
python classify.py path/to/folder --ten-crop         # softmax averaged over ten crops
```

It gives the same top-1 class as `python -m src.predict` with the checkpoint.

## Preprocessing, in order

{steps}

From another language (C#, C++, Java, JavaScript): do these steps, feed the batch to any ONNX
runtime, take the arg max of `{OUTPUT}`; `classes[i]` names class `i`.

## classify.py

```python
{CLASSIFY_SCRIPT.strip()}
```
"""


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    refuse_renamed()
    main()
