"""A pretraining run from a recipe: the data set with the pretraining transform, the config, `BootlegTrainer`, and the
saved results (the final `BootlegForPretraining` folder and `encoder/`, the teacher as a standalone encoder).

A run never destroys another: an output folder that already holds a run is refused unless the run is resumed
(`resume`) or replaced (`overwrite`), and a lock file keeps two processes from writing into the same folder.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import set_seed

from .checkpoints import encoder_copy, save_model_folder
from .configuration_bootleg import BootlegConfig
from .data import PretrainTransform, load_image_dataset
from .modeling_bootleg_pretraining import BootlegForPretraining
from .recipes import apply_overrides, build_config, build_training_args, load_recipe, validate_recipe
from .trainer import BootlegTrainer, close_process_group

logger = logging.getLogger(__name__)

LOCK_FILE = ".bootleg-run.lock"
# what a run writes into its output folder (besides checkpoint-N folders)
RUN_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "training_args.bin",
             "trainer_state.json", "encoder")


class OutputDirError(FileExistsError):
    """The output folder holds another run, or another process is writing into it."""


@dataclass
class PretrainSettings:
    """A pretraining run: the recipe (a shipped name, a YAML path or a loaded recipe) with `section.key=value`
    overrides; the data (a name `load_image_dataset` knows, an image folder, a Hub dataset or a `datasets.Dataset`;
    `limit` keeps the first N images); where to write; the step budget and global batch (override the recipe);
    data-loader workers; what to do with unreadable images (`skip` counts and replaces them, `raise` stops);
    `resume` (`"auto"`: the last complete checkpoint in `output_dir`, or a checkpoint path) or `overwrite` (replace the
    run already in `output_dir`); the seed of the initial weights, data order, augmentations and masks; `init_from`:
    an encoder to continue (student = teacher = its weights and architecture, e.g. a converted I-JEPA checkpoint, the
    paper's Table 4), with the recipe's pretraining fields (`continued_model`)."""

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
    overwrite: bool = False
    seed: int = 0
    init_from: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        for name in ("limit", "max_steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer (or None for the recipe's), got {value!r}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run in the folder, or replace it")


def initial_model(config: BootlegConfig, seed: int) -> BootlegForPretraining:
    """The seeded initial model: the initial weights depend on the seed too, not only the data order and masks. The
    student is initialised before the predictor, so for one seed every target choice starts from the same encoder
    (the predictor's output width depends on the targets)."""
    set_seed(seed)
    return BootlegForPretraining(config)


# config fields of a recipe that describe the pretraining objective rather than the encoder's architecture
OBJECTIVE_PREFIXES = ("predictor_", "mask_", "ema_")
OBJECTIVE_FIELDS = ("targets", "target_merge", "loss_type")


def continued_model(source: str | os.PathLike, recipe: dict[str, Any], seed: int) -> BootlegForPretraining:
    """`BootlegForPretraining` whose student and teacher start as the encoder `source` (anything `load_encoder`
    takes), keeping its architecture and image size, with the recipe's objective: predictor, masking, EMA, loss and
    the targets the recipe states (else the encoder config's). The predictor is initialised from `seed`."""
    from .checkpoints import load_encoder
    from .configuration_bootleg import PRESETS

    encoder = load_encoder(source)
    model = dict(recipe.get("model", {}))
    fields = {**PRESETS[model.pop("preset", "vit-small")], **model}
    objective = {k: v for k, v in fields.items() if k.startswith(OBJECTIVE_PREFIXES) or k in OBJECTIVE_FIELDS}
    set_seed(seed)
    return BootlegForPretraining.from_encoder(encoder, **objective)


def holds_run(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds (part of) a pretraining run: checkpoints or a saved model."""
    folder = Path(folder)
    return folder.is_dir() and (any(folder.glob("checkpoint-*")) or any((folder / f).exists() for f in RUN_FILES))


def last_complete_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest `checkpoint-N` of `folder` that holds its trainer state and weights (checkpoints are written to a
    staging folder and renamed, so every one is complete; this also skips incomplete ones of older versions)."""
    found = sorted((p for p in Path(folder).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for path in found:
        if (path / "trainer_state.json").is_file() and any(path.glob("model.safetensors*")):
            return path
    return None


def resolve_resume(output_dir: Path, resume: str | None) -> str | None:
    """The checkpoint to resume from (`"auto"`: the newest complete one in `output_dir`), or a clear error."""
    if not resume:
        return None
    if resume == "auto":
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise FileNotFoundError(f"nothing to resume in {output_dir}: it holds no complete checkpoint-N folder "
                                    "(start without --resume)")
    else:
        checkpoint = Path(resume)
        if not (checkpoint / "trainer_state.json").is_file():
            raise FileNotFoundError(f"{checkpoint} is not a complete Trainer checkpoint (no trainer_state.json)")
    print(f"resuming from {checkpoint}", flush=True)
    return str(checkpoint)


@contextmanager
def run_lock(output_dir: Path) -> Iterator[None]:
    """Hold `output_dir/.bootleg-run.lock` (pid and host) for the run; refuse if a live process holds it. A lock
    left by a process that no longer runs on this host is taken over."""
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = output_dir / LOCK_FILE
    me = f"{os.getpid()} {socket.gethostname()}"
    for attempt in range(2):  # a stale lock is taken over once; every other way out of the loop breaks or raises
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            pid, _, host = lock.read_text().partition(" ")
            if attempt == 0 and host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                logger.warning("removing the stale lock of process %s in %s", pid, output_dir)
                lock.unlink(missing_ok=True)
                continue
            raise OutputDirError(f"another process ({pid} on {host or 'an unknown host'}) is writing into "
                                 f"{output_dir}; wait for it to finish or use another output folder") from None
    os.write(fd, me.encode())
    os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def prepare_output_dir(settings: PretrainSettings) -> None:
    """Refuse an output folder that holds a run unless it is resumed; with `overwrite`, remove that run's files (and
    only those)."""
    out = Path(settings.output_dir)
    if settings.resume or not holds_run(out):
        return
    if not settings.overwrite:
        raise OutputDirError(f"{out} already holds a pretraining run; pass --resume to continue it or --overwrite "
                             "(overwrite=True) to replace it")
    for path in [*out.glob("checkpoint-*"), *(out / f for f in RUN_FILES)]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def build_trainer(settings: PretrainSettings, **training_overrides: Any) -> tuple[BootlegTrainer, PretrainTransform]:
    """Everything of a run but the training itself: recipe → config and arguments (`training_overrides` win over the
    recipe, e.g. `logging_steps`), data with the pretraining transform, the seeded initial model; returns the trainer
    and the transform (which counts skipped unreadable images). Raises before any work if no step would run."""
    s = settings
    if isinstance(s.recipe, dict):
        recipe = validate_recipe(apply_overrides(copy.deepcopy(s.recipe), list(s.overrides)))
    else:
        recipe = load_recipe(s.recipe, list(s.overrides))
    if s.batch_size is not None:
        recipe.setdefault("training", {})["global_batch_size"] = s.batch_size
    model = continued_model(s.init_from, recipe, s.seed) if s.init_from is not None else None
    config = model.config if model is not None else build_config(recipe)
    dataset = load_image_dataset(s.dataset, split=s.split)
    if s.limit is not None:
        dataset = dataset.select(range(min(s.limit, len(dataset))))
    crop_scale = tuple(recipe.get("data", {}).get("crop_scale", (0.35, 1.0)))
    transform = PretrainTransform(config.image_hw, scale=crop_scale, on_error=s.on_corrupt)
    dataset.set_transform(transform)
    args = build_training_args(recipe, s.output_dir, len(dataset), max_steps=s.max_steps, seed=s.seed,
                               dataloader_num_workers=s.num_workers, **training_overrides)
    batches = len(dataset) // args.global_batch_size  # per epoch: the last partial batch is dropped
    if batches == 0 or (args.max_steps <= 0 and int(args.num_train_epochs * batches) == 0):
        raise ValueError(f"no training step would run: {len(dataset)} images, global batch {args.global_batch_size}, "
                         f"{args.num_train_epochs} epochs; use more images, a smaller batch or more epochs")
    return BootlegTrainer(model=model or initial_model(config, s.seed), args=args, train_dataset=dataset), transform


def run_pretraining(settings: PretrainSettings, **training_overrides: Any) -> BootlegTrainer:
    """Train (resuming if asked), then write the final `BootlegForPretraining` folder into `output_dir` and the teacher
    encoder with its image processor into `output_dir/encoder`. Returns the trainer (its `state.log_history` holds the
    logs)."""
    out = Path(settings.output_dir)
    resume = resolve_resume(out, settings.resume)
    primary = int(os.environ.get("RANK", 0)) == 0  # one process of a multi-process run guards and writes the folder
    with run_lock(out) if primary else nullcontext():
        if primary:
            prepare_output_dir(settings)
        trainer, transform = build_trainer(settings, **training_overrides)
        trainer.train(resume_from_checkpoint=resume)
        if trainer.is_world_process_zero():
            trainer.save_model(str(out))
            save_model_folder(encoder_copy(trainer.unwrapped_model), out / "encoder", overwrite=True)  # this run's
            if transform.num_skipped:
                print(f"warning: {transform.num_skipped} unreadable images were skipped (their paths are in the log "
                      "above)")
        end_process_group()
    return trainer


def end_process_group() -> None:
    """Wait for the process writing the final folders, then close the process group (`trainer.close_process_group`)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # no time limit: writing the final folders may take long
        close_process_group(wait=False)


__all__ = ["PretrainSettings", "OutputDirError", "initial_model", "continued_model", "holds_run", "last_complete_checkpoint",
           "run_lock", "build_trainer", "run_pretraining"]
