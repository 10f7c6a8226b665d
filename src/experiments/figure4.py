"""The paper's Figure 4 from any checkpoint: ``python -m src.eval ckpt_path=PATH figures=true``.

Left half: validation images with their five most probable classes. Right half: validation images
followed by the training images whose penultimate-layer feature vectors (FC7 in AlexNet: the input
of the network's last Linear layer, so every model preset has one) are nearest in Euclidean
distance. Training images are taken at their centre crop, without augmentation.
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning import LightningDataModule
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from src.data.batch_transform import BatchTransform
from src.experiments.figures import neighbours_figure, top5_figure
from src.models.classifier import ImageClassifier
from src.utils import ConfigError
from src.utils.io import write_figure

log = logging.getLogger(__name__)


@dataclass
class Outputs:
    """Per image of a data set: softmax, penultimate-layer features and the true label."""

    probs: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor


def last_linear(net: nn.Module) -> nn.Linear:
    layers = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ConfigError(
            f"figures=true: {type(net).__name__} has no Linear layer to take features from"
        )
    return layers[-1]


@torch.inference_mode()
@torch.inference_mode()
def predict_with_features(
    model: ImageClassifier, loader: Iterable, transform: BatchTransform
) -> Outputs:
    """Runs the model over ``loader``'s uint8 squares, centre-cropped by ``transform``, in eval
    mode, keeping the last Linear layer's input."""
    model.eval()
    device = next(model.parameters()).device
    features: list[torch.Tensor] = []
    hook = last_linear(model.net).register_forward_hook(
        lambda module, args, output: features.append(args[0].flatten(1).cpu())
    )
    probs, labels = [], []
    try:
        for x, y in loader:
            probs.append(model(transform(x.to(device), "predict")).softmax(-1).cpu())
            labels.append(y)
    finally:
        hook.remove()
    return Outputs(torch.cat(probs), torch.cat(features), torch.cat(labels))


def nearest_neighbours(queries: torch.Tensor, pool: torch.Tensor, k: int) -> torch.Tensor:
    """(len(queries), k) indices into ``pool``, nearest first, by Euclidean distance."""
    return torch.cdist(queries, pool).topk(min(k, len(pool)), largest=False).indices


def figure4(
    model: ImageClassifier,
    datamodule: LightningDataModule,
    n_images: int = 5,
    n_neighbours: int = 6,
) -> dict[str, Figure]:
    """Both halves of Figure 4 for ``n_images`` validation images spread over the split:
    ``{"top5": ..., "neighbours": ...}``. The data module's own uint8 squares and batch
    transform (from the checkpoint: sizes, normalisation, mean image), on both backends."""
    data = datamodule.hparams
    datamodule.prepare_data()
    datamodule.setup("validate")
    splits = datamodule.make_datasets()
    train, val = splits["train"], splits["val"]
    names = model.class_names

    def pixels(dataset: Dataset, indices: torch.Tensor) -> torch.Tensor:
        """The centre crops as they were, before any normalisation."""
        squares = torch.stack([dataset[i][0] for i in indices.tolist()])
        return F.center_crop(squares, [data.crop_size, data.crop_size]).float() / 255

    transform = datamodule.transform
    picked = torch.linspace(0, len(val) - 1, min(n_images, len(val))).long()
    queries = predict_with_features(
        model, datamodule.loader(val, sampler=picked.tolist()), transform
    )
    pool = predict_with_features(model, datamodule.loader(train), transform)
    nearest = nearest_neighbours(queries.features, pool.features, n_neighbours)

    query_pixels = pixels(val, picked)
    neighbour_pixels = pixels(train, nearest.flatten()).unflatten(0, nearest.shape)
    return {
        "top5": top5_figure(query_pixels, queries.probs, queries.labels, names),
        "neighbours": neighbours_figure(
            query_pixels,
            [names[i] for i in queries.labels.tolist()],
            neighbour_pixels,
            [[names[pool.labels[i]] for i in row] for row in nearest.tolist()],
        ),
    }


def write_figure4(
    model: ImageClassifier, datamodule: LightningDataModule, output_dir: str | Path
) -> dict[str, Path]:
    """Saves ``figure4_top5.png`` and ``figure4_neighbours.png``; returns their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, fig in figure4(model, datamodule).items():
        paths[name] = output_dir / f"figure4_{name}.png"
        write_figure(fig, paths[name])
    log.info("figure 4: %s, %s", paths["top5"], paths["neighbours"])
    return paths
