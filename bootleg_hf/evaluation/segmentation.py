"""Segmentation probes on frozen features (docs/design.md §7): CAPI-style kNN, Lin/Blk head training, mIoU, and
`run_segmentation`, the whole protocol on a dataset with image and mask columns (default: the Fashion-MNIST mosaics).

Lin and Blk are Segmenter mask transformers with 0 and 1 block (`MaskTransformerHead`), trained by one of two
protocols (`SEGMENTATION_PROTOCOLS`): `paper`, the appendix's (augmented images through the frozen encoder every step,
128 epochs; GPU-sized), or `quick`, CPU-sized (features of the un-augmented images computed once, 40 epochs). Every
result and report names the protocol.

Conventions shared by everything here: images are resized to R×R and label maps to R×R (nearest), the encoder's
patch tokens form an `h × w` grid with `P×P` pixels per patch, and label maps use `ignore_index` (one value or several)
for pixels that are not scored.

Metric: `miou` builds a confusion matrix over all non-ignored pixels (flattened over the whole set) and averages
per-class IoU = TP / (TP + FP + FN) over the classes present in the ground truth or the prediction (sklearn's
`jaccard_score(average="macro")` over the labels present), never over ignore labels. Pixel accuracy = correct /
non-ignored pixels.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from ..checkpoints import check_output, load_encoder, save_model_folder
from ..data import MOSAIC_LABELS, SegmentationTrainTransform, decode_image, decode_mask, make_mosaic_segmentation
from ..precision import use_bf16
from ..image_processing_bootleg import make_segmentation_image_processor
from ..modeling_bootleg import BootlegModel
from ..modeling_bootleg_heads import BootlegForSemanticSegmentation, build_segmentation_head
from ..optim import adamw, param_groups
from ..publishing import results_document
from ..reports import write_report
from .classification import make_loader
from .common import check_names, default_device, frozen_tokens, report_heading, select_subset
from .datasets_paper import PaperSegmentation, paper_segmentation

KNN_KS = (1, 3, 10, 30)
KNN_METRICS = ("cosine", "l2")


def as_label_set(ignore_index: int | Iterable[int] | None) -> tuple[int, ...]:
    if ignore_index is None:
        return ()
    return (int(ignore_index),) if isinstance(ignore_index, int) else tuple(int(i) for i in ignore_index)


# --------------------------------------------------------------------------------------------------------------------
# Metric
# --------------------------------------------------------------------------------------------------------------------


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | Iterable[int] | None = 255) -> torch.Tensor:
    """`[num_classes, num_classes + 1]` counts (rows = target, columns = prediction) over non-ignored pixels.

    `pred` and `target` have the same shape. The last column collects predictions outside `[0, num_classes)` (e.g. a
    kNN neighbour's ignore label): they are errors for their target class but not a class of their own.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = ~torch.isin(target, torch.tensor(as_label_set(ignore_index), dtype=torch.long, device=target.device))
    pred, target = pred[keep], target[keep]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"target labels must lie in [0, {num_classes}) or be ignored, got "
                         f"[{int(target.min())}, {int(target.max())}]")
    pred = torch.where((pred >= 0) & (pred < num_classes), pred, num_classes)
    counts = torch.bincount(target * (num_classes + 1) + pred, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1).cpu()


def segmentation_scores(confusion: torch.Tensor, ignore_index: int | Iterable[int] | None = 255) -> dict:
    """mIoU, pixel accuracy and per-class IoU from a `confusion_matrix` (see the module docstring)."""
    num_classes = confusion.shape[0]
    confusion = confusion.double()
    tp = confusion.diagonal()
    target_count = confusion.sum(1)
    pred_count = confusion[:, :num_classes].sum(0)
    union = target_count + pred_count - tp
    ignored = set(as_label_set(ignore_index))
    present = [c for c in range(num_classes) if union[c] > 0 and c not in ignored]
    per_class = {c: float(tp[c] / union[c]) for c in present}
    total = float(confusion.sum())
    return {
        "miou": sum(per_class.values()) / len(per_class) if per_class else float("nan"),
        "pixel_accuracy": float(tp.sum()) / total if total else float("nan"),
        "per_class_iou": per_class,
    }


def miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
         ignore_index: int | Iterable[int] | None = 255) -> dict:
    """`{"miou", "pixel_accuracy", "per_class_iou"}` for label maps `pred`, `target` of equal shape."""
    return segmentation_scores(confusion_matrix(pred, target, num_classes, ignore_index), ignore_index)


# --------------------------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode(encoder: BootlegModel, pixel_values: torch.Tensor, batch_size: int = 256,
           precision: str = "auto") -> torch.Tensor:
    """Frozen features: `pixel_values [N, C, R, R]` → final-LN tokens `[N, T, D]` (float32, on the input's device).

    Runs the encoder in eval mode at R (interpolating the position embedding when R differs from the config), with
    `precision` (`frozen_tokens`)."""
    encoder.eval()
    device = next(encoder.parameters()).device
    out = [frozen_tokens(encoder, x.to(device), precision, interpolate_pos_encoding=True).to(pixel_values.device)
           for x in pixel_values.split(batch_size)]
    return torch.cat(out)


