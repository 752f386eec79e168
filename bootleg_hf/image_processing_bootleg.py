"""Image processing for Bootleg models: transformers' built-in MobileNetV2 processor, configured for the model.

A built-in type (no class of our own) means Hub users load the processor without remote code. MobileNetV2's processor
is the one built-in processor that does everything a Bootleg folder needs: shorter-side resize + centre crop (the
probes' evaluation view, as DINOv2's processor does), segmentation maps resized with nearest neighbour (so label maps
keep their labels), and `post_process_semantic_segmentation` for the segmentation pipeline. Its PIL backend needs
no torchvision; both backends are registered for `BootlegConfig` in `bootleg_hf/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import MobileNetV2ImageProcessorPil
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from .configuration_bootleg import BootlegConfig

CROP_FRACTION = 0.875  # the probes' evaluation crop (bootleg_hf.data.EvalTransform)


def _processor(image_mean: Sequence[float] | None, image_std: Sequence[float] | None,
               resample: PILImageResampling, **geometry) -> MobileNetV2ImageProcessorPil:
    return MobileNetV2ImageProcessorPil(
        resample=resample, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN if image_mean is None else image_mean),
        image_std=list(IMAGENET_DEFAULT_STD if image_std is None else image_std),
        do_reduce_labels=False, do_convert_rgb=True, **geometry)


def make_image_processor(config: BootlegConfig, crop_fraction: float = CROP_FRACTION, *,
                         image_mean: Sequence[float] | None = None, image_std: Sequence[float] | None = None,
                         resample: PILImageResampling = PILImageResampling.BICUBIC) -> MobileNetV2ImageProcessorPil:
    """The evaluation view of encoder and classifier folders: any image (any mode) → RGB, shorter side to
    `round(size / crop_fraction)` (bicubic), centre crop to the model's size, normalised with `image_mean/std`
    (default ImageNet's). Equal to `bootleg_hf.data.EvalTransform`, with which the probe results were measured,
    within 1e-6. `crop_fraction=1` resizes the shorter side to the model's size and crops the longer one."""
    h, w = config.image_hw
    if h != w:
        raise ValueError(f"the evaluation crop needs a square input size, the model's is {h}x{w}; "
                         "use make_segmentation_image_processor for a plain resize")
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    return _processor(image_mean, image_std, resample, do_resize=True, do_center_crop=True,
                      size={"shortest_edge": max(h, round(h / crop_fraction))}, crop_size={"height": h, "width": w})


def make_segmentation_image_processor(config: BootlegConfig, *, image_mean: Sequence[float] | None = None,
                                      image_std: Sequence[float] | None = None) -> MobileNetV2ImageProcessorPil:
    """The view of segmentation folders: the whole image resized to the model's size (bicubic; no crop, so the
    pipeline's masks cover the whole input), label maps given as `segmentation_maps` resized with nearest neighbour
    (labels kept exactly), normalised with `image_mean/std` (default ImageNet's)."""
    h, w = config.image_hw
    return _processor(image_mean, image_std, PILImageResampling.BICUBIC, do_resize=True, do_center_crop=False,
                      size={"height": h, "width": w}, crop_size={"height": h, "width": w})


def default_image_processor(config: BootlegConfig, architecture: str) -> MobileNetV2ImageProcessorPil:
    """The processor saved with a folder of `architecture` (a class name) when none is given: the segmentation
    view for `BootlegForSemanticSegmentation`, the evaluation view otherwise (square models) or a plain resize."""
    if architecture == "BootlegForSemanticSegmentation" or len(set(config.image_hw)) > 1:
        return make_segmentation_image_processor(config)
    return make_image_processor(config)


__all__ = ["CROP_FRACTION", "make_image_processor", "make_segmentation_image_processor", "default_image_processor"]
