"""Image processing for Bootleg models: a BEiT processor configured for the model.

We save the built-in `BeitImageProcessor` type (bicubic resize to the model's size, ImageNet mean/std, RGB
conversion) rather than a class of our own, so Hub users load the processor without remote code, and segmentation
pipelines get `post_process_semantic_segmentation` for free. The PIL backend needs no torchvision.
"""

from __future__ import annotations

from transformers import BeitImageProcessorPil

from .configuration_bootleg import BootlegConfig

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def make_image_processor(config: BootlegConfig) -> BeitImageProcessorPil:
    """Processor for `config`: any image (any mode) → RGB, bicubic resize to `config.image_size`, ImageNet norm."""
    h, w = config.image_hw
    return BeitImageProcessorPil(
        size={"height": h, "width": w}, resample=3, do_center_crop=False, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_reduce_labels=False,
        do_convert_rgb=True,
    )
