"""Task heads on the Bootleg encoder (SPEC §7): `BootlegForImageClassification`, `BootlegForSemanticSegmentation`.

Both keep the encoder under `bootleg.` (so an encoder folder or a pretraining checkpoint loads into them) and the head
under `classifier.` / `decode_head.`. The heads are the paper's frozen-encoder probes; `freeze_encoder()` reproduces
that setting and `from_encoder(...)` attaches a head trained on cached features (training/probe.py,
training/segment.py) to an encoder for saving and for `transformers` pipelines.

This module is shipped as Hub remote code: it imports only torch, transformers and sibling modules.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput, SemanticSegmenterOutput

from .configuration_bootleg import SEGMENTATION_HEADS, BootlegConfig
from .modeling_bootleg import BootlegBlock, BootlegModel, BootlegPreTrainedModel
from .probes import build_probe, init_probe_weights


def tokens_to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Per-patch values `[B, N, C]` (raster order) → map `[B, C, h, w]`."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


class LinearSegmentationHead(nn.Module):
    """Lin: `Linear(D → C)` on every patch token (after the encoder's final LN). `[B, T, D]` → `[B, C, h, w]`."""

    def __init__(self, config: BootlegConfig, num_labels: int):
        super().__init__()
        self.num_prefix_tokens = config.num_prefix_tokens
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_probe_weights(self, config.initializer_range)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return tokens_to_map(self.classifier(tokens[:, self.num_prefix_tokens:]), grid)


class MaskTransformerHead(nn.Module):
    """Blk: Segmenter's mask-transformer decoder with one block. `[B, T, D]` → `[B, C, h, w]`.

    Patch tokens (CLS/registers dropped) → `Linear(D → D)`; learned class embeddings appended (patches first); one
    pre-LN block (heads = encoder heads, which is Segmenter's D/64 for every paper size) → LN; patches and classes are
    projected by two D×D matrices, L2-normalised, and their dot products (cosine similarities `[B, N, C]`) go
    through a LayerNorm over the class axis. Segmenter's dropout is omitted (frozen-feature probes).
    """

    def __init__(self, config: BootlegConfig, num_labels: int):
        super().__init__()
        d = config.hidden_size
        self.num_prefix_tokens = config.num_prefix_tokens
        self.proj_in = nn.Linear(d, d)
        self.class_embed = nn.Parameter(torch.zeros(1, num_labels, d))
        self.block = BootlegBlock(config)
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.proj_patch = nn.Parameter(torch.zeros(d, d))
        self.proj_classes = nn.Parameter(torch.zeros(d, d))
        self.mask_norm = nn.LayerNorm(num_labels)
        init_probe_weights(self, config.initializer_range)

    def init_bootleg_weights(self, std: float) -> None:
        init.trunc_normal_(self.class_embed, std=std)
        d = self.proj_patch.shape[0]
        init.normal_(self.proj_patch, std=d**-0.5)  # Segmenter: scale · randn, scale = d^-0.5
        init.normal_(self.proj_classes, std=d**-0.5)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.proj_in(tokens[:, self.num_prefix_tokens:])
        n = x.shape[1]
        x = torch.cat([x, self.class_embed.expand(x.shape[0], -1, -1)], dim=1)
        x = self.norm(self.block(x).out)
        patches = F.normalize(x[:, :n] @ self.proj_patch, dim=-1)
        classes = F.normalize(x[:, n:] @ self.proj_classes, dim=-1)
        return tokens_to_map(self.mask_norm(patches @ classes.transpose(1, 2)), grid)


def build_segmentation_head(kind: str, config: BootlegConfig, num_labels: int) -> nn.Module:
    """`lin` → `LinearSegmentationHead`, `blk` → `MaskTransformerHead`."""
    if kind == "lin":
        return LinearSegmentationHead(config, num_labels)
    if kind == "blk":
        return MaskTransformerHead(config, num_labels)
    raise ValueError(f"unknown segmentation head '{kind}'; choose one of {SEGMENTATION_HEADS}")


class BootlegHeadModel(BootlegPreTrainedModel):
    """Shared plumbing of the task models: encoder under `bootleg`, head under `head_name`."""

    head_name: str
    # The Trainer must not hand `num_items_in_batch` to these models: their loss is a per-batch mean, so gradient
    # accumulation must divide by the number of micro-batches (transformers-v5 notes §13).
    accepts_loss_kwargs = False
    # a pretraining checkpoint holds the teacher under `bootleg.`; its student and predictor do not belong here
    _keys_to_ignore_on_load_unexpected = [r"^student\.", r"^predictor\."]

    def encode(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool | None = None,
               output_hidden_states: bool | None = None, output_attentions: bool | None = None):
        """The encoder's `BaseModelOutputWithPooling` (`last_hidden_state [B, 1+R+N, D]`) for the head."""
        return self.bootleg(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding,
                            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                            return_dict=True)

    def freeze_encoder(self) -> "BootlegHeadModel":
        """Frozen-encoder probing: no gradients for the encoder (it has no dropout, so its mode does not matter)."""
        self.bootleg.requires_grad_(False)
        return self

    @classmethod
    def from_encoder(cls, encoder: BootlegModel, head_state_dict: Mapping[str, torch.Tensor] | None = None,
                     id2label: Mapping[int, str] | Sequence[str] | None = None, **config_updates: Any):
        """A task model holding a copy of `encoder`'s weights and, if given, a trained head state dict.

        `config_updates` set config fields (e.g. `probe_type="xblk"` or `segmentation_head="blk"`); `id2label` sets
        the labels (a mapping or a list of names) and with them `num_labels`.
        """
        config = copy.deepcopy(encoder.config)
        config.architectures = [cls.__name__]
        for key, value in config_updates.items():
            setattr(config, key, value)
        if id2label is not None:
            items = id2label.items() if isinstance(id2label, Mapping) else enumerate(id2label)
            config.id2label = {int(i): str(name) for i, name in items}
            config.label2id = {name: i for i, name in config.id2label.items()}
        config.validate_bootleg()
        model = cls(config)
        model.bootleg.load_state_dict(encoder.state_dict())
        if head_state_dict is not None:
            getattr(model, cls.head_name).load_state_dict(head_state_dict)
        return model.to(next(encoder.parameters()).device)


class BootlegForImageClassification(BootlegHeadModel):
    """Bootleg encoder + the probe of `config.probe_type` (`patch`, `cls`, `xattn`, `xblk`).

    `forward(pixel_values [B, C, H, W], labels [B])` → `ImageClassifierOutput` with `logits [B, num_labels]` and the
    loss of `config.problem_type` (cross-entropy for integer labels) when labels are given.
    """

    head_name = "classifier"

    def __init__(self, config: BootlegConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bootleg = BootlegModel(config)
        self.classifier = build_probe(config.probe_type, config, config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        encoded = self.encode(pixel_values, interpolate_pos_encoding, output_hidden_states, output_attentions)
        logits = self.classifier(encoded.last_hidden_state)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        out = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=encoded.hidden_states,
                                    attentions=encoded.attentions)
        return out if return_dict else out.to_tuple()


class BootlegForSemanticSegmentation(BootlegHeadModel):
    """Bootleg encoder + a `config.segmentation_head` decoder (`lin` or `blk`).

    `forward(pixel_values [B, C, H, W], labels [B, H', W'])` → `SemanticSegmenterOutput` with logits
    `[B, num_labels, H/P, W/P]`; the loss upsamples them bilinearly to the label size and takes the cross-entropy,
    skipping `config.semantic_loss_ignore_index`.
    """

    head_name = "decode_head"

    def __init__(self, config: BootlegConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bootleg = BootlegModel(config)
        self.decode_head = build_segmentation_head(config.segmentation_head, config, config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SemanticSegmenterOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        encoded = self.encode(pixel_values, interpolate_pos_encoding, output_hidden_states, output_attentions)
        grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
        logits = self.decode_head(encoded.last_hidden_state, grid)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels.long(), ignore_index=self.config.semantic_loss_ignore_index)
        out = SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=encoded.hidden_states,
                                      attentions=encoded.attentions)
        return out if return_dict else out.to_tuple()


__all__ = ["BootlegForImageClassification", "BootlegForSemanticSegmentation", "LinearSegmentationHead",
           "MaskTransformerHead", "build_segmentation_head"]
