"""Frozen-encoder probe heads (SPEC §7) and a parallel lr × wd sweep of them.

Every probe takes the encoder's `last_hidden_state` `[B, T, D]` (tokens `[CLS, REG×R, patches]` after the final
LayerNorm) and returns logits `[B, C]`:

- `PatchProbe` — mean of the patch tokens → BatchNorm (no affine) → Linear.
- `ClsProbe` — CLS token → LayerNorm (no parameters) → Linear.
- `AttentiveProbe(block=False)` (X-Attn) — one learned query cross-attends over **all** tokens (keys/values
  layer-normed, query not normalised; heads = encoder heads, width D) → Linear.
- `AttentiveProbe(block=True)` (X-Blk) — X-Attn plus the residual MLP sub-block `q += MLP(LN(q))` before the Linear
  (V-JEPA's attentive classifier).

`ProbeSweep` trains a grid of independent probes (default 5 × 5 lr × wd) from one encoder pass per batch.

This module is shipped as Hub remote code: it imports only torch, transformers and sibling modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .configuration_bootleg import PROBE_TYPES, BootlegConfig
from .modeling_bootleg import BootlegMlp

PROBE_GRID: tuple[float, ...] = (0.5e-3, 1e-3, 2e-3, 4e-3, 8e-3)
# Learned tokens are excluded from weight decay, like biases and norms (same rule as pretraining).
NO_DECAY_NAMES = ("query", "class_embed")


def init_probe_weights(module: nn.Module, std: float) -> nn.Module:
    """Initialise a head exactly as `BootlegPreTrainedModel._init_weights` does (trunc-normal Linear weights, zero
    biases, LayerNorm (1, 0), then each module's `init_bootleg_weights`), so a head built alone matches one built
    inside a model."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            init.ones_(m.weight)
            init.zeros_(m.bias)
        elif hasattr(m, "init_bootleg_weights"):
            m.init_bootleg_weights(std)
    return module


class Probe(nn.Module):
    """A probe split in two: `shared_features(tokens)` is parameter-free and the same for every probe of a type (a sweep
    computes it once per batch), `classify(features)` holds the parameters. `forward(tokens [B, T, D]) → [B, C]`."""

    def shared_features(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classify(self.shared_features(tokens))


class PatchProbe(Probe):
    """Mean of the patch tokens → `BatchNorm1d(affine=False)` → Linear."""

    def __init__(self, config: BootlegConfig, num_labels: int):
        super().__init__()
        self.num_prefix_tokens = config.num_prefix_tokens
        self.norm = nn.BatchNorm1d(config.hidden_size, affine=False)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_probe_weights(self, config.initializer_range)

    def init_bootleg_weights(self, std: float) -> None:
        # running statistics are buffers `_init_weights` does not know; meta-device loading leaves them as garbage
        init.zeros_(self.norm.running_mean)
        init.ones_(self.norm.running_var)
        init.zeros_(self.norm.num_batches_tracked)

    def shared_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.num_prefix_tokens:].mean(1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(features))


class ClsProbe(Probe):
    """CLS token → `LayerNorm(elementwise_affine=False)` → Linear."""

    def __init__(self, config: BootlegConfig, num_labels: int):
        super().__init__()
        if not config.use_cls_token:
            raise ValueError("the CLS probe needs an encoder with a CLS token (config.use_cls_token=True)")
        self.norm = nn.LayerNorm(config.hidden_size, elementwise_affine=False)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_probe_weights(self, config.initializer_range)

    def shared_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(tokens[:, 0])

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)


