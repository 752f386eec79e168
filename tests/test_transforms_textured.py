"""The image transforms on images whose pixels say where they come from (docs/design.md §6–§7).

A coordinate-coded image (red = column, green = row) makes every output pixel name its source position, so the crop
each draw took — its area, aspect ratio and orientation — can be read off the output; a fine random texture tells
bicubic from bilinear resampling. What would be caught: a wrong crop scale (e.g. 0.08–1 or 0.3–1 for pretraining), a
flip that never or always happens, a centre crop that is off-centre or not 87.5 %, bilinear instead of bicubic, a
missing antialias."""

import numpy as np
import pytest
import torch
from PIL import Image

from bootleg_hf import data as D

MEAN = torch.tensor(D.IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(D.IMAGENET_STD).view(3, 1, 1)
DRAWS = 200


def grey_levels(pixel_values: torch.Tensor) -> torch.Tensor:
    """A transform's normalised output back in 0..255 grey levels (float)."""
    return (pixel_values * STD + MEAN) * 255


def coordinate_image(width: int, height: int) -> Image.Image:
    """Red = 255·column / (width − 1), green = 255·row / (height − 1), blue = 128 (exact integers for 256 px)."""
    rows, cols = np.mgrid[0:height, 0:width]
    red = np.round(cols * 255 / (width - 1))
    green = np.round(rows * 255 / (height - 1))
    return Image.fromarray(np.stack([red, green, np.full_like(red, 128)], -1).astype(np.uint8))


def texture(size: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def as_grey_levels(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float()


def crop_geometry(out: torch.Tensor, source: int) -> tuple[float, float, bool]:
    """(area fraction, aspect h / w, flipped) of the crop behind one output of a `source`-pixel coordinate image: the
    red and green ramps' slopes over the output's interior (away from the resampling borders) give the crop's width and
    height in source pixels; a falling red ramp means a horizontal flip."""
    size = out.shape[-1]
    levels = grey_levels(out)
    scale = (source - 1) / 255  # source pixels per grey level
    columns, rows = levels[0].mean(0), levels[1].mean(1)
    width = (columns[size - 4] - columns[3]).item() / (size - 7) * scale * size
    height = (rows[size - 4] - rows[3]).item() / (size - 7) * scale * size
    return abs(width) * abs(height) / source**2, abs(height / width), width < 0


def draws(transform, image: Image.Image, n: int = DRAWS) -> list[tuple[float, float, bool]]:
    torch.manual_seed(0)
    return [crop_geometry(transform.apply_image(image), image.width) for _ in range(n)]


@pytest.mark.parametrize("make,low", [(lambda: D.PretrainTransform(32), 0.35),
                                      (lambda: D.ProbeTrainTransform(32, jitter=0.0), 0.3)],
                         ids=["pretrain", "probe"])
def test_random_crops_cover_the_scale_range_with_bounded_aspect_and_half_flips(make, low):
    """Crop scale (0.35, 1) for pretraining and (0.3, 1) for the probes, RandomResizedCrop's aspect ratio in [3/4, 4/3],
    and a horizontal flip half of the time, read from 200 outputs of a 128 px coordinate image."""
    geometry = draws(make(), coordinate_image(128, 128))
    areas = np.array([g[0] for g in geometry])
    aspects = np.array([g[1] for g in geometry])
    flipped = np.array([g[2] for g in geometry])
    assert areas.min() >= low - 0.01, areas.min()  # never a smaller crop than the scale allows
    assert areas.min() < low + 0.03, areas.min()  # and the small end is reached (a larger low bound would not)
    assert areas.max() > 0.9 and 0.5 < areas.mean() < 0.7, (areas.max(), areas.mean())
    assert aspects.min() >= 3 / 4 - 0.03 and aspects.max() <= 4 / 3 + 0.03, (aspects.min(), aspects.max())
    assert 0.35 < flipped.mean() < 0.65, flipped.mean()


@pytest.mark.parametrize("width,height", [(256, 256), (256, 320)])
def test_eval_crop_keeps_exactly_the_central_87_5_percent(width, height):
    """EvalTransform(56): the shorter side is resized to 64 (56 / 0.875) and the central 56 × 56 kept — output pixel j
    shows source column 16 + 4·(j + ½) − ½ of a 256 px side (the central 224 = 87.5 %), the rows likewise around the
    centre of the longer side."""
    out = grey_levels(D.EvalTransform(56).apply_image(coordinate_image(width, height)))
    scale = width / 64  # source pixels per resized pixel (the width is the shorter side)
    resized_height = round(height / scale)
    left, top = (64 - 56) // 2, (resized_height - 56) // 2
    j = torch.arange(56, dtype=torch.float32)
    columns = ((left + j + 0.5) * scale - 0.5) * 255 / (width - 1)
    rows = ((top + j + 0.5) * scale - 0.5) * 255 / (height - 1)
    torch.testing.assert_close(out[0], columns.expand(56, 56), atol=1.0, rtol=0)
    torch.testing.assert_close(out[1], rows[:, None].expand(56, 56), atol=1.0, rtol=0)
    kept = (columns[-1] - columns[0]) / 255 * (width - 1) + scale  # the span of the pixel centres plus one pixel
    assert kept / width == pytest.approx(0.875, abs=1e-6)


def test_resampling_is_bicubic_and_antialiased():
    """Bicubic (antialiased) resampling: on a fine random texture the pretraining transform (torch's uint8 kernels)
    and the evaluation transform (PIL) match PIL's bicubic resize, while a bilinear resize differs by several grey
    levels on average."""
    image = texture(128)
    full = D.PretrainTransform(48, scale=(1.0, 1.0), hflip=False)  # the whole 128 px image → 48 px
    out = grey_levels(full.apply_image(image))
    bicubic = as_grey_levels(image.resize((48, 48), Image.BICUBIC))
    bilinear = as_grey_levels(image.resize((48, 48), Image.BILINEAR))
    assert (bicubic - bilinear).abs().mean() > 2.0  # the texture tells the two apart
    assert (out - bicubic).abs().mean() < 0.1 and (out - bicubic).abs().max() <= 1.01
    assert (out - bilinear).abs().mean() > 2.0

    resized = round(28 / 0.875)
    box = ((resized - 28) // 2, (resized - 28) // 2, (resized - 28) // 2 + 28, (resized - 28) // 2 + 28)
    evaluated = grey_levels(D.EvalTransform(28).apply_image(image))
    bicubic = as_grey_levels(image.resize((resized, resized), Image.BICUBIC).crop(box))
    bilinear = as_grey_levels(image.resize((resized, resized), Image.BILINEAR).crop(box))
    assert (evaluated - bicubic).abs().max() < 0.01  # the probes' view is PIL's bicubic resize and crop exactly
    assert (evaluated - bilinear).abs().mean() > 1.5


def test_probe_training_crop_resamples_bicubic_and_jitters_colours():
    """ProbeTrainTransform: the crop of a whole image equals PIL's bicubic resize (or its mirror image); with the
    paper's jitter 0.4 the colours change from draw to draw while without jitter they do not."""
    image = texture(96)
    bicubic = as_grey_levels(image.resize((32, 32), Image.BICUBIC))
    plain = D.ProbeTrainTransform(32, scale=(1.0, 1.0), jitter=0.0)
    torch.manual_seed(0)
    for _ in range(4):
        out = grey_levels(plain.apply_image(image))
        error = min((out - bicubic).abs().mean(), (out - bicubic.flip(-1)).abs().mean())
        assert error < 0.1
    jittered = D.ProbeTrainTransform(32, scale=(1.0, 1.0))
    torch.manual_seed(0)
    outs = [grey_levels(jittered.apply_image(image)) for _ in range(6)]
    means = torch.stack([o.mean() for o in outs])
    assert means.max() - means.min() > 5  # brightness / contrast factors in [0.6, 1.4] move the mean grey level
