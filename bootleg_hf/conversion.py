"""State-dict conversion into Bootleg: timm `VisionTransformer` (both ways), I-JEPA checkpoints (official `.pth.tar`
and transformers' `IJepaModel` folders), key checks.

Our encoder keeps timm's parameter names under the HF module names, so the mapping is a rename of the embedding
tensors. A position table equal to Bootleg's fixed sin-cos one is checked and regenerated (`position_embedding_type=
"sincos"`); any other table is kept as a learned one (`"learned"`, timm's layout, with or without rows for CLS and
registers). Whatever the config cannot express exactly raises a `ValueError` naming it before anything is built.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BaseImageProcessor

from .configuration_bootleg import BootlegConfig
from .modeling_bootleg import BootlegModel, sincos_position_embedding
from .modeling_bootleg_heads import BootlegForImageClassification
from .modeling_bootleg_pretraining import BootlegForPretraining

# timm name → our BootlegModel name; everything under blocks.* and norm.* is identical.
_TIMM_RENAMES = {
    "patch_embed.proj.weight": "embeddings.patch_embed.proj.weight",
    "patch_embed.proj.bias": "embeddings.patch_embed.proj.bias",
    "cls_token": "embeddings.cls_token",
    "reg_token": "embeddings.reg_token",
    "pos_embed": "embeddings.pos_embed",  # a learned table only; the sin-cos one is regenerated, never stored
}
_TIMM_IGNORED = ("head.", "head_drop.")  # the classifier: not part of the encoder
# a learned table within this of the sin-cos one is float32 rounding of it (official tables differ by ~6e-8)
SINCOS_DETECT_ATOL = 1e-6


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


def sincos_table_error(value: torch.Tensor, dim: int, grid: tuple[int, int]) -> float:
    """Max abs difference between `value` (`[1, N, dim]` or `[N, dim]`) and our sin-cos table of `grid`; `inf` when
    the shapes differ."""
    table = sincos_position_embedding(dim, *grid) if dim % 4 == 0 else None
    got = value.reshape(-1, value.shape[-1]) if value.ndim in (2, 3) else value
    if table is None or got.shape != table.shape:
        return math.inf
    return float((got.float() - table).abs().max())


def check_sincos_table(value: torch.Tensor, dim: int, grid: tuple[int, int], what: str, atol: float = 1e-4) -> None:
    """Raise a `ValueError` unless `value` (`[1, N, dim]` or `[N, dim]`) is our MAE-layout sin-cos table for `grid`.

    The table is regenerated rather than loaded, so a learned or differently laid out table would be silently lost.
    """
    err = sincos_table_error(value, dim, grid)
    if err == math.inf:
        raise ValueError(f"{what} has shape {tuple(value.shape)}, expected {(1, grid[0] * grid[1], dim)} (the 2-D "
                         f"sin-cos table of a {grid[0]}x{grid[1]} grid at width {dim})")
    if err > atol:
        raise ValueError(f"{what} is not Bootleg's fixed 2-D sin-cos table (max abs difference {err:.3g}): a learned "
                         "or differently laid out position embedding cannot be represented, since Bootleg regenerates it")


# ------------------------------------------------------------------------------------------------------ timm
# timm activation module → transformers ACT2FN name computing the same function
_TIMM_ACTIVATIONS = {"GELU": "gelu", "GELUTanh": "gelu_pytorch_tanh", "QuickGELU": "quick_gelu"}


def _timm_activation(act: nn.Module) -> str | None:
    name = type(act).__name__
    if name == "GELU" and getattr(act, "approximate", "none") == "tanh":  # torch's nn.GELU(approximate="tanh")
        return "gelu_pytorch_tanh"
    return _TIMM_ACTIVATIONS.get(name)


def _norm_problem(norm: nn.Module) -> str | None:
    """`None` for a LayerNorm with weight and bias (Bootleg's only norm), else the phrase naming it."""
    if isinstance(norm, nn.LayerNorm) and norm.elementwise_affine and norm.bias is not None:
        return None
    return f"norm_layer={type(norm).__name__} (Bootleg's norms are LayerNorms with weight and bias)"


def timm_unsupported(model: nn.Module, with_head: bool = False) -> list[str]:
    """What of the timm `VisionTransformer` `model` Bootleg cannot compute exactly, one phrase per option (empty when
    it converts). With `with_head` the classifier must convert too (it cannot: see `_TIMM_HEAD_REFUSAL`).

    Supported: learned or sin-cos `pos_embed` with or without rows for CLS/registers (`no_embed_class`), with or
    without a class token and registers, `qkv_bias`, GELU / tanh-GELU / QuickGELU MLPs, `dynamic_img_size` (use
    `interpolate_pos_encoding=True`), dropouts (inactive at inference). The classifier head is dropped.
    """
    if type(model).__name__ != "VisionTransformer":
        return [f"model class {type(model).__name__} (only timm's VisionTransformer converts)"]
    problems: dict[str, None] = {}  # ordered and without repeats (one phrase for all blocks)

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems[what] = None

    pe = model.patch_embed
    need(type(pe).__name__ == "PatchEmbed", f"embed_layer={type(pe).__name__}")
    need(isinstance(pe.norm, nn.Identity), "embed_norm_layer (a norm after the patch embedding)")
    need(isinstance(model.norm_pre, nn.Identity) and pe.proj.bias is not None,
         "pre_norm=True (a LayerNorm before the blocks and a patch embedding without bias)")
    need(not getattr(pe, "dynamic_img_pad", False), "dynamic_img_pad=True (inputs padded to a multiple of the patch)")
    need(pe.patch_size[0] == pe.patch_size[1], f"patch_size={tuple(pe.patch_size)} (non-square patches)")
    need(pe.img_size is not None, "img_size=None (no fixed input size)")
    need(model.pos_embed is not None, "pos_embed='none' (no position embedding)")
    need(getattr(model, "attn_pool", None) is None, f"global_pool='{model.global_pool}' (attention pooling)")
    norms: dict[nn.Module, None] = {}
    widths = set()
    for block in model.blocks:
        if type(block).__name__ != "Block":
            problems[f"block_fn={type(block).__name__}"] = None
            continue
        attn, mlp = block.attn, block.mlp
        if type(attn).__name__ != "Attention":
            problems[f"attn_layer={type(attn).__name__}"] = None
        else:
            need(isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity), "qk_norm=True")
            need(isinstance(attn.norm, nn.Identity), "scale_attn_norm=True")
            need(getattr(attn, "gate", None) is None, "gated attention")
            need(attn.head_dim * attn.num_heads == model.embed_dim, "attn_head_dim (head width ≠ embed_dim / heads)")
            need(attn.proj.bias is not None, "proj_bias=False")
        need(isinstance(block.ls1, nn.Identity) and isinstance(block.ls2, nn.Identity), "init_values (layer scale)")
        if type(mlp).__name__ != "Mlp":
            problems[f"mlp_layer={type(mlp).__name__}"] = None
        else:
            need(isinstance(mlp.norm, nn.Identity), "scale_mlp_norm=True")
            need(mlp.fc1.bias is not None and mlp.fc2.bias is not None, "proj_bias=False")
            need(_timm_activation(mlp.act) is not None, f"act_layer={type(mlp.act).__name__}")
            widths.add(mlp.fc1.out_features)
        norms.update({block.norm1: None, block.norm2: None})
    need(len(widths) <= 1, f"MLP widths differ between blocks ({sorted(widths)})")
    need(isinstance(model.fc_norm, nn.Identity), "fc_norm (the final LayerNorm applied after pooling, timm's default "
                                                 "for global_pool='avg'): Bootleg normalises every token; build the "
                                                 "model with fc_norm=False")
    need(not isinstance(model.norm, nn.Identity) or not isinstance(model.fc_norm, nn.Identity),
         "final_norm=False (no final LayerNorm)")
    if not isinstance(model.norm, nn.Identity):
        norms[model.norm] = None
    for norm in norms:
        if what := _norm_problem(norm):
            problems[what] = None
    eps = {n.eps for n in norms if isinstance(n, nn.LayerNorm)}
    need(len(eps) <= 1, f"LayerNorm eps differs between layers ({sorted(eps)})")
    need(not with_head or isinstance(getattr(model, "head", None), nn.Linear),
         "with_head=True without a Linear classifier head (built with num_classes=0?)")
    return list(problems)


