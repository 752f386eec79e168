"""The Bootleg ViT encoder (docs/design.md §3): `BootlegModel`, `BootlegBackbone` and their building blocks.

Token layout `[CLS, REG×R, patches]`; a fixed 2-D sin-cos position embedding (MAE layout) on patches only (or, for
converted ViTs, a learned table, optionally with rows for CLS and registers); pre-LN blocks; final LayerNorm. Parameter names follow timm's `VisionTransformer` under the HF prefix, so a timm model built
with `class_token=True, reg_tokens=R, no_embed_class=True` holding the same weights gives the same hidden states.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_bootleg import BootlegConfig
from .targets import TargetTerm


def sincos_position_embedding(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """MAE-layout 2-D sin-cos table `[grid_h·grid_w, dim]` (float32, raster order).

    The first `dim/2` channels encode the column and the last `dim/2` the row; each half is
    `[sin(p·ω), cos(p·ω)]` with ω_i = 10000^(−i/(dim/4)), i < dim/4. Built in float64 so every grid is exact.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64),
                                indexing="ij")

    def half(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([half(cols), half(rows)], dim=1).float()


def is_tracing() -> bool:
    """True while torch.compile (dynamo) or torch.export traces the code, where tensor values cannot be read."""
    return torch.compiler.is_compiling() or getattr(torch.compiler, "is_exporting", lambda: False)()  # old torch


def check_indices(indices: torch.Tensor | Sequence, batch_size: int, num_patches: int, name: str) -> torch.Tensor:
    """Validate patch indices `[B, K]` (raster order, 0 ≤ i < N) and return them as a long tensor."""
    if not isinstance(indices, torch.Tensor):
        try:
            indices = torch.as_tensor(indices)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{name} must be a [batch, K] integer tensor with the same K for every image "
                             f"(ragged lists are not allowed): {err}") from None
    if indices.dtype.is_floating_point or indices.dtype == torch.bool or indices.ndim != 2:
        raise ValueError(f"{name} must be a [batch, K] integer tensor, got dtype {indices.dtype} and shape "
                         f"{tuple(indices.shape)}")
    if indices.shape[0] != batch_size:
        raise ValueError(f"{name} has {indices.shape[0]} rows but the batch has {batch_size} images")
    # the range check reads tensor values: eager calls only (it would break a torch.compile / torch.export graph)
    if indices.numel() and not is_tracing() and (int(indices.min()) < 0 or int(indices.max()) >= num_patches):
        raise ValueError(f"{name} must lie in [0, {num_patches}) for this {num_patches}-patch grid, got values in "
                         f"[{int(indices.min())}, {int(indices.max())}]")
    return indices.long()


