"""The selectable prediction losses (`config.loss_type`): each against its definition computed by hand, with the
same gradients, and used by `BootlegForPretraining`."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from bootleg_hf import BootlegForPretraining, MaskGenerator
from bootleg_hf.losses import prediction_loss


def by_hand(kind: str, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    d = prediction - target
    if kind == "mse":
        return (d * d).mean()
    if kind == "l1":
        return d.abs().mean()
    return torch.where(d.abs() < 1.0, 0.5 * d * d, d.abs() - 0.5).mean()  # smooth-L1 with β = 1 (I-JEPA's)


@pytest.mark.parametrize("kind", ["mse", "smooth_l1", "l1"])
def test_each_loss_and_its_gradient_match_the_definition(kind):
    torch.manual_seed(0)
    target = torch.randn(4, 3, 5, 7, dtype=torch.float64) * 2  # many |difference| values on both sides of β = 1
    prediction = torch.randn_like(target, requires_grad=True)
    reference = prediction.detach().clone().requires_grad_(True)
    ours = prediction_loss(prediction, target, kind)
    expected = by_hand(kind, reference, target)
    ours.backward(), expected.backward()
    assert ours.item() == pytest.approx(expected.item(), rel=1e-12)
    assert torch.allclose(prediction.grad, reference.grad, rtol=0, atol=1e-15)


def test_the_pretraining_model_uses_the_configured_loss_and_unknown_ones_are_refused():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    batch = MaskGenerator.from_config(tiny_config()).generate(2, seed=0)
    values = {}
    for kind in ("mse", "smooth_l1", "l1"):
        torch.manual_seed(1)
        model = BootlegForPretraining(tiny_config(loss_type=kind))
        out = model(images, batch.context_indices, batch.target_indices, output_predictions=True)
        values[kind] = out.loss.item()
        assert values[kind] == pytest.approx(by_hand(kind, out.predictions.float(), out.targets).item(), rel=1e-5)
    assert len(set(values.values())) == 3
    with pytest.raises(ValueError, match="loss_type must be one of"):
        tiny_config(loss_type="huber")
    with pytest.raises(ValueError, match="loss_type must be one of"):
        prediction_loss(torch.zeros(1), torch.zeros(1), "huber")