def _raise_unsupported(problems: list[str], what: str) -> None:
    if problems:
        raise ValueError(f"cannot convert {what} to Bootleg exactly; unsupported: " + "; ".join(problems))


def timm_position_embedding_type(model: nn.Module) -> str:
    """`"sincos"` when `model.pos_embed` covers the patches only and is Bootleg's sin-cos table (to float32 rounding,
    `SINCOS_DETECT_ATOL`), else `"learned"`."""
    grid = tuple(model.patch_embed.grid_size)
    err = sincos_table_error(model.pos_embed.detach(), model.embed_dim, grid)
    return "sincos" if err <= SINCOS_DETECT_ATOL else "learned"


def config_from_timm(model: nn.Module, position_embedding_type: str | None = None, **overrides: Any) -> BootlegConfig:
    """A `BootlegConfig` with the shape of a timm `VisionTransformer` (`ValueError` naming every option that Bootleg
    cannot compute exactly, `timm_unsupported`).

    `position_embedding_type`: default `timm_position_embedding_type(model)`; `"learned"` keeps even a sin-cos table
    as weights. A learned table with rows for CLS/registers (`no_embed_class=False`) sets
    `position_embedding_includes_prefix`.
    """
    _raise_unsupported(timm_unsupported(model), f"timm {type(model).__name__}")
    kind = position_embedding_type or timm_position_embedding_type(model)
    prefix_rows = model.pos_embed.shape[1] - model.patch_embed.num_patches
    if kind == "sincos" and prefix_rows:
        raise ValueError(f"position_embedding_type='sincos' needs a pos_embed without rows for CLS/registers; this one "
                         f"has {prefix_rows} (no_embed_class=False): use 'learned'")
    block = model.blocks[0]
    return BootlegConfig(**{**dict(
        hidden_size=model.embed_dim, num_hidden_layers=len(model.blocks), num_attention_heads=block.attn.num_heads,
        intermediate_size=block.mlp.fc1.out_features, image_size=list(model.patch_embed.img_size),
        patch_size=model.patch_embed.patch_size[0], num_channels=model.patch_embed.proj.in_channels,
        num_register_tokens=model.num_reg_tokens, use_cls_token=model.has_class_token,
        layer_norm_eps=model.norm.eps, qkv_bias=block.attn.qkv.bias is not None,
        hidden_act=_timm_activation(block.mlp.act), position_embedding_type=kind,
        position_embedding_includes_prefix=kind == "learned" and prefix_rows > 0,
    ), **overrides})


