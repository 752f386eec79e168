"""Fine-tuning a Bootleg encoder end to end through `transformers.Trainer` (docs/finetuning.md).

Four protocols, each a recipe (`bootleg_hf/recipes/finetune/`, also reachable as `training/recipes/finetune/`):

- `full` — the whole model: linear head on the final-norm CLS token (or the patch probe on mean-pooled patches),
  stochastic depth, layer-wise LR decay, timm's RandAugment + random erasing (`create_transform`), MixUp / CutMix
  with label smoothing (`Mixup`, `SoftTargetCrossEntropy`), AdamW, linear warm-up then cosine to `min_lr`.
- `lowshot` — `full` on a deterministic class-balanced fraction of the training set (`low_shot_split`), written to
  the run folder as JSON so the same images can be reused.
- `lora` — LoRA adapters (peft) on the encoder's attention and MLP linears, the head trained fully; the merged model
  is exported, the adapter saved next to it.
- `dense` — semantic segmentation trained end to end: UperNet (`transformers.UperNetForSemanticSegmentation`) on
  `BootlegBackbone`, or the Segmenter mask-transformer heads Lin / Blk of `BootlegForSemanticSegmentation`, with the
  segmentation probes' augmentation and layer-wise LR decay.

A run writes `model/` (the fine-tuned model and its image processor: `pipeline(...)` loads it), Trainer checkpoints,
`finetune_results.json` (a `bootleg-results/1` document, like the probes') / `.md`, `recipe.yaml` (as run) and, per
protocol, `low_shot_split.json` or `adapter/`.
"""

from __future__ import annotations

import copy
import json
import os
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageOps
from torch import nn
from transformers import Trainer, TrainingArguments, UperNetConfig, UperNetForSemanticSegmentation

from .checkpoints import check_output, load_encoder, save_model_folder
from .configuration_bootleg import HEAD_TYPES
from .data import (
    IMAGENET_MEAN, IMAGENET_STD, MOSAIC_LABELS, EvalTransform, SegmentationTrainTransform, _BatchImageTransform,
    _transforms_v2,
    decode_image, decode_mask, load_image_dataset,
)
from .evaluation.common import select_subset
from .evaluation.segmentation import (
    SEGMENTATION_PROTOCOLS, confusion_matrix, largest_label, load_segmentation_split, segmentation_scores,
)
from .evaluation.datasets_paper import paper_segmentation
from .image_processing_bootleg import make_image_processor, make_segmentation_image_processor
from .modeling_bootleg import BootlegModel
from .modeling_bootleg_heads import BootlegForImageClassification, BootlegForSemanticSegmentation
from .optim import adamw, layer_decay_groups
from .precision import fast_bf16
from .publishing import results_document
from .recipes import (
    RECIPE_DIR, RecipeError, apply_overrides, available_recipes, check_crop_scale, check_sections, read_recipe_file,
    recipe_path, typed_fields, world_size,
)
from .reports import write_report

FINETUNE_RECIPE_DIR = RECIPE_DIR / "finetune"
PROTOCOLS = ("full", "lowshot", "lora", "dense")
DENSE_DECODERS = ("upernet", "lin", "blk")
# LoRA targets: the encoder blocks' attention and MLP linears (not a head's own blocks)
LORA_TARGETS = r"(.*\.)?bootleg\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))|(.*\.)?backbone\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"
RESULTS_NAME = "finetune_results"


# ----------------------------------------------------------------------------------------------- recipe
@dataclass
class FinetuneModel:
    """The `model` section: the head (classification: a `HEAD_TYPES` entry, `linear` = final-norm CLS → Linear;
    dense: `upernet`, `lin` or `blk`), stochastic depth, LoRA (rank 0 = no LoRA) and UperNet's shape (encoder stages
    1-based, default four spread over the depth as MAE's 4/6/8/12 of 12 blocks; channels of its decoder)."""

    head: str = "linear"
    drop_path_rate: float = 0.1
    lora_rank: int = 0
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    out_indices: list[int] | None = None
    decoder_hidden_size: int = 512