def patch_label_blocks(labels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Label maps `[N, H, W]` → each patch's `P×P` block `[N·h·w, P²]` (patches in raster order, like the tokens)."""
    n, h, w = labels.shape
    p = patch_size
    blocks = labels.reshape(n, h // p, p, w // p, p).permute(0, 1, 3, 2, 4)
    return blocks.reshape(n * (h // p) * (w // p), p * p)


def blocks_to_maps(blocks: torch.Tensor, num_images: int, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Inverse of `patch_label_blocks`: `[N·h·w, P²]` → `[N, h·P, w·P]`."""
    (h, w), p = grid, patch_size
    return blocks.reshape(num_images, h, w, p, p).permute(0, 1, 3, 2, 4).reshape(num_images, h * p, w * p)


# --------------------------------------------------------------------------------------------------------------------
# kNN
# --------------------------------------------------------------------------------------------------------------------


class KnnSegmenter:
    """CAPI's kNN segmentation probe.

    `fit(features [M, D], blocks [M, P²])`: standardise with the train mean/std (population std; constant channels
    keep std 1), drop patches whose most frequent label is an ignore label, keep the rest with their label blocks.
    `predict(features [Q, D], ks, metric)`: exact k nearest train patches (cosine `1 − â·b̂` or L2, computed in chunks
    with top-k merged across chunks), then each pixel takes the majority label of the k neighbours' blocks at its
    position. Ties go to nearer neighbours: each vote is `1 + (k − rank) / (k(k + 1))`, and these bonuses sum to less
    than one, so they never overturn a majority.
    """

    def __init__(self, ignore_index: int | Iterable[int] | None = 255, chunk_size: int = 8192):
        self.ignore = as_label_set(ignore_index)
        self.chunk_size = chunk_size

    def fit(self, features: torch.Tensor, blocks: torch.Tensor) -> "KnnSegmenter":
        features = features.float()
        self.mean = features.mean(0)
        std = features.std(0, unbiased=False)
        self.std = torch.where(std > 0, std, torch.ones_like(std))
        ignored = torch.tensor(self.ignore, dtype=torch.long, device=blocks.device)
        keep = ~torch.isin(blocks.long().mode(dim=1).values, ignored)
        if not keep.any():
            raise ValueError("every train patch is mostly ignore labels: nothing to fit the kNN probe on")
        self.features = self.standardise(features[keep])
        # Votes are counted over the labels that occur, not over all 256 possible values.
        self.labels, self.blocks = torch.unique(blocks[keep].long(), return_inverse=True)
        return self

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.mean) / self.std

    def neighbours(self, queries: torch.Tensor, k: int, metric: str) -> torch.Tensor:
        """Indices `[Q, k]` of the k nearest train patches of standardised `queries [Q, D]`, nearest first."""
        if metric not in KNN_METRICS:
            raise ValueError(f"unknown kNN metric '{metric}'; choose one of {KNN_METRICS}")
        keys = self.features
        if metric == "cosine":
            queries, keys = F.normalize(queries, dim=-1), F.normalize(keys, dim=-1)
        key_sq = keys.square().sum(1) if metric == "l2" else None
        k = min(k, len(keys))
        best_scores = queries.new_zeros((len(queries), 0))
        best_index = torch.zeros((len(queries), 0), dtype=torch.long, device=queries.device)
        for start in range(0, len(keys), self.chunk_size):
            # higher score = nearer: cosine similarity, or −‖q − x‖² + ‖q‖² = 2 q·x − ‖x‖² for L2
            scores = queries @ keys[start:start + self.chunk_size].T
            if key_sq is not None:
                scores = 2 * scores - key_sq[start:start + self.chunk_size]
            top = scores.topk(min(k, scores.shape[1]), dim=1)
            merged = torch.cat([best_scores, top.values], 1)
            candidates = torch.cat([best_index, top.indices + start], 1)
            best_scores, order = merged.topk(min(k, merged.shape[1]), dim=1)
            best_index = candidates.gather(1, order)
        return best_index

    def vote(self, neighbour_index: torch.Tensor) -> torch.Tensor:
        """Neighbours `[Q, k]` (nearest first) → per-pixel majority labels `[Q, P²]`."""
        q, k = neighbour_index.shape
        blocks = self.blocks[neighbour_index]  # [Q, k, P²] indices into self.labels
        weights = 1 + (k - torch.arange(k, dtype=torch.float32, device=blocks.device)) / (k * (k + 1))
        counts = torch.zeros(q, blocks.shape[2], len(self.labels), device=blocks.device)
        counts.scatter_add_(2, blocks.transpose(1, 2), weights.expand(q, blocks.shape[2], k).contiguous())
        return self.labels[counts.argmax(-1)]

    def predict(self, features: torch.Tensor, ks: Sequence[int] = KNN_KS, metric: str = "cosine",
                query_chunk: int = 1024) -> dict[int, torch.Tensor]:
        """Per-pixel labels `{k: [Q, P²]}` for query patch features `[Q, D]` (one neighbour search for all k)."""
        out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
        for chunk in self.standardise(features).split(query_chunk):
            index = self.neighbours(chunk, max(ks), metric)
            for k in ks:
                out[k].append(self.vote(index[:, :k]))
        return {k: torch.cat(v) for k, v in out.items()}


def knn_segmentation(train_tokens: torch.Tensor, train_labels: torch.Tensor, test_tokens: torch.Tensor,
                     test_labels: torch.Tensor, num_classes: int, patch_size: int, num_prefix_tokens: int,
                     ks: Sequence[int] = KNN_KS, metrics: Sequence[str] = KNN_METRICS,
                     ignore_index: int | Iterable[int] | None = 255) -> dict[str, dict]:
    """Score the kNN probe for every (metric, k): tokens `[N, T, D]`, label maps `[N, R, R]` →
    `{"cosine/k=10": {"miou", "pixel_accuracy", "per_class_iou", "metric", "k"}, ...}`."""
    train_patches = train_tokens[:, num_prefix_tokens:]
    test_patches = test_tokens[:, num_prefix_tokens:]
    knn = KnnSegmenter(ignore_index).fit(train_patches.reshape(-1, train_patches.shape[-1]),
                                         patch_label_blocks(train_labels, patch_size))
    grid = (test_labels.shape[1] // patch_size, test_labels.shape[2] // patch_size)
    results = {}
    for metric in metrics:
        for k, blocks in knn.predict(test_patches.reshape(-1, test_patches.shape[-1]), ks, metric).items():
            pred = blocks_to_maps(blocks, len(test_labels), grid, patch_size)
            scores = miou(pred, test_labels, num_classes, ignore_index)
            results[f"{metric}/k={k}"] = {"metric": metric, "k": k, **scores}
    return results


def knn_summary(knn: dict[str, dict]) -> dict[str, Any]:
    """`knn_segmentation`'s results in % as a probe result: the best (metric, k) on the test split, and the grid."""
    scored = {name: _percent(r) for name, r in knn.items()}
    best = max(scored, key=lambda name: scored[name]["miou"])
    return {"best": {"setting": best, **scored[best]}, "grid": [
        {"setting": name, **{k: v for k, v in r.items() if k != "per_class_iou"}} for name, r in scored.items()]}


def pixel_tokens(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The raw-pixel reference's "tokens": `pixel_values [N, C, R, R]` → each patch's pixels `[N, h·w, C·P²]`, in the
    encoder's raster order, with no prefix tokens."""
    return F.unfold(pixel_values.float(), patch_size, stride=patch_size).transpose(1, 2)


# --------------------------------------------------------------------------------------------------------------------
# Lin / Blk head training
# --------------------------------------------------------------------------------------------------------------------

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


class SegmentationSweep(nn.Module):
    """Segmentation heads (`head(tokens [B, T, D], grid) → [B, C, h, w]`) trained together on the same batches, head
    `i` with learning rate `lrs[i]`, all with `weight_decay`, as `ProbeSweep` trains classification probes: one AdamW
    holding each head's own param groups (no decay on biases, norms, class embeddings) and the summed loss, so every
    head gets exactly the gradient of its own loss (the frozen features carry none); per-step linear warm-up from 0
    over `warmup_steps`, then cosine to 0 at `total_steps`.

    A head's loss: its logits upsampled bilinearly to the label size, cross-entropy averaged over the pixels whose label
    is not in `ignore_index` (one label or several; a batch without such pixels gives 0).
    """

    def __init__(self, heads: Sequence[nn.Module], lrs: Sequence[float], weight_decay: float, total_steps: int,
                 warmup_steps: int = 0, ignore_index: int | Iterable[int] | None = 255):
        super().__init__()
        if len(heads) != len(lrs) or not heads:
            raise ValueError(f"one learning rate per head: got {len(heads)} heads and {len(lrs)} learning rates")
        self.heads = nn.ModuleList(heads)
        self.lrs = [float(lr) for lr in lrs]
        groups = [g for head, lr in zip(self.heads, self.lrs) for g in param_groups(head, weight_decay, lr)]
        self.optimizer = adamw(groups, lr=self.lrs[0])
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, warmup_steps, total_steps)
        self.ignore = as_label_set(ignore_index)

    def train_step(self, tokens: torch.Tensor, labels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """One optimizer + scheduler step of every head on `tokens [B, T, D]` and label maps `labels [B, H, W]`
        → each head's loss `[K]`."""
        self.train()
        ignored = torch.isin(labels, torch.tensor(self.ignore, dtype=labels.dtype, device=labels.device))
        target = labels.masked_fill(ignored, -100)  # cross-entropy takes a single ignore value
        scored = (~ignored).sum().clamp(min=1)
        losses = torch.stack([
            F.cross_entropy(F.interpolate(head(tokens, grid), size=labels.shape[-2:], mode="bilinear",
                                          align_corners=False), target, ignore_index=-100, reduction="sum") / scored
            for head in self.heads])
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        self.scheduler.step()
        return losses.detach()


def train_sweeps(sweeps: Mapping[str, SegmentationSweep], batches: Batches, epochs: int,
                 grid: tuple[int, int]) -> tuple[dict[str, list[list[float]]], dict[str, float]]:
    """Train every sweep for `epochs` passes over `batches()` (pairs of tokens `[B, T, D]` and label maps
    `[B, H, W]` on the heads' device), all sweeps on each batch. Returns each head's mean loss per epoch
    (`{kind: [epoch][head]}`) and the seconds spent making the batches (`batches_s`) and in each sweep (`<kind>_s`)."""
    history: dict[str, list[list[float]]] = {kind: [] for kind in sweeps}
    timings = {"batches_s": 0.0, **{f"{kind}_s": 0.0 for kind in sweeps}}
    for epoch in range(epochs):
        epoch_start = tick = time.perf_counter()
        totals = {kind: torch.zeros(len(sweep.heads)) for kind, sweep in sweeps.items()}
        count = 0
        for tokens, labels in batches():
            timings["batches_s"] += time.perf_counter() - tick
            for kind, sweep in sweeps.items():
                tick = time.perf_counter()
                totals[kind] += sweep.train_step(tokens, labels, grid).cpu() * len(labels)
                timings[f"{kind}_s"] += time.perf_counter() - tick
            count += len(labels)
            tick = time.perf_counter()
        for kind in sweeps:
            history[kind].append((totals[kind] / count).tolist())
        summary = ", ".join(f"{kind} {min(h[-1]):.3f}" for kind, h in history.items())
        print(f"epoch {epoch + 1}/{epochs} ({time.perf_counter() - epoch_start:.1f} s): best train loss {summary}",
              flush=True)
    return history, timings


def feature_batches(tokens: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int,
                    device: torch.device) -> Batches:
    """Batches of cached features `tokens [N, T, D]` and their label maps `[N, R, R]`, reshuffled every pass (seeded),
    the last one smaller when `batch_size` does not divide N."""
    generator = torch.Generator().manual_seed(seed)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index in torch.randperm(len(tokens), generator=generator).split(batch_size):
            yield tokens[index].to(device), labels[index].to(device)

    return batches


def image_batches(encoder: BootlegModel, loader: torch.utils.data.DataLoader, precision: str) -> Batches:
    """The frozen encoder's tokens of every batch of (augmented) images `loader` gives (`pixel_values`, `labels`),
    computed with `precision`: one encoder forward per batch for all the heads."""
    device = next(encoder.parameters()).device

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in loader:
            yield (frozen_tokens(encoder, batch["pixel_values"].to(device), precision, interpolate_pos_encoding=True),
                   batch["labels"].to(device))

    return batches


def train_segmentation_head(head: nn.Module, tokens: torch.Tensor, labels: torch.Tensor, grid: tuple[int, int], *,
                            epochs: int = 10, batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4,
                            warmup_epochs: float = 1.0, ignore_index: int | Iterable[int] | None = 255,
                            seed: int = 0) -> list[float]:
    """Train one head on cached frozen features `tokens [N, T, D]` with label maps `labels [N, R, R]` (no
    augmentation: an epoch is just the head), with `SegmentationSweep`'s loss and schedule. Returns each epoch's mean
    loss."""
    steps = -(-len(tokens) // batch_size)
    sweep = SegmentationSweep([head], [lr], weight_decay, epochs * steps, round(warmup_epochs * steps), ignore_index)
    device = next(head.parameters()).device
    history, _ = train_sweeps({"head": sweep}, feature_batches(tokens, labels, batch_size, seed, device), epochs, grid)
    return [losses[0] for losses in history["head"]]


@torch.no_grad()
def predict_segmentation(head: nn.Module, tokens: torch.Tensor, grid: tuple[int, int], size: tuple[int, int],
                         batch_size: int = 256) -> torch.Tensor:
    """Label maps `[N, *size]`: head logits upsampled bilinearly to `size`, then argmax."""
    head.eval()
    device = next(head.parameters()).device
    out = [F.interpolate(head(x.to(device), grid), size=size, mode="bilinear", align_corners=False).argmax(1).cpu()
           for x in tokens.split(batch_size)]
    return torch.cat(out)


# --------------------------------------------------------------------------------------------------------------------
# The protocol on a dataset
# --------------------------------------------------------------------------------------------------------------------

SEGMENTATION_PROBES = ("knn", "lin", "blk")
HEAD_KINDS = ("lin", "blk")  # the trained probes: `build_segmentation_head` kinds


@dataclass(frozen=True)
class SegmentationProtocol:
    """How the Lin and Blk heads are trained: epochs, batch size, warm-up epochs (per-step linear warm-up from 0,
    then cosine to 0), the learning rates tried (the best is reported) and the weight decay, per head kind; and the
    training images: `augmentation` (the keyword arguments of `SegmentationTrainTransform`) re-encodes every batch of
    augmented images with the frozen encoder, None trains on the features of the un-augmented images, encoded once."""

    name: str
    description: str
    epochs: int
    batch_size: int
    warmup_epochs: int
    lrs: Mapping[str, tuple[float, ...]]
    weight_decay: Mapping[str, float]
    augmentation: Mapping[str, Any] | None


# The only place these numbers live.
SEGMENTATION_PROTOCOLS = {
    # The paper's appendix: Segmenter heads, 128 epochs at batch 64, 5 warm-up epochs, RandScale(0.5, 2) + flip +
    # cutout + colour jitter, LR ranges [2.5e-4, 7.5e-3] (Lin) and [2.5e-5, 7.5e-4] (Blk), of which only the ends are
    # given: we try {2.5, 5, 7.5} × 10^k across each; weight decay 1e-4 (Lin) and 0.05 (Blk). Unstated, our reading:
    # colour jitter 0.4 (brightness, contrast, saturation: the classification probes'), cutout on half the images, one
    # rectangle of 10–50 % of the side each way (see `SegmentationTrainTransform`).
    "paper": SegmentationProtocol(
        name="paper", description="paper protocol (the appendix's: heads trained on augmented images through the "
                                  "frozen encoder; GPU-sized)",
        epochs=128, batch_size=64, warmup_epochs=5,
        lrs={"lin": (2.5e-4, 5e-4, 7.5e-4, 2.5e-3, 5e-3, 7.5e-3), "blk": (2.5e-5, 5e-5, 7.5e-5, 2.5e-4, 5e-4, 7.5e-4)},
        weight_decay={"lin": 1e-4, "blk": 0.05},
        augmentation={"scale": (0.5, 2.0), "jitter": 0.4, "cutout": 0.5, "cutout_size": (0.1, 0.5)}),
    # CPU-sized: cached features of the un-augmented images, fewer epochs and one warm-up epoch; the paper's heads and
    # weight decays. Learning rates around the best of these short runs: on the mosaics (1000 train images), among
    # 1e-4 … 1e-1 (Lin) and 3e-5 … 1e-2 (Blk), the demo's pretrained vit-micro scored best with Lin at 1e-2 (3e-3
    # close) and Blk at 3e-3 (1e-3, 1e-2 lower), a random-init one with Lin at 3e-3 (1e-3 close, 3e-2 lower).
    "quick": SegmentationProtocol(
        name="quick", description="quick protocol (CPU-sized: heads trained on the features of the un-augmented "
                                  "images, computed once)",
        epochs=40, batch_size=64, warmup_epochs=1,
        lrs={"lin": (1e-3, 3e-3, 1e-2), "blk": (1e-3, 3e-3, 1e-2)},
        weight_decay={"lin": 1e-4, "blk": 0.05}, augmentation=None),
}


@dataclass
class SegmentationSettings:
    """What `run_segmentation` does: which probes; subset sizes (the mosaic task is generated with that many images,
    default 1000 / 250); input size R (default: the encoder's; others interpolate the position embedding); how Lin/Blk
    train: `protocol` (`SEGMENTATION_PROTOCOLS`: `quick`, the default, or `paper`), whose epochs, batch size, learning
    rates (one list for both kinds) and weight decay (both kinds) `epochs`, `batch_size`, `lrs` and `weight_decay`
    override, with the protocol's warm-up capped at half the epochs (so short runs reach their cosine phase, as the
    classification probes); kNN k's and metrics; labels (`ignore_index` values are not scored, the paper data sets'
    255 always, and the `paper` protocol pads its crops with the first of them; class names, else the paper data
    set's when `num_labels` is not given either, else the mosaic's, else `"0"` … up to `num_labels`, default the
    largest non-ignored train label + 1); dataset columns and test split; encoder weights; seed; device; data-loader
    workers for the `paper` protocol's augmented images; the frozen encoder's precision for the training images
    (`auto`: bf16 autocast where bf16 matmuls are native; heads train in float32; the test split is always encoded
    in float32, as a saved segmenter runs)."""

    probes: Sequence[str] = SEGMENTATION_PROBES
    protocol: str = "quick"
    limit_train: int | None = 1000
    limit_test: int | None = 250
    image_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lrs: Sequence[float] | None = None
    weight_decay: float | None = None
    ks: Sequence[int] = KNN_KS
    metrics: Sequence[str] = KNN_METRICS
    ignore_index: Sequence[int] = (255,)
    num_labels: int | None = None
    label_names: Sequence[str] | None = None
    test_split: str = "test"
    image_column: str = "image"
    mask_column: str = "mask"
    weights: str = "teacher"
    seed: int = 0
    device: str | None = None
    num_workers: int = 1
    precision: str = "auto"

    def __post_init__(self) -> None:
        use_bf16(self.precision, "cpu")  # validates the name
        self.probes = check_names(self.probes, SEGMENTATION_PROBES, "segmentation probes")
        check_names([self.protocol], tuple(SEGMENTATION_PROTOCOLS), "segmentation protocol")
        self.ignore_index = [int(i) for i in self.ignore_index]
        for name in ("epochs", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def head_training(self) -> dict[str, Any]:
        """How the Lin/Blk heads of `probes` train, as the results record it: the protocol's name and description,
        `epochs`, `batch_size`, `warmup_epochs`, `lrs` and `weight_decay` per kind, and its `augmentation`."""
        p = SEGMENTATION_PROTOCOLS[self.protocol]
        epochs = self.epochs or p.epochs
        kinds = [kind for kind in self.probes if kind in HEAD_KINDS]
        return {"name": p.name, "description": p.description, "epochs": epochs,
                "batch_size": self.batch_size or p.batch_size, "warmup_epochs": min(p.warmup_epochs, epochs // 2),
                "lrs": {kind: [float(lr) for lr in self.lrs or p.lrs[kind]] for kind in kinds},
                "weight_decay": {kind: p.weight_decay[kind] if self.weight_decay is None else self.weight_decay
                                 for kind in kinds},
                "augmentation": None if p.augmentation is None else dict(p.augmentation)}


def load_segmentation_split(dataset: str | datasets.DatasetDict | PaperSegmentation, split: str, limit: int | None,
                            seed: int, image_column: str, mask_column: str) -> datasets.Dataset:
    """The mosaic task (`limit` images, default 1000), or a split of a dataset with image and mask columns (a
    `DatasetDict`, a `save_to_disk` folder or a Hub name), or of a paper data set (`"ade20k:<folder or Hub name>"`,
    `"cityscapes:<folder>"` or a `PaperSegmentation`: `split` is mapped to the data set's own, the masks are
    relabelled when read; see `bootleg_hf.evaluation.datasets_paper`)."""
    paper = paper_segmentation(dataset)
    if paper is not None:
        ds = paper.load(split)
    elif isinstance(dataset, datasets.DatasetDict):
        ds = dataset[split]
    elif dataset == "mosaic":
        return make_mosaic_segmentation(split, limit or 1000, seed)
    elif os.path.isdir(dataset):
        ds = datasets.load_from_disk(dataset)
        ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    else:
        ds = datasets.load_dataset(dataset, split=split)
    for column in (image_column, mask_column):
        if column not in ds.column_names:
            raise ValueError(f"{dataset}: no column '{column}' (columns: {ds.column_names})")
    return select_subset(ds.select_columns([image_column, mask_column]), limit, seed)


def prepare(ds: datasets.Dataset, config, size: int, image_column: str,
            mask_column: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`pixel_values [N, 3, R, R]` and label maps `[N, R, R]` through the segmentation image processor that
    segmentation folders are saved with (images bicubic, label maps nearest neighbour), as the pipeline and
    fine-tuning code see them."""
    processor = make_segmentation_image_processor(config)
    images = [decode_image(v) for v in ds[image_column]]
    masks = [np.asarray(decode_mask(v), dtype=np.int64) for v in ds[mask_column]]
    batch = processor(images=images, segmentation_maps=masks, size={"height": size, "width": size},
                      return_tensors="pt")
    return batch["pixel_values"], batch["labels"].long()


def _percent(scores: dict) -> dict:
    return {**scores, "miou": 100 * scores["miou"], "pixel_accuracy": 100 * scores["pixel_accuracy"]}


def largest_label(ds: datasets.Dataset, mask_column: str, ignore_index: Iterable[int]) -> int:
    """The largest label in the masks of `ds` that is not an ignore label."""
    largest = -1
    for value in ds[mask_column]:
        labels = np.asarray(decode_mask(value), dtype=np.int64)
        labels = labels[~np.isin(labels, list(ignore_index))]
        largest = max(largest, int(labels.max()) if labels.size else -1)
    if largest < 0:
        raise ValueError(f"the train masks have no labelled pixels (all in {list(ignore_index)})")
    return largest


def train_heads(training: dict[str, Any], batches: Batches, steps_per_epoch: int, config, test_tokens: torch.Tensor,
                test_labels: torch.Tensor, num_labels: int, size: int, s: SegmentationSettings,
                device: torch.device) -> tuple[dict[str, Any], dict[str, nn.Module], dict[str, float]]:
    """The heads `training` describes (`SegmentationSettings.head_training`): per kind one head per learning rate,
    each starting from the same weights, all trained together on `batches`, each scored on the test split. Returns
    per kind the results (the best learning rate's scores and training losses, and the grid of every learning rate)
    and the best head, and the training times (`train_sweeps`)."""
    grid = (size // config.patch_size,) * 2
    epochs = training["epochs"]
    sweeps = {}
    for kind, lrs in training["lrs"].items():
        heads = []
        for _ in lrs:
            torch.manual_seed(s.seed)
            heads.append(build_segmentation_head(kind, config, num_labels).to(device))
        sweeps[kind] = SegmentationSweep(heads, lrs, training["weight_decay"][kind], epochs * steps_per_epoch,
                                         training["warmup_epochs"] * steps_per_epoch, s.ignore_index)
    history, timings = train_sweeps(sweeps, batches, epochs, grid)
    results, best_heads = {}, {}
    for kind, sweep in sweeps.items():
        scores = [_percent(miou(predict_segmentation(head, test_tokens, grid, (size, size)), test_labels, num_labels,
                                s.ignore_index)) for head in sweep.heads]
        best = max(range(len(scores)), key=lambda i: scores[i]["miou"])
        results[kind] = {
            "best": {"lr": sweep.lrs[best], **scores[best], "train_loss": [losses[best] for losses in history[kind]]},
            "epochs": epochs, "weight_decay": training["weight_decay"][kind],
            "grid": [{"lr": lr, "miou": r["miou"], "pixel_accuracy": r["pixel_accuracy"],
                      "final_loss": history[kind][-1][i]} for i, (lr, r) in enumerate(zip(sweep.lrs, scores))]}
        best_heads[kind] = sweep.heads[best]
    return results, best_heads, timings


def run_segmentation(model: str | os.PathLike | BootlegModel,
                     dataset: str | datasets.DatasetDict | PaperSegmentation = "mosaic",
                     settings: SegmentationSettings | None = None, out: str | Path | None = None,
                     overwrite: bool = False) -> dict[str, Any]:
    """Score the segmentation probes on a frozen encoder (`model`: anything `load_encoder` takes) and return the
    results: every kNN setting and each trained head with mIoU / pixel accuracy (in %), plus the best of each family,
    and under `protocol` how the heads trained (`SegmentationSettings.head_training`). `dataset`: anything
    `load_segmentation_split` takes; a paper data set (ADE20K, Cityscapes) supplies its classes and ignore label (see
    `SegmentationSettings`).

    The kNN probe and the `quick` protocol's heads use the features of the train images resized to R×R (encoded
    once); the `paper` protocol's heads see freshly augmented train images (`SegmentationTrainTransform`) through the
    frozen encoder every step, one forward per batch for all heads. Test images are resized to R×R and encoded once.

    With `out`, also writes `segment_results.json` (the `bootleg-results/1` document of these results, see
    `bootleg_hf.publishing.read_results`) / `.md`, the best head of each trained kind (`heads/<kind>.safetensors`, with
    its kind, class names, input size and score as metadata: `export_pretrained(..., segmentation_head=...)` attaches
    it to an encoder) and the best of them as `segmenter/`, a `BootlegForSemanticSegmentation` folder with the
    segmentation processor that `pipeline("image-segmentation", model=...)` loads. A non-empty `out` is refused
    (before any work) unless `overwrite`."""
    s = settings or SegmentationSettings()
    paper = paper_segmentation(dataset)
    if out is not None:
        check_output(out, overwrite, inputs=[model, paper.source if paper is not None else dataset])
    if paper is not None and paper.ignore_index not in s.ignore_index:  # its unlabelled pixels are never scored
        s = replace(s, ignore_index=[*s.ignore_index, paper.ignore_index])
    training = s.head_training()
    on_images = bool(training["lrs"]) and training["augmentation"] is not None
    if on_images and not s.ignore_index:
        raise ValueError("the paper protocol pads its crops with an ignore label: give ignore_index")
    start = time.perf_counter()
    device = torch.device(s.device) if s.device is not None else default_device()
    encoder = load_encoder(model, s.weights).requires_grad_(False).to(device)
    config = encoder.config
    size = s.image_size or config.image_hw[0]
    if size % config.patch_size:
        raise ValueError(f"image size {size} is not a multiple of the patch size {config.patch_size}")
    columns = (s.image_column, s.mask_column)
    train = load_segmentation_split(dataset, "train", s.limit_train, s.seed, *columns)
    test = load_segmentation_split(dataset, s.test_split, s.limit_test, s.seed + 1, *columns)
    label_names = s.label_names
    if label_names is None and s.num_labels is None and paper is not None:
        label_names = paper.label_names
    elif label_names is None and isinstance(dataset, str) and dataset == "mosaic":
        label_names = MOSAIC_LABELS
    elif label_names is None:
        label_names = [str(i) for i in range(s.num_labels or largest_label(train, s.mask_column, s.ignore_index) + 1)]
    label_names = list(label_names)
    tick = time.perf_counter()
    # the test split in float32, as the saved segmenter runs; the heads' training features with `s.precision`
    test_pixels, test_labels = prepare(test, config, size, *columns)
    test_tokens = encode(encoder, test_pixels, precision="fp32")
    if "knn" in s.probes or (training["lrs"] and not on_images):
        train_pixels, train_labels = prepare(train, config, size, *columns)
        train_tokens = encode(encoder, train_pixels, precision=s.precision)
    timings = {"features_s": time.perf_counter() - tick}

    results: dict[str, Any] = {
        "model": os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
        "weights": s.weights,
        "dataset": str(paper) if paper is not None else dataset if isinstance(dataset, str) else "custom",
        "split": s.test_split, "num_train": len(train), "num_test": len(test), "image_size": size,
        "num_labels": len(label_names), "labels": label_names,
        "ignore_index": s.ignore_index, "probes": {},
    }
    if "knn" in s.probes:
        tick = time.perf_counter()
        knn = knn_segmentation(train_tokens, train_labels, test_tokens, test_labels, len(label_names),
                               config.patch_size, config.num_prefix_tokens, s.ks, s.metrics, s.ignore_index)
        timings["knn_s"] = time.perf_counter() - tick
        results["probes"]["knn"] = knn_summary(knn)
    trained = {}
    if training["lrs"]:
        results["protocol"] = training
        if on_images:
            train = train.select_columns(list(columns))
            train.set_transform(SegmentationTrainTransform(size, **training["augmentation"],
                                                           ignore_index=s.ignore_index[0], image_column=s.image_column,
                                                           mask_column=s.mask_column))
            loader = make_loader(train, training["batch_size"], True, s.num_workers, s.seed, device.type == "cuda")
            batches, steps_per_epoch = image_batches(encoder, loader, s.precision), len(loader)
        else:
            batches = feature_batches(train_tokens, train_labels, training["batch_size"], s.seed, device)
            steps_per_epoch = -(-len(train_tokens) // training["batch_size"])
        head_results, trained, head_timings = train_heads(training, batches, steps_per_epoch, config, test_tokens,
                                                          test_labels, len(label_names), size, s, device)
        results["probes"].update(head_results)
        timings.update(head_timings)
    timings["total_s"] = time.perf_counter() - start
    results["wall_time_s"] = {k: round(v, 2) for k, v in timings.items()}

    if trained:
        results["best_head"] = max(trained, key=lambda k: results["probes"][k]["best"]["miou"])
    if out is not None:
        save_segmentation_outputs(results, trained, encoder, Path(out))
    return results


def pixel_knn_segmentation(dataset: datasets.DatasetDict, config, settings: SegmentationSettings | None = None,
                           num_labels: int | None = None) -> dict[str, Any]:
    """The kNN probe on raw pixels, the reference line of the segmentation probes: every patch of the train and test
    images (resized to R×R as `run_segmentation` does, for the patch size of `config`) represented by its pixels.
    Returns the `knn` probe result (`knn_summary`); `num_labels` defaults to the mosaic's classes."""
    s = settings or SegmentationSettings()
    size = s.image_size or config.image_hw[0]
    columns = (s.image_column, s.mask_column)
    train = load_segmentation_split(dataset, "train", s.limit_train, s.seed, *columns)
    test = load_segmentation_split(dataset, s.test_split, s.limit_test, s.seed + 1, *columns)
    (train_pixels, train_labels), (test_pixels, test_labels) = (prepare(ds, config, size, *columns)
                                                                for ds in (train, test))
    p = config.patch_size
    knn = knn_segmentation(pixel_tokens(train_pixels, p), train_labels, pixel_tokens(test_pixels, p), test_labels,
                           num_labels or len(MOSAIC_LABELS), p, 0, s.ks, s.metrics, s.ignore_index)
    return knn_summary(knn)


def save_segmentation_outputs(results: dict[str, Any], trained: dict[str, nn.Module], encoder: BootlegModel,
                              out: Path) -> None:
    """Each trained head with its metadata, the best one as a model folder, and the report (see `run_segmentation`)."""
    results["heads"] = {}
    for kind, head in trained.items():
        (out / "heads").mkdir(parents=True, exist_ok=True)
        best = results["probes"][kind]["best"]
        results["heads"][kind] = f"heads/{kind}.safetensors"
        metadata = {"segmentation_head": kind, "num_labels": str(results["num_labels"]),
                    "labels": json.dumps(results["labels"]),
                    "image_size": str(results["image_size"]), "ignore_index": json.dumps(results["ignore_index"]),
                    "lr": str(best["lr"]), "miou": str(best["miou"]), "protocol": results["protocol"]["name"]}
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
                  out / results["heads"][kind], metadata=metadata)
    if trained:
        kind = results["best_head"]
        segmenter = BootlegForSemanticSegmentation.from_encoder(
            encoder, trained[kind].state_dict(), id2label=results["labels"], segmentation_head=kind,
            image_size=results["image_size"], semantic_loss_ignore_index=(results["ignore_index"] or [255])[0])
        save_model_folder(segmenter, out / "segmenter", overwrite=True)
    write_report(out, "segment_results", results_document(segmentation=results), segment_markdown(results))


def segment_markdown(results: dict[str, Any]) -> str:
    """Best mIoU per probe family (with the protocol that trained the heads), then every kNN setting."""
    protocol = f"{results['num_labels']} classes, ignored labels {results['ignore_index']}"
    if "protocol" in results:
        t = results["protocol"]
        protocol += (f"; Lin/Blk: {t['description']}, {t['epochs']} epochs ({t['warmup_epochs']} warm-up), "
                     f"batch {t['batch_size']}")
    lines = report_heading("Segmentation probes", results, protocol) + [
        "| probe | mIoU % | pixel acc. % | setting |", "|---|---|---|---|"]
    for kind, r in results["probes"].items():
        b = r["best"]
        setting = b["setting"] if kind == "knn" else f"lr {b['lr']:g}, wd {r['weight_decay']:g}, {r['epochs']} epochs"
        lines.append(f"| {kind} | {b['miou']:.2f} | {b['pixel_accuracy']:.2f} | {setting} |")
    if "knn" in results["probes"]:
        lines += ["", "## kNN settings", "", "| setting | mIoU % | pixel acc. % |", "|---|---|---|"]
        for r in results["probes"]["knn"]["grid"]:
            lines.append(f"| {r['setting']} | {r['miou']:.2f} | {r['pixel_accuracy']:.2f} |")
    return "\n".join(lines) + "\n"


__all__ = ["KNN_KS", "KNN_METRICS", "SEGMENTATION_PROBES", "HEAD_KINDS", "SegmentationProtocol",
           "SEGMENTATION_PROTOCOLS", "confusion_matrix", "segmentation_scores", "miou", "encode", "patch_label_blocks",
           "blocks_to_maps", "KnnSegmenter", "knn_segmentation", "SegmentationSweep", "train_sweeps",
           "feature_batches", "image_batches", "train_segmentation_head", "predict_segmentation",
           "SegmentationSettings", "run_segmentation", "pixel_knn_segmentation", "pixel_tokens",
           "knn_summary", "save_segmentation_outputs", "segment_markdown"]
