"""`BootlegTrainer` and `BootlegTrainingArguments`: Bootleg pretraining with `transformers.Trainer` (docs/design.md §6).

What the stock Trainer gets on top: AdamW(0.9, 0.95) with no weight decay on biases, norms and tokens; the paper's
LR (linear warm-up from `lr_init` to `lr_max`, cosine to `lr_final`), weight-decay (cosine) and EMA-momentum (linear)
schedules, all functions of the global step so a resume continues exactly; the EMA teacher update after every
optimizer step; masks from `BootlegDataCollator` and augmentations (`IndexedDataset`) seeded by (seed, epoch, sample
indices), so a resume at any step sees exactly the data it would have seen; extra logs (real MSE, lr, wd, momentum,
per-layer target std, context/target rates, images/s); a stop with a clear error on a non-finite loss or gradient
norm at any step; and checkpoints that are complete or absent (written to a staging folder, then renamed), with the
schedule they were trained with, which a resume continues unless told to switch (`schedule_on_resume`).
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi
from transformers import Trainer, TrainerCallback, TrainerState, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, get_last_checkpoint, rotate_checkpoints

from .data import IndexedDataset
from .image_processing_bootleg import default_image_processor
from .precision import fast_bf16
from .masking import BootlegDataCollator, MaskGenerator
from .modeling_bootleg_pretraining import BootlegForPretraining
from .optim import adamw, param_groups

logger = logging.getLogger(__name__)

REFERENCE_BATCH = 2048  # the paper's global batch: LRs in recipes are for this batch size
SCHEDULE_FILE = "bootleg_schedule.json"  # in every checkpoint: the schedule it was trained with
STAGING_DIR = ".checkpoint-staging"  # checkpoints are written here, then renamed into place


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss, gradient norm or weights; no checkpoint was written after it."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. a full disk); the last complete checkpoint is kept."""


