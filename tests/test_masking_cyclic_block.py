"""Franca's cyclic block masking (`mask_mode="cyclic_block"`, the paper's Table 5): one visible rectangle per image,
truncated to exactly k tokens in raster order, then shifted with wrap-around; targets are every hidden token."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import check_hidden_target_mode, check_seeded_partition, tiny_config

from bootleg_hf import MaskGenerator


def unshifted_block(visible: np.ndarray, k: int) -> tuple[int, int] | None:
    """For a [Gh, Gw] visible mask: the (rows, columns) of its bounding box under the first cyclic shift for which the
    mask is the first k tokens of that box in raster order, or None when no shift makes it so."""
    gh, gw = visible.shape
    for dy in range(gh):
        for dx in range(gw):
            u = np.roll(visible, (-dy, -dx), (0, 1))
            rows, cols = np.nonzero(u)
            r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
            box = np.zeros_like(u)
            box[r0:r1 + 1, c0:c1 + 1] = True
            prefix = box.ravel() & (np.cumsum(box.ravel()) <= k)
            if np.array_equal(prefix, u.ravel()):
                return int(r1 - r0 + 1), int(c1 - c0 + 1)
    return None


@pytest.mark.parametrize("grid,ratio", [((14, 14), 0.75), ((6, 12), 0.6)])
def test_every_context_is_a_wrapped_raster_prefix_of_one_rectangle(grid, ratio):
    g = MaskGenerator(grid, "cyclic_block", mask_ratio=ratio)
    m = g.generate(48, seed=1)
    k = int(grid[0] * grid[1] * (1 - ratio))
    assert m.context_indices.shape == (48, k)
    shapes = set()
    for row in (~m.target_mask).numpy():
        found = unshifted_block(row.reshape(grid), k)
        assert found is not None, row.reshape(grid).astype(int)
        shapes.add(found)
    assert len(shapes) > 3  # the aspect is drawn per image


def test_aspect_range_sets_the_rectangle_and_the_shift_makes_positions_uniform():
    squares = MaskGenerator(14, "cyclic_block", mask_ratio=0.75, target_aspect=(1.0, 1.0)).generate(32, seed=0)
    for row in (~squares.target_mask).numpy():  # k = 49: a 7×7 square, wherever it wraps to
        assert unshifted_block(row.reshape(14, 14), 49) == (7, 7)
    g = MaskGenerator(14, "cyclic_block", mask_ratio=0.75)
    # every draw is a shifted rectangle (neighbours on the torus mostly visible too), yet no position is favoured
    m = check_seeded_partition(g, 256)
    visible = ~m.target_mask.numpy().reshape(-1, 14, 14)
    torus_neighbours = sum(np.roll(visible, s, a) for s in (1, -1) for a in (1, 2)) * visible
    assert torus_neighbours.sum() / visible.sum() > 3.0  # uniform masking at 25 % visible: about 1
    rate = (~g.generate(4000, seed=0).target_mask).float().mean(0)
    assert (rate - 49 / 196).abs().max().item() < 0.05  # 4000 draws: ±0.007 std per position


def test_config_a_pretraining_step_and_the_statistics_command(tmp_path):
    config = tiny_config(mask_mode="cyclic_block", mask_ratio=0.75)
    assert MaskGenerator.from_config(config).target_aspect == pytest.approx((0.3, 1 / 0.3))
    check_hidden_target_mode(config, tmp_path)
