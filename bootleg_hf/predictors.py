"""The decoders of the paper's other systems (Table 3), chosen by `config.predictor_type`, each with Bootleg's
predictor interface `forward(cls, context, context_indices, target_indices, encoded=None, features=None)` →
predictions `[B, R, T, D_t]` at the target indices (`bootleg_hf.modeling_bootleg_pretraining`):

- `bootleg` / `joint` — `BootlegPredictor` (self-attention over context and mask tokens), once per target region
  (Bootleg, I-JEPA) or with every region's mask tokens in one sequence (MAE's decoder, the same for random masks).
- `crossmae` — `CrossMAEPredictor`: mask tokens are queries that cross-attend to the student's tokens and never to
  each other; the regions' queries are concatenated, overlaps kept (one query per (region, cell)). With
  `config.predictor_feature_maps` (CrossMAE's weighted feature maps) decoder block j attends to its own learned
  weighted sum of the tokenizer output and every encoder block's output, layer-normed.
- `conv` — `ConvPredictor`: data2vec 2.0's light convolutional decoder on the full patch grid (context tokens at their
  cells, mask cells filled with N(0, 0.01²) noise), grouped convolutions + LayerNorm + GELU with residuals.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_bootleg import BootlegConfig
from .modeling_bootleg import BootlegMlp, gather_tokens, sincos_position_embedding


class CrossAttention(nn.Module):
    """Multi-head attention of queries `[B, Q, Dp]` over a memory `[B, M, D]` (keys and values projected from D to
    Dp, CrossMAE's layout: `q`, `kv`, `proj`)."""

    def __init__(self, query_size: int, memory_size: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(query_size, query_size, bias=qkv_bias)
        self.kv = nn.Linear(memory_size, 2 * query_size, bias=qkv_bias)
        self.proj = nn.Linear(query_size, query_size)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        b, n, d = queries.shape
        h = self.num_heads
        q = self.q(queries).reshape(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(memory).reshape(b, memory.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class CrossAttentionBlock(nn.Module):
    """`q + cross_attn(LN(q), memory)`, then `+ mlp(LN(·))`: no self-attention, so a query never sees another."""

    def __init__(self, config: BootlegConfig):
        super().__init__()
        dp = config.predictor_hidden_size
        self.norm1 = nn.LayerNorm(dp, eps=config.layer_norm_eps)
        self.cross_attn = CrossAttention(dp, config.hidden_size, config.predictor_num_attention_heads,
                                         config.qkv_bias)
        self.norm2 = nn.LayerNorm(dp, eps=config.layer_norm_eps)
        self.mlp = BootlegMlp(config, dp, int(dp * config.intermediate_size / config.hidden_size))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = queries + self.cross_attn(self.norm1(queries), memory)
        return x + self.mlp(self.norm2(x))


class WeightedFeatureMaps(nn.Module):
    """CrossMAE's weighted feature maps: `k` encoder feature maps `[B, M, D]` → one map per decoder block j,
    `LN_j(Σ_i w[j, i] · map_i)`, with `w [depth, k]` learned (initialised N(0, 1/k), CrossMAE's)."""

    def __init__(self, config: BootlegConfig, k: int, depth: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(depth, k))
        self.norms = nn.ModuleList(nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) for _ in range(depth))

    def init_bootleg_weights(self, std: float) -> None:
        from transformers import initialization as init

        init.normal_(self.weights, std=1.0 / math.sqrt(self.weights.shape[1]))

    def forward(self, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        stacked = torch.stack(feature_maps, dim=-1)  # [B, M, D, k]
        mixed = stacked @ self.weights.to(stacked.dtype).t()  # [B, M, D, depth]
        return [norm(mixed[..., j]) for j, norm in enumerate(self.norms)]


class CrossMAEPredictor(nn.Module):
    """CrossMAE's decoder (see the module docstring). Queries: the shared mask token + the predictor's sin-cos at each
    target cell, `[B, R·T, Dp]`; memory: the student's final-norm tokens `encoded [B, P + K, D]` (CLS, registers and
    context), or with weighted feature maps its tokenizer output and block outputs (`features`, L + 1 maps)."""

    def __init__(self, config: BootlegConfig):
        super().__init__()
        self.config = config
        dp, depth = config.predictor_hidden_size, config.predictor_num_hidden_layers
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dp))
        self.register_buffer("pos_embed", sincos_position_embedding(dp, *config.grid_size)[None], persistent=False)
        self.blocks = nn.ModuleList(CrossAttentionBlock(config) for _ in range(depth))
        self.feature_maps = WeightedFeatureMaps(config, config.num_hidden_layers + 1, depth) \
            if config.predictor_feature_maps else None
        self.norm = nn.LayerNorm(dp, eps=config.layer_norm_eps)
        spec = config.target_spec
        self.head = nn.Linear(dp, spec.target_dim(config.hidden_size, config.patch_size, config.num_channels))

    @property
    def needs_features(self) -> bool:
        return self.feature_maps is not None

    def init_bootleg_weights(self, std: float) -> None:
        from transformers import initialization as init

        init.trunc_normal_(self.mask_token, std=std)
        init.copy_(self.pos_embed, sincos_position_embedding(self.config.predictor_hidden_size,
                                                             *self.config.grid_size)[None])

    def forward(self, cls: torch.Tensor | None, context: torch.Tensor, context_indices: torch.Tensor,
                target_indices: torch.Tensor, encoded: torch.Tensor | None = None,
                features: list[torch.Tensor] | None = None) -> torch.Tensor:
        b, r, t = target_indices.shape
        pos = self.pos_embed.to(context.dtype).expand(b, -1, -1)
        x = self.mask_token + gather_tokens(pos, target_indices.reshape(b, r * t))
        if self.feature_maps is not None:
            memories = self.feature_maps(features)
        else:
            memory = encoded if encoded is not None else context
            memories = [memory] * len(self.blocks)
        for block, memory in zip(self.blocks, memories):
            x = block(x, memory)
        return self.head(self.norm(x)).reshape(b, r, t, -1)


class ConvPredictor(nn.Module):
    """data2vec 2.0's convolutional decoder (see the module docstring): `predictor_num_hidden_layers` blocks of
    `Conv2d(k × k, groups)` → LayerNorm over channels (no affine) → GELU, each added to its input when the widths
    match, on the `[B, D, Gh, Gw]` grid; then a Linear head at the target cells."""

    needs_features = False

    def __init__(self, config: BootlegConfig):
        super().__init__()
        self.config = config
        dp, k, groups = config.predictor_hidden_size, config.predictor_kernel_size, config.predictor_groups
        widths = [config.hidden_size] + [dp] * config.predictor_num_hidden_layers
        for width in widths:
            if width % groups:
                raise ValueError(f"predictor_groups={groups} must divide the widths {sorted(set(widths))}")
        self.convs = nn.ModuleList(nn.Conv2d(w_in, dp, k, padding=k // 2, groups=groups)
                                   for w_in in widths[:-1])
        self.mask_noise_std = 0.01  # data2vec 2.0's mask_noise_std
        spec = config.target_spec
        self.head = nn.Linear(dp, spec.target_dim(config.hidden_size, config.patch_size, config.num_channels))

    def forward(self, cls: torch.Tensor | None, context: torch.Tensor, context_indices: torch.Tensor,
                target_indices: torch.Tensor, encoded: torch.Tensor | None = None,
                features: list[torch.Tensor] | None = None) -> torch.Tensor:
        b, r, t = target_indices.shape
        gh, gw = self.config.grid_size
        grid = torch.randn(b, gh * gw, context.shape[-1], dtype=context.dtype, device=context.device)
        grid = grid * self.mask_noise_std
        grid = grid.scatter(1, context_indices[..., None].expand(-1, -1, context.shape[-1]), context)
        x = grid.transpose(1, 2).reshape(b, -1, gh, gw)
        for conv in self.convs:
            y = F.gelu(F.layer_norm(conv(x).permute(0, 2, 3, 1), (conv.out_channels,)).permute(0, 3, 1, 2))
            x = y + x if y.shape == x.shape else y
        tokens = x.flatten(2).transpose(1, 2)  # [B, N, Dp], raster order
        return self.head(gather_tokens(tokens.contiguous(), target_indices.reshape(b, r * t))).reshape(b, r, t, -1)


__all__ = ["CrossAttention", "CrossAttentionBlock", "WeightedFeatureMaps", "CrossMAEPredictor", "ConvPredictor"]
