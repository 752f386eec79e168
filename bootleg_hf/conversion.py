"""State-dict conversion into Bootleg: timm `VisionTransformer` (both ways), official I-JEPA checkpoints, key checks.

Our encoder keeps timm's parameter names under the HF module names, so the mapping is a rename of the embedding
tensors plus the fixed sin-cos table, which timm and I-JEPA store as a `pos_embed` tensor and we regenerate (so it is
checked against ours instead of copied).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from .configuration_bootleg import BootlegConfig
from .modeling_bootleg import BootlegModel, sincos_position_embedding
from .modeling_bootleg_pretraining import BootlegForPretraining

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


def check_sincos_table(value: torch.Tensor, dim: int, grid: tuple[int, int], what: str, atol: float = 1e-4) -> None:
    """Raise a `ValueError` unless `value` (`[1, N, dim]` or `[N, dim]`) is our MAE-layout sin-cos table for `grid`.

    The table is regenerated rather than loaded, so a learned or differently laid out table would be silently lost.
    """
    table = sincos_position_embedding(dim, *grid)
    got = value.reshape(-1, value.shape[-1]) if value.ndim in (2, 3) else value
    if got.shape != table.shape:
        raise ValueError(f"{what} has shape {tuple(value.shape)}, expected {(1, *table.shape)} (the 2-D sin-cos table "
                         f"of a {grid[0]}x{grid[1]} grid at width {dim})")
    err = float((got.float() - table).abs().max())
    if err > atol:
        raise ValueError(f"{what} is not Bootleg's fixed 2-D sin-cos table (max abs difference {err:.3g}): a learned "
                         "or differently laid out position embedding cannot be represented, since Bootleg regenerates it")


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
            check_sincos_table(value, config.hidden_size, config.grid_size, "the timm pos_embed", pos_embed_atol)
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


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A weights file: safetensors, or a `.pth` read with `torch.load(weights_only=True)` (a `state_dict` or `model`
    entry is unwrapped)."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state.get("model", state))


def timm_model_to_bootleg(arch: str, reg_tokens: int = 4, checkpoint: str | os.PathLike | None = None) -> BootlegModel:
    """The `BootlegModel` of timm architecture `arch` (built with `reg_tokens` registers and `no_embed_class=True`),
    with `checkpoint`'s weights, or without one timm's random init with Bootleg's sin-cos table (for parity checks).
    Every key is checked strictly."""
    import timm

    ref = timm.create_model(arch, pretrained=False, num_classes=0, reg_tokens=reg_tokens, no_embed_class=True)
    config = config_from_timm(ref)
    if checkpoint:
        ref.load_state_dict(read_state_dict(checkpoint), strict=True)
    else:  # random weights: give timm our fixed table so both models agree
        with torch.no_grad():
            ref.pos_embed.copy_(sincos_position_embedding(config.hidden_size, *config.grid_size)[None])
    model = BootlegModel(config)
    converted = timm_to_bootleg(ref.state_dict(), config)
    check_keys(converted, model.state_dict(), f"timm {arch} → BootlegModel")
    model.load_state_dict(converted)
    return model


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
    """I-JEPA encoder state dict (prefix already stripped) → `BootlegModel`'s; its `pos_embed` must be our sin-cos."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key == "pos_embed":
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
    dtype = next(iter(state_dict.values())).dtype
    out["reg_token"] = torch.zeros(1, 0, config.predictor_hidden_size, dtype=dtype)
    notes.append("predictor.reg_token: no I-JEPA counterpart; empty (predictor_num_register_tokens=0)")
    return out, notes


def ijepa_to_bootleg(checkpoint: str | os.PathLike | Mapping[str, Any], student: bool = False,
                     with_predictor: bool = False, **config_kwargs: Any) -> tuple[BootlegModel | BootlegForPretraining,
                                                                                  list[str]]:
    """An official I-JEPA checkpoint (path or loaded dict) → a `BootlegModel`, or a `BootlegForPretraining` with
    the predictor mapped in, plus conversion notes. Every key is checked strictly (`KeyMismatchError`).

    The encoder is `target_encoder` (the EMA weights I-JEPA evaluates) unless `student=True`. With `with_predictor`,
    student ← `encoder`, teacher ← `target_encoder` (each falls back to the other when absent).
    `config_kwargs` go to `config_from_ijepa` (`num_heads`, `predictor_num_heads`, `image_size`, overrides).
    """
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
