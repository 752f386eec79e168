"""Teacher targets: which hidden representations the predictor must regress, and how they are normalised.

A `TargetSpec` is parsed from a short string (docs/design.md §4.2) so that one grammar expresses Bootleg
(`"1:4:12"`), I-JEPA (`"final"`), MAE-style pixels (`"pixels"`) and data2vec-style averaging
(`merge="average"`) objectives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BLOCK_KINDS = ("out", "mid", "attn", "mlp")
SPECIAL_TERMS = ("final", "embed", "pixels")
MERGES = ("concat", "average")
# how each teacher representation is normalised before merging: per token over channels (I-JEPA, Bootleg), or per
# channel over the image's patch tokens, with the merged target then z-scored per token (data2vec 2.0's
# instance_norm_target_layer + layer_norm_targets)
TARGET_NORMS = ("token", "instance")
TARGET_EPS = 1e-5  # per-token z-score eps (I-JEPA's F.layer_norm convention: biased variance)
PIXEL_EPS = 1e-6  # MAE's norm_pix_loss convention: unbiased variance


@dataclass(frozen=True)
class TargetTerm:
    """One representation of the teacher.

    `kind` is one of `out` (output of block `block`), `mid` (after its attention residual), `attn` (attention residual
    term), `mlp` (MLP residual term), `final` (final-LayerNorm output), `embed` (tokenizer output, `block` 0) or
    `pixels` (per-patch normalised pixels, `block` 0). Blocks are 1-based like `hidden_states[k]`.
    """

    block: int
    kind: str

    @property
    def name(self) -> str:
        return self.kind if self.kind in SPECIAL_TERMS else f"{self.block}.{self.kind}"


def _parse_blocks(text: str, num_layers: int) -> list[int]:
    if m := re.fullmatch(r"(\d+):(\d+):(\d+)", text):
        start, step, end = map(int, m.groups())
        if step < 1 or end < start:
            raise ValueError(f"target range '{text}' needs step >= 1 and end >= start (form start:step:end)")
        blocks = [start] + [b for b in range(start + 1, end + 1) if b % step == 0]
    elif m := re.fullmatch(r"(\d+)-(\d+)", text):
        start, end = map(int, m.groups())
        if end < start:
            raise ValueError(f"target range '{text}' has end < start")
        blocks = list(range(start, end + 1))
    elif re.fullmatch(r"\d+", text):
        blocks = [int(text)]
    else:
        raise ValueError(
            f"cannot parse target term '{text}': expected 'start:step:end', 'a-b', a block number, or one of "
            f"{SPECIAL_TERMS}, optionally followed by .out/.mid/.attn/.mlp"
        )
    bad = [b for b in blocks if not 1 <= b <= num_layers]
    if bad:
        raise ValueError(f"target block(s) {bad} in '{text}' are outside the encoder's blocks 1..{num_layers}")
    return blocks


@dataclass(frozen=True)
class TargetSpec:
    """Parsed target specification: an ordered, duplicate-free tuple of `TargetTerm`s and a merge rule."""

    terms: tuple[TargetTerm, ...]
    merge: str = "concat"

    @classmethod
    def parse(cls, spec: str, num_layers: int, merge: str = "concat") -> "TargetSpec":
        """Parse e.g. `"1:4:12"`, `"final"`, `"pixels"`, `"3-12"`, `"1:1:12.attn,1:1:12.out"`.

        `start:step:end` means {start} ∪ {multiples of step in (start, end]}: `1:4:12` = {1, 4, 8, 12}.
        """
        if merge not in MERGES:
            raise ValueError(f"target merge must be one of {MERGES}, got '{merge}'")
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError("target spec is empty; use e.g. '1:4:12', 'final' or 'pixels'")
        terms: list[TargetTerm] = []
        for raw in spec.replace(" ", "").split(","):
            if raw in SPECIAL_TERMS:
                new = [TargetTerm(num_layers if raw == "final" else 0, raw)]
            else:
                blocks_text, _, kind = raw.partition(".")
                kind = kind or "out"
                if kind not in BLOCK_KINDS:
                    raise ValueError(f"unknown target kind '.{kind}' in '{raw}'; choose one of {BLOCK_KINDS}")
                new = [TargetTerm(b, kind) for b in _parse_blocks(blocks_text, num_layers)]
            terms.extend(t for t in new if t not in terms)
        if merge == "average" and any(t.kind == "pixels" for t in terms) and len(terms) > 1:
            raise ValueError("merge='average' cannot mix 'pixels' with feature targets (their widths differ)")
        return cls(tuple(terms), merge)

    @property
    def deepest_block(self) -> int:
        """Blocks after this one never need to run for the targets."""
        return max(t.block for t in self.terms)

    @property
    def feature_terms(self) -> tuple[TargetTerm, ...]:
        """Terms read from the encoder (everything but pixels)."""
        return tuple(t for t in self.terms if t.kind != "pixels")

    def target_dim(self, hidden_size: int, patch_size: int, num_channels: int) -> int:
        """Width of one target vector (|L|·D for Bootleg's concat)."""
        widths = [patch_size * patch_size * num_channels if t.kind == "pixels" else hidden_size for t in self.terms]
        return widths[0] if self.merge == "average" else sum(widths)

    def __str__(self) -> str:
        return ",".join(t.name for t in self.terms) + ("" if self.merge == "concat" else " (average)")


def zscore(x: torch.Tensor) -> torch.Tensor:
    """Per-token z-score over channels, no affine (LayerNorm without parameters, eps 1e-5). Computed in fp32."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=TARGET_EPS)


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] → [B, N, P·P·C] in raster order (MAE's channel-last patch layout)."""
    b, c, h, w = pixel_values.shape
    p = patch_size
    x = pixel_values.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def normalized_pixels(patches: torch.Tensor) -> torch.Tensor:
    """MAE's per-patch pixel normalisation (unbiased variance, eps 1e-6)."""
    patches = patches.float()
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True)  # unbiased (torch's default), as MAE
    return (patches - mean) / (var + PIXEL_EPS).sqrt()


def instance_zscore(x: torch.Tensor) -> torch.Tensor:
    """Per-channel z-score over the tokens of each image, no affine: `x [B, N, D]` (patch tokens only). Biased
    variance, eps 1e-5, as `F.instance_norm` on `[B, D, N]`. Computed in fp32."""
    x = x.float()
    mean = x.mean(1, keepdim=True)
    var = (x - mean).square().mean(1, keepdim=True)
    return (x - mean) / (var + TARGET_EPS).sqrt()


def merge_targets(per_term: list[torch.Tensor], merge: str, layer_norm: bool = False) -> torch.Tensor:
    """Combine already normalised per-term targets [..., D_i] into one target [..., D_total]: concatenated, or their
    average z-scored per token (data2vec's averaging). `layer_norm`: z-score the merged target per token in any case
    (data2vec 2.0's `layer_norm_targets`, used with `target_norm="instance"`)."""
    if len(per_term) == 1:
        merged = per_term[0]
    elif merge == "concat":
        merged = torch.cat(per_term, dim=-1)
    else:
        merged, layer_norm = torch.stack(per_term).mean(0), True
    return zscore(merged) if layer_norm else merged
