"""Classify images with a trained checkpoint: ``python -m src.predict ckpt_path=PATH image=PATH``.

Prints the top classes of each image and saves it as a PNG titled with the prediction. Needs no
data set: class names and preprocessing come from the checkpoint. ``ten_crop=true`` averages the
softmax over the ten crops of each image (paper, section 4.1) instead of taking the centre crop.
"""

import json
import logging
from pathlib import Path

import hydra
import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from src.data.datamodule import datamodule_state
from src.data.images import load_rgb
from src.data.transforms import eval_transform
from src.models.classifier import load_classifier
from src.utils import ConfigError, MissingFileError, exit_on_user_error
from src.utils.io import atomic_write, write_figure

log = logging.getLogger(__name__)


def find_images(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MissingFileError(f"image={path}: no such file or folder")
    images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
    if not images:
        raise MissingFileError(f"image={path}: the folder holds no images ({IMG_EXTENSIONS})")
    return images


def save_figure(image: Image.Image, title: str, path: Path) -> None:
    fig = Figure(figsize=(4, 4.4))
    ax = fig.subplots()
    ax.imshow(image)
    ax.set_title(title)
    ax.axis("off")
    write_figure(fig, path, bbox_inches="tight", dpi=100)


@torch.inference_mode()
def predict(cfg: DictConfig) -> list[dict]:
    """Top-k predictions per image; also written to ``predictions.json`` in the output folder."""
    if not isinstance(cfg.ten_crop, bool):
        raise ConfigError(f"ten_crop={cfg.ten_crop!r} must be true or false")
    model, checkpoint = load_classifier(cfg.ckpt_path)
    data = checkpoint["datamodule_hyper_parameters"]
    transform = eval_transform(
        data["resize_size"],
        data["crop_size"],
        data["mean"],
        data["std"],
        data.get("input_scale", "standardised"),
        # the training set's, carried in the checkpoint
        mean_image=datamodule_state(checkpoint).get("mean_image"),
        ten_crop=cfg.ten_crop,
    )
    method = "softmax averaged over 10 crops" if cfg.ten_crop else "centre crop"
    names = model.class_names
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in find_images(cfg.image):
        image = load_rgb(path)
        x = transform(image)
        # (10, C, H, W) with ten crops, else one (C, H, W) image
        probs = model(x if cfg.ten_crop else x.unsqueeze(0)).softmax(-1).mean(0)
        top = probs.topk(min(cfg.top_k, len(names)))
        ranked = [(names[i], float(p)) for p, i in zip(top.values, top.indices, strict=True)]
        png = out / f"{path.stem}_prediction.png"
        save_figure(image, f"class: {ranked[0][0]}   prob: {ranked[0][1]:.3f}", png)
        lines = [f"  {rank}. {name:<12} {p:.4f}" for rank, (name, p) in enumerate(ranked, 1)]
        log.info("%s (%s)\n%s", path, method, "\n".join(lines))
        results.append(
            {"image": str(path), "top": ranked, "figure": str(png), "ten_crop": cfg.ten_crop}
        )
    atomic_write(out / "predictions.json", json.dumps(results, indent=2))
    log.info("figures and predictions.json in %s", out)
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