def timm_to_bootleg(state_dict: Mapping[str, torch.Tensor], config: BootlegConfig,
                    pos_embed_atol: float = 1e-4) -> dict[str, torch.Tensor]:
    """timm `VisionTransformer` state dict → `BootlegModel`'s (classifier-head tensors dropped).

    With `config.position_embedding_type="sincos"` timm's `pos_embed` must be the MAE sin-cos table (we regenerate
    it, so a learned one would be silently lost): a `ValueError` says so otherwise. With `"learned"` it is copied.
    An `fc_norm` (timm's norm after pooling) raises a `ValueError`: Bootleg normalises every token instead.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("fc_norm."):
            raise ValueError("the timm state dict has an fc_norm (final LayerNorm after pooling), which Bootleg cannot "
                             "represent: it normalises every token (build the timm model with fc_norm=False)")
        if key == "pos_embed" and config.position_embedding_type == "sincos":
            check_sincos_table(value, config.hidden_size, config.grid_size, "the timm pos_embed", pos_embed_atol)
        elif not key.startswith(_TIMM_IGNORED):
            out[_TIMM_RENAMES.get(key, key)] = value
    return out


def bootleg_to_timm(state_dict: Mapping[str, torch.Tensor], config: BootlegConfig) -> dict[str, torch.Tensor]:
    """`BootlegModel` state dict → timm's (a learned table as it is, else the sin-cos table written into
    `pos_embed`)."""
    inverse = {v: k for k, v in _TIMM_RENAMES.items()}
    out = {inverse.get(k, k): v for k, v in state_dict.items()}
    if config.position_embedding_type == "sincos":
        ref = next(iter(state_dict.values()))
        out["pos_embed"] = sincos_position_embedding(config.hidden_size, *config.grid_size)[None].to(ref.dtype)
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A weights file: safetensors, or a `.pth` read with `torch.load(weights_only=True)` (a `state_dict` or `model`
    entry is unwrapped)."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state.get("model", state))


def timm_vit_to_bootleg(model: nn.Module, with_head: bool = False,
                        position_embedding_type: str | None = None) -> BootlegModel | BootlegForImageClassification:
    """The `BootlegModel` (eval mode) computing what the timm `VisionTransformer` `model` computes:
    `last_hidden_state` = timm's `forward_features`, `hidden_states[k]` = block k's output; `pooler_output` is the
    CLS token (the mean patch token without CLS: timm's `global_pool='avg'` with `fc_norm=False`).

    `with_head=True`: a `BootlegForImageClassification` whose `linear` head is timm's classifier (logits = timm's
    `forward`). Every option Bootleg cannot compute exactly raises a `ValueError` naming it (`timm_unsupported`).
    Keys are checked strictly.
    """
    _raise_unsupported(timm_unsupported(model, with_head), f"timm {type(model).__name__}")
    config = config_from_timm(model, position_embedding_type)
    bootleg = BootlegModel(config)
    converted = timm_to_bootleg(model.state_dict(), config)
    check_keys(converted, bootleg.state_dict(), f"timm {type(model).__name__} → BootlegModel")
    bootleg.load_state_dict(converted)
    if not with_head:
        return bootleg.eval()
    labels = (getattr(model, "pretrained_cfg", None) or {}).get("label_names") or range(model.head.out_features)
    names = [str(n) if not isinstance(n, int) else f"LABEL_{n}" for n in labels]
    return BootlegForImageClassification.from_encoder(
        bootleg, {"classifier.weight": model.head.weight, "classifier.bias": model.head.bias},
        id2label=names, probe_type="linear").eval()


def build_timm_model(arch: str, reg_tokens: int | None = None, checkpoint: str | os.PathLike | None = None,
                     layout: str = "bootleg", **timm_kwargs: Any) -> nn.Module:
    """timm model `arch` (eval mode), with `checkpoint`'s weights (strictly) or timm's random init.

    `layout="bootleg"`: built as Bootleg's twin (`reg_tokens` registers, default 4, `no_embed_class=True`, no head);
    without a checkpoint its `pos_embed` is Bootleg's sin-cos table (for parity checks). `layout="timm"`: the
    architecture as timm registers it (learned `pos_embed` with a CLS row, a head, …), `reg_tokens` only if given.
    `timm_kwargs` go to `timm.create_model` in both (e.g. `class_token=False, global_pool="avg", fc_norm=False`).
    """
    import timm

    if layout not in ("bootleg", "timm"):
        raise ValueError(f"layout must be 'bootleg' or 'timm', got {layout!r}")
    kwargs = dict(timm_kwargs)
    if layout == "bootleg":
        kwargs = {"num_classes": 0, "no_embed_class": True, **kwargs,
                  "reg_tokens": 4 if reg_tokens is None else reg_tokens}
    elif reg_tokens is not None:
        kwargs["reg_tokens"] = reg_tokens
    ref = timm.create_model(arch, pretrained=False, **kwargs)
    if checkpoint:
        try:
            ref.load_state_dict(read_state_dict(checkpoint), strict=True)
        except RuntimeError as err:  # torch's missing/unexpected/size-mismatch report
            raise KeyMismatchError(f"{checkpoint} does not fit timm {arch} built with {kwargs} (layout={layout!r}): "
                                   f"{err}") from None
    elif layout == "bootleg":  # random weights: give timm our fixed table so both models agree
        with torch.no_grad():
            ref.pos_embed.copy_(sincos_position_embedding(ref.embed_dim, *ref.patch_embed.grid_size)[None])
    return ref.eval()


def timm_model_to_bootleg(arch: str, reg_tokens: int | None = None, checkpoint: str | os.PathLike | None = None,
                          layout: str = "bootleg", with_head: bool = False, **timm_kwargs: Any) -> BootlegModel:
    """`timm_vit_to_bootleg(build_timm_model(arch, reg_tokens, checkpoint, layout, **timm_kwargs))`: by default the
    Bootleg twin of `arch` (4 registers, `no_embed_class=True`); `layout="timm"` converts a standard timm ViT
    checkpoint. Every key is checked strictly."""
    return timm_vit_to_bootleg(build_timm_model(arch, reg_tokens, checkpoint, layout, **timm_kwargs), with_head)


def timm_image_processor(model: nn.Module, config: BootlegConfig) -> BaseImageProcessor | None:
    """The evaluation processor of timm's `model.pretrained_cfg` (`mean`, `std`, `crop_pct`, `interpolation`) at the
    config's input size, or `None` (Bootleg's default) when the model has no pretrained config.

    timm resizes the shorter side to `floor(size / crop_pct)` and `make_image_processor` to `round(size /
    crop_fraction)`, so the crop fraction passed is the one giving timm's size. `crop_mode` other than `center`
    cannot be expressed (`ValueError`).
    """
    from transformers.image_utils import PILImageResampling

    from .image_processing_bootleg import make_image_processor

    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if not cfg.get("mean") or not cfg.get("std"):
        return None
    if cfg.get("crop_mode", "center") != "center":
        raise ValueError(f"timm pretrained_cfg crop_mode={cfg['crop_mode']!r} cannot be expressed by Bootleg's image "
                         "processor (shorter-side resize + centre crop, crop_mode='center')")
    interpolation = cfg.get("interpolation") or "bicubic"
    resample = getattr(PILImageResampling, interpolation.upper(), None)
    if resample is None:
        raise ValueError(f"timm pretrained_cfg interpolation={interpolation!r} has no PIL resampling filter")
    size = config.image_hw[0]
    crop_pct = cfg.get("crop_pct") or 0.875  # timm's DEFAULT_CROP_PCT
    return make_image_processor(config, crop_fraction=size / max(size, math.floor(size / crop_pct)),
                                image_mean=list(cfg["mean"]), image_std=list(cfg["std"]), resample=resample)


# ---------------------------------------------------------------------------------------------------- I-JEPA
# Official I-JEPA archs (src/models/vision_transformer.py): width → heads. ViT-H/14 and ViT-g use 16 heads, so
# the usual head width of 64 cannot be assumed.
IJEPA_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
_IJEPA_PREDICTOR_RENAMES = {"predictor_embed.": "embed.", "predictor_blocks.": "blocks.", "predictor_norm.": "norm.",
                            "predictor_proj.": "head.", "mask_token": "mask_token"}


def load_ijepa_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read an official I-JEPA `.pth.tar` with `torch.load(weights_only=True)` (never a pickle fallback).

    Returns the checkpoint dict with the `module.` (DDP) prefix stripped from the `encoder`, `target_encoder` and
    `predictor` state dicts.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or not ({"encoder", "target_encoder"} & ckpt.keys()):
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise KeyMismatchError(f"{path} is not an I-JEPA checkpoint: expected 'encoder'/'target_encoder' entries, "
                               f"found {found}")
    for name in ("encoder", "target_encoder", "predictor"):
        if name in ckpt:
            ckpt[name] = {k.removeprefix("module."): v for k, v in ckpt[name].items()}
    return ckpt


def _num_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    found = {int(m.group(1)) for k in state_dict if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _grid_to_image_size(num_patches: int, patch_size: int, image_size: int | list[int] | None) -> int | list[int]:
    if image_size is not None:
        return image_size
    side = round(num_patches**0.5)
    if side * side != num_patches:
        raise ValueError(f"pos_embed has {num_patches} positions, not a square grid: pass image_size=[height, width]")
    return side * patch_size


def config_from_ijepa(encoder: Mapping[str, torch.Tensor], predictor: Mapping[str, torch.Tensor] | None = None,
                      num_heads: int | None = None, predictor_num_heads: int | None = None,
                      image_size: int | list[int] | None = None, **overrides: Any) -> BootlegConfig:
    """A `BootlegConfig` (no CLS, no registers) with the shapes of an I-JEPA encoder (and predictor) state dict.

    Width, depth, MLP width, patch size and grid come from the tensors; heads cannot, so `num_heads` defaults to the
    official arch with that width (`IJEPA_HEADS`) and the predictor's to the encoder's (as in I-JEPA). With a
    predictor the pretraining fields describe I-JEPA: `targets="final"`, no predictor registers, EMA 0.996 → 1.0.
    """
    for key in ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight"):
        if key not in encoder:
            raise KeyMismatchError(key_report([key], [], "I-JEPA encoder"))
    width, channels, patch, _ = encoder["patch_embed.proj.weight"].shape
    heads = num_heads or IJEPA_HEADS.get(width)
    if heads is None:
        raise ValueError(f"cannot infer the number of attention heads of a width-{width} encoder: pass num_heads")
    fields: dict[str, Any] = dict(
        hidden_size=width, num_hidden_layers=_num_blocks(encoder, "blocks."), num_attention_heads=heads,
        intermediate_size=encoder["blocks.0.mlp.fc1.weight"].shape[0], patch_size=patch, num_channels=channels,
        image_size=_grid_to_image_size(encoder["pos_embed"].shape[-2], patch, image_size), use_cls_token=False,
        num_register_tokens=0, qkv_bias="blocks.0.attn.qkv.bias" in encoder, targets="final", ema_start=0.996,
        ema_end=1.0,
    )
    if predictor is not None:
        if "predictor_embed.weight" not in predictor:
            raise KeyMismatchError(key_report(["predictor_embed.weight"], [], "I-JEPA predictor"))
        fields.update(predictor_hidden_size=predictor["predictor_embed.weight"].shape[0],
                      predictor_num_hidden_layers=_num_blocks(predictor, "predictor_blocks."),
                      predictor_num_attention_heads=predictor_num_heads or heads, predictor_num_register_tokens=0)
    return BootlegConfig(**{**fields, **overrides})


def ijepa_encoder_to_bootleg(state_dict: Mapping[str, torch.Tensor], config: BootlegConfig,
                             pos_embed_atol: float = 1e-4) -> dict[str, torch.Tensor]:
    """I-JEPA encoder state dict (prefix already stripped) → `BootlegModel`'s; its `pos_embed` must be our sin-cos,
    unless `config.position_embedding_type="learned"` (then it is copied)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key == "pos_embed" and config.position_embedding_type == "sincos":
            check_sincos_table(value, config.hidden_size, config.grid_size, "the I-JEPA pos_embed", pos_embed_atol)
        else:
            out[_TIMM_RENAMES.get(key, key)] = value
    return out


