"""bootleg-hf: Bootleg (hidden-layer self-distillation for ViTs) as native Hugging Face `transformers` models.

Importing the package registers every Bootleg class with the `transformers` Auto classes (no network access). Only
the inference classes are imported then; pretraining (`BootlegTrainer`, which needs the Trainer and `datasets`),
masking, conversion and the evaluation tools load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
    MobileNetV2ImageProcessor,
    MobileNetV2ImageProcessorPil,
)

from .configuration_bootleg import PRESETS, BootlegConfig
from .modeling_bootleg import BootlegBackbone, BootlegModel, BootlegPreTrainedModel, sincos_position_embedding
from .modeling_bootleg_heads import BootlegForImageClassification, BootlegForSemanticSegmentation

__version__ = "0.1.0"

AutoConfig.register("bootleg", BootlegConfig, exist_ok=True)
AutoModel.register(BootlegConfig, BootlegModel, exist_ok=True)
AutoBackbone.register(BootlegConfig, BootlegBackbone, exist_ok=True)
AutoModelForImageClassification.register(BootlegConfig, BootlegForImageClassification, exist_ok=True)
AutoModelForSemanticSegmentation.register(BootlegConfig, BootlegForSemanticSegmentation, exist_ok=True)
AutoImageProcessor.register(BootlegConfig, image_processor_classes={"pil": MobileNetV2ImageProcessorPil,
                                                                    "torchvision": MobileNetV2ImageProcessor}, exist_ok=True)

# public name → the module that defines it, imported on first access
_LAZY = {
    "TargetSpec": "targets", "TargetTerm": "targets",
    "MaskGenerator": "masking", "MaskBatch": "masking", "BootlegDataCollator": "masking",
    "BootlegForPretraining": "modeling_bootleg_pretraining", "BootlegPredictor": "modeling_bootleg_pretraining",
    "BootlegPretrainingOutput": "modeling_bootleg_pretraining",
    "MSELossNoForward": "losses", "mse_loss": "losses", "prediction_loss": "losses",
    "BootlegTrainer": "trainer", "BootlegTrainingArguments": "trainer", "BootlegEMACallback": "trainer", "NonFiniteLossError": "trainer",
    "bootleg_to_timm": "conversion", "config_from_timm": "conversion", "timm_to_bootleg": "conversion",
    "make_image_processor": "image_processing_bootleg",
    "make_segmentation_image_processor": "image_processing_bootleg",
    "load_encoder": "checkpoints", "save_model_folder": "checkpoints", "export_pretrained": "checkpoints",
    "build_probe": "modeling_bootleg_heads", "ProbeSweep": "evaluation.classification",
}
_SUBMODULES = {"checkpoints", "cli", "configuration_bootleg", "conversion", "data", "demo", "evaluation",
               "finetuning", "image_processing_bootleg", "losses", "mask_statistics", "masking", "modeling_bootleg",
               "modeling_bootleg_heads", "modeling_bootleg_pretraining", "optim", "pretraining", "publishing",
               "recipes", "release", "reports", "targets", "trainer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)


__all__ = ["PRESETS", "BootlegConfig", "BootlegModel", "BootlegPreTrainedModel", "BootlegBackbone",
           "sincos_position_embedding", "BootlegForImageClassification", "BootlegForSemanticSegmentation", *_LAZY]
