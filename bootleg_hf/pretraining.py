"""A pretraining run from a recipe: the data set with the pretraining transform, the config, `BootlegTrainer`, and the
saved results (the final `BootlegForPretraining` folder and `encoder/`, the teacher as a standalone encoder)."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from .checkpoints import encoder_copy, save_model_folder
from .data import PretrainTransform, load_image_dataset
from .configuration_bootleg import BootlegConfig
from .modeling_bootleg_pretraining import BootlegForPretraining
from .recipes import apply_overrides, build_config, build_training_args, load_recipe
from .trainer import BootlegTrainer


@dataclass
class PretrainSettings:
    """A pretraining run: the recipe (a shipped name, a YAML path or a loaded recipe) with `section.key=value`
    overrides; the data (a
    name `load_image_dataset` knows, an image folder, a Hub dataset or a `datasets.Dataset`; `limit` keeps the first
    N images); where to write; the step budget and global batch (override the recipe); data-loader workers; what to
    do with unreadable images (`skip` counts and replaces them, `raise` stops); `resume` (`"auto"`: the last
    checkpoint in `output_dir`, or a checkpoint path); the seed of the initial weights, data order and masks."""

    recipe: str | os.PathLike | dict[str, Any] = "vit-micro"
    overrides: Sequence[str] = ()
    dataset: str | os.PathLike | datasets.Dataset = "fashion-mnist"
    split: str = "train"
    limit: int | None = None
    output_dir: str | os.PathLike = "runs/bootleg"
    max_steps: int | None = None
    batch_size: int | None = None
    num_workers: int = 0
    on_corrupt: str = "skip"
    resume: str | None = None
    seed: int = 0


def initial_model(config: BootlegConfig, seed: int) -> BootlegForPretraining:
    """The seeded initial model: the initial weights depend on the seed too, not only the data order and masks. The
    student is initialised before the predictor, so for one seed every target choice starts from the same encoder
    (the predictor's output width depends on the targets)."""
    set_seed(seed)
    return BootlegForPretraining(config)


def build_trainer(settings: PretrainSettings, **training_overrides: Any) -> tuple[BootlegTrainer, PretrainTransform]:
    """Everything of a run but the training itself: recipe → config and arguments (`training_overrides` win over the
    recipe, e.g. `logging_steps`), data with the pretraining transform, the seeded initial model; returns the trainer
    and the transform (which counts skipped unreadable images)."""
    s = settings
    recipe = apply_overrides(copy.deepcopy(s.recipe), list(s.overrides)) if isinstance(s.recipe, dict) \
        else load_recipe(s.recipe, list(s.overrides))
    if s.batch_size is not None:
        recipe.setdefault("training", {})["global_batch_size"] = s.batch_size
    config = build_config(recipe)
    dataset = load_image_dataset(s.dataset, split=s.split)
    if s.limit is not None:
        dataset = dataset.select(range(min(s.limit, len(dataset))))
    crop_scale = tuple(recipe.get("data", {}).get("crop_scale", (0.35, 1.0)))
    transform = PretrainTransform(config.image_hw[0], scale=crop_scale, on_error=s.on_corrupt)
    dataset.set_transform(transform)
    args = build_training_args(recipe, s.output_dir, len(dataset), max_steps=s.max_steps, seed=s.seed,
                               dataloader_num_workers=s.num_workers, **training_overrides)
    return BootlegTrainer(model=initial_model(config, s.seed), args=args, train_dataset=dataset), transform


def run_pretraining(settings: PretrainSettings, **training_overrides: Any) -> BootlegTrainer:
    """Train (resuming if asked), then write the final `BootlegForPretraining` folder into `output_dir` and the teacher
    encoder with its image processor into `output_dir/encoder`. Returns the trainer (its `state.log_history` holds the
    logs)."""
    trainer, transform = build_trainer(settings, **training_overrides)
    resume = get_last_checkpoint(str(settings.output_dir)) if settings.resume == "auto" else settings.resume
    trainer.train(resume_from_checkpoint=resume)
    if trainer.is_world_process_zero():
        trainer.save_model(str(settings.output_dir))
        save_model_folder(encoder_copy(trainer.unwrapped_model), Path(settings.output_dir) / "encoder")
        if transform.num_skipped:
            print(f"warning: {transform.num_skipped} unreadable images were skipped (their paths are in the log above)")
    return trainer


__all__ = ["PretrainSettings", "initial_model", "build_trainer", "run_pretraining"]