@dataclass
class FinetuneData:
    """The `data` section: input size (default the encoder's), training crop scale, timm's `auto_augment` policy
    (None: none), random-erasing probability, MixUp / CutMix alphas (0: off) and label smoothing, the low-shot
    fraction and its seed (protocol `lowshot`), and the dense protocol's augmentation (RandScale range, colour jitter,
    cutout probability and size, as `SegmentationTrainTransform`)."""

    image_size: int | None = None
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    random_erasing: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    label_smoothing: float = 0.1
    low_shot_fraction: float = 0.01
    low_shot_seed: int = 0
    seg_scale: list[float] = field(default_factory=lambda: list(SEGMENTATION_PROTOCOLS["paper"].augmentation["scale"]))
    seg_jitter: float = SEGMENTATION_PROTOCOLS["paper"].augmentation["jitter"]
    seg_cutout: float = SEGMENTATION_PROTOCOLS["paper"].augmentation["cutout"]
    seg_cutout_size: list[float] = field(
        default_factory=lambda: list(SEGMENTATION_PROTOCOLS["paper"].augmentation["cutout_size"]))


@dataclass
class FinetuneTrainingArguments(TrainingArguments):
    """`TrainingArguments` for fine-tuning: layer-wise LR decay (`layer_decay`, 1 = off), AdamW β₂ 0.999, cosine to
    `min_lr`, no gradient clipping (as the MAE fine-tuning code), raw columns kept for the lazy transforms, labels
    named `labels` (a peft wrapper hides them from the Trainer's signature check)."""

    layer_decay: float = field(default=0.75, metadata={"help": "layer-wise LR decay per block (1: none)"})
    min_lr: float = field(default=1e-6, metadata={"help": "LR at the end of the cosine (before layer decay)"})
    max_grad_norm: float = field(default=0.0, metadata={"help": "clip the gradient norm (0: no clipping)"})
    lr_scheduler_type: str = field(default="cosine_with_min_lr")
    remove_unused_columns: bool = field(default=False)
    label_names: list[str] | None = field(default_factory=lambda: ["labels"])
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 autocast; None (default): on where bf16 matmuls are native (CUDA bf16, AMX CPUs)"})
    report_to: str | list[str] | None = field(default="none")
    dataloader_pin_memory: bool | None = field(default=None, metadata={
        "help": "page-locked batches; None (default): on when training on a CUDA GPU"})

    def __post_init__(self):
        if self.dataloader_pin_memory is None:
            self.dataloader_pin_memory = torch.cuda.is_available() and not self.use_cpu
        if self.bf16 is None:
            gpu = torch.cuda.is_available() and not self.use_cpu
            self.bf16 = not self.fp16 and fast_bf16("cuda" if gpu else "cpu")
        if self.bf16 and not torch.cuda.is_available():
            self.use_cpu = True
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must lie in (0, 1], got {self.layer_decay}")
        self.lr_scheduler_kwargs = {**(self.lr_scheduler_kwargs or {}), "min_lr": self.min_lr} \
            if self.lr_scheduler_type == "cosine_with_min_lr" else self.lr_scheduler_kwargs
        super().__post_init__()


def recipe_fields() -> dict[str, dict[str, Any]]:
    """Every key each section of a fine-tuning recipe accepts, with its type. `training` takes the
    `FinetuneTrainingArguments` fields plus `global_batch_size`, `warmup_epochs`, `base_lr` and `lr_reference_batch`
    (the LR is base_lr × global batch / lr_reference_batch, MAE's rule with 256)."""
    training = typed_fields(FinetuneTrainingArguments) | {"global_batch_size": int, "warmup_epochs": float,
                                                      "base_lr": float, "lr_reference_batch": int}
    return {"model": typed_fields(FinetuneModel), "data": typed_fields(FinetuneData), "training": training}


def available_finetune_recipes() -> list[str]:
    """Names of the fine-tuning recipes shipped with the package."""
    return available_recipes(FINETUNE_RECIPE_DIR)


def finetune_recipe_path(recipe: str | os.PathLike) -> Path:
    """A shipped fine-tuning recipe's file for a name such as `vit-micro-full`, else `recipe` as a path."""
    return recipe_path(recipe, FINETUNE_RECIPE_DIR)


