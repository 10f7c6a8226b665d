"""The paper's Figure 4 from a checkpoint: ``python -m src.eval ckpt_path=... figures=true``."""

import pytest
import torch
from PIL import Image

from src.checkpoints import datamodule_from_checkpoint, load_classifier
from src.eval import evaluate
from src.experiments.figure4 import nearest_neighbours, predict_with_features
from tests.conftest import compose_config


def test_nearest_neighbours_are_sorted_by_distance():
    pool = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0], [10.0, 10.0]])
    assert nearest_neighbours(torch.tensor([[0.1, 0.0]]), pool, 3).tolist() == [[0, 2, 1]]
    # a pool smaller than k gives all of it
    assert nearest_neighbours(pool[:1], pool[:2], 6).shape == (1, 2)


@pytest.mark.parametrize(
    ("kind", "feature_size"), [("cnn4_mean_image", 64 * 4 * 4), ("alexnet_half", 256)]
)
def test_eval_writes_figure4(kind, feature_size, trained, tmp_path):
    ckpt = trained(kind)
    overrides = [f"ckpt_path={ckpt}", "figures=true", "trainer.accelerator=cpu"]
    evaluate(compose_config("eval", overrides, tmp_path / "eval"))

    # five images with bars below; five rows of a query and six neighbours
    for name, (width, height) in (("top5", (1000, 350)), ("neighbours", (900, 700))):
        with Image.open(tmp_path / "eval" / f"figure4_{name}.png") as png:
            assert png.format == "PNG"
            assert width <= png.size[0] < 3 * width and height <= png.size[1] < 3 * height

    # the features are the last Linear layer's input; each training image is its own neighbour
    net, checkpoint = load_classifier(ckpt)
    datamodule = datamodule_from_checkpoint(checkpoint, {})
    datamodule.setup("fit")
    train_images = datamodule.loader(datamodule.datasets["train"])
    outputs = predict_with_features(net, train_images, datamodule.transform)
    assert outputs.features.shape == (28, feature_size)
    assert outputs.probs.shape == (28, 14) and outputs.labels.shape == (28,)
    nearest = nearest_neighbours(outputs.features[:5], outputs.features, 6)
    assert nearest[:, 0].tolist() == [0, 1, 2, 3, 4]
