"""The paper's Figure 4 from any checkpoint: ``python -m src.eval ckpt_path=PATH figures=true``.

Left half: validation images with their five most probable classes. Right half: validation images
followed by the training images whose penultimate-layer feature vectors (FC7 in AlexNet: the input
of the network's last Linear layer, so every model preset has one) are nearest in Euclidean
distance. Training images are taken at their centre crop, without augmentation.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning import LightningDataModule
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from src.callbacks import unnormalise
from src.data.transforms import eval_transform
from src.models.classifier import ImageClassifier
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
        raise ValueError(f"{type(net).__name__} has no Linear layer to take features from")
    return layers[-1]


@torch.inference_mode()
def predict_with_features(
    model: ImageClassifier, dataset: Dataset, batch_size: int = 64, num_workers: int = 0
) -> Outputs:
    """Runs the model over ``dataset`` in eval mode, keeping the last Linear layer's input."""
    model.eval()
    device = next(model.parameters()).device
    features: list[torch.Tensor] = []
    hook = last_linear(model.net).register_forward_hook(
        lambda module, args, output: features.append(args[0].flatten(1).cpu())
    )
    probs, labels = [], []
    try:
        for x, y in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
            probs.append(model(x.to(device)).softmax(-1).cpu())
            labels.append(y)
    finally:
        hook.remove()
    return Outputs(torch.cat(probs), torch.cat(features), torch.cat(labels))


def nearest_neighbours(queries: torch.Tensor, pool: torch.Tensor, k: int) -> torch.Tensor:
    """(len(queries), k) indices into ``pool``, nearest first, by Euclidean distance."""
    return torch.cdist(queries, pool).topk(min(k, len(pool)), largest=False).indices


def top5_figure(
    images: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]
) -> Figure:
    """Each 0-1 image above its five most probable classes; the true class's bar is red when it
    is among them, as in the paper."""
    n = len(images)
    fig = Figure(figsize=(2.6 * n, 4.6), dpi=100, layout="constrained")
    axes = fig.subplots(2, n, squeeze=False, height_ratios=(3, 2))
    for col in range(n):
        top = probs[col].topk(min(5, probs.shape[1]))
        image_ax, bar_ax = axes[0, col], axes[1, col]
        image_ax.imshow(images[col].permute(1, 2, 0).numpy())
        image_ax.set_title(f"true: {class_names[labels[col]]}", fontsize=10)
        image_ax.axis("off")
        names = [class_names[i] for i in top.indices.tolist()]
        colors = ["tab:red" if i == labels[col] else "tab:blue" for i in top.indices.tolist()]
        bar_ax.barh(range(len(names)), top.values.numpy(), color=colors)
        bar_ax.set_yticks(range(len(names)), names, fontsize=9)
        bar_ax.invert_yaxis()
        bar_ax.set_xlim(0, 1)
        bar_ax.set_xlabel("probability", fontsize=9)
        bar_ax.tick_params(axis="x", labelsize=8)
    return fig


def neighbours_figure(
    queries: torch.Tensor,
    query_labels: Sequence[str],
    neighbours: torch.Tensor,
    neighbour_labels: Sequence[Sequence[str]],
) -> Figure:
    """One row per 0-1 query image: the query, a gap, then its nearest training images, their
    class in black where it is the query's, grey where not."""
    rows, k = neighbours.shape[:2]
    fig = Figure(figsize=(1.6 * (k + 1.3), 1.75 * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, k + 2, squeeze=False, width_ratios=(1, 0.3, *[1] * k))
    for row in range(rows):
        axes[row, 0].imshow(queries[row].permute(1, 2, 0).numpy())
        axes[row, 0].set_title(f"val: {query_labels[row]}", fontsize=9, color="tab:red")
        for col in range(k):
            ax = axes[row, col + 2]
            ax.imshow(neighbours[row, col].permute(1, 2, 0).numpy())
            same = neighbour_labels[row][col] == query_labels[row]
            ax.set_title(neighbour_labels[row][col], fontsize=9, color="black" if same else "gray")
        for ax in axes[row]:
            ax.axis("off")
    return fig


def figure4(
    model: ImageClassifier,
    datamodule: LightningDataModule,
    n_images: int = 5,
    n_neighbours: int = 6,
) -> dict[str, Figure]:
    """Both halves of Figure 4 for ``n_images`` validation images spread over the split:
    ``{"top5": ..., "neighbours": ...}``."""
    data = datamodule.hparams
    datamodule.prepare_data()
    centre_crop = eval_transform(
        data.resize_size, data.crop_size, data.mean, data.std, data.input_scale
    )
    splits = datamodule.make_datasets(dict.fromkeys(("train", "val", "test"), centre_crop))
    train, val = splits["train"], splits["val"]
    names = model.class_names

    def pixels(dataset: Dataset, indices: torch.Tensor) -> torch.Tensor:
        images = torch.stack([dataset[i][0] for i in indices.tolist()])
        return unnormalise(images, data.mean, data.std, data.input_scale)

    loader_args = {"batch_size": data.batch_size, "num_workers": data.num_workers}
    picked = torch.linspace(0, len(val) - 1, min(n_images, len(val))).long()
    queries = predict_with_features(model, Subset(val, picked), **loader_args)
    pool = predict_with_features(model, train, **loader_args)
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
