"""Classify images with a trained checkpoint: ``python -m src.predict ckpt_path=PATH image=PATH``.

Logs the top classes of each image and saves it as a PNG titled with the prediction. Needs no
data set: class names and preprocessing come from the checkpoint, through the same batch
transform evaluation uses. ``ten_crop=true`` averages the softmax over the ten crops of each
image (paper, section 4.1) instead of taking the centre crop.
"""

import json
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from src.checkpoints import (
    evaluation_transform,
    load_classifier,
    refuse_data_overrides,
)
from src.data.datamodule import SquareImages
from src.data.folders import ImageSet
from src.data.images import image_files, load_rgb
from src.experiments.figures import prediction_figure
from src.utils import ConfigError, MissingFileError, exit_on_user_error
from src.utils.io import atomic_write, write_figure

log = logging.getLogger(__name__)


def find_images(path: str | Path) -> ImageSet:
    """The file, or every image under the folder, to classify (labels unknown: -1)."""
    path = Path(path)
    if path.is_file():
        return ImageSet(path.name, path.parent, [], [(str(path), -1)])
    if not path.is_dir():
        raise MissingFileError(f"image={path}: no such file or folder")
    files = image_files(path)
    if not files:
        raise MissingFileError(f"image={path}: the folder holds no images")
    return ImageSet(path.name, path, [], [(str(p), -1) for p in files])


@torch.inference_mode()
def predict(cfg: DictConfig) -> list[dict]:
    """Top-k predictions per image; also written to ``predictions.json`` in the output folder."""
    if not isinstance(cfg.ten_crop, bool):
        raise ConfigError(f"ten_crop={cfg.ten_crop!r} must be true or false")
    model, checkpoint = load_classifier(cfg.ckpt_path)
    transform = evaluation_transform(checkpoint)
    data = checkpoint["datamodule_hyper_parameters"]
    images = find_images(cfg.image)
    dataset = SquareImages(images, data["resize_size"], skip=set())
    batch_size = cfg.data.get("batch_size") or data["batch_size"]
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=cfg.data.num_workers)
    method = "softmax averaged over 10 crops" if cfg.ten_crop else "centre crop"
    names = model.class_names
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    paths = iter(Path(p) for p, _ in images.samples)
    for squares, _ in loader:
        x = transform(squares, "predict", ten_crop=cfg.ten_crop)
        # (B, crops, C, H, W): one crop, or ten whose softmax is averaged
        x = x.unsqueeze(1) if x.ndim == 4 else x
        probs = model(x.flatten(0, 1)).view(len(squares), -1, len(names)).softmax(-1).mean(1)
        for row in probs:
            path = next(paths)
            top = row.topk(min(cfg.top_k, len(names)))
            ranked = [(names[i], float(p)) for p, i in zip(top.values, top.indices, strict=True)]
            png = out / f"{path.relative_to(images.base).with_suffix('')}_prediction.png"
            title = f"class: {ranked[0][0]}   prob: {ranked[0][1]:.3f}"
            write_figure(
                prediction_figure(load_rgb(path), title), png, bbox_inches="tight", dpi=100
            )
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
    refuse_data_overrides(allowed=("batch_size", "num_workers"))
    main()
