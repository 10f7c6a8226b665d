"""Every drawing of the project, as bare matplotlib Figures (no pyplot: no display or global
state, in a callback, a sweep or a notebook): sample grids, first-layer filters and the confusion
matrix for TensorBoard, both halves of the paper's Figure 4, its Figure 1, and a prediction."""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torchvision.utils import make_grid


def figure_to_array(fig: Figure) -> np.ndarray:
    """The figure rendered as an (H, W, 3) uint8 array, without pyplot."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def labelled_grid(
    images: torch.Tensor, labels: Sequence[str], nrow: int = 8, min_cell: int = 96
) -> Figure:
    """0-1 images in a grid (``make_grid``), each with its label in the top-left corner, at
    least ``min_cell`` pixels per image so that labels fit on small inputs."""
    padding = 2
    grid = make_grid(images.cpu(), nrow=nrow, padding=padding, pad_value=1.0)
    cell_h, cell_w = images.shape[-2] + padding, images.shape[-1] + padding
    zoom = max(1.0, min_cell / images.shape[-1])
    dpi = 100
    fig = Figure(figsize=(grid.shape[2] * zoom / dpi, grid.shape[1] * zoom / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    for i, label in enumerate(labels):
        row, col = divmod(i, nrow)
        ax.text(
            col * cell_w + padding + 1,
            row * cell_h + padding + 1,
            label,
            va="top",
            fontsize=8,
            color="white",
            bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0},
        )
    return fig


def filter_grid(weight: torch.Tensor, groups: int = 1, nrow: int = 16) -> torch.Tensor:
    """First-layer kernels as a (3, H, W) 0-1 image like the paper's Figure 3: each kernel
    scaled to its own min-max, on white. With ``groups=2`` the first and the last half of the
    kernels (read by the first and the second tower's conv2) are two blocks, one kernel's height
    apart; kernels are enlarged to about 44 px."""
    weight = weight.detach().float().cpu()
    size = weight.shape[-1]
    blocks = [
        make_grid(half, nrow=nrow, padding=1, normalize=True, scale_each=True, pad_value=1.0)
        for half in weight.chunk(groups)
    ]
    gap = torch.ones(3, size, blocks[0].shape[2])
    grid = torch.cat([part for block in blocks for part in (gap, block)][1:], dim=1)
    scale = max(1, 44 // size)
    return grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)


def confusion_matrix_figure(
    matrix: torch.Tensor, class_names: Sequence[str], title: str = ""
) -> Figure:
    """Counts of true (rows) against predicted (columns) classes; with up to 10 classes every
    cell shows its count (the numbers cost as much as the rest of the drawing), with up to 50
    the axes name every class."""
    counts = matrix.cpu().numpy()
    n = len(class_names)
    side = min(max(4.0, 0.4 * n + 1.5), 14.0)
    fig = Figure(figsize=(side, side), dpi=80)
    # fixed margins: a constrained layout costs about as much as the drawing, every epoch
    margin = 1.2 / side
    fig.subplots_adjust(left=margin, bottom=margin, right=0.98, top=1 - 0.5 / side)
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    if n <= 50:
        ticks = range(n)
        ax.set_xticks(ticks, class_names, rotation=90, fontsize=8)
        ax.set_yticks(ticks, class_names, fontsize=8)
    if n <= 10:
        dark = counts.max() / 2
        for (row, col), count in np.ndenumerate(counts):
            if count:
                color = "white" if count > dark else "black"
                ax.text(col, row, str(count), ha="center", va="center", fontsize=7, color=color)
    return fig


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


# activation: (colour, line style) in Figure 1
STYLES = {"relu": ("tab:blue", "-"), "tanh": ("tab:red", "--")}


def figure1(runs: Sequence[Any], summary: dict[str, Any]) -> Figure:
    """Training error per epoch of a ReLU vs tanh sweep's runs (``relu_vs_tanh.Run``): ReLU
    solid, tanh dashed, the chosen rates bold, the others faint, the target dotted; one panel
    per condition."""
    conditions = list(summary["conditions"])
    cols = min(len(conditions), 4)
    rows = math.ceil(len(conditions) / cols)
    fig = Figure(figsize=(5 * cols, 4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    target = summary["target_train_error"]
    for ax, condition in zip(axes.flat, conditions, strict=False):
        entry = summary["conditions"][condition]
        for run in (r for r in runs if r.condition == condition):
            color, style = STYLES.get(run.activation, ("tab:gray", ":"))
            chosen = run.name in entry.get(run.activation, {}).get("runs", [])
            epochs = range(1, len(run.errors) + 1)
            ax.plot(
                epochs,
                run.errors,
                style,
                color=color,
                lw=2.5 if chosen else 1.0,
                alpha=1.0 if chosen else 0.3,
                label=f"{run.activation} lr={run.lr:g}" + (" (chosen)" if chosen else ""),
            )
        ax.axhline(target, color="black", ls=":", lw=1, label=f"target {target:.0%}")
        ratio = entry.get("speedup_tanh_over_relu", {}).get("text", "-")
        ax.set_title(f"{condition}\ntanh / ReLU epochs: {ratio}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(conditions) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("training error")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=False))
    axes[0, 0].legend(unique.values(), unique.keys(), fontsize=7)
    fig.tight_layout()
    return fig


def prediction_figure(image: Image.Image, title: str) -> Figure:
    """The image as it was given, titled with its prediction."""
    fig = Figure(figsize=(4, 4.4))
    ax = fig.subplots()
    ax.imshow(image)
    ax.set_title(title)
    ax.axis("off")
    return fig