def gather_tokens(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`x [B, N, D]`, `indices [B, K]` → `[B, K, D]`: `torch.gather` along dim 1.

    For a contiguous `x`, whole rows are copied with one `index_select` on the flat `[B·N, D]` view: the same values,
    2–3× faster than `gather` with an expanded index on CPU. Other layouts (e.g. the transposed patch-embedding
    output) keep `gather`, which needs no contiguous copy first.
    """
    if not x.is_contiguous():
        return torch.gather(x, 1, indices.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    b, n, d = x.shape
    rows = indices + torch.arange(0, b * n, n, device=indices.device).unsqueeze(1)
    return x.view(b * n, d).index_select(0, rows.reshape(-1)).view(b, indices.shape[1], d)


class BootlegPatchEmbed(nn.Module):
    """`Conv2d(C, D, P, stride=P)` → `[B, N, D]` patch tokens in raster order."""

    def __init__(self, config: BootlegConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.proj = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be [batch, channels, height, width], got shape "
                             f"{tuple(pixel_values.shape)}")
        if pixel_values.shape[1] != self.num_channels:
            raise ValueError(f"pixel_values has {pixel_values.shape[1]} channels but the model expects "
                             f"{self.num_channels} (config.num_channels)")
        h, w = pixel_values.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {self.patch_size}")
        x = self.proj(pixel_values.to(self.proj.weight.dtype))
        return x.flatten(2).transpose(1, 2)


class BootlegEmbeddings(nn.Module):
    """Patch embedding + position embedding, optional student gather, then `[CLS, REG×R]` prepended.

    `config.position_embedding_type="sincos"` (default): the fixed 2-D table, added to the patches only (CLS and
    registers get none), regenerated for any grid. `"learned"`: a trained parameter `pos_embed [1, P + N, D]` in timm's
    layout, whose first P rows (CLS + registers, only with `config.position_embedding_includes_prefix`, timm's
    `no_embed_class=False`) are added to the prefix tokens; for another grid its patch rows are resized as timm's
    `resample_abs_pos_embed` does (`resize_learned_table`).
    """

    def __init__(self, config: BootlegConfig):
        super().__init__()
        self.config = config
        self.patch_embed = BootlegPatchEmbed(config)
        d = config.hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if config.use_cls_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, config.num_register_tokens, d)) if config.num_register_tokens else None
        self.learned = config.position_embedding_type == "learned"
        # rows of the table that belong to CLS/registers (timm's `no_embed_class=False`); 0 for the sin-cos table
        self.num_prefix_positions = config.num_prefix_tokens if config.position_embedding_includes_prefix else 0
        if self.learned:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_positions + config.num_patches, d))
        else:
            # Non-persistent: regenerated analytically, so it is never stale in a checkpoint (and is refilled by
            # `_init_weights` after transformers' meta-device loading).
            self.register_buffer("pos_embed", sincos_position_embedding(d, *config.grid_size)[None], persistent=False)

    def init_bootleg_weights(self, std: float) -> None:
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                init.trunc_normal_(token, std=std)
        if self.learned:  # timm's init of a learned table
            init.trunc_normal_(self.pos_embed, std=std)
        else:
            init.copy_(self.pos_embed, sincos_position_embedding(self.config.hidden_size, *self.config.grid_size)[None])

    @staticmethod
    def resize_learned_table(table: torch.Tensor, old_grid: Sequence[int], new_grid: Sequence[int],
                             num_prefix: int) -> torch.Tensor:
        """`[1, num_prefix + old_h·old_w, D]` → `[1, num_prefix + new_h·new_w, D]`: the patch rows resized as a
        `D`-channel image (bicubic, antialiased, `align_corners=False`, in float32: timm's `resample_abs_pos_embed`,
        so a converted timm ViT matches timm's `dynamic_img_size` at any size), the prefix rows kept."""
        prefix, patches = table[:, :num_prefix], table[:, num_prefix:]
        grid = patches.float().reshape(1, *old_grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=True)
        return torch.cat([prefix, grid.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1]).to(table.dtype)], dim=1)

    def position_embedding(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> torch.Tensor:
        """`[1, P + grid_h·grid_w, D]`: the prefix rows (P = `num_prefix_positions`), then raster-order patches."""
        if (grid_h, grid_w) == tuple(self.config.grid_size):
            return self.pos_embed.to(dtype)
        if self.learned:
            return self.resize_learned_table(self.pos_embed, self.config.grid_size, (grid_h, grid_w),
                                             self.num_prefix_positions).to(dtype)
        return sincos_position_embedding(self.config.hidden_size, grid_h, grid_w)[None].to(self.pos_embed.device, dtype)

    def forward(self, pixel_values: torch.Tensor, context_indices: torch.Tensor | None = None,
                interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """`pixel_values [B, C, H, W]` → tokens `[B, R+1 + N (or K), D]`."""
        x = self.patch_embed(pixel_values)  # validates shape, channels and divisibility first
        h, w = pixel_values.shape[-2:]
        if not interpolate_pos_encoding and (h, w) != self.config.image_hw:
            raise ValueError(f"input image size {h}x{w} does not match the model's {self.config.image_hw[0]}x"
                             f"{self.config.image_hw[1]}; pass interpolate_pos_encoding=True to use another size")
        pos = self.position_embedding(h // self.config.patch_size, w // self.config.patch_size, x.dtype)
        p = self.num_prefix_positions
        x = x + (pos[:, p:] if p else pos)
        if context_indices is not None:
            x = gather_tokens(x, check_indices(context_indices, x.shape[0], x.shape[1], "context_indices").to(x.device))
        prefix = [t for t in (self.cls_token, self.reg_token) if t is not None]
        if not prefix:
            return x
        if p:  # timm adds the table after concatenating; the same sums, computed once for the batch
            prefix = [torch.cat(prefix, dim=1) + pos[:, :p]]
        return torch.cat([t.expand(x.shape[0], -1, -1) for t in prefix] + [x], dim=1)


def eager_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                            **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit attention, the `eager` entry of the attention interface: `query/key/value [B, H, N, d]` →
    `(out [B, N, H, d], weights [B, H, N, N])`. An additive `attention_mask` broadcasts onto the scores; the softmax
    accumulates in float32 under half precision and its result has the query dtype."""
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = (query * scaling) @ key.transpose(-2, -1)
    if attention_mask is not None:
        scores = scores + attention_mask
    # float32 softmax for half precision, except on a CPU, whose bf16 softmax accumulates in float32 already (same
    # error against float64, measured) and whose float32 round trip costs more than the softmax itself
    on_cpu = query.device.type == "cpu"
    weights = scores.softmax(dim=-1) if on_cpu else scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2), weights


class BootlegAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm layout), computed by the kernel that
    `config._attn_implementation` names in transformers' attention interface (SDPA by default)."""

    def __init__(self, config: BootlegConfig, hidden_size: int | None = None, num_heads: int | None = None):
        super().__init__()
        self.config = config
        d = hidden_size or config.hidden_size
        self.num_heads = num_heads or config.num_attention_heads
        self.head_dim = d // self.num_heads
        self.scale = self.head_dim**-0.5
        self.is_causal = False
        self.qkv = nn.Linear(d, 3 * d, bias=config.qkv_bias)
        self.proj = nn.Linear(d, d)

    def kernel(self, query: torch.Tensor, output_attentions: bool) -> Callable:
        """The attention function: the eager kernel when weights are requested (SDPA and flash return none) and for
        half precision on a CPU, where PyTorch's SDPA is slower than the explicit matmul + softmax, whose bf16 matmuls
        are fast (docs/design.md §10: ViT-S training step 1.8×, inference 1.1× slower with SDPA); else the configured
        one."""
        name = self.config._attn_implementation
        cpu_half = name == "sdpa" and query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16)
        if output_attentions or cpu_half:
            return eager_attention_forward
        return ALL_ATTENTION_FUNCTIONS.get_interface(name, eager_attention_forward)

    def forward(self, x: torch.Tensor, output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`x [B, N, D]` → `(projected [B, N, D], weights [B, H, N, N] or None)`."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out, weights = self.kernel(q, output_attentions)(self, q, k, v, None, scaling=self.scale, dropout=0.0)
        return self.proj(out.reshape(b, n, d)), weights


class BootlegMlp(nn.Module):
    def __init__(self, config: BootlegConfig, hidden_size: int | None = None, intermediate_size: int | None = None):
        super().__init__()
        d = hidden_size or config.hidden_size
        self.fc1 = nn.Linear(d, intermediate_size or config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(intermediate_size or config.intermediate_size, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class BlockOutput(NamedTuple):
    """Everything a block computes: `out = mid + mlp`, `mid = input + attn` (residual terms kept for targets)."""

    out: torch.Tensor
    attn: torch.Tensor
    mid: torch.Tensor
    mlp: torch.Tensor
    weights: torch.Tensor | None


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth of a residual branch `x [B, ...]`: in training, each sample's branch is zeroed with
    probability `rate` and the kept ones are scaled by 1 / (1 − rate), one Bernoulli draw per sample (timm's
    `drop_path` with `scale_by_keep=True`, drawing from the RNG in the same order); the identity at inference."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * (mask / keep if keep > 0 else mask)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Per-block stochastic-depth rates: linear from 0 (first block) to `rate` (last), as timm's ViT spaces them."""
    return torch.linspace(0, rate, depth).tolist()


class BootlegBlock(GradientCheckpointingLayer):
    """Pre-LN transformer block: `x + attn(LN(x))`, then `+ mlp(LN(·))`. Also used by the predictor at its width.
    `drop_path` is the block's stochastic-depth rate on both residual branches (training only)."""

    def __init__(self, config: BootlegConfig, hidden_size: int | None = None, num_heads: int | None = None,
                 drop_path: float = 0.0):
        super().__init__()
        d = hidden_size or config.hidden_size
        self.norm1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.attn = BootlegAttention(config, d, num_heads)
        self.norm2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.mlp = BootlegMlp(config, d, int(d * config.intermediate_size / config.hidden_size))
        self.drop_path = drop_path

    def __call__(self, x: torch.Tensor, output_attentions: bool = False) -> BlockOutput:
        out = super().__call__(x, output_attentions)
        # reentrant activation checkpointing (`use_reentrant=True`) hands the outputs back as a plain tuple
        return out if isinstance(out, BlockOutput) else BlockOutput(*out)

    def forward(self, x: torch.Tensor, output_attentions: bool = False) -> BlockOutput:
        """`x [B, N, D]` → `BlockOutput` of `[B, N, D]` tensors (and the attention weights on request); `attn` and
        `mlp` are the branches after stochastic depth, so `mid = x + attn` and `out = mid + mlp` always hold."""
        attn, weights = self.attn(self.norm1(x), output_attentions)
        attn = drop_path(attn, self.drop_path, self.training)
        mid = x + attn
        mlp = drop_path(self.mlp(self.norm2(mid)), self.drop_path, self.training)
        return BlockOutput(mid + mlp, attn, mid, mlp, weights)


NORMS = (nn.LayerNorm, nn.modules.batchnorm._NormBase)  # _NormBase: every BatchNorm / InstanceNorm


def init_module_weights(module: nn.Module, std: float) -> None:
    """Initialise the tensors `module` owns itself (not its children's), as every Bootleg model does: trunc-normal
    Linear weights, Xavier patch embedding, zero biases, norms (1, 0) with BatchNorm's running statistics reset,
    then the module's own `init_bootleg_weights(std)` (learned tokens, sin-cos buffers, head matrices).

    Only `transformers.initialization` functions are used, so loaded tensors are left alone. Buffers must be covered
    too: meta-device loading leaves every buffer it does not load uninitialised (docs/design.md §3).
    """
    if isinstance(module, nn.Conv2d):
        # MAE's patch-embedding init: Xavier-uniform of the flattened [D, C·P·P] kernel. With trunc-normal(0.02)
        # a small patch (e.g. 4×4×3 inputs) gives content ~5× weaker than the unit-amplitude sin-cos, and the
        # z-scored targets are then ~90 % position at init.
        fan_in, fan_out = module.weight[0].numel(), module.weight.shape[0]
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        init.uniform_(module.weight, -bound, bound)
    elif isinstance(module, nn.Linear):
        init.trunc_normal_(module.weight, std=std)
    elif isinstance(module, NORMS):  # affine parameters and BatchNorm statistics are each optional
        for name, value in (("weight", 1), ("running_mean", 0), ("running_var", 1), ("num_batches_tracked", 0)):
            if getattr(module, name, None) is not None:
                init.constant_(getattr(module, name), value)
    if isinstance(module, (nn.Conv2d, nn.Linear, *NORMS)) and module.bias is not None:
        init.zeros_(module.bias)
    if hasattr(module, "init_bootleg_weights"):  # heads, embeddings and predictor own their special tensors
        module.init_bootleg_weights(std)


class BootlegPreTrainedModel(PreTrainedModel):
    config_class = BootlegConfig
    base_model_prefix = "bootleg"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["BootlegEmbeddings", "BootlegBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # Auto class → "<module>.<class>": every class whose code a saved folder of this class holds. transformers copies
    # the module of a class registered with `register_for_auto_class` plus its relative imports (here
    # configuration_bootleg.py, modeling_bootleg.py, targets.py); subclasses in other modules extend the map.
    remote_auto_map: ClassVar[dict[str, str]] = {
        "AutoConfig": "configuration_bootleg.BootlegConfig",
        "AutoModel": "modeling_bootleg.BootlegModel",
        "AutoBackbone": "modeling_bootleg.BootlegBackbone",
    }

    def _init_weights(self, module: nn.Module) -> None:
        # transformers v5 runs this per module owning tensors, skipping loaded ones (init.* are no-ops on them)
        init_module_weights(module, self.config.initializer_range)

    def save_pretrained(self, save_directory: str | Any, *args: Any, **kwargs: Any) -> Any:
        """`PreTrainedModel.save_pretrained` (and so `push_to_hub` and the Trainer's saving) writing, next to the
        weights, the module files and a `config.json` `auto_map` for `remote_auto_map`: the folder loads with
        `trust_remote_code=True` where bootleg-hf is not installed (the Auto classes use the installed package where
        it is). The model's config is left as it was."""
        before = getattr(self.config, "auto_map", None)
        self.config.auto_map = dict(self.remote_auto_map)
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.config.auto_map = before


def output_flags_from_config(forward: Callable) -> Callable:
    """Fill `output_hidden_states`, `output_attentions` and `return_dict` given as `None` (or not given) from the
    config. `capture_outputs` reads these flags from the keyword arguments only and takes an explicit `None` for
    "off", while callers such as the task heads pass their own unset (`None`) flags through."""

    @wraps(forward)
    def wrapper(self, *args, **kwargs):
        for name in ("output_hidden_states", "output_attentions", "return_dict"):
            if kwargs.get(name) is None:
                kwargs[name] = getattr(self.config, name)
        return forward(self, *args, **kwargs)

    return wrapper


class BootlegModel(BootlegPreTrainedModel):
    """The Bootleg encoder.

    Outputs (`BaseModelOutputWithPooling`): `last_hidden_state [B, 1+R+N, D]` after the final LayerNorm,
    `pooler_output [B, D]` = CLS after the final LayerNorm (mean patch token if `use_cls_token=False`),
    `hidden_states[0]` = embeddings and `hidden_states[k]` = output of block k **before** the final LayerNorm.
    With `context_indices [B, K]` only those patches (plus CLS/registers) are encoded (student mode): N becomes K.
    """

    # a pretraining checkpoint holds the teacher under this prefix; its student and predictor are not ours
    _keys_to_ignore_on_load_unexpected = [r"^student\.", r"^predictor\."]
    # `capture_outputs` hooks these classes inside this model only (not the predictor's or a head's blocks), once an
    # output is first requested; it records a block's `BlockOutput[0]` (`out`) and the attention's `weights` (index 1).
    _can_record_outputs = {"hidden_states": BootlegBlock, "attentions": BootlegAttention}

    def __init__(self, config: BootlegConfig):
        super().__init__(config)
        self.embeddings = BootlegEmbeddings(config)
        self.blocks = nn.ModuleList(BootlegBlock(config, drop_path=rate)
                                    for rate in drop_path_rates(config.drop_path_rate, config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embed

    def pool(self, normed: torch.Tensor) -> torch.Tensor:
        """`[B, T, D]` final-LN tokens → `[B, D]` (CLS, or mean of the patch tokens without a CLS token)."""
        return normed[:, 0] if self.config.use_cls_token else normed[:, self.config.num_prefix_tokens:].mean(1)

    @output_flags_from_config
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        context_indices: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        *,
        output_attentions: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """`pixel_values [B, C, H, W]` → `BaseModelOutputWithPooling` (a tuple with `return_dict=False`).

        The keyword flags `output_hidden_states`, `output_attentions` and `return_dict` default to the config's; the
        decorators collect the hidden states (block inputs/outputs) and attention weights and build the tuple.
        """
        x = self.embeddings(pixel_values, context_indices, bool(interpolate_pos_encoding))
        for block in self.blocks:
            x = block(x, output_attentions).out
        normed = self.norm(x)
        return BaseModelOutputWithPooling(last_hidden_state=normed, pooler_output=self.pool(normed))

    def forward_representations(
        self,
        pixel_values: torch.Tensor,
        terms: Sequence[TargetTerm | tuple[int, str]],
        context_indices: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> list[torch.Tensor]:
        """Fast path for teacher targets and backbones: only the requested representations, all tokens each.

        `terms` are `(block, kind)` pairs: kind `out` / `mid` / `attn` / `mlp` of block k (1-based), `embed` (block 0,
        tokenizer output) or `final` (final-LN output). Blocks after the deepest request are not run and no other
        hidden state is kept. Returns tensors `[B, 1+R+N, D]` in the order of `terms`.
        """
        terms = [TargetTerm(*t) if isinstance(t, tuple) else t for t in terms]
        for t in terms:
            valid = t.kind in ("out", "mid", "attn", "mlp") and 1 <= t.block <= len(self.blocks)
            if not (valid or t.kind in ("embed", "final")):
                raise ValueError(f"cannot produce representation {t} from a {len(self.blocks)}-block encoder")
        deepest = len(self.blocks) if any(t.kind == "final" for t in terms) else max(
            (t.block for t in terms if t.kind != "embed"), default=0)
        x = self.embeddings(pixel_values, context_indices, interpolate_pos_encoding)
        found: dict[tuple[int, str], torch.Tensor] = {(0, "embed"): x}
        for k, block in enumerate(self.blocks[:deepest], start=1):
            parts = block(x)
            x = parts.out
            for t in terms:
                if t.block == k and t.kind in ("out", "mid", "attn", "mlp"):
                    found[(k, t.kind)] = getattr(parts, t.kind)
        if any(t.kind == "final" for t in terms):
            found[(len(self.blocks), "final")] = self.norm(x)
        return [found[(t.block, t.kind)] for t in terms]


class BootlegBackbone(BackboneMixin, BootlegModel):
    """Bootleg encoder as a `transformers` backbone: feature maps `(B, D, h, w)` for `config.out_indices`.

    Stage k is the output of block k (stage 0 = `stem`, the embeddings); CLS and registers are dropped; with
    `config.apply_layernorm` each map goes through the encoder's final LayerNorm first (as DINOv2's backbone does).
    Same parameter names as `BootlegModel`, so an encoder checkpoint loads directly.
    """

    def __init__(self, config: BootlegConfig):
        super().__init__(config)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        """`pixel_values [B, C, H, W]` (any size divisible by the patch) → `BackboneOutput` with `feature_maps`
        `(B, D, h, w)` (`(B, h·w, D)` without `reshape_hidden_states`); flags default to the config's."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        stages = [i % len(self.stage_names) for i in self.out_indices]  # negative indices count from the last stage
        if output_hidden_states or output_attentions:
            full = BootlegModel.forward(self, pixel_values, interpolate_pos_encoding=True, output_hidden_states=True,
                                        output_attentions=output_attentions, return_dict=True)
            features = [full.hidden_states[i] for i in stages]
        else:  # only the requested blocks run and no other hidden state is kept
            full = None
            features = self.forward_representations(
                pixel_values, [(i, "out") if i else (0, "embed") for i in stages], interpolate_pos_encoding=True)
        grid_h, grid_w = (s // self.config.patch_size for s in pixel_values.shape[-2:])
        feature_maps = []
        for h in features:
            h = self.norm(h) if self.config.apply_layernorm else h
            h = h[:, self.config.num_prefix_tokens:]
            if self.config.reshape_hidden_states:
                h = h.reshape(h.shape[0], grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous()
            feature_maps.append(h)
        return BackboneOutput(feature_maps=tuple(feature_maps),
                              hidden_states=full.hidden_states if output_hidden_states else None,
                              attentions=full.attentions if output_attentions else None)


# `save_pretrained` copies the code of registered classes (see `BootlegPreTrainedModel.remote_auto_map`)
BootlegConfig.register_for_auto_class()
BootlegModel.register_for_auto_class("AutoModel")
BootlegBackbone.register_for_auto_class("AutoBackbone")

__all__ = ["BootlegPreTrainedModel", "BootlegModel", "BootlegBackbone", "sincos_position_embedding", "drop_path",
           "drop_path_rates"]