@dataclass
class FinetuneRecipe:
    """A checked fine-tuning recipe: `protocol`, the `model` and `data` sections as dataclasses, `training` as given
    (turned into `FinetuneTrainingArguments` by `training_args`), and the document it was read from (`raw`)."""

    protocol: str
    model: FinetuneModel
    data: FinetuneData
    training: dict[str, Any]
    raw: dict[str, Any]

    @property
    def task(self) -> str:
        return "segmentation" if self.protocol == "dense" else "classification"


def parse_finetune_recipe(raw: dict[str, Any]) -> FinetuneRecipe:
    """Check a fine-tuning recipe (`protocol` plus the `model`, `data` and `training` sections) and return it; a
    `RecipeError` names the first unknown key, wrong type or impossible value."""
    raw = copy.deepcopy(raw)
    protocol = raw.pop("protocol", None)
    if protocol not in PROTOCOLS:
        raise RecipeError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    check_sections(raw, recipe_fields())
    model, data = FinetuneModel(**raw.get("model", {})), FinetuneData(**raw.get("data", {}))
    check_crop_scale(data.crop_scale)
    heads = DENSE_DECODERS if protocol == "dense" else HEAD_TYPES
    if model.head not in heads:
        raise RecipeError(f"model.head must be one of {heads} for protocol '{protocol}', got '{model.head}'")
    if (protocol == "lora") != (model.lora_rank > 0):
        raise RecipeError(f"model.lora_rank must be > 0 exactly for protocol 'lora' (protocol '{protocol}', "
                          f"lora_rank {model.lora_rank})")
    if model.out_indices is not None and len(model.out_indices) < 3:
        raise RecipeError(f"model.out_indices needs at least 3 encoder stages (UperNet's auxiliary head reads the "
                          f"third), got {model.out_indices}")
    if not 0.0 <= model.drop_path_rate < 1.0:
        raise RecipeError(f"model.drop_path_rate must lie in [0, 1), got {model.drop_path_rate}")
    for name in ("random_erasing", "label_smoothing"):
        if not 0.0 <= getattr(data, name) < 1.0:
            raise RecipeError(f"data.{name} must lie in [0, 1), got {getattr(data, name)}")
    for name in ("mixup", "cutmix"):
        if getattr(data, name) < 0:
            raise RecipeError(f"data.{name} must be >= 0, got {getattr(data, name)}")
    if not 0.0 < data.low_shot_fraction <= 1.0:
        raise RecipeError(f"data.low_shot_fraction must lie in (0, 1], got {data.low_shot_fraction}")
    training = raw.get("training", {})
    for name in ("global_batch_size", "lr_reference_batch"):
        if training.get(name, 1) < 1:
            raise RecipeError(f"training.{name} must be >= 1, got {training[name]}")
    if training.get("base_lr", 1.0) <= 0 or training.get("warmup_epochs", 0) < 0:
        raise RecipeError("training.base_lr must be > 0 and training.warmup_epochs >= 0")
    return FinetuneRecipe(protocol, model, data, training, {"protocol": protocol, **raw})


