"""CrossMAE's partial reconstruction (`mask_prediction_ratio`, CrossMAE's `kept_mask_ratio`): the same context as
full reconstruction, a uniform subset of the hidden tokens as targets, CrossMAE's token count, validation, and a
training step with the CrossMAE decoder on it."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from bootleg_hf import BootlegConfig, BootlegForPretraining, MaskGenerator


def crossmae_predicted(num_tokens: int, mask_ratio: float, kept_mask_ratio: float) -> int:
    """How many tokens CrossMAE's `random_masking` marks for prediction (its mask's ones)."""
    mask = torch.ones(num_tokens)
    mask[: int(num_tokens * (1 - mask_ratio)) + int(num_tokens * (mask_ratio - kept_mask_ratio))] = 0
    return int(mask.sum())


@pytest.mark.parametrize("grid, mask_ratio, kept", [(14, 0.75, 0.25), (14, 0.75, 0.75), (8, 0.75, 0.5),
                                                    (14, 0.8, 0.3)])
def test_partial_targets_are_a_subset_of_the_hidden_tokens_with_crossmaes_count(grid, mask_ratio, kept):
    n = grid * grid
    full = MaskGenerator(grid, "random", mask_ratio=mask_ratio).generate(64, seed=5, epoch=2)
    part = MaskGenerator(grid, "random", mask_ratio=mask_ratio, prediction_ratio=kept).generate(64, seed=5, epoch=2)
    assert torch.equal(part.context_indices, full.context_indices)  # the context does not depend on the ratio
    predicted = crossmae_predicted(n, mask_ratio, kept)
    assert part.target_indices.shape == (64, 1, predicted)
    for ctx, tgt, hidden, union in zip(part.context_indices, part.target_indices[:, 0], full.target_indices[:, 0],
                                       part.target_mask):
        assert bool((tgt.diff() > 0).all())  # unique, raster order
        assert set(tgt.tolist()) <= set(hidden.tolist()) and not set(tgt.tolist()) & set(ctx.tolist())
        assert torch.equal(torch.nonzero(union).flatten(), tgt)
    if kept == mask_ratio:
        assert torch.equal(part.target_indices, full.target_indices)


def test_any_positive_ratio_predicts_at_least_one_token():
    # N − int(N(1 − r)) − int(N(r − k)) ≥ N·k > 0: even a tiny ratio predicts one token
    assert MaskGenerator(8, "random", prediction_ratio=0.001).generate(2).target_indices.shape == (2, 1, 1)


def test_partial_targets_are_uniform_over_the_hidden_tokens():
    g = MaskGenerator(8, "random", mask_ratio=0.75, prediction_ratio=0.25)
    m = g.generate(6000, seed=0)
    hidden = torch.ones(6000, 64, dtype=torch.bool)
    hidden.scatter_(1, m.context_indices, False)
    rate = (m.target_mask.sum(0) / hidden.sum(0)).float()  # per position: P(predicted | hidden)
    expected = crossmae_predicted(64, 0.75, 0.25) / (64 - 16)
    assert (rate - expected).abs().max().item() < 0.04  # ~4500 hidden draws per position: std ≈ 0.007


def test_partial_reconstruction_on_inverse_block_masks():
    full = MaskGenerator(14, "inverse_block", mask_ratio=0.8).generate(16, seed=1)
    part = MaskGenerator(14, "inverse_block", mask_ratio=0.8, prediction_ratio=0.4).generate(16, seed=1)
    assert torch.equal(part.context_indices, full.context_indices)
    assert part.target_indices.shape[-1] == crossmae_predicted(196, 0.8, 0.4)
    assert not (part.target_mask & ~full.target_mask).any()


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "bootleg", "prediction_ratio": 0.25}, "needs a mode in"),
    ({"mode": "random", "prediction_ratio": 0.8}, r"\(0, mask_ratio=0.75\]"),
    ({"mode": "random", "prediction_ratio": 0.0}, r"\(0, mask_ratio=0.75\]")])
def test_bad_prediction_ratios_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskGenerator(8, **kwargs)


def test_config_validates_and_passes_the_prediction_ratio():
    with pytest.raises(ValueError, match="mask_prediction_ratio"):
        BootlegConfig(mask_mode="bootleg", mask_prediction_ratio=0.25)
    with pytest.raises(ValueError, match="mask_prediction_ratio"):
        BootlegConfig(mask_mode="random", mask_ratio=0.75, mask_prediction_ratio=0.9)
    config = tiny_config(mask_mode="random", mask_prediction_ratio=0.25, targets="pixels", predictor_type="crossmae",
                         predictor_feature_maps=True, num_register_tokens=0, predictor_num_register_tokens=0)
    assert BootlegConfig.from_dict(config.to_dict()).mask_prediction_ratio == 0.25
    masks = MaskGenerator.from_config(config).generate(4, seed=0)
    assert masks.target_indices.shape == (4, 1, crossmae_predicted(16, 0.75, 0.25))  # 4×4 grid: 4 of 12 hidden
    model = BootlegForPretraining(config)
    out = model(torch.randn(4, 3, 32, 32), masks.context_indices, masks.target_indices)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.predictor.mask_token.grad is not None