class AttentiveProbe(Probe):
    """X-Attn (`block=False`) or X-Blk (`block=True`): attentive pooling with one learned query.

    `q = query + CrossAttn(query, LN(tokens))` over all T tokens (`q` projected by `q_proj`, keys/values by the fused
    `kv` Linear, heads = encoder heads, scale `head_dim^-0.5`, no output projection — as V-JEPA, whose `proj` is
    unused); X-Blk then adds `q += MLP(LN(q))` (GELU, ratio 4). Finally `Linear(D → C)`, no final norm.

    Computed without projecting the tokens (same result, O(T·D·H) instead of O(T·D²) per image): `LN(x) = x̂·γ + β`
    with x̂ the parameter-free standardised tokens (the shared features), and with one query the attention logits
    `q·(W_k LN(x_t) + b_k) = x̂_t·(γ ∘ W_kᵀq) + const` (constants cancel in the softmax), while the values give
    `Σ_t a_t (W_v LN(x_t) + b_v) = W_v ((Σ_t a_t x̂_t)·γ + β) + b_v` because the weights sum to one.
    """

    def __init__(self, config: BootlegConfig, num_labels: int, block: bool):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = nn.Parameter(torch.zeros(1, 1, d))
        self.norm = nn.LayerNorm(d)  # eps 1e-5: V-JEPA's nn.LayerNorm default
        self.q_proj = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.mlp_norm = nn.LayerNorm(d) if block else None
        self.mlp = BootlegMlp(config, d, 4 * d) if block else None
        self.classifier = nn.Linear(d, num_labels)
        init_probe_weights(self, config.initializer_range)

    def init_bootleg_weights(self, std: float) -> None:
        init.trunc_normal_(self.query, std=std)

    def shared_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(tokens, tokens.shape[-1:], eps=self.norm.eps)

    def key_directions(self) -> torch.Tensor:
        """`[H, D]`: attention logits of head h are `x̂ · key_directions()[h]` (up to a per-head constant)."""
        d = self.query.shape[-1]
        h = self.num_heads
        q = self.q_proj(self.query).reshape(h, d // h)
        w_k = self.kv.weight[:d].reshape(h, d // h, d)  # kv output layout: [k | v] × heads × head_dim
        return torch.einsum("hc,hcd->hd", q, w_k) * (d // h) ** -0.5 * self.norm.weight

    def classify_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Attention-weighted standardised tokens per head `[B, H, D]` → logits `[B, C]`."""
        b, h, d = pooled.shape
        w_v = self.kv.weight[d:].reshape(h, d // h, d)
        b_v = self.kv.bias[d:].reshape(h, d // h)
        x = pooled * self.norm.weight + self.norm.bias
        q = self.query.reshape(1, d) + (torch.einsum("bhd,hcd->bhc", x, w_v) + b_v).reshape(b, d)
        if self.mlp is not None:
            q = q + self.mlp(self.mlp_norm(q))
        return self.classifier(q)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        attn = torch.einsum("btd,hd->bht", features, self.key_directions()).softmax(dim=-1)
        return self.classify_pooled(torch.einsum("bht,btd->bhd", attn, features))


def build_probe(kind: str, config: BootlegConfig, num_labels: int) -> Probe:
    """Probe of type `kind` (`patch`, `cls`, `xattn`, `xblk`) for encoder `config`, with `num_labels` outputs."""
    if kind == "patch":
        return PatchProbe(config, num_labels)
    if kind == "cls":
        return ClsProbe(config, num_labels)
    if kind in ("xattn", "xblk"):
        return AttentiveProbe(config, num_labels, block=kind == "xblk")
    raise ValueError(f"unknown probe type '{kind}'; choose one of {PROBE_TYPES}")


def param_groups(module: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups for one head: weight decay on weight matrices only (not biases, norms or learned tokens)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or name.split(".")[-1] in NO_DECAY_NAMES else decay).append(p)
    return [{"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR factor: linear warm-up from 1/warmup to 1 over `warmup_steps`, then cosine from 1 to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step warm-up + cosine on every param group (each scaled from its own base lr)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, warmup_steps=warmup_steps, total_steps=total_steps))


class ProbeSweep(nn.Module):
    """`len(lrs) · len(wds)` independent probes of one type, trained together from the same features.

    Head `i` has hyper-parameters `grid[i] = (lr, wd)` (lr-major order) and its own AdamW param groups in one shared
    optimizer; the summed loss gives each head exactly the gradient of its own loss (the features carry no gradient),
    so every head trains as it would alone. The schedule is per-step warm-up + cosine (`warmup_cosine`).
    """

    def __init__(self, kind: str, config: BootlegConfig, num_labels: int, lrs: Sequence[float] = PROBE_GRID,
                 wds: Sequence[float] = PROBE_GRID, total_steps: int = 1, warmup_steps: int = 0):
        super().__init__()
        self.grid = [(float(lr), float(wd)) for lr in lrs for wd in wds]
        self.heads = nn.ModuleList(build_probe(kind, config, num_labels) for _ in self.grid)
        groups = [g for head, (lr, wd) in zip(self.heads, self.grid) for g in param_groups(head, lr, wd)]
        self.optimizer = torch.optim.AdamW(groups)
        self.scheduler = make_scheduler(self.optimizer, warmup_steps, total_steps)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[B, T, D]` → logits `[K, B, C]` for the K heads (shared features computed once)."""
        features = self.heads[0].shared_features(tokens)
        if not isinstance(self.heads[0], AttentiveProbe):
            return torch.stack([head.classify(features) for head in self.heads])
        # Attentive heads: the attention of all K·H query directions in one matmul instead of K skinny ones.
        directions = torch.cat([head.key_directions() for head in self.heads])
        attn = torch.einsum("btd,jd->bjt", features, directions).softmax(dim=-1)
        pooled = torch.bmm(attn, features).split(self.heads[0].num_heads, dim=1)
        return torch.stack([head.classify_pooled(p) for head, p in zip(self.heads, pooled)])

    def train_step(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer + scheduler step of every head on `tokens [B, T, D]` (no grad), `labels [B]` → losses `[K]`."""
        self.train()
        losses = torch.stack([F.cross_entropy(logits, labels) for logits in self(tokens)])
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        self.scheduler.step()
        return losses.detach()

    @torch.no_grad()
    def num_correct(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Correct top-1 predictions per head `[K]` on one batch (eval mode)."""
        self.eval()
        return (self(tokens).argmax(-1) == labels).sum(1)


__all__ = ["PROBE_GRID", "Probe", "PatchProbe", "ClsProbe", "AttentiveProbe", "ProbeSweep", "build_probe",
           "init_probe_weights", "param_groups", "warmup_cosine", "make_scheduler"]