def load_finetune_recipe(recipe: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> FinetuneRecipe:
    """Read a fine-tuning recipe (a shipped name or a YAML path), apply `section.key=value` overrides (and
    `protocol=...`) and check it."""
    raw = read_recipe_file(finetune_recipe_path(recipe), ("protocol", "model", "data", "training"))
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key == "protocol":
            raw["protocol"] = value
        else:
            apply_overrides(raw, [item])
    return parse_finetune_recipe(raw)


def training_args(recipe: FinetuneRecipe, output_dir: str | os.PathLike, num_images: int,
                  **extra: Any) -> FinetuneTrainingArguments:
    """`FinetuneTrainingArguments` from the recipe's `training` section: the global batch split over processes and
    accumulation steps, warm-up epochs as steps, the LR from `base_lr`; `extra` (non-None values) overrides."""
    training = dict(recipe.training)
    global_batch = int(training.pop("global_batch_size", 1024))
    warmup_epochs = float(training.pop("warmup_epochs", 0))
    base_lr = float(training.pop("base_lr", 5e-4))
    reference = int(training.pop("lr_reference_batch", 256))
    accumulation = int(training.get("gradient_accumulation_steps", 1))
    per_device, rest = divmod(global_batch, world_size() * accumulation)
    if rest or per_device < 1:
        raise RecipeError(f"global batch {global_batch} is not divisible by {world_size()} processes × "
                          f"{accumulation} accumulation steps")
    if num_images < global_batch:
        raise RecipeError(f"the training set has {num_images} images, fewer than one global batch of {global_batch}: "
                          "lower training.global_batch_size (--set training.global_batch_size=N) or use more images")
    steps_per_epoch = num_images // global_batch
    args = dict(output_dir=str(output_dir), per_device_train_batch_size=per_device,
                per_device_eval_batch_size=max(per_device, 64),
                learning_rate=base_lr * global_batch / reference,
                warmup_steps=int(round(warmup_epochs * steps_per_epoch)), **training)
    args.update({k: v for k, v in extra.items() if v is not None})
    return FinetuneTrainingArguments(**args)


# ----------------------------------------------------------------------------------------------- data
def low_shot_split(labels: typing.Sequence[int], fraction: float, seed: int) -> dict[str, Any]:
    """A class-balanced subset: from each class c of n_c images, `max(1, round(fraction · n_c))` chosen uniformly
    without replacement by `numpy.random.default_rng(seed)` (per class, in label order). Returns
    `{"fraction", "seed", "num_images", "per_class": {c: count}, "indices": sorted indices}` — the same for the same
    labels, fraction and seed."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the low-shot fraction must lie in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen, per_class = [], {}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(members))))
        chosen.append(rng.choice(members, size=k, replace=False))
        per_class[int(c)] = k
    indices = sorted(int(i) for i in np.concatenate(chosen))
    return {"fraction": fraction, "seed": seed, "num_images": len(labels), "per_class": per_class,
            "indices": indices}


def write_low_shot_split(split: dict[str, Any], path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")


def read_low_shot_split(path: str | os.PathLike, num_images: int) -> dict[str, Any]:
    """A split written by `write_low_shot_split`, checked against the data set it is applied to."""
    split = json.loads(Path(path).read_text(encoding="utf-8"))
    if split.get("num_images") != num_images:
        raise ValueError(f"{path} was drawn from {split.get('num_images')} images; this training set has "
                         f"{num_images}: it is another data set or limit")
    return split


class FinetuneTrainTransform(_BatchImageTransform):
    """timm's training transform (`create_transform(is_training=True)`: RandomResizedCrop(`scale`, bicubic), flip,
    the `auto_augment` policy, normalisation, random erasing with probability `random_erasing`) on decoded RGB images
    → `pixel_values` float32 [3, S, S]; corrupt images handled as the other transforms."""

    def __init__(self, image_size: int, scale: typing.Sequence[float], auto_augment: str | None,
                 random_erasing: float, **options: Any) -> None:
        from timm.data import create_transform

        super().__init__([_transforms_v2().Identity()], **options)  # the ops are timm's (`timm_transform`)
        self.timm_transform = create_transform(
            image_size, is_training=True, scale=tuple(scale), auto_augment=auto_augment, interpolation="bicubic",
            re_prob=random_erasing, re_mode="pixel", re_count=1, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            color_jitter=None if auto_augment else 0.4)

        for t in getattr(self.timm_transform, "transforms", []):
            for op in getattr(t, "ops", []):  # RandAugment's ops
                if op.aug_fn.__name__ == "posterize":
                    op.aug_fn = posterize

    def transform_batch(self, images, others):
        return {"pixel_values": [self.timm_transform(img) for img in images], **others}


def posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's RandAugment posterize, keeping its meaning at 0 bits: at magnitude 10 (which magnitude noise reaches)
    timm asks for 0 bits, a black image in Pillow before 11, a ValueError since."""
    if bits_to_keep >= 8:
        return img
    return ImageOps.posterize(img, bits_to_keep) if bits_to_keep > 0 else Image.new(img.mode, img.size)


class SegmentationEvalTransform:
    """Images and label maps through the segmentation processor that dense models are saved with (whole image to
    S×S, bicubic; labels nearest neighbour) → `pixel_values` [3, S, S], `labels` [S, S]."""

    def __init__(self, config, size: int, image_column: str = "image", mask_column: str = "mask") -> None:
        self.processor = make_segmentation_image_processor(config)
        self.size, self.image_column, self.mask_column = size, image_column, mask_column

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        images = [decode_image(v) for v in batch[self.image_column]]
        masks = [np.asarray(decode_mask(v), dtype=np.int64) for v in batch[self.mask_column]]
        out = self.processor(images=images, segmentation_maps=masks, size={"height": self.size, "width": self.size},
                             return_tensors="pt")
        return {"pixel_values": list(out["pixel_values"]), "labels": list(out["labels"].long())}


