"""ColorMAE's green-noise masking (`mask_mode="green_noise"`): the visible tokens are the strongest values of
band-pass filtered white noise — checked against torchvision's Gaussian blur —, seeded like every mode, exact in
its visible count, band-pass in its spectrum (unlike random, inverse-block and Bootleg masks), configurable from
`BootlegConfig`, and trainable."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import check_hidden_target_mode, check_seeded_partition, tiny_config
from torchvision.transforms.functional import gaussian_blur

from bootleg_hf import BootlegConfig, MaskGenerator


def reference_visible(grid: int, sigmas: tuple[float, float], mask_ratio: float, batch: int,
                      words: list[int]) -> torch.Tensor:
    """The visible set from the same seeded noise, filtered by torchvision: difference of two Gaussian blurs of the
    padded noise, cropped to the grid, the strongest int(N·(1 − ratio)) values kept. `[B, N]` bool."""
    pad = math.ceil(3 * sigmas[1])
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))
    noise = torch.from_numpy(rng.standard_normal((batch, 1, grid + 2 * pad, grid + 2 * pad)))
    blurred = [gaussian_blur(noise, [2 * pad + 1] * 2, [s, s])[..., pad:-pad, pad:-pad] for s in sigmas]
    band = (blurred[0] - blurred[1]).reshape(batch, -1)
    k = int(grid * grid * (1 - mask_ratio))
    visible = torch.zeros_like(band, dtype=torch.bool)
    visible.scatter_(1, band.topk(k, dim=1).indices, True)
    return visible


@pytest.mark.parametrize("grid, sigmas, ratio", [(14, (1.0, 2.0), 0.75), (8, (0.5, 1.5), 0.6)])
def test_visible_tokens_are_the_strongest_band_passed_noise(grid, sigmas, ratio):
    g = MaskGenerator(grid, "green_noise", mask_ratio=ratio, noise_sigmas=sigmas)
    m = g.generate(32, seed=7, epoch=2, batch_index=3)
    expected = reference_visible(grid, sigmas, ratio, 32, [7, 2, 0, 0, 3])
    assert torch.equal(~m.target_mask, expected)


def test_green_noise_masks_are_seeded_exact_and_partition_the_grid():
    g = MaskGenerator(14, "green_noise", mask_ratio=0.75)
    check_seeded_partition(g, 256)
    k = int(196 * 0.25)
    # stationary noise, no border effects: every position is visible about equally often
    rate = (~g.generate(4000, seed=0).target_mask).float().mean(0)
    assert (rate - k / 196).abs().max().item() < 0.05  # 4000 draws: ±0.007 std per position


def band_powers(mode: str, **kwargs) -> np.ndarray:
    """Mean power of the visible-token indicator (per-image mean removed) on a 14×14 grid in three radial frequency
    bands (cycles per patch): (0, 0.1], (0.1, 0.25], (0.4, ∞)."""
    masks = MaskGenerator(14, mode, **kwargs).generate(2000, seed=0).target_mask.numpy().reshape(-1, 14, 14)
    visible = (~masks).astype(float)
    visible -= visible.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(visible)) ** 2).mean(0)
    f = np.fft.fftfreq(14)
    radius = np.hypot(f[:, None], f[None, :])
    return np.array([power[(radius > lo) & (radius <= hi)].mean() for lo, hi in ((0, 0.1), (0.1, 0.25), (0.4, 1))])


def test_green_noise_is_band_pass_where_the_other_masks_are_white_or_low_pass():
    low, mid, high = band_powers("green_noise")
    assert mid > 1.2 * low and mid > 4 * high  # a band: less power below and far less above
    white = band_powers("random")
    assert white.max() / white.min() < 1.1  # uniform masking: a flat spectrum
    for mode in ("inverse_block", "bootleg"):  # blocks: the most power at the lowest frequencies
        low, mid, high = band_powers(mode)
        assert low > 1.5 * mid > 1.5 * high, mode


def test_prediction_ratio_keeps_the_green_noise_context():
    full = MaskGenerator(14, "green_noise").generate(16, seed=1)
    part = MaskGenerator(14, "green_noise", prediction_ratio=0.5).generate(16, seed=1)
    assert torch.equal(part.context_indices, full.context_indices)
    assert part.target_mask.sum(1).lt(full.target_mask.sum(1)).all() and not (part.target_mask & ~full.target_mask).any()


@pytest.mark.parametrize("sigmas", [(2.0, 1.0), (0.0, 1.0), (1.0, 1.0)])
def test_a_filter_that_is_not_a_band_pass_is_refused(sigmas):
    with pytest.raises(ValueError, match="noise_sigmas"):
        MaskGenerator(14, "green_noise", noise_sigmas=sigmas)


def test_config_round_trip_a_pretraining_step_and_the_statistics_command(tmp_path):
    config = tiny_config(mask_mode="green_noise", mask_ratio=0.75, mask_noise_sigmas=(0.5, 1.0))
    reloaded = BootlegConfig.from_dict(config.to_dict())
    assert reloaded.mask_noise_sigmas == [0.5, 1.0]
    generator = MaskGenerator.from_config(reloaded)
    assert generator.mode == "green_noise" and generator.noise_sigmas == (0.5, 1.0)
    check_hidden_target_mode(reloaded, tmp_path)
