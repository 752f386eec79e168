"""`BootlegTrainer` and `BootlegTrainingArguments`: Bootleg pretraining with `transformers.Trainer` (docs/design.md §6).

What the stock Trainer gets on top: AdamW(0.9, 0.95) with no weight decay on biases, norms and tokens; the paper's
LR (linear warm-up from `lr_init` to `lr_max`, cosine to `lr_final`), weight-decay (cosine) and EMA-momentum (linear)
schedules, all functions of the global step so a resume continues exactly; the EMA teacher update after every
optimizer step; masks from `BootlegDataCollator` seeded by (seed, epoch, sample indices, rank); extra logs (real
MSE, lr, wd, momentum, per-layer target std, context/target rates, images/s); and a stop with a clear error on a
non-finite loss that never overwrites the last good checkpoint.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .data import IndexedDataset
from .masking import BootlegDataCollator, MaskGenerator
from .modeling_bootleg_pretraining import BootlegForPretraining
from .optim import adamw, param_groups

REFERENCE_BATCH = 2048  # the paper's global batch: LRs in recipes are for this batch size


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss or weights; no checkpoint was written after it."""


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
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (the paper's 0.95)"})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "kept False: lazy set_transform datasets need their raw columns"})

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
    return ema_start + (ema_end - ema_start) * min(step / max(1, total), 1.0)


class _BootlegCallback(TrainerCallback):
    """Per-step schedule work that must happen once per optimizer step, not per micro-batch."""

    def __init__(self, trainer: "BootlegTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        # Before the epoch's DataLoader iterator (and its workers, which copy the collator) is created.
        collator = self.trainer.data_collator
        if hasattr(collator, "set_epoch"):
            collator.set_epoch(int(state.epoch + 1e-6) if state.epoch else 0)

    def on_step_begin(self, args, state, control, **kwargs):
        wd = self.trainer.weight_decay_at(state.global_step)
        for group in self.trainer.optimizer.param_groups:
            if group.get("decay", False):
                group["weight_decay"] = wd

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # global_step was just incremented: the update that produced it used momentum_at(global_step - 1).
        self.trainer.unwrapped_model.update_teacher(self.trainer.momentum_at(state.global_step - 1))


class BootlegTrainer(Trainer):
    """`Trainer` for `BootlegForPretraining` (see the module docstring).

    If no `data_collator` is given, a `BootlegDataCollator` is built from the model config's masking fields and seeded
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
            data_collator = BootlegDataCollator(MaskGenerator.from_config(model.config), seed=seed)
        if train_dataset is not None and hasattr(train_dataset, "__getitem__") and not isinstance(
                train_dataset, IndexedDataset):
            train_dataset = IndexedDataset(train_dataset)
        super().__init__(model=model, args=args, train_dataset=train_dataset, data_collator=data_collator, **kwargs)
        self.add_callback(_BootlegCallback(self))
        self._real_losses: list[torch.Tensor] = []
        self._last_stats: dict[str, float] = {}
        self._clock: tuple[float, int] | None = None
        self._loss_total, self._loss_count = 0.0, 0

    # ---- schedules (pure functions of the global step) ---------------------------------------------------------
    @property
    def unwrapped_model(self) -> BootlegForPretraining:
        return self.accelerator.unwrap_model(self.model)

    @property
    def total_steps(self) -> int:
        return max(1, self.state.max_steps)

    def learning_rate_at(self, step: int) -> float:
        a = self.args
        warmup = a.get_warmup_steps(self.total_steps)
        return learning_rate_at(step, self.total_steps, warmup, a.lr_init, a.lr_max, a.lr_final) * a.lr_scale

    def weight_decay_at(self, step: int) -> float:
        return weight_decay_at(step, self.total_steps, self.args.wd_init, self.args.wd_final)

    def momentum_at(self, step: int) -> float:
        config = self.unwrapped_model.config
        return momentum_at(step, self.total_steps, config.ema_start, config.ema_end)

    # ---- optimizer and LR ---------------------------------------------------------------------------------------
    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            groups = param_groups(model or self.model, self.args.wd_init)
            self.optimizer = adamw(groups, self.args.lr_max * self.args.lr_scale,
                                   (self.args.adam_beta1, self.args.adam_beta2), self.args.adam_epsilon)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            peak = self.args.lr_max * self.args.lr_scale
            warmup = self.args.get_warmup_steps(num_training_steps)
            a = self.args

            def factor(step: int) -> float:
                return learning_rate_at(step, num_training_steps, warmup, a.lr_init, a.lr_max, a.lr_final) * \
                    a.lr_scale / peak

            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
        return self.lr_scheduler

    # ---- loss and logging ---------------------------------------------------------------------------------------
    def _loss_value_due(self) -> bool:
        interval = self.args.loss_log_interval or self.args.logging_steps or 1
        return (self.state.global_step + 1) % max(1, int(interval)) == 0 or not self.model.training

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

    def _save_checkpoint(self, model, trial) -> None:
        # Never let a diverged model replace the last good checkpoint.
        params = [p for p in self.unwrapped_model.parameters()]
        norms = torch._foreach_norm(params)
        if not torch.isfinite(torch.stack(norms)).all():
            raise NonFiniteLossError(f"non-finite weights at step {self.state.global_step}; checkpoint not written "
                                     f"(the last good one in {self.args.output_dir} is kept)")
        super()._save_checkpoint(model, trial)

    def train(self, *args, **kwargs):
        self._clock, self._loss_total, self._loss_count = None, 0.0, 0
        output = super().train(*args, **kwargs)
        if self._loss_count:
            mean = self._loss_total / self._loss_count
            output = output._replace(training_loss=mean, metrics={**output.metrics, "train_loss": mean})
        return output