def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack `pixel_values` and the labels (`label` or `labels`) of a list of examples."""
    key = "labels" if "labels" in batch[0] else "label"
    labels = [torch.as_tensor(b[key]) for b in batch]
    return {"pixel_values": torch.stack([b["pixel_values"] for b in batch]), "labels": torch.stack(labels)}


# ----------------------------------------------------------------------------------------------- models
def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0):
    """`model` with LoRA adapters of `rank` on every encoder block's `attn.qkv`, `attn.proj`, `mlp.fc1` and
    `mlp.fc2` (peft; the base weights frozen) and every parameter outside the encoder (the head, a decoder)
    trainable. Returns the `PeftModel`."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("LoRA fine-tuning needs peft: pip install 'bootleg-hf[finetune]' (or peft itself)") from None

    encoder = next(m for m in model.modules() if isinstance(m, BootlegModel))
    in_encoder = {id(p) for p in encoder.parameters()}
    head = [p for p in model.parameters() if id(p) not in in_encoder]
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                                  target_modules=LORA_TARGETS, bias="none"))
    for p in head:
        p.requires_grad_(True)
    return peft_model


def merge_lora(model: nn.Module) -> nn.Module:
    """The base model with the LoRA updates merged into its weights (`merge_and_unload`); other models unchanged."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def default_out_indices(depth: int) -> list[int]:
    """Four encoder stages (1-based) for UperNet: depth/3, depth/2, 2·depth/3, depth — MAE's blocks 4, 6, 8, 12 of a
    12-block ViT."""
    return sorted({max(1, depth // 3), max(1, depth // 2), max(1, 2 * depth // 3), depth})


def build_classifier(encoder: BootlegModel, recipe: FinetuneRecipe, labels: list[str]) -> BootlegForImageClassification:
    return BootlegForImageClassification.from_encoder(encoder, id2label=labels, probe_type=recipe.model.head,
                                                      drop_path_rate=recipe.model.drop_path_rate)


def build_segmenter(encoder: BootlegModel, recipe: FinetuneRecipe, labels: list[str], ignore_index: int) -> nn.Module:
    """UperNet on a `BootlegBackbone` holding `encoder`'s weights (its auxiliary FCN head on the third stage, channels
    half the decoder's, as MAE's 512 / 256), or `BootlegForSemanticSegmentation` with the Lin / Blk head, with the
    recipe's stochastic depth; labels and ignore index set."""
    m = recipe.model
    if m.head != "upernet":
        return BootlegForSemanticSegmentation.from_encoder(
            encoder, id2label=labels, segmentation_head=m.head, drop_path_rate=m.drop_path_rate,
            semantic_loss_ignore_index=ignore_index)
    backbone = copy.deepcopy(encoder.config)
    backbone.drop_path_rate = m.drop_path_rate
    backbone.architectures = ["BootlegBackbone"]
    indices = m.out_indices or default_out_indices(backbone.num_hidden_layers)
    backbone.set_output_features_output_indices(out_features=None, out_indices=list(indices))
    id2label = dict(enumerate(labels))
    config = UperNetConfig(backbone_config=backbone, num_labels=len(labels), hidden_size=m.decoder_hidden_size,
                           auxiliary_in_channels=backbone.hidden_size, auxiliary_channels=m.decoder_hidden_size // 2,
                           loss_ignore_index=ignore_index,
                           id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model = UperNetForSemanticSegmentation(config)
    model.backbone.load_state_dict(encoder.state_dict())
    return model


# ----------------------------------------------------------------------------------------------- trainer
class FinetuneTrainer(Trainer):
    """`Trainer` with layer-wise LR decay groups (`layer_decay_groups`) in AdamW and, for classification, MixUp /
    CutMix (timm's `Mixup`, applied to each training batch) with `SoftTargetCrossEntropy`, or cross-entropy with
    label smoothing; evaluation uses plain cross-entropy. Dense models use their own loss."""

    def __init__(self, *args: Any, mixup: Any = None, label_smoothing: float = 0.0, task: str = "classification",
                 **kwargs: Any) -> None:
        from timm.loss import SoftTargetCrossEntropy

        super().__init__(*args, **kwargs)
        self.mixup, self.label_smoothing, self.task = mixup, label_smoothing, task
        self.soft_target_loss = SoftTargetCrossEntropy()

    def get_train_dataloader(self):
        # Training batches are always whole (MixUp pairs images within a batch; `training_args` counts whole
        # batches); evaluation (drop_last False, the default) sees every test image.
        drop_last, self.args.dataloader_drop_last = self.args.dataloader_drop_last, True
        try:
            return super().get_train_dataloader()
        finally:
            self.args.dataloader_drop_last = drop_last

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            groups = layer_decay_groups(model or self.model, self.args.weight_decay, self.args.learning_rate,
                                        self.args.layer_decay)
            self.optimizer = adamw(groups, self.args.learning_rate, (self.args.adam_beta1, self.args.adam_beta2),
                                   self.args.adam_epsilon)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.task == "segmentation":
            outputs = model(pixel_values=inputs["pixel_values"], labels=inputs["labels"])
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        pixel_values, labels = inputs["pixel_values"], inputs["labels"]
        if model.training and self.mixup is not None:
            pixel_values, labels = self.mixup(pixel_values, labels)
        outputs = model(pixel_values=pixel_values)
        logits = outputs.logits.float()
        if labels.ndim == 2:  # MixUp / CutMix soft targets (label smoothing included)
            loss = self.soft_target_loss(logits, labels)
        else:
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing if model.training else 0.0)
        return (loss, outputs) if return_outputs else loss


