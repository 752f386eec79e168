"""The Bootleg loss: plain MSE over every target element (docs/design.md §4.3)."""

from __future__ import annotations

import torch


class MSELossNoForward(torch.autograd.Function):
    """MSE whose forward skips the reduction: it returns a zero placeholder, and its backward returns exactly
    `F.mse_loss`'s gradient `2·(pred − target)/numel` (none for the target).

    Use it on steps whose loss is not logged; compute the real MSE (`mse_loss`) on logging steps.
    """

    @staticmethod
    def forward(ctx, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(prediction - target)
        ctx.numel = prediction.numel()
        return prediction.new_zeros(())

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (diff,) = ctx.saved_tensors
        return diff * (grad_output * (2.0 / ctx.numel)).to(diff.dtype), None


def mse_loss(prediction: torch.Tensor, target: torch.Tensor, compute_value: bool = True) -> torch.Tensor:
    """Mean squared error over all elements; with `compute_value=False` the value is a placeholder (zero) but the
    gradient is the same."""
    if compute_value:
        return torch.nn.functional.mse_loss(prediction, target)
    return MSELossNoForward.apply(prediction, target)
