"""Image processing for Bootleg models: a BEiT processor configured for the model.

We save the built-in `BeitImageProcessor` type (bicubic resize to the model's size, ImageNet mean/std, RGB
conversion) rather than a class of our own, so Hub users load the processor without remote code, and segmentation
pipelines get `post_process_semantic_segmentation` for free. The PIL backend needs no torchvision.
"""

from __future__ import annotations

from transformers import BeitImageProcessorPil
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .configuration_bootleg import BootlegConfig


def make_image_processor(config: BootlegConfig) -> BeitImageProcessorPil:
    """Processor for `config`: any image (any mode) → RGB, bicubic resize to `config.image_size`, ImageNet norm."""
    h, w = config.image_hw
    return BeitImageProcessorPil(
        size={"height": h, "width": w}, resample=3, do_center_crop=False, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD),
        do_reduce_labels=False, do_convert_rgb=True,
    )


def make_eval_image_processor(config: BootlegConfig, crop_fraction: float = 0.875) -> BeitImageProcessorPil:
    """The probes' evaluation view as a processor: shorter side to `size / crop_fraction` (bicubic), centre crop to
    the model's (square) size, ImageNet norm; equal to `bootleg_hf.data.EvalTransform` within 1e-6."""
    h, w = config.image_hw
    if h != w:
        raise ValueError(f"the evaluation crop needs a square input size, the model's is {h}x{w}")
    return BeitImageProcessorPil(**{**make_image_processor(config).to_dict(), "do_center_crop": True,
                                    "size": {"shortest_edge": max(h, round(h / crop_fraction))},
                                    "crop_size": {"height": h, "width": w}})
