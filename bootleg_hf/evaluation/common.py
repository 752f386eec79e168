"""Helpers shared by the evaluation protocols: device choice, seeded subsets, settings checks."""

from __future__ import annotations

import datasets
import torch

from ..precision import autocast


@torch.no_grad()
def frozen_tokens(encoder: torch.nn.Module, pixel_values: torch.Tensor, precision: str = "auto",
                  **kwargs) -> torch.Tensor:
    """A frozen encoder's final-LN tokens `[B, T, D]` as float32, computed with `precision` (`auto`: bf16 autocast
    where bf16 matmuls are native, `bootleg_hf.precision`); `kwargs` go to the encoder."""
    with autocast(pixel_values.device, precision):
        return encoder(pixel_values, **kwargs).last_hidden_state.float()


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def select_subset(ds: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    """A seeded random subset of `limit` rows (all rows when `limit` is None): folders are often sorted by class."""
    if limit is None or limit >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(limit))


def check_names(names, allowed: tuple[str, ...], what: str) -> list[str]:
    """`names` as a list, or a `ValueError` naming the unknown ones (or an empty choice) and the allowed ones."""
    names = list(names)
    unknown = sorted(set(names) - set(allowed))
    if unknown or not names:
        raise ValueError(f"unknown {what} {unknown or names}; choose from {allowed}")
    return names


def report_heading(title: str, results: dict, protocol: str) -> list[str]:
    """The first lines of a probe report: title with the model and data set, split sizes, the protocol, wall time."""
    return [f"# {title}: `{results['model']}` on {results['dataset']}", "",
            f"{results['num_train']} train / {results['num_test']} test images at {results['image_size']} px, "
            f"{protocol}; wall time {results['wall_time_s']['total_s']:.0f} s.", ""]


def square_size(config) -> int:
    """The side of the encoder's square input (probing uses square crops)."""
    h, w = config.image_hw
    if h != w:
        raise ValueError(f"probing needs a square input size, the encoder's is {h}x{w}")
    return h


__all__ = ["frozen_tokens", "default_device", "select_subset", "check_names", "report_heading", "square_size"]