def ijepa_predictor_to_bootleg(state_dict: Mapping[str, torch.Tensor], config: BootlegConfig,
                               pos_embed_atol: float = 1e-4) -> tuple[dict[str, torch.Tensor], list[str]]:
    """I-JEPA predictor → `BootlegPredictor` state dict (no `predictor.` prefix) and a list of notes on what did not
    map one-to-one.

    The sequences coincide when the config has no CLS, no predictor registers and `targets="final"`: I-JEPA runs
    `[embed(context) + pos, mask_token + pos]` through its blocks, norm and `predictor_proj` (d → D), which is our
    `[registers (none), context', mask tokens]` → `head`. `predictor_pos_embed` is checked and regenerated.
    Keys that map nowhere stay in the result under their own name, so a strict key check reports them.
    """
    if config.predictor_num_register_tokens or config.use_cls_token or config.targets != "final":
        raise ValueError("an I-JEPA predictor only maps into a config with predictor_num_register_tokens=0, "
                         "use_cls_token=False and targets='final'")
    out: dict[str, torch.Tensor] = {}
    notes = []
    for key, value in state_dict.items():
        if key == "predictor_pos_embed":
            check_sincos_table(value, config.predictor_hidden_size, config.grid_size, "the I-JEPA predictor_pos_embed",
                               pos_embed_atol)
            notes.append("predictor_pos_embed: checked equal to the fixed sin-cos table, regenerated (not stored)")
            continue
        prefix = next((p for p in _IJEPA_PREDICTOR_RENAMES if key.startswith(p)), None)
        out[_IJEPA_PREDICTOR_RENAMES[prefix] + key[len(prefix):] if prefix else key] = value
    # our predictor stores an (empty) register parameter that I-JEPA has no counterpart for
    out["reg_token"] = torch.zeros(1, 0, config.predictor_hidden_size)
    notes.append("predictor.reg_token: no I-JEPA counterpart; empty (predictor_num_register_tokens=0)")
    return out, notes


