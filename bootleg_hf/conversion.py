"""State-dict conversion between Bootleg and timm `VisionTransformer` (and key-checking helpers).

Our encoder keeps timm's parameter names under the HF module names, so the mapping is a rename of the embedding
tensors plus the fixed sin-cos table, which timm stores as a (frozen) `pos_embed` parameter and we regenerate.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .configuration_bootleg import BootlegConfig
from .modeling_bootleg import sincos_position_embedding

# timm name → our BootlegModel name; everything under blocks.* and norm.* is identical.
_TIMM_RENAMES = {
    "patch_embed.proj.weight": "embeddings.patch_embed.proj.weight",
    "patch_embed.proj.bias": "embeddings.patch_embed.proj.bias",
    "cls_token": "embeddings.cls_token",
    "reg_token": "embeddings.reg_token",
}
_TIMM_IGNORED = ("head.", "fc_norm.", "head_drop.")  # classifier heads: not part of the encoder


class KeyMismatchError(ValueError):
    """A checkpoint does not fit the model; the message lists missing and unexpected keys."""


def key_report(missing: list[str], unexpected: list[str], what: str) -> str:
    lines = [f"{what}: {len(missing)} missing and {len(unexpected)} unexpected keys"]
    lines += [f"  missing:    {k}" for k in sorted(missing)[:40]]
    lines += [f"  unexpected: {k}" for k in sorted(unexpected)[:40]]
    return "\n".join(lines)


def check_keys(converted: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise `KeyMismatchError` unless `converted` has exactly the keys and shapes of `expected`."""
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    wrong = [f"{k}: {tuple(converted[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
             if k in converted and converted[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        report = key_report(missing, unexpected, what)
        raise KeyMismatchError(report + "".join(f"\n  shape:      {w}" for w in wrong))


def config_from_timm(model: torch.nn.Module, **overrides) -> BootlegConfig:
    """A `BootlegConfig` with the shape of a timm `VisionTransformer` (must use `no_embed_class=True`)."""
    if not getattr(model, "no_embed_class", False):
        raise ValueError("only timm VisionTransformer models built with no_embed_class=True (no position term on "
                         "CLS/registers) match Bootleg's layout")
    if not model.has_class_token:
        raise ValueError("Bootleg conversion expects a timm model with a class token (class_token=True)")
    block = model.blocks[0]
    return BootlegConfig(
        hidden_size=model.embed_dim, num_hidden_layers=len(model.blocks), num_attention_heads=block.attn.num_heads,
        intermediate_size=block.mlp.fc1.out_features, image_size=list(model.patch_embed.img_size),
        patch_size=model.patch_embed.patch_size[0], num_channels=model.patch_embed.proj.in_channels,
        num_register_tokens=model.num_reg_tokens, layer_norm_eps=model.norm.eps,
        qkv_bias=block.attn.qkv.bias is not None, **overrides,
    )


def timm_to_bootleg(state_dict: Mapping[str, torch.Tensor], config: BootlegConfig,
                    pos_embed_atol: float = 1e-4) -> dict[str, torch.Tensor]:
    """timm `VisionTransformer(class_token=True, reg_tokens=R, no_embed_class=True)` state dict → `BootlegModel`'s.

    timm's `pos_embed` must be the MAE sin-cos table (we regenerate it, so a learned one would be silently lost):
    a `ValueError` says so otherwise. Classifier-head tensors are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key == "pos_embed":
            table = sincos_position_embedding(config.hidden_size, *config.grid_size)[None]
            if value.shape != table.shape or (value.float() - table).abs().max() > pos_embed_atol:
                raise ValueError("the timm pos_embed is not Bootleg's 2-D sin-cos table on patches only (learned or "
                                 "a different layout/grid); it cannot be represented by BootlegModel")
        elif not key.startswith(_TIMM_IGNORED):
            out[_TIMM_RENAMES.get(key, key)] = value
    return out


def bootleg_to_timm(state_dict: Mapping[str, torch.Tensor], config: BootlegConfig) -> dict[str, torch.Tensor]:
    """`BootlegModel` state dict → timm's, with the sin-cos table written into `pos_embed`."""
    inverse = {v: k for k, v in _TIMM_RENAMES.items()}
    out = {inverse.get(k, k): v for k, v in state_dict.items()}
    ref = next(iter(state_dict.values()))
    out["pos_embed"] = sincos_position_embedding(config.hidden_size, *config.grid_size)[None].to(ref.dtype)
    return out
