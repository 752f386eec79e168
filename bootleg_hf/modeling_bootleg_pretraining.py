"""`BootlegForPretraining`: student, EMA teacher, predictor, targets and loss (docs/design.md §4).

Parameter layout: `bootleg.*` is the **teacher** (stored under the base-model prefix so that
`AutoModel.from_pretrained(pretraining_checkpoint)` loads the teacher, the weights the paper evaluates),
`student.*` the student encoder and `predictor.*` the predictor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.profiler import record_function
from transformers.utils import ModelOutput

from .configuration_bootleg import BootlegConfig
from .losses import prediction_loss
from .modeling_bootleg import (
    BootlegBlock,
    BootlegModel,
    BootlegPreTrainedModel,
    check_indices,
    gather_tokens,
    is_tracing,
    sincos_position_embedding,
)
from .targets import instance_zscore, merge_targets, normalized_pixels, patchify, zscore


def channel_std(x: torch.Tensor) -> torch.Tensor:
    """Per-channel standard deviation over all tokens (unbiased), averaged over channels: `x [..., D]` → scalar.

    The value of `x.std(dim=(0, …, -2)).mean()` (equal within float rounding) from an explicit two-pass computation,
    3–5× faster on CPU than `std` over several leading dimensions. A monitoring statistic: no gradient flows here.
    """
    rows = x.reshape(-1, x.shape[-1])
    dev = rows - rows.mean(0)
    dev.mul_(dev)
    return dev.sum(0).div_(rows.shape[0] - 1).sqrt_().mean()


@dataclass
class BootlegPretrainingOutput(ModelOutput):
    """`loss` (scalar MSE; a zero placeholder with the right gradient when `compute_loss_value=False`),
    `predictions` / `targets` `[B, R, T, D_t]` (on request), `target_std [|L|]` per-target-layer std of the z-scored
    targets over tokens (collapse monitor: → 0 when all tokens look alike)."""

    loss: torch.Tensor | None = None
    predictions: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    target_std: torch.Tensor | None = None


class BootlegPredictor(nn.Module):
    """Narrow ViT predicting teacher targets at masked positions (docs/design.md §4.1).

    One sequence per target rectangle, batched (rectangles never attend to each other):
    `[predictor registers, CLS', context', mask tokens]`, where CLS' and context' are the student's final-LN outputs
    projected to the predictor width; context' and mask tokens get the predictor's own sin-cos; one shared mask token.
    """

    def __init__(self, config: BootlegConfig):
        super().__init__()
        self.config = config
        dp = config.predictor_hidden_size
        self.embed = nn.Linear(config.hidden_size, dp)
        self.reg_token = nn.Parameter(torch.zeros(1, config.predictor_num_register_tokens, dp))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dp))
        self.register_buffer("pos_embed", sincos_position_embedding(dp, *config.grid_size)[None], persistent=False)
        self.blocks = nn.ModuleList(BootlegBlock(config, dp, config.predictor_num_attention_heads)
                                    for _ in range(config.predictor_num_hidden_layers))
        self.norm = nn.LayerNorm(dp, eps=config.layer_norm_eps)
        spec = config.target_spec
        self.head = nn.Linear(dp, spec.target_dim(config.hidden_size, config.patch_size, config.num_channels))
        self.joint = config.predictor_type == "joint"

    needs_features = False

    def init_bootleg_weights(self, std: float) -> None:
        from transformers import initialization as init

        init.trunc_normal_(self.reg_token, std=std)
        init.trunc_normal_(self.mask_token, std=std)
        init.copy_(self.pos_embed, sincos_position_embedding(self.config.predictor_hidden_size,
                                                             *self.config.grid_size)[None])

    def forward(self, cls: torch.Tensor | None, context: torch.Tensor, context_indices: torch.Tensor,
                target_indices: torch.Tensor, encoded: torch.Tensor | None = None,
                features: list[torch.Tensor] | None = None) -> torch.Tensor:
        """`cls [B, 1, D]` (or None), `context [B, K, D]`, `context_indices [B, K]`, `target_indices [B, R, T]`
        → predictions `[B, R, T, D_t]`. With `config.predictor_type="joint"` (MAE's decoder) every region's mask
        tokens share one sequence; `encoded` and `features` are for the other predictors' interface."""
        if self.joint and target_indices.shape[1] > 1:
            b, r, t = target_indices.shape
            return self.forward(cls, context, context_indices, target_indices.reshape(b, 1, r * t)).reshape(b, r, t, -1)
        b, r, t = target_indices.shape
        pos = self.pos_embed.to(context.dtype).expand(b, -1, -1)
        ctx = self.embed(context) + gather_tokens(pos, context_indices)
        queries = self.mask_token + gather_tokens(pos, target_indices.reshape(b, r * t)).reshape(b * r, t, -1)
        shared = [self.reg_token.expand(b, -1, -1)] + ([self.embed(cls)] if cls is not None else []) + [ctx]
        shared = torch.cat(shared, dim=1)  # [B, S, Dp], identical for the R rectangles of an image
        x = torch.cat([shared.repeat_interleave(r, dim=0), queries], dim=1)  # [B·R, S + T, Dp]
        for block in self.blocks:
            x = block(x).out
        return self.head(self.norm(x[:, -t:])).reshape(b, r, t, -1)


def build_predictor(config: BootlegConfig) -> nn.Module:
    """The predictor `config.predictor_type` names: `bootleg` / `joint` (`BootlegPredictor`), `crossmae`
    (`CrossMAEPredictor`) or `conv` (`ConvPredictor`, data2vec 2.0's); see `bootleg_hf.predictors`."""
    from .predictors import ConvPredictor, CrossMAEPredictor

    return {"bootleg": BootlegPredictor, "joint": BootlegPredictor, "crossmae": CrossMAEPredictor,
            "conv": ConvPredictor}[config.predictor_type](config)


class BootlegForPretraining(BootlegPreTrainedModel):
    """Bootleg pretraining: the student encodes the context, the predictor predicts the teacher's multi-layer
    targets at the target rectangles, the loss is MSE, and the teacher follows the student by EMA
    (`update_teacher`, called by `BootlegTrainer` after every optimizer step).

    The teacher has no gradients and is always in eval mode. It starts as an exact copy of the student.
    """

    accepts_loss_kwargs = False  # the loss is a mean over target elements, independent of any label count
    remote_auto_map = {**BootlegPreTrainedModel.remote_auto_map,
                       "AutoModelForPreTraining": "modeling_bootleg_pretraining.BootlegForPretraining"}

    def __init__(self, config: BootlegConfig):
        super().__init__(config)
        self.student = BootlegModel(config)
        self.bootleg = BootlegModel(config)  # the teacher (see module docstring for the name)
        self.predictor = build_predictor(config)
        self.target_spec = config.target_spec
        self.post_init()
        self.bootleg.requires_grad_(False)
        self.init_teacher_from_student()
        # the student's fingerprint (see `student_fingerprint`) at the last training forward and last teacher update
        self._student_at_forward: torch.Tensor | None = None
        self._student_at_update: torch.Tensor | None = None

    @property
    def teacher(self) -> BootlegModel:
        return self.bootleg

    def init_teacher_from_student(self) -> None:
        """Teacher ← exact copy of the student (a no-op on the meta device, where the checkpoint fills both)."""
        # `with`, not the decorator, here and below: `make mutation` (mutmut) skips decorated functions
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.student.parameters()):
                t.copy_(s)

    def update_teacher(self, momentum: float) -> None:
        """θ_teacher ← m·θ_teacher + (1 − m)·θ_student, with fused foreach ops (one kernel per dtype group)."""
        with torch.no_grad():
            teacher = [p for p in self.teacher.parameters()]
            student = [p.detach() for p in self.student.parameters()]
            torch._foreach_lerp_(teacher, student, 1.0 - momentum)
        self._student_at_update = self.student_fingerprint()

    def student_fingerprint(self) -> torch.Tensor | None:
        """A few values of the student's first trainable weight matrix (on the CPU): they change with every optimizer
        step that changes the student. (Parameter version counters do not: fused optimizers leave them as they are.)"""
        weight = next((p for p in self.student.parameters() if p.requires_grad and p.ndim > 1), None)
        return None if weight is None else weight.detach().flatten()[:16].float().cpu().clone()  # a copy, not a view

    def check_teacher_follows(self) -> None:
        """Raise when the student changed (an optimizer step) since the previous training forward without a teacher
        update after it: a training loop without the EMA, whose teacher would silently stay at its initial weights.
        Gradient accumulation (several forwards per step) and a teacher update after every step pass."""
        now, before, updated = self.student_fingerprint(), self._student_at_forward, self._student_at_update
        self._student_at_forward = now
        stepped = now is not None and before is not None and not torch.equal(now, before)
        if stepped and (updated is None or not torch.equal(now, updated)):
            raise RuntimeError(
                "BootlegForPretraining: the student was updated but the EMA teacher was not; the teacher must follow "
                "every optimizer step. With transformers.Trainer pass callbacks=[BootlegEMACallback()] (or use "
                "BootlegTrainer); in your own loop call model.update_teacher(momentum) after each optimizer.step().")

    def train(self, mode: bool = True) -> "BootlegForPretraining":
        super().train(mode)
        self.teacher.eval()  # the Trainer calls model.train() every step; the teacher must stay in eval mode
        return self

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> "BootlegForPretraining | tuple[BootlegForPretraining, dict]":
        """`PreTrainedModel.from_pretrained`, with the teacher frozen; `(model, info)` with `output_loading_info`."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.teacher.requires_grad_(False)  # loading re-creates parameters with requires_grad=True
        return loaded

    @classmethod
    def from_encoder(cls, encoder: BootlegModel, **config_overrides) -> "BootlegForPretraining":
        """Continue pretraining from an encoder (e.g. a converted checkpoint): student = teacher = `encoder`."""
        config = BootlegConfig(**{**encoder.config.to_dict(), **config_overrides})
        model = cls(config)
        model.student.load_state_dict(encoder.state_dict())
        model.init_teacher_from_student()
        return model

    def compute_targets(self, pixel_values: torch.Tensor, target_indices: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
        """Teacher targets `[B, R, T, D_t]` (fp32) from one teacher pass, plus per-term std `[|L|]`.

        Each requested representation is gathered at the target cells, z-scored per token over channels (or, with
        `target_norm="instance"`, per channel over the image's patch tokens, the merged target then per token), and
        merged (`concat`, or data2vec-style `average`). Same as `build_targets(teacher_features(x), x, target_indices)`.
        """
        with torch.no_grad():
            return self.build_targets(self.teacher_features(pixel_values), pixel_values, target_indices)

    def teacher_features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's representations for `target_spec.feature_terms`, all tokens (one pass, fast path)."""
        terms = self.target_spec.feature_terms
        with torch.no_grad():
            return self.teacher.forward_representations(pixel_values, terms) if terms else []

    def build_targets(self, features: list[torch.Tensor], pixel_values: torch.Tensor,
                      target_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets from `teacher_features` output: gather at the target cells, z-score, merge (+ per-term std)."""
        with torch.no_grad():
            b, r, t = target_indices.shape
            flat = target_indices.reshape(b, r * t)
            prefix = self.config.num_prefix_tokens
            features = iter(features)
            per_term = []
            instance = self.config.target_norm == "instance"
            for term in self.target_spec.terms:
                if term.kind == "pixels":
                    patches = patchify(pixel_values, self.config.patch_size)
                    per_term.append(normalized_pixels(gather_tokens(patches, flat)))
                elif instance:  # statistics over all of the image's patch tokens, then the target cells
                    per_term.append(gather_tokens(instance_zscore(next(features)[:, prefix:]), flat))
                else:  # offset the indices past CLS/registers rather than slicing (a gather on contiguous rows)
                    per_term.append(zscore(gather_tokens(next(features), flat + prefix)))
            target_std = torch.stack([channel_std(x) for x in per_term])
            targets = merge_targets(per_term, self.target_spec.merge, layer_norm=instance)
            return targets.reshape(b, r, t, -1), target_std

    def forward(
        self,
        pixel_values: torch.Tensor,
        context_indices: torch.Tensor,
        target_indices: torch.Tensor,
        return_loss: bool = True,
        compute_loss_value: bool = True,
        output_predictions: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BootlegPretrainingOutput | tuple:
        """`pixel_values [B, C, H, W]`, `context_indices [B, K]`, `target_indices [B, R, T]` (raster order).

        The phases are labelled for `torch.profiler` (`bootleg.checks`, `bootleg.teacher_forward`,
        `bootleg.target_building`, `bootleg.student_forward`, `bootleg.predictor_forward`, `bootleg.loss`): the step
        breakdown benchmark reads them."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        with record_function("bootleg.checks"):
            context_indices, target_indices = self.check_indices(pixel_values, context_indices, target_indices)
            if self.training and torch.is_grad_enabled() and not is_tracing():
                self.check_teacher_follows()
        with record_function("bootleg.teacher_forward"):
            features = self.teacher_features(pixel_values)
        repeats = context_indices.shape[0] // pixel_values.shape[0]
        if repeats > 1:  # several masked views of each image (data2vec 2.0): one teacher pass serves them all
            pixel_values = pixel_values.repeat_interleave(repeats, dim=0)
            features = [f.repeat_interleave(repeats, dim=0) for f in features]
        with record_function("bootleg.target_building"):
            targets, target_std = self.build_targets(features, pixel_values, target_indices)
        with record_function("bootleg.student_forward"):
            student_features = None
            if self.predictor.needs_features:  # CrossMAE's weighted feature maps: tokenizer + every block output
                depth = self.config.num_hidden_layers
                terms = [(0, "embed"), *((k, "out") for k in range(1, depth + 1)), (depth, "final")]
                student_features = self.student.forward_representations(pixel_values, terms, context_indices)
                encoded = student_features.pop()
            else:
                encoded = self.student(pixel_values, context_indices=context_indices).last_hidden_state
        with record_function("bootleg.predictor_forward"):
            prefix = self.config.num_prefix_tokens
            cls = encoded[:, :1] if self.config.use_cls_token else None  # registers are dropped (docs/design.md §4.1)
            predictions = self.predictor(cls, encoded[:, prefix:], context_indices, target_indices, encoded=encoded,
                                         features=student_features)
        with record_function("bootleg.loss"):
            loss = prediction_loss(predictions.float(), targets, self.config.loss_type, compute_loss_value) \
                if return_loss else None
        out = BootlegPretrainingOutput(
            loss=loss,
            predictions=predictions if output_predictions else None,
            targets=targets if output_predictions else None,
            target_std=target_std,
        )
        return out if return_dict else out.to_tuple()

    def check_indices(self, pixel_values: torch.Tensor, context_indices: torch.Tensor,
                      target_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated `context_indices [B·M, K]` and `target_indices [B·M, R, T]` as long tensors on the images' device:
        M ≥ 1 masked views of each of the B images, rows b·M … b·M + M − 1 belonging to image b.

        Every dimension must be non-empty: an empty batch, no context token or no target has no loss."""
        n = self.config.num_patches
        if pixel_values.shape[0] == 0:
            raise ValueError("empty batch: pixel_values holds no image (a pretraining step needs at least one)")
        rows = len(context_indices)
        if rows == 0 or rows % pixel_values.shape[0]:
            raise ValueError(f"context_indices has {rows} rows for {pixel_values.shape[0]} images: one row per masked "
                             "view, the same number of views (at least one) for every image")
        context_indices = check_indices(context_indices, rows, n, "context_indices")
        target_indices = torch.as_tensor(target_indices)
        if target_indices.ndim != 3:
            raise ValueError(f"target_indices must be [batch, rectangles, tokens], got {tuple(target_indices.shape)}")
        sizes = {"context tokens K of context_indices [batch, K]": context_indices.shape[1],
                 "rectangles R of target_indices [batch, R, T]": target_indices.shape[1],
                 "tokens per rectangle T of target_indices [batch, R, T]": target_indices.shape[2]}
        empty = [name for name, size in sizes.items() if size == 0]
        if empty:
            raise ValueError(f"no {' and no '.join(empty)}: the student needs context and the predictor targets")
        check_indices(target_indices.flatten(1), rows, n, "target_indices")
        return context_indices.to(pixel_values.device), target_indices.long().to(pixel_values.device)


BootlegForPretraining.register_for_auto_class("AutoModelForPreTraining")

__all__ = ["BootlegForPretraining", "BootlegPredictor", "BootlegPretrainingOutput", "build_predictor"]