def classification_metrics(prediction) -> dict[str, float]:
    """Top-1 accuracy in % from the predicted classes (`preprocess_logits_for_metrics` keeps only the argmax)."""
    predicted, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
    return {"top1": float(100.0 * (predicted == labels).mean()), "images": len(labels)}


def argmax_classes(logits: torch.Tensor | tuple, labels: torch.Tensor) -> torch.Tensor:
    """Logits → predicted classes, at the label maps' size for segmentation (bilinear upsampling first)."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    if logits.ndim == 4:
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return logits.argmax(1)


def segmentation_metrics(num_labels: int, ignore_index: int):
    def metrics(prediction) -> dict[str, float]:
        confusion = confusion_matrix(torch.as_tensor(prediction.predictions), torch.as_tensor(prediction.label_ids),
                                     num_labels, ignore_index)
        scores = segmentation_scores(confusion, ignore_index)
        return {"miou": 100 * scores["miou"], "pixel_accuracy": 100 * scores["pixel_accuracy"],
                "images": len(prediction.label_ids)}
    return metrics


# ----------------------------------------------------------------------------------------------- runs
@dataclass
class FinetuneSettings:
    """What `run_finetune` does besides the recipe: the encoder (`model`: anything `load_encoder` takes, e.g. a
    folder, a pretraining run, `random:vit-micro[:seed]`; `weights` teacher / student), the data set (`fashion-mnist`,
    an image folder, a Hub name, `inat21:`; for `dense`: `mosaic`, a dataset with image / mask columns, `ade20k:`,
    `cityscapes:`), subset sizes (`limit` train images before any low-shot split, `eval_limit` test images), the test
    split, a low-shot split file to reuse, `max_steps` (caps the recipe's epochs), the seed, workers, `resume`, and
    `overwrite` (a non-empty output folder is refused otherwise)."""

    model: str | os.PathLike
    output_dir: str | os.PathLike
    dataset: str = "fashion-mnist"
    weights: str = "teacher"
    limit: int | None = None
    eval_limit: int | None = None
    test_split: str = "test"
    low_shot_split: str | os.PathLike | None = None
    max_steps: int | None = None
    seed: int = 0
    num_workers: int = 0
    resume: bool = False
    overwrite: bool = False
    training_overrides: dict[str, Any] = field(default_factory=dict)


def class_labels(ds: datasets.Dataset) -> list[str]:
    feature = ds.features.get("label")
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    return [str(i) for i in range(int(max(ds["label"])) + 1)]


def classification_data(recipe: FinetuneRecipe, s: FinetuneSettings, size: int, out: Path):
    """Train and test sets with their transforms; for `lowshot` the class-balanced split (drawn, or read from
    `s.low_shot_split`) is applied and written to `out/low_shot_split.json`."""
    train = select_subset(load_image_dataset(s.dataset, "train"), s.limit, s.seed)
    test = select_subset(load_image_dataset(s.dataset, s.test_split), s.eval_limit, s.seed)
    labels = class_labels(train)
    split = None
    if recipe.protocol == "lowshot":
        d = recipe.data
        split = read_low_shot_split(s.low_shot_split, len(train)) if s.low_shot_split else \
            low_shot_split(train["label"], d.low_shot_fraction, d.low_shot_seed)
        write_low_shot_split(split, out / "low_shot_split.json")
        train = train.select(split["indices"])
    d = recipe.data
    train.set_transform(FinetuneTrainTransform(size, d.crop_scale, d.auto_augment, d.random_erasing))
    test.set_transform(EvalTransform(size, crop_fraction=0.875))
    return train, test, labels, split


def segmentation_data(recipe: FinetuneRecipe, s: FinetuneSettings, config, size: int):
    """Train and test sets of the dense protocol with the probes' joint augmentation and the processor's view."""
    train = load_segmentation_split(s.dataset, "train", s.limit, s.seed, "image", "mask")
    test = load_segmentation_split(s.dataset, s.test_split, s.eval_limit, s.seed + 1, "image", "mask")
    paper = paper_segmentation(s.dataset)
    if paper is not None:
        labels = paper.label_names
    elif s.dataset == "mosaic":
        labels = list(MOSAIC_LABELS)
    else:
        labels = [str(i) for i in range(largest_label(train, "mask", [255]) + 1)]
    d = recipe.data
    train.set_transform(SegmentationTrainTransform(size, tuple(d.seg_scale), d.seg_jitter, d.seg_cutout,
                                                   tuple(d.seg_cutout_size), ignore_index=255))
    test.set_transform(SegmentationEvalTransform(config, size))
    return train, test, labels


def run_finetune(recipe: FinetuneRecipe, s: FinetuneSettings) -> dict[str, Any]:
    """Fine-tune `s.model` with `recipe` and return the results (see the module docstring for what is written)."""
    out = Path(s.output_dir)
    if not s.resume:
        check_output(out, s.overwrite, inputs=[s.model, s.dataset])
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(s.seed)
    encoder = load_encoder(s.model, s.weights)
    config = encoder.config
    size = recipe.data.image_size or config.image_hw[0]
    if [size, size] != list(config.image_hw):
        if config.position_embedding_type != "sincos":
            raise RecipeError(f"data.image_size {size} differs from the encoder's {config.image_size}; only encoders "
                              "with the sin-cos position embedding are fine-tuned at another size")
        config = copy.deepcopy(config)
        config.image_size = size  # the sin-cos table (not saved) is regenerated for the new grid
        resized = BootlegModel(config)
        resized.load_state_dict(encoder.state_dict())
        encoder = resized
    task = recipe.task
    split = None
    if task == "classification":
        train, test, labels, split = classification_data(recipe, s, size, out)
        model = build_classifier(encoder, recipe, labels)
        processor = make_image_processor(model.config)
    else:
        train, test, labels = segmentation_data(recipe, s, config, size)
        model = build_segmenter(encoder, recipe, labels, 255)
        processor = make_segmentation_image_processor(config)
    if recipe.model.lora_rank:
        model = apply_lora(model, recipe.model.lora_rank, recipe.model.lora_alpha, recipe.model.lora_dropout)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    args = training_args(recipe, out, len(train), max_steps=s.max_steps, seed=s.seed,
                         dataloader_num_workers=s.num_workers, **s.training_overrides)
    d = recipe.data
    mixup = None
    if task == "classification" and (d.mixup > 0 or d.cutmix > 0):
        from timm.data import Mixup

        mixup = Mixup(mixup_alpha=d.mixup, cutmix_alpha=d.cutmix, label_smoothing=d.label_smoothing,
                      num_classes=len(labels))
    metrics = classification_metrics if task == "classification" else segmentation_metrics(len(labels), 255)
    trainer = FinetuneTrainer(model=model, args=args, train_dataset=train, eval_dataset=test, data_collator=collate,
                              processing_class=processor, compute_metrics=metrics,
                              preprocess_logits_for_metrics=argmax_classes, mixup=mixup,
                              label_smoothing=d.label_smoothing, task=task)
    initial = trainer.evaluate()
    trainer.train(resume_from_checkpoint=True if s.resume else None)
    final = trainer.evaluate()
    if recipe.model.lora_rank:
        trainer.model.save_pretrained(out / "adapter")  # the LoRA weights alone (safetensors)
    model = merge_lora(trainer.model).eval()
    score_key = "top1" if task == "classification" else "miou"
    if isinstance(model, BootlegForImageClassification | BootlegForSemanticSegmentation):
        model.config.finetuning = {"protocol": recipe.protocol, "recipe": recipe.raw, score_key: final[f"eval_{score_key}"]}
    save_model_folder(model, out / "model", processor, overwrite=True)
    name = f"finetune-{recipe.protocol}" + (f"-{recipe.model.head}" if task == "segmentation" else "")
    history = [{"epoch": e["epoch"], score_key: e[f"eval_{score_key}"], "loss": e["eval_loss"]}
               for e in trainer.state.log_history if f"eval_{score_key}" in e]
    best = {score_key: final[f"eval_{score_key}"], "lr": args.learning_rate, "layer_decay": args.layer_decay,
            "weight_decay": args.weight_decay, "epochs": args.num_train_epochs, "steps": trainer.state.global_step,
            "initial_" + score_key: initial[f"eval_{score_key}"], "loss": final["eval_loss"],
            "initial_loss": initial["eval_loss"]}
    if task == "segmentation":
        best["pixel_accuracy"] = final["eval_pixel_accuracy"]
    if final["eval_images"] != len(test):
        raise RuntimeError(f"the evaluation saw {final['eval_images']} of {len(test)} test images")
    results = {
        "model": os.fspath(s.model), "weights": s.weights, "dataset": s.dataset, "split": s.test_split,
        "num_train": len(train), "num_test": len(test), "image_size": size, "labels": labels,
        "protocol": name, "protocol_label": f"fine-tuning, {recipe.protocol} protocol",
        "probes": {name: {"best": best, "grid": history}}, ("best_probe" if task == "classification" else "best_head"): name,
        "finetuning": recipe.raw, "trainable_parameters": trainable,
        "low_shot": None if split is None else {k: v for k, v in split.items() if k != "indices"},
        "seed": s.seed, "wall_time_s": round(time.perf_counter() - start, 1),
    }
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.raw, sort_keys=False), encoding="utf-8")
    document = results_document(**{task: results})
    write_report(out, RESULTS_NAME, document, finetune_markdown(results, score_key))
    return results


def finetune_markdown(results: dict[str, Any], score_key: str) -> str:
    best = next(iter(results["probes"].values()))["best"]
    unit = "top-1 %" if score_key == "top1" else "mIoU %"
    lines = [f"# Fine-tuning results: {results['protocol']}", "",
             f"Encoder `{results['model']}` ({results['weights']} weights) on {results['dataset']} "
             f"({results['num_train']} training, {results['num_test']} {results['split']} images, "
             f"{results['image_size']} px); seed {results['seed']}.", "",
             f"| | {unit} |", "|---|---|",
             f"| before fine-tuning (new head) | {best['initial_' + score_key]:.2f} |",
             f"| after {best['steps']} steps | {best[score_key]:.2f} |", "",
             f"LR {best['lr']:.3g}, layer decay {best['layer_decay']}, weight decay {best['weight_decay']}; "
             f"{results['trainable_parameters']:,} trainable parameters.", ""]
    return "\n".join(lines)


__all__ = ["PROTOCOLS", "DENSE_DECODERS", "FinetuneModel", "FinetuneData", "FinetuneTrainingArguments",
           "FinetuneRecipe", "available_finetune_recipes", "finetune_recipe_path", "parse_finetune_recipe",
           "load_finetune_recipe", "training_args", "low_shot_split", "write_low_shot_split", "read_low_shot_split",
           "FinetuneTrainTransform", "SegmentationEvalTransform", "collate", "apply_lora", "merge_lora",
           "default_out_indices", "build_classifier", "build_segmenter", "FinetuneTrainer", "FinetuneSettings",
           "run_finetune"]
