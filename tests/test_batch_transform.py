"""The one batch transform against torchvision's per-image transforms: the same distributions,
the same pixels."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import binomtest, chisquare, ks_2samp
from torchvision.transforms import v2

from src.data.augment import HorizontalFlip, RandomCrop, RandomResizedCrop
from src.data.batch_transform import BatchTransform, normalise, ten_crops
from src.data.images import square

SIZE, CROP = 8, 4  # five possible offsets per axis


def random_crops(images: torch.Tensor, crop_size: int) -> torch.Tensor:
    """The paper's training crop and flip, as data.augment's default operations run them."""
    transform = BatchTransform(crop_size)
    return HorizontalFlip()(RandomCrop()(images, transform), transform)


def random_resized_crops(images: torch.Tensor, crop_size: int) -> torch.Tensor:
    transform = BatchTransform(crop_size)
    return HorizontalFlip()(RandomResizedCrop()(images, transform), transform)


def coordinates(batch: int) -> torch.Tensor:
    """uint8 images whose channel 0 holds the row and channel 1 the column of each pixel."""
    rows = torch.arange(SIZE).view(SIZE, 1).expand(SIZE, SIZE)
    image = torch.stack([rows, rows.T, torch.zeros_like(rows)]).to(torch.uint8)
    return image.expand(batch, 3, SIZE, SIZE).contiguous()


def test_crops_and_flips_are_uniform_and_independent_per_image():
    """v2.RandomCrop + v2.RandomHorizontalFlip draw offsets uniformly from [0, size - crop] and
    flip with p = 1/2, for every image on its own: the same here, over 20,000 draws."""
    torch.manual_seed(0)
    crops = torch.cat([random_crops(coordinates(4000), CROP) for _ in range(5)])
    tops = crops[:, 0, 0, 0].long()
    first, last = crops[:, 1, 0, 0].long(), crops[:, 1, 0, -1].long()
    flips = (first > last).long()
    lefts = torch.minimum(first, last)
    assert (crops[:, 0, -1, 0].long() - tops == CROP - 1).all()  # whole rows, in order
    assert ((first - last).abs() == CROP - 1).all()
    n = SIZE - CROP + 1
    joint = torch.bincount((tops * n + lefts) * 2 + flips, minlength=n * n * 2)
    assert joint.min() > 0 and chisquare(joint.numpy()).pvalue > 1e-3
    # consecutive images of a batch do not share their draws
    pairs = torch.bincount(tops[:-1:2] * n + tops[1::2], minlength=n * n)
    assert chisquare(pairs.numpy()).pvalue > 1e-3


@pytest.mark.parametrize("size", [9, 12])
def test_centre_and_ten_crops_match_torchvision(size):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    centre = BatchTransform(CROP, mean=[0.0] * 3, std=[1 / 255] * 3)(images, "val")
    assert torch.allclose(centre[1], v2.CenterCrop(CROP)(images[1]).float(), atol=1e-4)
    tens = ten_crops(images, CROP)
    assert tens.shape == (2, 10, 3, CROP, CROP)
    assert torch.equal(tens[1], torch.stack(v2.TenCrop(CROP)(images[1])))


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (64, 64), (50, 81), (333, 334)])
def test_squares_are_torchvisions_resize_and_centre_crop(size):
    """The uint8 square both backends deliver is v2.Resize + v2.CenterCrop of the image as a
    uint8 tensor, pixel for pixel, and within one grey level of Pillow's resize."""
    pixels = np.random.default_rng(0).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    expected = v2.Compose([v2.PILToTensor(), v2.Resize(48), v2.CenterCrop(48)])(image)
    assert np.array_equal(square(image, 48), expected.numpy())
    pillow = np.asarray(v2.Compose([v2.Resize(48), v2.CenterCrop(48)])(image)).transpose(2, 0, 1)
    assert np.abs(square(image, 48).astype(int) - pillow).max() <= 1


@pytest.mark.parametrize("input_scale", ["standardised", "raw"])
def test_normalise_equals_the_per_image_transforms(input_scale):
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    images = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    scale = [1 / 255] * 3 if input_scale == "raw" else std
    per_image = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, scale)])
    expected = torch.stack([per_image(image) for image in images])
    assert torch.equal(normalise(images, mean, std, input_scale), expected)
    batch = BatchTransform(6, mean, std, input_scale)(images, "val", channels_last=True)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch, expected)


def test_random_resized_crops_draw_as_torchvision():
    """One image at a time, the same seed gives v2's RandomResizedCrop + RandomHorizontalFlip
    exactly: the same boxes, flips and resized pixels."""
    images = torch.randint(0, 256, (1, 3, 20, 20), dtype=torch.uint8)
    per_image = v2.Compose([v2.RandomResizedCrop(CROP), v2.RandomHorizontalFlip()])
    for seed in range(20):
        torch.manual_seed(seed)
        expected = per_image(images[0])
        torch.manual_seed(seed)
        assert torch.equal(random_resized_crops(images, CROP)[0], expected)


BIG, STEP = 64, 4  # positions: 64-px images whose pixel values are 4 x the row or column


def positions() -> torch.Tensor:
    rows = torch.arange(BIG).view(BIG, 1).expand(BIG, BIG) * STEP
    return torch.stack([rows, rows.T, torch.zeros_like(rows)]).to(torch.uint8)


def boxes(crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Area (as a fraction of the image), aspect ratio and flip of each crop of ``positions``,
    read from its edge pixels: a linear ramp stays linear through the bilinear resize."""
    crops = crops.double() / STEP
    rows, cols = crops[:, 0, :, 0], crops[:, 1, 0, :]
    n = crops.shape[-1]
    h = (rows[:, -1] - rows[:, 0]) * n / (n - 1)
    w = (cols[:, -1] - cols[:, 0]).abs() * n / (n - 1)
    return h * w / BIG**2, w / h, cols[:, 0] > cols[:, -1]


def test_random_resized_crops_cover_the_scales_of_the_per_image_path():
    """Batched crops and torchvision's per-image RandomResizedCrop of an image whose pixels
    encode their position: areas within 8-100 % and ratios within 3/4-4/3, the same
    distribution on both, every image of a batch on its own, flips with p = 1/2."""
    torch.manual_seed(0)
    n, out = 1000, 16
    image = positions()
    batched = random_resized_crops(image.expand(n, 3, BIG, BIG), out)
    assert batched.shape == (n, 3, out, out) and batched.dtype == torch.uint8
    per_image = v2.Compose([v2.RandomResizedCrop(out), v2.RandomHorizontalFlip()])
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    single = torch.stack([v2.functional.pil_to_tensor(per_image(pil)) for _ in range(n)])
    for crops in (batched, single):
        area, ratio, flips = boxes(crops)
        assert 0.07 < area.min() < 0.12 and 0.9 < area.max() < 1.03
        assert 3 / 4 - 0.1 < ratio.min() < ratio.max() < 4 / 3 + 0.1
        assert binomtest(int(flips.sum()), n).pvalue > 1e-3
    assert ks_2samp(boxes(batched)[0], boxes(single)[0]).pvalue > 1e-3
    assert len({tuple(c[:2, 0, 0].tolist()) for c in batched}) > n // 4