def ijepa_to_bootleg(checkpoint: str | os.PathLike | Mapping[str, Any], student: bool = False,
                     with_predictor: bool = False, **config_kwargs: Any) -> tuple[BootlegModel | BootlegForPretraining,
                                                                                  list[str]]:
    """An I-JEPA checkpoint → a `BootlegModel`, or a `BootlegForPretraining` with the predictor mapped in, plus
    conversion notes. Every key is checked strictly (`KeyMismatchError`).

    `checkpoint`: an official `.pth.tar` (path or loaded dict), or transformers' `IJepaModel` layout — a folder or a
    `.safetensors` file, converted by `hf_ijepa_to_bootleg` (one encoder, no predictor: `student` and
    `with_predictor` are refused). Official: the encoder is `target_encoder` (the EMA weights I-JEPA evaluates)
    unless `student=True`; with `with_predictor`, student ← `encoder`, teacher ← `target_encoder` (each falls back
    to the other when absent). `config_kwargs` go to `config_from_ijepa` (`num_heads`, `predictor_num_heads`,
    `image_size`, overrides) or `hf_ijepa_to_bootleg`.
    """
    if isinstance(checkpoint, (str, os.PathLike)) and is_hf_ijepa_path(checkpoint):
        if student or with_predictor:
            raise ValueError(f"{checkpoint} is in transformers' IJepaModel layout, which holds one encoder (the "
                             "target encoder) and no predictor: student/with_predictor apply to official .pth.tar "
                             "checkpoints only")
        if config_kwargs.pop("predictor_num_heads", None) is not None:
            raise ValueError("predictor_num_heads: an IJepaModel checkpoint has no predictor")
        return hf_ijepa_to_bootleg(checkpoint, **config_kwargs)
    ckpt = load_ijepa_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    teacher = ckpt.get("target_encoder", ckpt.get("encoder"))
    student_sd = ckpt.get("encoder", teacher)
    notes = [f"{name}: absent, using {other}" for name, other in (("target_encoder", "encoder"),
                                                                   ("encoder", "target_encoder")) if name not in ckpt]
    if not with_predictor:
        config = config_from_ijepa(student_sd if student else teacher, **config_kwargs)
        model = BootlegModel(config)
        converted = ijepa_encoder_to_bootleg(student_sd if student else teacher, config)
        check_keys(converted, model.state_dict(), "I-JEPA encoder → BootlegModel")
        model.load_state_dict(converted)
        return model.eval(), notes
    if "predictor" not in ckpt:
        raise KeyMismatchError("the checkpoint has no 'predictor' entry: convert without the predictor")
    config = config_from_ijepa(teacher, ckpt["predictor"], **config_kwargs)
    model = BootlegForPretraining(config)
    predictor, predictor_notes = ijepa_predictor_to_bootleg(ckpt["predictor"], config)
    converted = {f"predictor.{k}": v for k, v in predictor.items()}
    for prefix, state in (("bootleg.", teacher), ("student.", student_sd)):
        converted.update({prefix + k: v for k, v in ijepa_encoder_to_bootleg(state, config).items()})
    check_keys(converted, model.state_dict(), "I-JEPA checkpoint → BootlegForPretraining")
    model.load_state_dict(converted)
    return model, notes + predictor_notes


