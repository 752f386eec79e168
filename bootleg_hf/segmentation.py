"""Segmentation probes on frozen features (SPEC §7): CAPI-style kNN, Lin/Blk head training, mIoU.

Conventions shared by everything here: images are resized to R×R and label maps to R×R (nearest), the encoder's
patch tokens form an `h × w` grid with `P×P` pixels per patch, and label maps use `ignore_index` (one value or several)
for pixels that are not scored.

Metric: `miou` builds a confusion matrix over all non-ignored pixels (flattened over the whole set) and averages
per-class IoU = TP / (TP + FP + FN) over the classes present in the ground truth or the prediction (sklearn's
`jaccard_score(average="macro")` over the labels present), never over ignore labels. Pixel accuracy = correct /
non-ignored pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .modeling_bootleg import BootlegModel
from .probes import make_scheduler, param_groups

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
def encode(encoder: BootlegModel, pixel_values: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Frozen features: `pixel_values [N, C, R, R]` → final-LN tokens `[N, T, D]` (float32, on the input's device).

    Runs the encoder in eval mode at R (interpolating the position embedding when R differs from the config)."""
    encoder.eval()
    device = next(encoder.parameters()).device
    out = [encoder(x.to(device), interpolate_pos_encoding=True).last_hidden_state.float().to(pixel_values.device)
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


# --------------------------------------------------------------------------------------------------------------------
# Lin / Blk heads on cached features
# --------------------------------------------------------------------------------------------------------------------


def train_segmentation_head(head: nn.Module, tokens: torch.Tensor, labels: torch.Tensor, grid: tuple[int, int], *,
                            epochs: int = 10, batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4,
                            warmup_epochs: float = 1.0, ignore_index: int | Iterable[int] | None = 255,
                            seed: int = 0) -> list[float]:
    """Train a Lin/Blk head (`head(tokens [B, T, D], grid) → [B, C, h, w]`) on cached frozen features.

    `tokens [N, T, D]` and `labels [N, R, R]` (long) are computed once (no augmentation), so an epoch is just the
    head. Loss: logits upsampled bilinearly to R×R, cross-entropy skipping `ignore_index` (one label or several).
    AdamW (no decay on biases, norms, class embeddings), per-step warm-up + cosine. Returns each epoch's mean loss.
    """
    device = next(head.parameters()).device
    optimizer = torch.optim.AdamW(param_groups(head, lr, weight_decay))
    steps_per_epoch = -(-len(tokens) // batch_size)
    scheduler = make_scheduler(optimizer, round(warmup_epochs * steps_per_epoch), epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    ignored = torch.tensor(as_label_set(ignore_index), dtype=torch.long, device=labels.device)
    labels = torch.where(torch.isin(labels, ignored), -100, labels)  # cross-entropy takes a single ignore value
    head.train()
    history = []
    for _ in range(epochs):
        total = 0.0
        for index in torch.randperm(len(tokens), generator=generator).split(batch_size):
            x, y = tokens[index].to(device), labels[index].to(device)
            logits = F.interpolate(head(x, grid), size=y.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, y, ignore_index=-100)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(index)
        history.append(total / len(tokens))
    return history


@torch.no_grad()
def predict_segmentation(head: nn.Module, tokens: torch.Tensor, grid: tuple[int, int], size: tuple[int, int],
                         batch_size: int = 256) -> torch.Tensor:
    """Label maps `[N, *size]`: head logits upsampled bilinearly to `size`, then argmax."""
    head.eval()
    device = next(head.parameters()).device
    out = [F.interpolate(head(x.to(device), grid), size=size, mode="bilinear", align_corners=False).argmax(1).cpu()
           for x in tokens.split(batch_size)]
    return torch.cat(out)


__all__ = ["KNN_KS", "KNN_METRICS", "confusion_matrix", "segmentation_scores", "miou", "encode", "patch_label_blocks",
           "blocks_to_maps", "KnnSegmenter", "knn_segmentation", "train_segmentation_head", "predict_segmentation"]