@dataclass
class BootlegTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus Bootleg's schedules. `learning_rate`, `weight_decay` and `lr_scheduler_type` of the
    base class are ignored: the LR is `lr_init → lr_max` (linear, `warmup_steps`) `→ lr_final` (cosine), multiplied
    by global batch / 2048 when `scale_lr_by_batch`; the weight decay is a cosine from `wd_init` to `wd_final`. The EMA
    momentum schedule is the model config's (`ema_start` → `ema_end`, linear), so the saved config states it."""

    lr_init: float = field(default=1e-4, metadata={"help": "LR at step 0 (before batch scaling)"})
    lr_max: float = field(default=3e-3, metadata={"help": "LR at the end of warm-up (before batch scaling)"})
    lr_final: float = field(default=1e-4, metadata={"help": "LR at the last step (before batch scaling)"})
    scale_lr_by_batch: bool = field(default=True, metadata={"help": "multiply the LRs by global batch / 2048"})
    wd_init: float = field(default=0.05, metadata={"help": "weight decay at step 0"})
    wd_final: float = field(default=0.05, metadata={"help": "weight decay at the last step"})
    loss_log_interval: int | None = field(
        default=None, metadata={"help": "compute the real MSE every N steps (default: logging_steps); other steps "
                                         "use MSELossNoForward"})
    mask_seed: int | None = field(default=None, metadata={"help": "seed of the masks (default: seed)"})
    schedule_on_resume: str = field(
        default="saved", metadata={"help": "when a resumed checkpoint was trained with another LR / weight-decay / "
                                           "EMA schedule or length: 'saved' continues the checkpoint's schedule, "
                                           "'new' switches to the requested one from the resumed step"})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (the paper's 0.95)"})
    # The paper states no clipping and the MAE / I-JEPA training code it builds on does not clip; TrainingArguments'
    # default (1.0) would clip silently. The gradient norm is still computed and checked for finiteness every step.
    max_grad_norm: float = field(default=0.0, metadata={
        "help": "clip the global gradient norm to this value; 0 (default, as the paper's lineage): no clipping"})
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 mixed precision (autocast: weights, optimizer state, targets and loss stay float32); None "
                "(default): on where bf16 matmuls are native (CUDA bf16, CPUs with AMX or AVX-512 BF16)"})
    dataloader_pin_memory: bool | None = field(default=None, metadata={
        "help": "page-locked batches for faster copies to the GPU; None (default): on when training on a CUDA GPU "
                "(pinning without one only makes torch warn)"})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "kept False: lazy set_transform datasets need their raw columns"})

    def __post_init__(self):
        if self.bf16 is None:
            gpu = torch.cuda.is_available() and not self.use_cpu
            self.bf16 = not self.fp16 and fast_bf16("cuda" if gpu else "cpu")
        if self.dataloader_pin_memory is None:
            self.dataloader_pin_memory = torch.cuda.is_available() and not self.use_cpu
        if self.bf16 and not torch.cuda.is_available():
            self.use_cpu = True  # transformers asks CPU bf16 runs to say so; nothing else changes without a GPU
        super().__post_init__()
        for name in ("lr_init", "lr_max", "lr_final", "wd_init", "wd_final"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr_max <= 0:
            raise ValueError(f"lr_max must be > 0, got {self.lr_max}")
        if self.push_to_hub:
            raise ValueError("push_to_hub=True would upload every checkpoint with the student and predictor; Bootleg "
                             "runs publish the teacher encoder once: call trainer.push_to_hub() after training (or "
                             "use bootleg-release)")
        if self.schedule_on_resume not in ("saved", "new"):
            raise ValueError(f"schedule_on_resume must be 'saved' or 'new', got {self.schedule_on_resume!r}")

    @property
    def global_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * max(1, self.world_size)

    @property
    def lr_scale(self) -> float:
        return self.global_batch_size / REFERENCE_BATCH if self.scale_lr_by_batch else 1.0


def cosine(start: float, end: float, progress: float) -> float:
    """Cosine from `start` (progress 0) to `end` (progress 1)."""
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rate_at(step: int, total: int, warmup: int, lr_init: float, lr_max: float, lr_final: float) -> float:
    if step < warmup:
        return lr_init + (lr_max - lr_init) * step / warmup
    return cosine(lr_max, lr_final, (step - warmup) / max(1, total - warmup))


def weight_decay_at(step: int, total: int, wd_init: float, wd_final: float) -> float:
    return cosine(wd_init, wd_final, step / max(1, total))


def momentum_at(step: int, total: int, ema_start: float, ema_end: float) -> float:
    """Linear from `ema_start` at step 0 to `ema_end` at step `total` (the run's length, or the config's
    `ema_anneal_steps`), then constant."""
    return ema_start + (ema_end - ema_start) * min(step / max(1, total), 1.0)


@dataclass(frozen=True)
class Schedule:
    """The LR (after batch scaling), weight-decay and EMA-momentum schedules of a run, as functions of the global
    step; stored in every checkpoint (`SCHEDULE_FILE`) so a resume can tell whether it continues the same one."""

    total_steps: int
    warmup_steps: int
    lr_init: float
    lr_max: float
    lr_final: float
    lr_scale: float
    wd_init: float
    wd_final: float
    ema_start: float
    ema_end: float
    ema_anneal_steps: int | None = None  # None: over the whole run (checkpoints saved before it existed)

    def lr(self, step: int) -> float:
        return learning_rate_at(step, self.total_steps, self.warmup_steps, self.lr_init, self.lr_max,
                                self.lr_final) * self.lr_scale

    def weight_decay(self, step: int) -> float:
        return weight_decay_at(step, self.total_steps, self.wd_init, self.wd_final)

    def momentum(self, step: int) -> float:
        return momentum_at(step, self.ema_anneal_steps or self.total_steps, self.ema_start, self.ema_end)


class ScheduleLR(torch.optim.lr_scheduler.LRScheduler):
    """Sets every group's LR to `lr_at(step)`. The LR is absolute (not a factor of the LR the optimizer was created
    with), so a resumed optimizer that remembers another peak LR still follows the schedule."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_at):
        self.lr_at = lr_at
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [self.lr_at(self.last_epoch)] * len(self.optimizer.param_groups)

    def get_last_lr(self) -> list[float]:
        return self.get_lr()  # the schedule's value now, also after a resume switched schedules

    def state_dict(self) -> dict:
        return {k: v for k, v in super().state_dict().items() if k != "lr_at"}


def close_process_group(wait: bool = True) -> None:
    """Close the process group if one is open, after the other ranks got here too (`wait`; gloo: a monitored barrier
    that gives up after 2 minutes, so a rank that died cannot hang the others). Registered to run at exit by
    `BootlegTrainer` under torchrun: a gloo rank whose interpreter exits with the group open, or closes it while
    another rank still holds its end, can abort ("terminate called without an active exception") and fail the whole
    job after a successful run."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if wait:
        try:
            if torch.distributed.get_backend() == "gloo":
                torch.distributed.monitored_barrier(timeout=datetime.timedelta(minutes=2))
            else:
                torch.distributed.barrier()
        except RuntimeError:  # a rank is gone or failing: close this end anyway
            pass
    torch.distributed.destroy_process_group()


class BootlegEMACallback(TrainerCallback):
    """The EMA teacher update after every optimizer step, for a stock `transformers.Trainer` training
    `BootlegForPretraining` (`BootlegTrainer` has it built in): `Trainer(model, args, data_collator=
    BootlegDataCollator(...), callbacks=[BootlegEMACallback()])`. The momentum goes linearly from the model config's
    `ema_start` to `ema_end` over the run's `max_steps` (or its `ema_anneal_steps`). Without it the model refuses its
    second training step."""

    def momentum(self, model: BootlegForPretraining, state) -> float:
        # global_step was just incremented: the update that produced it used the momentum of global_step - 1
        return momentum_at(state.global_step - 1, model.config.ema_anneal_steps or max(1, state.max_steps),
                           model.config.ema_start, model.config.ema_end)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        model = getattr(model, "module", model)  # DDP / DataParallel wrappers
        if not isinstance(model, BootlegForPretraining):
            raise TypeError(f"BootlegEMACallback updates a BootlegForPretraining teacher, the Trainer trains a "
                            f"{type(model).__name__}")
        model.update_teacher(self.momentum(model, state))


class _BootlegCallback(BootlegEMACallback):
    """Per-step schedule work that must happen once per optimizer step, not per micro-batch; the EMA with the
    trainer's schedule (which may be a resumed checkpoint's)."""

    def __init__(self, trainer: "BootlegTrainer"):
        self.trainer = trainer

    def momentum(self, model: BootlegForPretraining, state) -> float:
        return self.trainer.momentum_at(state.global_step - 1)

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.settle_schedule()

    def on_epoch_begin(self, args, state, control, **kwargs):
        # Before the epoch's DataLoader iterator (and its workers, which copy the collator and the dataset) is made.
        epoch = int(state.epoch + 1e-6) if state.epoch else 0
        for part in (self.trainer.data_collator, self.trainer.train_dataset):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)

    def on_step_begin(self, args, state, control, **kwargs):
        wd = self.trainer.weight_decay_at(state.global_step)
        for group in self.trainer.optimizer.param_groups:
            if group.get("decay", False):
                group["weight_decay"] = wd

    def on_step_end(self, args, state, control, model=None, **kwargs):
        super().on_step_end(args, state, control, model=self.trainer.unwrapped_model)