# ------------------------------------------------------------------------------------- transformers' IJepaModel
# transformers 4.x names (what the Hub's facebook/ijepa_* files hold; 5.x renames them on load) → 5.x names
_HF_IJEPA_LEGACY = [(r"^encoder\.layer\.", "layers."), (r"\.attention\.attention\.query\.", ".attention.q_proj."),
                    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
                    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
                    (r"\.attention\.output\.dense\.", ".attention.o_proj."), (r"\.intermediate\.dense\.", ".mlp.fc1."),
                    (r"\.output\.dense\.", ".mlp.fc2.")]
# transformers 5.x IJepaModel names → official I-JEPA (= timm) names; q/k/v are fused separately
_HF_IJEPA_RENAMES = [(r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
                     (r"^embeddings\.position_embeddings$", "pos_embed"),
                     (r"^layers\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
                     (r"^layers\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
                     (r"^layers\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
                     (r"^layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."), (r"^layernorm\.", "norm.")]
_HF_IJEPA_DROPPED = {  # prefix → why it is not part of the converted encoder
    "embeddings.mask_token": "used only with bool_masked_pos inputs, which Bootleg's encoder does not take",
    "pooler.": "IJepaModel's optional pooler (dense + tanh on the first patch token) is a head, not the encoder; "
               "Bootleg's pooler_output is the mean patch token",
    "classifier.": "IJepaForImageClassification's classifier is a head, not the encoder",
}


def is_hf_ijepa_path(path: str | os.PathLike) -> bool:
    """True for what `hf_ijepa_to_bootleg` reads: a folder or a `.safetensors` file."""
    return Path(path).is_dir() or str(path).endswith(".safetensors")


def read_hf_ijepa(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, list[str]]:
    """Tensors, `config.json` (or `None` where there is none) and notes of an `IJepaModel` checkpoint.

    `path`: a `save_pretrained` folder (`model.safetensors` or a sharded index), or a `.safetensors` file; for a shard
    listed in the index next to it, every shard is read. The config is the `config.json` next to the weights and must
    say `model_type: "ijepa"`.
    """
    from safetensors.torch import load_file

    from .checkpoints import read_safetensors_folder  # checkpoints imports this module

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not path.is_dir() and not path.is_file():
        raise FileNotFoundError(f"no IJepaModel checkpoint at {path}")
    notes = []
    index = folder / "model.safetensors.index.json"
    shards = set(json.loads(index.read_text())["weight_map"].values()) if index.is_file() else set()
    if path.is_dir() or path.name in shards:
        if not path.is_dir():
            notes.append(f"{path.name} is one shard of {index.name}: read all {len(shards)} shards")
        state = read_safetensors_folder(folder)
    else:
        state = load_file(path)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else None
    if config is not None and config.get("model_type") != "ijepa":
        raise ValueError(f"{folder / 'config.json'} has model_type {config.get('model_type')!r}, not 'ijepa': not "
                         "an IJepaModel checkpoint")
    return state, config, notes


def hf_ijepa_to_official(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """transformers `IJepaModel` state dict (5.x names, or the 4.x names of the Hub files; an `ijepa.` prefix of
    `IJepaForImageClassification` stripped) → official I-JEPA encoder names, with each block's separate
    `q_proj/k_proj/v_proj` `[D, D]` fused into `attn.qkv` `[3D, D]` (rows q, k, v: timm's and our head layout).

    Heads (pooler, classifier) and the mask token are dropped with a note; keys that map nowhere keep their name,
    so a strict key check reports them.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    notes: dict[str, None] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("ijepa.")
        for pattern, repl in _HF_IJEPA_LEGACY:
            key = re.sub(pattern, repl, key)
        dropped = next((p for p in _HF_IJEPA_DROPPED if key.startswith(p)), None)
        if dropped:
            notes[f"{dropped.rstrip('.')}: dropped ({_HF_IJEPA_DROPPED[dropped]})"] = None
            continue
        if m := re.fullmatch(r"layers\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)", key):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        for pattern, repl in _HF_IJEPA_RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    for (block, kind), parts in qkv.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
        else:  # incomplete: keep them, so the key check names them
            out.update({f"layers.{block}.attention.{p}_proj.{kind}": v for p, v in parts.items()})
    return out, list(notes)


def _hf_ijepa_fields(hf_config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`config_from_ijepa` arguments from an `IJepaConfig` dict, with a `ValueError` for what Bootleg cannot express
    and notes for what does not matter at inference."""
    heads, width = hf_config.get("num_attention_heads", 12), hf_config.get("hidden_size", 768)
    patch = hf_config.get("patch_size", 16)
    if isinstance(patch, (list, tuple)) and len(set(patch)) > 1:
        raise ValueError(f"IJepaConfig patch_size={list(patch)} (non-square patches) cannot be expressed: Bootleg's "
                         "patch_size is one int")
    head_dim = hf_config.get("head_dim")
    if head_dim is not None and head_dim * heads != width:
        raise ValueError(f"IJepaConfig head_dim={head_dim} with {heads} heads ≠ hidden_size={width}: Bootleg's "
                         "head width is hidden_size / num_attention_heads")
    notes = [f"IJepaConfig {name}={hf_config[name]}: dropout, inactive at inference; Bootleg's encoder has none"
             for name in ("hidden_dropout_prob", "attention_probs_dropout_prob") if hf_config.get(name)]
    fields = dict(num_heads=heads, image_size=hf_config.get("image_size", 224),
                  layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12), hidden_act=hf_config.get("hidden_act", "gelu"))
    return fields, notes


def hf_ijepa_to_bootleg(path: str | os.PathLike, num_heads: int | None = None,
                        image_size: int | list[int] | None = None, layer_norm_eps: float | None = None,
                        **overrides: Any) -> tuple[BootlegModel, list[str]]:
    """transformers' `IJepaModel` layout (a `save_pretrained` folder, sharded or not, or its `model.safetensors`) →
    a `BootlegModel` (eval mode; no CLS, no registers) computing the same `last_hidden_state` and `hidden_states`,
    plus conversion notes. Every key is checked strictly.

    Heads, image size, eps and activation come from the `config.json` next to the weights; without one, from the
    tensors and the arguments (`num_heads` default `IJEPA_HEADS` of the width; `layer_norm_eps` default 1e-6 and
    GELU, as official I-JEPA; transformers' `IJepaConfig` default eps is 1e-12). Explicit arguments win.
    `position_embeddings` equal to the sin-cos table (to `SINCOS_DETECT_ATOL`, as for the Hub's converted official
    weights) give `position_embedding_type="sincos"`, any other table `"learned"` (pass it in `overrides` to keep the
    table either way). At the checkpoint's input size the outputs match `IJepaModel`'s; at other sizes
    (`interpolate_pos_encoding=True`) Bootleg regenerates the sin-cos table (a learned one is resized as timm does,
    antialiased), while `IJepaModel` resizes its table bicubically without antialiasing.
    """
    state, hf_config, notes = read_hf_ijepa(path)
    state, drop_notes = hf_ijepa_to_official(state)
    notes += drop_notes
    if hf_config is not None:
        fields, config_notes = _hf_ijepa_fields(hf_config)
        notes += config_notes
    else:
        fields = dict(layer_norm_eps=1e-6, hidden_act="gelu")
        notes.append(f"no config.json next to {path}: shapes from the tensors; heads, layer_norm_eps and activation "
                     "from the arguments, else official I-JEPA's (IJEPA_HEADS of the width, 1e-6, GELU)")
    fields.update({k: v for k, v in dict(num_heads=num_heads, image_size=image_size,
                                         layer_norm_eps=layer_norm_eps).items() if v is not None})
    kind = overrides.pop("position_embedding_type", None)
    if kind is None:  # the grid comes from the config (image size), so build it once to read it
        probe = config_from_ijepa(state, **fields, **overrides, position_embedding_type="learned")
        err = sincos_table_error(state["pos_embed"], probe.hidden_size, probe.grid_size)
        kind = "sincos" if err <= SINCOS_DETECT_ATOL else "learned"
        notes.append(f"position_embeddings: the fixed 2-D sin-cos table (max abs difference {err:.2g}), regenerated"
                     if kind == "sincos" else "position_embeddings: not the sin-cos table, kept as a learned table")
    config = config_from_ijepa(state, **fields, **overrides, position_embedding_type=kind)
    model = BootlegModel(config)
    converted = ijepa_encoder_to_bootleg(state, config)
    check_keys(converted, model.state_dict(), f"IJepaModel {path} → BootlegModel")
    model.load_state_dict(converted)
    return model.eval(), notes
