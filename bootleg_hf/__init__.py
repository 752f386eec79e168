"""bootleg-hf: Bootleg (hidden-layer self-distillation for ViTs) as native Hugging Face `transformers` models.

Importing the package registers every Bootleg class with the `transformers` Auto classes (no network access).
"""

from transformers import AutoModelForImageClassification, AutoModelForSemanticSegmentation
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    BeitImageProcessor,
    BeitImageProcessorPil,
)

from .configuration_bootleg import PRESETS, BootlegConfig
from .losses import MSELossNoForward, mse_loss
from .masking import BootlegDataCollator, MaskBatch, MaskGenerator
from .modeling_bootleg_pretraining import BootlegForPretraining, BootlegPredictor, BootlegPretrainingOutput
from .trainer import BootlegTrainer, BootlegTrainingArguments, NonFiniteLossError, mask_generator_from_config
from .conversion import bootleg_to_timm, config_from_timm, timm_to_bootleg
from .image_processing_bootleg import make_image_processor
from .modeling_bootleg import BootlegBackbone, BootlegModel, BootlegPreTrainedModel, sincos_position_embedding
from .targets import TargetSpec, TargetTerm
from .modeling_bootleg_heads import BootlegForImageClassification, BootlegForSemanticSegmentation
from .probes import ProbeSweep, build_probe

__version__ = "0.1.0"

AutoConfig.register("bootleg", BootlegConfig, exist_ok=True)
AutoModel.register(BootlegConfig, BootlegModel, exist_ok=True)
AutoBackbone.register(BootlegConfig, BootlegBackbone, exist_ok=True)
AutoModelForImageClassification.register(BootlegConfig, BootlegForImageClassification, exist_ok=True)
AutoModelForSemanticSegmentation.register(BootlegConfig, BootlegForSemanticSegmentation, exist_ok=True)
AutoImageProcessor.register(BootlegConfig, image_processor_classes={"pil": BeitImageProcessorPil,
                                                                    "torchvision": BeitImageProcessor}, exist_ok=True)

__all__ = [
    "PRESETS", "BootlegConfig", "BootlegModel", "BootlegPreTrainedModel", "BootlegBackbone", "TargetSpec",
    "TargetTerm", "make_image_processor", "sincos_position_embedding", "timm_to_bootleg", "bootleg_to_timm",
    "config_from_timm", "MaskGenerator", "MaskBatch", "BootlegDataCollator", "BootlegForPretraining", "BootlegPredictor",
    "BootlegPretrainingOutput", "MSELossNoForward", "mse_loss", "BootlegTrainer", "BootlegTrainingArguments",
    "NonFiniteLossError", "mask_generator_from_config",
]
__all__ += ["BootlegForImageClassification", "BootlegForSemanticSegmentation", "ProbeSweep", "build_probe"]