class BootlegTrainer(Trainer):
    """`Trainer` for `BootlegForPretraining` (see the module docstring).

    If no `processing_class` is given, the encoder's image processor (`default_image_processor`) is saved with every
    checkpoint and the final model. If no `data_collator` is given, a `BootlegDataCollator` is built from the model config's masking fields and seeded
    with `args.mask_seed` (default `args.seed`). Map-style training datasets are wrapped in `IndexedDataset` so masks
    are seeded by sample index: a resumed run regenerates exactly the masks it would have used.
    """

    def __init__(self, model: BootlegForPretraining, args: BootlegTrainingArguments, train_dataset=None,
                 data_collator=None, **kwargs):
        if not isinstance(args, BootlegTrainingArguments):
            raise TypeError("BootlegTrainer needs BootlegTrainingArguments")
        if args.dataloader_persistent_workers:
            raise ValueError("dataloader_persistent_workers=True would freeze the mask epoch inside the workers; "
                             "leave it False")
        if data_collator is None:
            seed = args.mask_seed if args.mask_seed is not None else args.seed
            data_collator = BootlegDataCollator(MaskGenerator.from_config(model.config), seed=seed,
                                                repeats=model.config.mask_repeats)
        if train_dataset is not None and hasattr(train_dataset, "__getitem__") and not isinstance(
                train_dataset, IndexedDataset):
            train_dataset = IndexedDataset(train_dataset, seed=args.data_seed if args.data_seed is not None else args.seed)
        # saved into every checkpoint and the run's folder, so `pipeline(..., model=run_dir)` finds a processor
        kwargs.setdefault("processing_class", default_image_processor(model.config, "BootlegModel"))
        super().__init__(model=model, args=args, train_dataset=train_dataset, data_collator=data_collator, **kwargs)
        # whether train() returned: the ranks are then in step, and exiting may wait for the others (see below)
        self._exit_state = {"trained": False}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # the hook holds this small dict, not the trainer (which would keep the model alive until exit)
            atexit.register(lambda state=self._exit_state: close_process_group(wait=state["trained"]))
        self.add_callback(_BootlegCallback(self))
        self._real_losses: list[torch.Tensor] = []
        self._last_stats: dict[str, float] = {}
        self._clock: tuple[float, int] | None = None
        self._loss_total, self._loss_count = 0.0, 0
        self._schedule: Schedule | None = None  # fixed at train begin (see `settle_schedule`)
        self._checkpoint_schedule: Schedule | None = None  # the schedule of the checkpoint being resumed
        self._staging: Path | None = None

    # ---- schedules (pure functions of the global step) ---------------------------------------------------------
    @property
    def unwrapped_model(self) -> BootlegForPretraining:
        return self.accelerator.unwrap_model(self.model)

    @property
    def total_steps(self) -> int:
        return max(1, self.state.max_steps)

    def requested_schedule(self) -> Schedule:
        """The schedule the arguments and the model config ask for, at the run's length."""
        a, config = self.args, self.unwrapped_model.config
        return Schedule(self.total_steps, a.get_warmup_steps(self.total_steps), a.lr_init, a.lr_max, a.lr_final,
                        a.lr_scale, a.wd_init, a.wd_final, config.ema_start, config.ema_end, config.ema_anneal_steps)

    @property
    def schedule(self) -> Schedule:
        return self._schedule or self.requested_schedule()

    def settle_schedule(self) -> None:
        """At train begin: the requested schedule, or on resume from a checkpoint trained with another one, the
        checkpoint's (`schedule_on_resume="saved"`, default) or the requested one (`"new"`), saying which. The EMA
        endpoints of the schedule in force are written into the model config, so the saved config states them."""
        requested, saved = self.requested_schedule(), self._checkpoint_schedule
        self._schedule = requested
        if saved is not None and saved != requested:
            differ = {k: (v, getattr(requested, k)) for k, v in dataclasses.asdict(saved).items()
                      if getattr(requested, k) != v}
            if self.args.schedule_on_resume == "saved":
                self._schedule = saved
                logger.warning("resuming with the checkpoint's schedule: %s differ from the requested values (saved, "
                               "requested); pass --new-schedule (schedule_on_resume='new') to switch", differ)
            else:
                logger.warning("switching to the requested schedule at step %d: %s (saved, requested)",
                               self.state.global_step, differ)
        config = self.unwrapped_model.config
        config.ema_start, config.ema_end = self._schedule.ema_start, self._schedule.ema_end
        config.ema_anneal_steps = self._schedule.ema_anneal_steps
        for group in self.optimizer.param_groups:  # the LR the next step uses
            group["lr"] = self._schedule.lr(self.state.global_step)

    def learning_rate_at(self, step: int) -> float:
        return self.schedule.lr(step)

    def weight_decay_at(self, step: int) -> float:
        return self.schedule.weight_decay(step)

    def momentum_at(self, step: int) -> float:
        return self.schedule.momentum(step)

    # ---- optimizer and LR ---------------------------------------------------------------------------------------
    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            groups = param_groups(model or self.model, self.args.wd_init)
            self.optimizer = adamw(groups, self.args.lr_max * self.args.lr_scale,
                                   (self.args.adam_beta1, self.args.adam_beta2), self.args.adam_epsilon)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = ScheduleLR(optimizer or self.optimizer, self.learning_rate_at)
        return self.lr_scheduler

    def _get_grad_norm(self, model, grad_norm=None):
        # Before the optimizer step: a non-finite gradient stops the run with the weights still finite.
        grad_norm = super()._get_grad_norm(model, grad_norm)
        if not math.isfinite(float(grad_norm)):
            raise NonFiniteLossError(
                f"non-finite gradient norm ({float(grad_norm)}) at step {self.state.global_step}; training stopped "
                f"before the optimizer step, no checkpoint was written after the last good one in "
                f"{self.args.output_dir}")
        return grad_norm

    # ---- loss and logging ---------------------------------------------------------------------------------------
    def _loss_value_due(self) -> bool:
        # the real MSE on logging steps and on the last step (so `train_loss` is never a mean of placeholders)
        interval = self.args.loss_log_interval or self.args.logging_steps or 1
        step = self.state.global_step + 1
        return step % max(1, int(interval)) == 0 or step >= self.state.max_steps or not self.model.training

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        due = self._loss_value_due()
        outputs = model(**inputs, compute_loss_value=due)
        loss = outputs.loss
        if due and model.training:
            value = loss.detach()
            if not torch.isfinite(value):
                raise NonFiniteLossError(
                    f"non-finite loss ({value.item()}) at step {self.state.global_step}; training stopped, no "
                    f"checkpoint was written after the last good one in {self.args.output_dir}")
            self._real_losses.append(value)
            stats = {f"target_std/{t.name}": s.item()
                     for t, s in zip(self.unwrapped_model.target_spec.terms, outputs.target_std)}
            n = self.unwrapped_model.config.num_patches
            target = inputs["target_indices"]
            union = torch.zeros(target.shape[0], n, dtype=torch.bool, device=target.device)
            union.scatter_(1, target.flatten(1), True)
            stats["context_rate"] = inputs["context_indices"].shape[1] / n
            stats["target_rate"] = union.float().mean().item()
            self._last_stats = stats
        return (loss, outputs) if return_outputs else loss

    def _drain_real_losses(self) -> float | None:
        """Mean of the real MSE values since the last call (None if none), added to the run's totals."""
        if not self._real_losses:
            return None
        losses = torch.stack(self._real_losses)
        self._real_losses.clear()
        if self.args.world_size > 1:  # every rank logs at the same steps: average their losses
            losses = self.accelerator.reduce(losses, reduction="mean")
        self._loss_total += losses.sum().item()
        self._loss_count += len(losses)
        return losses.mean().item()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # The Trainer's own loss averages include MSELossNoForward placeholders: report the real MSE instead.
        if "train_loss" in logs:
            self._drain_real_losses()
            if self._loss_count:
                logs["train_loss"] = self._loss_total / self._loss_count
        if "loss" in logs and self.model.training:
            mean = self._drain_real_losses()
            if mean is not None:
                logs["loss"] = mean
            step = self.state.global_step
            logs.update(weight_decay=self.weight_decay_at(step), ema_momentum=self.momentum_at(step),
                        **self._last_stats)
            now = time.perf_counter()
            if self._clock is not None and step > self._clock[1]:
                logs["images_per_second"] = (step - self._clock[1]) * self.args.global_batch_size / (now - self._clock[0])
            self._clock = (now, step)
        super().log(logs, start_time)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # Never write non-finite weights: neither a checkpoint (which would replace the last good one) nor a model.
        # The max-abs norm: NaN and inf show through it, and unlike the L2 norm it cannot overflow for finite weights.
        # Empty tensors (e.g. zero predictor registers) hold nothing to check and have no max-abs norm.
        norms = torch.stack(torch._foreach_norm([p.detach() for p in self.unwrapped_model.parameters() if p.numel()],
                                                ord=math.inf))
        if not torch.isfinite(norms).all():
            raise NonFiniteLossError(f"non-finite weights at step {self.state.global_step}; nothing was written to "
                                     f"{output_dir or self.args.output_dir} (the last good checkpoint is kept)")
        super().save_model(output_dir, _internal_call)

    def _get_output_dir(self, trial) -> str:
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Write `checkpoint-N` complete or not at all: into a staging folder, renamed into place once every file
        (model, optimizer, scheduler, RNG states, trainer state, schedule) is written."""
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self._staging = run_dir / STAGING_DIR
        if self.args.should_save:
            shutil.rmtree(self._staging, ignore_errors=True)  # what an interrupted save left
        self.accelerator.wait_for_everyone()
        try:
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                (self._staging / name / SCHEDULE_FILE).write_text(json.dumps(dataclasses.asdict(self.schedule)))
        except (OSError, RuntimeError) as err:
            if isinstance(err, NonFiniteLossError):
                raise
            free = shutil.disk_usage(run_dir).free / 2**30
            raise CheckpointWriteError(f"could not write {name} into {run_dir} ({type(err).__name__}: {err}); "
                                       f"{free:.2f} GiB free on that disk. The last complete checkpoint is kept.") \
                from err
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if self.args.should_save:
            final = run_dir / name
            if final.exists():  # the same step saved again (e.g. the final step of a resumed run)
                shutil.rmtree(final)
            os.replace(run_dir / STAGING_DIR / name, final)
            shutil.rmtree(run_dir / STAGING_DIR, ignore_errors=True)
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    # ---- publishing -----------------------------------------------------------------------------------------------
    def hub_repo_id(self, token: str | None = None) -> str:
        """`args.hub_model_id` as `namespace/name`: a bare name (or none: the output folder's name) goes under the
        token's user, as the stock Trainer does."""
        name = self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        if "/" in name:
            return name
        return f"{HfApi(token=token or self.args.hub_token).whoami()['name']}/{name}"

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None, *,
                    dataset: str | None = None, recipe: str | dict | None = None, **card_kwargs: Any):
        """Publish the EMA teacher encoder — not the student and predictor — to `hub_repo_id()`: weights, remote
        code, the image processor and a model card from this run (steps, global batch, images seen, first and last
        logged loss; `dataset` and `recipe` if given; `card_kwargs` such as `probe_results` go to
        `publishing.render_card`). Uploads in one commit and returns it (None on other ranks). `blocking` is kept
        for the base signature: the upload always completes before returning, and is checked."""
        from .checkpoints import encoder_copy, save_model_folder
        from .publishing import build_hub_folder, dataset_fields, training_facts, upload

        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        if not self.is_world_process_zero():
            return None
        token = token if token is not None else self.args.hub_token
        repo_id = self.hub_repo_id(token)
        facts = training_facts(self.state, recipe, dataset=dataset, global_batch_size=self.args.global_batch_size)
        with tempfile.TemporaryDirectory() as tmp:
            encoder = save_model_folder(encoder_copy(self.unwrapped_model), Path(tmp) / "encoder",
                                        self.processing_class)
            folder = build_hub_folder(encoder, Path(tmp) / "hub", repo_id, training=facts,
                                      datasets=[dataset_fields(dataset)["type"]] if dataset else (), **card_kwargs)
            return upload(folder, repo_id, token=token, revision=revision or self.args.hub_revision,
                          private=self.args.hub_private_repo if private is None else private,
                          commit_message=commit_message)

    @staticmethod
    def _steps_done(checkpoint: str | os.PathLike) -> int:
        return TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME)).global_step

    def _requested_steps(self) -> int:
        """The run's length in optimizer steps, as `Trainer.train` computes it (max_steps, else epochs × steps)."""
        if self.args.max_steps > 0:
            return self.args.max_steps
        per_epoch = max(1, len(self.get_train_dataloader()) // self.args.gradient_accumulation_steps)
        return math.ceil(self.args.num_train_epochs * per_epoch)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        self._clock, self._loss_total, self._loss_count = None, 0.0, 0
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
        saved = Path(resume_from_checkpoint) / SCHEDULE_FILE if resume_from_checkpoint else None
        self._checkpoint_schedule = Schedule(**json.loads(saved.read_text())) if saved and saved.is_file() else None
        self._exit_state["trained"] = False
        if resume_from_checkpoint and self._steps_done(resume_from_checkpoint) >= self._requested_steps():
            # transformers' loop would still run one step past the end; the checkpoint already is the end of the run
            self._load_from_checkpoint(resume_from_checkpoint)
            self.state = TrainerState.load_from_json(os.path.join(resume_from_checkpoint, TRAINER_STATE_NAME))
            logger.warning(f"{resume_from_checkpoint} already holds all {self.state.global_step} steps of the run: "
                           "nothing left to train")
            self._exit_state["trained"] = True
            return TrainOutput(self.state.global_step, float("nan"), {})
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        self._exit_state["trained"] = True
        if self._loss_count:
            mean = self._loss_total / self._loss_count
            output = output._replace(training_loss=mean, metrics={**output.metrics, "train_loss": mean})
        return output
