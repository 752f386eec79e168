"""Frozen-encoder classification probes with the paper's protocol (docs/design.md §7).

Protocol: cross-entropy, AdamW, per-step linear warm-up from 0 (5 epochs, or half of a shorter run) then cosine to 0
(`transformers.get_cosine_schedule_with_warmup`); training augmentation RandomResizedCrop(0.3–1) + flip + colour
jitter 0.4, evaluation on an 87.5 % centre crop. For every probe type a 5 × 5 lr × wd grid ({0.5, 1, 2, 4, 8}e-3
each) of heads trains simultaneously (`ProbeSweep`), all fed by ONE frozen encoder forward per batch (eval mode, no
gradients). Like the paper, the best grid point is reported (selected on the evaluation split).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from ..checkpoints import check_output, load_encoder, save_model_folder
from ..configuration_bootleg import PROBE_TYPES, BootlegConfig
from ..data import EvalTransform, ProbeTrainTransform, load_image_dataset
from ..precision import use_bf16
from ..image_processing_bootleg import make_image_processor
from ..modeling_bootleg import BootlegModel
from ..modeling_bootleg_heads import AttentiveProbe, BootlegForImageClassification, build_probe
from ..optim import adamw, param_groups
from ..publishing import results_document
from ..reports import write_report
from .common import check_names, default_device, frozen_tokens, report_heading, select_subset, square_size

PROBE_GRID: tuple[float, ...] = (0.5e-3, 1e-3, 2e-3, 4e-3, 8e-3)


class ProbeSweep(nn.Module):
    """`len(lrs) · len(wds)` independent probes of one type, trained together from the same features.

    Head `i` has hyper-parameters `grid[i] = (lr, wd)` (lr-major order) and its own AdamW param groups in one shared
    optimizer; the summed loss gives each head exactly the gradient of its own loss (the features carry no gradient),
    so every head trains as it would alone. The schedule is per-step linear warm-up from 0, then cosine to 0.
    """

    def __init__(self, kind: str, config: BootlegConfig, num_labels: int, lrs: Sequence[float] = PROBE_GRID,
                 wds: Sequence[float] = PROBE_GRID, total_steps: int = 1, warmup_steps: int = 0):
        super().__init__()
        self.grid = [(float(lr), float(wd)) for lr in lrs for wd in wds]
        self.heads = nn.ModuleList(build_probe(kind, config, num_labels) for _ in self.grid)
        groups = [g for head, (lr, wd) in zip(self.heads, self.grid) for g in param_groups(head, wd, lr)]
        self.optimizer = adamw(groups, lr=self.grid[0][0])
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, warmup_steps, total_steps)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[B, T, D]` → logits `[K, B, C]` for the K heads (shared features computed once)."""
        features = self.heads[0].shared_features(tokens)
        if not isinstance(self.heads[0], AttentiveProbe):
            return torch.stack([head.classify(features) for head in self.heads])
        # Attentive heads: the attention of all K·H query directions in one matmul instead of K skinny ones.
        directions = torch.cat([head.key_directions() for head in self.heads])
        attn = torch.einsum("btd,jd->bjt", features, directions).softmax(dim=-1)
        pooled = torch.bmm(attn, features).split(self.heads[0].num_heads, dim=1)
        return torch.stack([head.classify_pooled(p) for head, p in zip(self.heads, pooled)])

    def train_step(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer + scheduler step of every head on `tokens [B, T, D]` (no grad), `labels [B]` → losses `[K]`."""
        self.train()
        losses = torch.stack([F.cross_entropy(logits, labels) for logits in self(tokens)])
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        self.scheduler.step()
        return losses.detach()

    @torch.no_grad()
    def num_correct(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Correct top-1 predictions per head `[K]` on one batch (eval mode)."""
        self.eval()
        return (self(tokens).argmax(-1) == labels).sum(1)


@dataclass
class ProbeSettings:
    """What `run_probes` trains: probe types, budget (epochs, batch, subset sizes), the lr × wd grid, warm-up (default
    5 epochs, or `epochs // 2` below 10 epochs so short runs reach their cosine phase), which encoder weights of a
    pretraining folder, the test split, seed, data-loader workers, device (default: GPU if any) and the frozen
    encoder's precision while the heads train (`auto`: bf16 autocast where bf16 matmuls are native; the heads train
    in float32, and the test split is always encoded in float32, as a saved classifier runs)."""

    probes: Sequence[str] = PROBE_TYPES
    epochs: int = 10
    batch_size: int = 256
    limit_train: int | None = None
    limit_test: int | None = None
    lrs: Sequence[float] = PROBE_GRID
    wds: Sequence[float] = PROBE_GRID
    warmup_epochs: int | None = None
    test_split: str = "test"
    weights: str = "teacher"
    seed: int = 0
    num_workers: int = 1
    device: str | None = None
    precision: str = "auto"

    def __post_init__(self) -> None:
        use_bf16(self.precision, "cpu")  # validates the name
        self.probes = check_names(self.probes, PROBE_TYPES, "probe types")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.warmup_epochs is None:
            self.warmup_epochs = min(5, self.epochs // 2)


def class_names(ds: datasets.Dataset) -> list[str]:
    """Names of the `label` column's classes (`ClassLabel` names, else the integers up to the largest label)."""
    feature = ds.features.get("label")
    if feature is None:
        raise ValueError(f"classification probes need a label column; the dataset has {ds.column_names}")
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    return [str(i) for i in range(max(ds["label"]) + 1)]


def make_loader(ds: datasets.Dataset, batch_size: int, train: bool, num_workers: int, seed: int,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The probes' DataLoader. `pin_memory` is for CUDA devices only (page-locked batches copy faster to the GPU;
    without an accelerator torch only warns). Workers: `ProbeSettings.num_workers` defaults to 1, which overlaps
    loading with the frozen encoder; on a CPU the encoder is the slower of the two by far (one worker transforms
    several hundred 224 px JPEGs per second, `bench/bench_input.py`), on a GPU give it about the encoder's images/s
    divided by that rate."""
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=train, drop_last=train and len(ds) >= batch_size,  # BatchNorm needs B > 1
        num_workers=num_workers, persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed),
        pin_memory=pin_memory)


def train_sweeps(encoder: BootlegModel, sweeps: dict[str, ProbeSweep], loader, epochs: int, device: torch.device,
                 precision: str = "auto") -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Train every sweep for `epochs` on one frozen encoder pass per batch; returns each head's mean loss of the last
    epoch per type and the time spent in the encoder and in the heads."""
    timings = {"encoder_s": 0.0, "heads_s": 0.0}
    losses: dict[str, torch.Tensor] = {}
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        losses = {kind: torch.zeros(len(s.grid)) for kind, s in sweeps.items()}
        for batch in loader:
            tick = time.perf_counter()
            tokens = frozen_tokens(encoder, batch["pixel_values"].to(device), precision)
            timings["encoder_s"] += time.perf_counter() - tick
            tick = time.perf_counter()
            labels = batch["label"].to(device)
            for kind, sweep in sweeps.items():
                losses[kind] += sweep.train_step(tokens, labels).cpu() / len(loader)
            timings["heads_s"] += time.perf_counter() - tick
        summary = ", ".join(f"{kind} {float(loss.min()):.3f}" for kind, loss in losses.items())
        print(f"epoch {epoch + 1}/{epochs} ({time.perf_counter() - epoch_start:.1f} s): best train loss {summary}",
              flush=True)
    return losses, timings


@torch.no_grad()
def top1(encoder: BootlegModel, sweeps: dict[str, ProbeSweep], loader, device: torch.device) -> dict[str, torch.Tensor]:
    """Top-1 accuracy in % of every head `{type: [K]}` on `loader`, the encoder in float32: the reported scores are
    what the saved classifier gives in a float32 pipeline (the heads may have trained on bf16 features)."""
    correct = {kind: torch.zeros(len(s.grid), dtype=torch.long) for kind, s in sweeps.items()}
    total = 0
    for batch in loader:
        tokens = frozen_tokens(encoder, batch["pixel_values"].to(device), "fp32")
        labels = batch["label"].to(device)
        total += len(labels)
        for kind, sweep in sweeps.items():
            correct[kind] += sweep.num_correct(tokens, labels).cpu()
    return {kind: 100.0 * c.double() / total for kind, c in correct.items()}


def run_probes(model: str | os.PathLike | BootlegModel,
               dataset: str | datasets.DatasetDict = "fashion-mnist", settings: ProbeSettings | None = None,
               out: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train the lr × wd sweep of every probe type on a frozen encoder (`model`: anything `load_encoder` takes) and
    return the results: per type the full grid (`top1` in %, final-epoch `train_loss`) and the best point.

    With `out`, also writes `probe_results.json` (the `bootleg-results/1` document of these results, see
    `bootleg_hf.publishing.read_results`) / `.md`, the best head of each type (`heads/<type>.safetensors`, with its
    type, class names and score as metadata, which `export_pretrained` reads) and `classifier/`, a
    `BootlegForImageClassification` folder for the best probe with a processor doing the evaluation crop, which
    `pipeline("image-classification", model=...)` loads. A non-empty `out` is refused (before any work) unless
    `overwrite`."""
    s = settings or ProbeSettings()
    if out is not None:
        check_output(out, overwrite, inputs=[model])
    start = time.perf_counter()
    device = torch.device(s.device) if s.device is not None else default_device()
    encoder = load_encoder(model, s.weights).requires_grad_(False).to(device)
    config = encoder.config
    size = square_size(config)
    train = select_subset(load_image_dataset(dataset, "train"), s.limit_train, s.seed)
    test = select_subset(load_image_dataset(dataset, s.test_split), s.limit_test, s.seed)
    label_names = class_names(train)
    train.set_transform(ProbeTrainTransform(size, scale=(0.3, 1.0), jitter=0.4))
    test.set_transform(EvalTransform(size, crop_fraction=0.875))  # what `make_image_processor` saves
    pin = device.type == "cuda"
    train_loader = make_loader(train, s.batch_size, True, s.num_workers, s.seed, pin)
    test_loader = make_loader(test, s.batch_size, False, s.num_workers, s.seed, pin)
    sweeps = {}
    for kind in s.probes:
        torch.manual_seed(s.seed)
        sweeps[kind] = ProbeSweep(kind, config, len(label_names), s.lrs, s.wds, s.epochs * len(train_loader),
                                  s.warmup_epochs * len(train_loader)).to(device)
    losses, timings = train_sweeps(encoder, sweeps, train_loader, s.epochs, device, s.precision)
    accuracy = top1(encoder, sweeps, test_loader, device)

    results: dict[str, Any] = {
        "model": os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
        "weights": s.weights,
        "dataset": dataset if isinstance(dataset, str) else "custom", "split": s.test_split, "num_train": len(train),
        "num_test": len(test), "image_size": size, "labels": label_names, "epochs": s.epochs,
        "warmup_epochs": s.warmup_epochs, "batch_size": s.batch_size, "lrs": list(s.lrs), "wds": list(s.wds),
        "seed": s.seed, "probes": {},
    }
    for kind, sweep in sweeps.items():
        grid = [{"lr": lr, "weight_decay": wd, "top1": float(a), "train_loss": float(loss)}
                for (lr, wd), a, loss in zip(sweep.grid, accuracy[kind], losses[kind])]
        best = int(accuracy[kind].argmax())
        results["probes"][kind] = {"best": {**grid[best], "index": best}, "grid": grid}
    results["best_probe"] = max(results["probes"], key=lambda k: results["probes"][k]["best"]["top1"])
    timings["total_s"] = time.perf_counter() - start
    results["wall_time_s"] = {k: round(v, 2) for k, v in timings.items()}
    if out is not None:
        save_probe_outputs(results, sweeps, encoder, label_names, Path(out))
    return results


def save_probe_outputs(results: dict[str, Any], sweeps: dict[str, ProbeSweep], encoder: BootlegModel,
                       label_names: list[str], out: Path) -> None:
    """The best head per type, the best classifier as a model folder, and the report (see `run_probes`)."""
    (out / "heads").mkdir(parents=True, exist_ok=True)
    results["heads"] = {}
    for kind, sweep in sweeps.items():
        best = results["probes"][kind]["best"]
        state = {k: v.detach().cpu().contiguous() for k, v in sweep.heads[best["index"]].state_dict().items()}
        results["heads"][kind] = f"heads/{kind}.safetensors"
        save_file(state, out / results["heads"][kind],
                  metadata={"probe_type": kind, "num_labels": str(len(label_names)), "labels": json.dumps(label_names),
                            **{k: str(best[k]) for k in ("lr", "weight_decay", "top1")}})
    kind = results["best_probe"]
    best_head = sweeps[kind].heads[results["probes"][kind]["best"]["index"]].state_dict()
    classifier = BootlegForImageClassification.from_encoder(encoder, best_head, id2label=label_names, probe_type=kind)
    save_model_folder(classifier, out / "classifier", make_image_processor(encoder.config), overwrite=True)
    write_report(out, "probe_results", results_document(classification=results), probe_markdown(results))


def probe_markdown(results: dict[str, Any]) -> str:
    """Best top-1 per probe type, then each type's full lr × wd grid."""
    protocol = (f"{results['epochs']} epochs ({results['warmup_epochs']} warm-up), batch {results['batch_size']}, "
                f"{len(results['lrs'])}×{len(results['wds'])} lr × wd grid")
    lines = report_heading("Frozen probes", results, protocol) + ["| probe | top-1 % | lr | wd |", "|---|---|---|---|"]
    for kind, r in results["probes"].items():
        b = r["best"]
        lines.append(f"| {kind} | {b['top1']:.2f} | {b['lr']:g} | {b['weight_decay']:g} |")
    for kind, r in results["probes"].items():
        lines += ["", f"## {kind}: top-1 % (rows lr, columns wd)", "",
                  "| lr \\ wd | " + " | ".join(f"{wd:g}" for wd in results["wds"]) + " |",
                  "|---" * (len(results["wds"]) + 1) + "|"]
        by_point = {(g["lr"], g["weight_decay"]): g["top1"] for g in r["grid"]}
        for lr in results["lrs"]:
            lines.append(f"| {lr:g} | " + " | ".join(f"{by_point[(lr, wd)]:.2f}" for wd in results["wds"]) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["PROBE_GRID", "ProbeSweep", "ProbeSettings", "run_probes", "probe_markdown", "class_names"]
