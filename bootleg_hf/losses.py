"""The prediction loss (docs/design.md §4.3): Bootleg's plain MSE over every target element (the default), or
smooth-L1 (I-JEPA's, β = 1) or L1 (`config.loss_type`), each the mean over every target element."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .configuration_bootleg import LOSS_TYPES


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


def prediction_loss(prediction: torch.Tensor, target: torch.Tensor, loss_type: str = "mse",
                    compute_value: bool = True) -> torch.Tensor:
    """The mean `loss_type` loss (`mse`, `smooth_l1` with β = 1 as I-JEPA's `F.smooth_l1_loss`, `l1`) over all
    elements. `compute_value=False` skips the value of the MSE (see `mse_loss`); the other losses always compute it."""
    if loss_type == "mse":
        return mse_loss(prediction, target, compute_value)
    if loss_type == "smooth_l1":
        return F.smooth_l1_loss(prediction, target, beta=1.0)
    if loss_type == "l1":
        return F.l1_loss(prediction, target)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
