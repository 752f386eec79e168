"""data2vec 2.0's inverse block masking (`mask_mode="inverse_block"`): seeded like every mode, exactly the visible
count it promises, visible tokens in clusters of block size, statistics on the paper's 14×14 grid, and a training
step on its masks."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from conftest import check_hidden_target_mode, check_seeded_partition, tiny_config

from bootleg_hf import MaskGenerator


def visible_neighbours(target_mask: torch.Tensor, grid: int) -> float:
    """Mean number of visible 4-neighbours of a visible token."""
    v = (~target_mask).numpy().reshape(-1, grid, grid).astype(int)
    nb = np.zeros_like(v)
    nb[:, 1:] += v[:, :-1]
    nb[:, :-1] += v[:, 1:]
    nb[:, :, 1:] += v[:, :, :-1]
    nb[:, :, :-1] += v[:, :, 1:]
    return float((nb * v).sum() / v.sum())


def test_inverse_block_masks_are_seeded_exact_and_clustered_on_a_14x14_grid():
    g = MaskGenerator(14, "inverse_block", mask_ratio=0.8)
    m = check_seeded_partition(g, 512)  # 39 visible tokens in every image, as data2vec's require_same_masks
    # visible tokens come in 3×3 blocks: far more visible neighbours than uniform masking at the same ratio
    uniform = MaskGenerator(14, "random", mask_ratio=0.8).generate(512, seed=3)
    assert visible_neighbours(m.target_mask, 14) > 3 * visible_neighbours(uniform.target_mask, 14)
    # every position can be visible (clamped blocks reach the border)
    assert bool((~m.target_mask).any(0).all())


def test_block_size_one_without_adjustment_is_uniform_masking():
    """With 1×1 blocks the centres are the visible tokens: every position is visible about equally often."""
    m = MaskGenerator(8, "inverse_block", mask_ratio=0.75, block_size=1, block_adjust=0.0).generate(4000, seed=0)
    rate = (~m.target_mask).float().mean(0)
    assert rate.mean().item() == pytest.approx(16 / 64)
    assert (rate - 0.25).abs().max().item() < 0.04  # 4000 draws: ±0.0068 std per position


@pytest.mark.parametrize("kwargs, message", [({"block_size": 0}, "block_size"), ({"block_size": 9}, "block_size"),
                                             ({"block_adjust": -0.1}, "block_adjust")])
def test_bad_block_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskGenerator(8, "inverse_block", **kwargs)


def test_a_pretraining_step_on_inverse_block_masks_and_the_statistics_command(tmp_path):
    config = tiny_config(mask_mode="inverse_block", mask_ratio=0.75, mask_block_size=2)
    masks = MaskGenerator.from_config(config).generate(4, seed=0)
    assert masks.context_indices.shape == (4, 4)  # int(16 · 0.25) on the 4×4 grid
    check_hidden_target_mode(config, tmp_path)
