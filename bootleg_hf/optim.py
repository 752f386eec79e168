"""Optimizer parameter groups: the one weight-decay rule used by pretraining, probes and segmentation heads.

Weight decay applies to weight matrices only: biases and norm parameters (fewer than two dimensions) and learned
tokens (CLS, registers, mask tokens, a probe's query, a segmenter's class embeddings, a learned position table) are
never decayed. Fine-tuning adds layer-wise LR decay (`layer_decay_groups`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

NO_DECAY_TOKENS = ("cls_token", "reg_token", "mask_token", "query", "class_embed", "pos_embed")


def decays(name: str, parameter: torch.Tensor) -> bool:
    """Whether weight decay applies to the parameter called `name` (see the module docstring)."""
    return parameter.ndim >= 2 and name.rsplit(".", 1)[-1] not in NO_DECAY_TOKENS


def param_groups(module: nn.Module, weight_decay: float, lr: float | None = None) -> list[dict]:
    """Two AdamW groups of `module`'s trainable parameters: `{"decay": True, "weight_decay": weight_decay}` and
    `{"decay": False, "weight_decay": 0.0}` (each with `lr` when given). Frozen parameters (e.g. an EMA teacher) are
    left out. The `decay` flag lets a weight-decay schedule find the decayed group."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (decay if decays(name, p) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "decay": True},
              {"params": no_decay, "weight_decay": 0.0, "decay": False}]
    return [{**g, "lr": lr} for g in groups] if lr is not None else groups


def encoder_layers(model: nn.Module) -> tuple[dict[int, int], int]:
    """`({id(parameter): layer}, depth)` for the first Bootleg encoder inside `model` (a task model, a UperNet on a
    `BootlegBackbone`, a peft wrapper): its embeddings (patch embedding, CLS, registers, position table) are layer 0,
    block k (0-based) is layer k + 1. Parameters are matched by identity, so a head's own `blocks` or an adapter's
    renaming cannot be mistaken for the encoder's."""
    from .modeling_bootleg import BootlegModel

    encoder = next((m for m in model.modules() if isinstance(m, BootlegModel)), None)
    if encoder is None:
        raise ValueError(f"{type(model).__name__} holds no Bootleg encoder: layer-wise LR decay needs one")
    layers = {id(p): 0 for p in encoder.embeddings.parameters()}
    for k, block in enumerate(encoder.blocks, start=1):
        layers.update({id(p): k for p in block.parameters()})
    return layers, len(encoder.blocks)


def layer_decay_groups(model: nn.Module, weight_decay: float, lr: float, layer_decay: float) -> list[dict]:
    """AdamW groups with layer-wise LR decay (BEiT / MAE fine-tuning, timm's `param_groups_layer_decay`): with an
    encoder of depth L, layer l (embeddings 0, block k → k + 1, everything else — final norm, heads, decoders — L + 1)
    trains at `lr · layer_decay^(L + 1 − l)`. Within a layer, the weight-decay rule of `decays`. Each group carries
    `lr`, `lr_scale`, `layer`, `weight_decay` and `decay`; empty groups are left out, frozen parameters too."""
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must lie in (0, 1], got {layer_decay}")
    layers, depth = encoder_layers(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer, decay = layers.get(id(p), depth + 1), decays(name, p)
        if (layer, decay) not in groups:
            scale = layer_decay ** (depth + 1 - layer)
            groups[(layer, decay)] = {"params": [], "lr": lr * scale, "lr_scale": scale, "layer": layer,
                                      "weight_decay": weight_decay if decay else 0.0, "decay": decay}
        groups[(layer, decay)]["params"].append(p)
    return [groups[key] for key in sorted(groups)]


def adamw(groups: Iterable[dict], lr: float, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over `groups`: the fused kernel when every parameter is on one device type that has it (CUDA and, since
    torch 2.4, CPU: a ViT-S step's update 13 ms instead of 80 ms with foreach), else the foreach implementation."""
    groups = list(groups)
    params = [p for g in groups for p in g["params"]]
    kinds = {p.device.type for p in params}
    fused = len(kinds) == 1 and kinds <= {"cuda", "cpu"} and all(p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None,
                             foreach=None if fused else True)


__all__ = ["NO_DECAY_TOKENS", "decays", "param_groups", "encoder_layers", "layer_decay_groups", "adamw"]
