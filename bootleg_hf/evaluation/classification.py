"""Frozen-encoder classification probes with the paper's protocol (docs/design.md §7), and the standard quick metrics.

Protocol: cross-entropy, AdamW, per-step linear warm-up from 0 (5 epochs, or half of a shorter run) then cosine to 0
(`transformers.get_cosine_schedule_with_warmup`, whose factor is exactly 0 at step 0, so the first optimizer step
moves nothing); training augmentation RandomResizedCrop(0.3–1) + flip + colour jitter 0.4, evaluation on an 87.5 %
centre crop. For every probe type a 5 × 5 lr × wd grid ({0.5, 1, 2, 4, 8}e-3 each) of heads trains simultaneously
(`ProbeSweep`), all fed by ONE frozen encoder forward per batch (eval mode, no gradients). Like the paper, the best
grid point is reported (selected on the evaluation split).

Two budgets (`PROBE_PROTOCOLS`): `paper`, the appendix's (20 epochs at batch 1024), and `quick`, the CPU-sized one
(10 epochs at batch 256), which every report labels as such. LR rule: the grid's learning rates are the paper's, for
its batch 1024; a run at batch B trains with lr × B / 1024 (linear scaling), so `quick` at batch 256 uses a quarter
of each grid value. Explicit epochs / batch size override a protocol's and the report names what was changed.

Quick metrics (`quick_metrics`): weighted kNN top-1 and a converged linear classifier on cached evaluation-view
features of the encoder (its pooled output: CLS token, or mean patch token without one), next to the same two
numbers for two reference lines: the raw pixels (average-pooled to the patch grid) and a random-init encoder of the
same architecture.
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

from ..checkpoints import check_output, load_encoder, random_init, save_model_folder
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
from .quick_metrics import KNN_DESCRIPTION, LINEAR_DESCRIPTION, pixel_features, quick_metrics

PROBE_GRID: tuple[float, ...] = (0.5e-3, 1e-3, 2e-3, 4e-3, 8e-3)
# The budgets of the probe protocols: the paper's appendix, and the CPU-sized one (reports label it "quick protocol")
PROBE_PROTOCOLS: dict[str, dict[str, int]] = {"paper": {"epochs": 20, "batch_size": 1024, "warmup_epochs": 5},
                                              "quick": {"epochs": 10, "batch_size": 256, "warmup_epochs": 5}}
LR_REFERENCE_BATCH = PROBE_PROTOCOLS["paper"]["batch_size"]  # the batch the paper's lr grid is given for
LR_RULE = f"lr = grid lr × batch / {LR_REFERENCE_BATCH} (linear scaling from the paper's batch {LR_REFERENCE_BATCH})"
# the reference lines of the quick metrics
PIXELS = "raw pixels"
RANDOM_REFERENCE = "random init"


class ProbeSweep(nn.Module):
    """`len(lrs) · len(wds)` independent probes of one type, trained together from the same features.

    Head `i` has hyper-parameters `grid[i] = (lr, wd)` (lr-major order) and its own AdamW param groups in one shared
    optimizer; the summed loss gives each head exactly the gradient of its own loss (the features carry no gradient),
    so every head trains as it would alone. The schedule is per-step linear warm-up from 0, then cosine to 0. Head `i`
    trains with learning rate `lr · lr_scale` (`ProbeSettings.lr_scale`, the LR rule for the batch size).
    """

    def __init__(self, kind: str, config: BootlegConfig, num_labels: int, lrs: Sequence[float] = PROBE_GRID,
                 wds: Sequence[float] = PROBE_GRID, total_steps: int = 1, warmup_steps: int = 0,
                 lr_scale: float = 1.0):
        super().__init__()
        self.grid = [(float(lr), float(wd)) for lr in lrs for wd in wds]
        self.heads = nn.ModuleList(build_probe(kind, config, num_labels) for _ in self.grid)
        groups = [g for head, (lr, wd) in zip(self.heads, self.grid) for g in param_groups(head, wd, lr * lr_scale)]
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

    def num_correct(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Correct top-1 predictions per head `[K]` on one batch (eval mode)."""
        self.eval()
        with torch.no_grad():  # not the decorator: `make mutation` (mutmut) skips decorated functions
            return (self(tokens).argmax(-1) == labels).sum(1)


@dataclass
class ProbeSettings:
    """What `run_probes` trains: probe types, the protocol (`paper` or `quick`, `PROBE_PROTOCOLS`) and its budget
    (epochs and batch: the protocol's unless given; subset sizes), the lr × wd grid (learning rates scaled by
    `lr_scale` for the batch), warm-up (default 5 epochs, or `epochs // 2` below 10 epochs so short runs reach their
    cosine phase), which encoder weights of a pretraining folder, the test split, seed, data-loader workers, device
    (default: GPU if any), the frozen encoder's precision while the heads train (`auto`: bf16 autocast where bf16
    matmuls are native; the heads train in float32, and the test split is always encoded in float32, as a saved
    classifier runs), whether to add the quick metrics (kNN and linear top-1 on cached features, float32) and, with
    them, the reference lines (raw pixels, a random-init encoder of the same architecture seeded with `seed`)."""

    probes: Sequence[str] = PROBE_TYPES
    protocol: str = "quick"
    epochs: int | None = None
    batch_size: int | None = None
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
    quick_metrics: bool = True
    references: bool = True

    def __post_init__(self) -> None:
        use_bf16(self.precision, "cpu")  # validates the name
        self.probes = check_names(self.probes, PROBE_TYPES, "probe types")
        own = PROBE_PROTOCOLS.get(self.protocol)
        if own is None:
            raise ValueError(f"unknown probe protocol {self.protocol!r}; choose from {tuple(PROBE_PROTOCOLS)}")
        self.epochs = own["epochs"] if self.epochs is None else self.epochs
        self.batch_size = own["batch_size"] if self.batch_size is None else self.batch_size
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch size must be at least 1, got {self.epochs} and {self.batch_size}")
        if self.warmup_epochs is None:
            self.warmup_epochs = min(own["warmup_epochs"], self.epochs // 2)

    @property
    def lr_scale(self) -> float:
        """The LR rule (`LR_RULE`): the factor `batch_size / 1024` applied to every learning rate of the grid."""
        return self.batch_size / LR_REFERENCE_BATCH

    @property
    def protocol_label(self) -> str:
        """`"<protocol> protocol"`, followed by what differs from it (budget or grid), e.g. `"quick protocol (epochs 3
        instead of 10, warmup epochs 1 instead of 5)"`."""
        changed = [f"{name.replace('_', ' ')} {getattr(self, name)} instead of {value}"
                   for name, value in PROBE_PROTOCOLS[self.protocol].items() if getattr(self, name) != value]
        changed += [f"{name} grid {list(map(float, grid))}" for name, grid in (("lr", self.lrs), ("wd", self.wds))
                    if list(map(float, grid)) != list(PROBE_GRID)]
        return f"{self.protocol} protocol" + (f" ({', '.join(changed)})" if changed else "")


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
def cached_features(encoders: dict[str, BootlegModel], ds: datasets.Dataset, pixel_grid: tuple[int, int] | None,
                    s: ProbeSettings, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One float32 pass over `ds` (its transform attached): each named encoder's pooled output `[N, D]`
    (`pooler_output`: the CLS token after the final LayerNorm, or the mean patch token without a CLS token) and, with
    `pixel_grid`, the raw pixels (`PIXELS`: `pixel_features`, `[N, C · h · w]`) → (`{name: features}`, labels `[N]`)."""
    loader = make_loader(ds, s.batch_size, False, s.num_workers, s.seed, device.type == "cuda")
    features: dict[str, list[torch.Tensor]] = {name: [] for name in [*encoders, *([PIXELS] if pixel_grid else [])]}
    labels = []
    for batch in loader:
        pixel_values = batch["pixel_values"].to(device)
        for name, encoder in encoders.items():
            features[name].append(encoder(pixel_values).pooler_output.float().cpu())
        if pixel_grid:
            features[PIXELS].append(pixel_features(pixel_values, pixel_grid).cpu())
        labels.append(batch["label"])
    return {name: torch.cat(f) for name, f in features.items()}, torch.cat(labels)


def quick_metric_results(encoders: dict[str, BootlegModel], train: datasets.Dataset, test: datasets.Dataset,
                         num_classes: int, s: ProbeSettings, device: torch.device,
                         pixels: bool = True) -> dict[str, Any]:
    """The quick metrics (`quick_metrics.quick_metrics`: kNN and linear top-1 in %) of each named frozen encoder and,
    with `pixels`, of the raw pixels (`PIXELS`), on features of `train` / `test` cached in memory in the evaluation
    view (the 87.5 % centre crop the test split is scored with; no augmentation). The encoders share one architecture.
    Returns `{"feature", "pixels", "knn", "linear", "rows": {name: {"dim", "knn_top1", "linear_top1", "linear"}}}`,
    the first four describing what was measured."""
    config = next(iter(encoders.values())).config
    transform = EvalTransform(square_size(config), crop_fraction=0.875)
    grid = config.grid_size if pixels else None
    train_features, train_labels = cached_features(encoders, train.with_transform(transform), grid, s, device)
    test_features, test_labels = cached_features(encoders, test.with_transform(transform), grid, s, device)
    rows = {name: quick_metrics(train_features[name], train_labels, test_features[name], test_labels, num_classes,
                                s.seed) for name in train_features}
    feature = ("CLS token" if config.use_cls_token else "mean patch token") + " after the final LayerNorm"
    pixel_text = (f"the evaluation view average-pooled to the {grid[0]}×{grid[1]} patch grid "
                  f"({rows[PIXELS]['dim']} values)") if pixels else None
    return {"feature": feature, "pixels": pixel_text, "knn": KNN_DESCRIPTION, "linear": LINEAR_DESCRIPTION,
            "rows": rows}


def probe_splits(dataset: str | datasets.DatasetDict, s: ProbeSettings) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The train and test images `run_probes` uses: seeded subsets of `limit_train` / `limit_test` images."""
    return (select_subset(load_image_dataset(dataset, "train"), s.limit_train, s.seed),
            select_subset(load_image_dataset(dataset, s.test_split), s.limit_test, s.seed))


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
    return the results: the protocol (`protocol`, `protocol_label`, the budget actually used, `lr_scale`), per type the
    full grid (`top1` in %, final-epoch `train_loss`, `lr` as in the grid and `lr_applied` = lr × `lr_scale`) and the
    best point, and (`settings.quick_metrics`) `quick_metrics`: kNN and linear top-1 of the encoder (row `encoder`)
    and of the reference lines `raw pixels` and `random init` (`settings.references`), see `quick_metric_results`.

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
    train, test = probe_splits(dataset, s)
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
                                  s.warmup_epochs * len(train_loader), s.lr_scale).to(device)
    losses, timings = train_sweeps(encoder, sweeps, train_loader, s.epochs, device, s.precision)
    accuracy = top1(encoder, sweeps, test_loader, device)
    quick = None
    if s.quick_metrics:
        tick = time.perf_counter()
        encoders = {"encoder": encoder}
        if s.references:
            encoders[RANDOM_REFERENCE] = random_init(config, s.seed).eval().requires_grad_(False).to(device)
        quick = quick_metric_results(encoders, train, test, len(label_names), s, device, pixels=s.references)
        timings["quick_metrics_s"] = time.perf_counter() - tick

    results: dict[str, Any] = {
        "model": os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
        "weights": s.weights,
        "dataset": dataset if isinstance(dataset, str) else "custom", "split": s.test_split, "num_train": len(train),
        "num_test": len(test), "image_size": size, "labels": label_names, "protocol": s.protocol,
        "protocol_label": s.protocol_label, "epochs": s.epochs, "warmup_epochs": s.warmup_epochs,
        "batch_size": s.batch_size, "lr_rule": LR_RULE, "lr_scale": s.lr_scale, "lrs": list(s.lrs),
        "wds": list(s.wds), "seed": s.seed, "probes": {},
    }
    for kind, sweep in sweeps.items():
        grid = [{"lr": lr, "lr_applied": lr * s.lr_scale, "weight_decay": wd, "top1": float(a),
                 "train_loss": float(loss)} for (lr, wd), a, loss in zip(sweep.grid, accuracy[kind], losses[kind])]
        best = int(accuracy[kind].argmax())
        results["probes"][kind] = {"best": {**grid[best], "index": best}, "grid": grid}
    results["best_probe"] = max(results["probes"], key=lambda k: results["probes"][k]["best"]["top1"])
    if quick is not None:
        results["quick_metrics"] = quick
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
                            **{k: str(best[k]) for k in ("lr", "lr_applied", "weight_decay", "top1")}})
    kind = results["best_probe"]
    best_head = sweeps[kind].heads[results["probes"][kind]["best"]["index"]].state_dict()
    classifier = BootlegForImageClassification.from_encoder(encoder, best_head, id2label=label_names, probe_type=kind)
    save_model_folder(classifier, out / "classifier", make_image_processor(encoder.config), overwrite=True)
    write_report(out, "probe_results", results_document(classification=results), probe_markdown(results))


def quick_markdown(quick: dict[str, Any], row_labels: dict[str, str] | None = None) -> list[str]:
    """The quick-metrics table of `quick_metric_results`' output, one row per feature set (named by `row_labels`
    where given), with what was measured above it."""
    lines = [f"Quick metrics on cached evaluation-view features (no augmentation): {quick['knn']}, and a linear "
             f"classifier, {quick['linear']}. Encoder feature: the {quick['feature']}"
             + (f"; raw pixels: {quick['pixels']}" if quick["pixels"] else "") + ".", "",
             "| features | dim | kNN top-1 % | linear top-1 % | linear L2 | largest gradient entry at the end |",
             "|---" * 6 + "|"]
    for name, r in quick["rows"].items():
        linear = r["linear"]
        note = "" if linear["converged"] else " (not converged)"
        lines.append(f"| {(row_labels or {}).get(name, name)} | {r['dim']} | {r['knn_top1']:.2f} | "
                     f"{r['linear_top1']:.2f}{note} | {linear['l2']:g} | {linear['grad_max']:.1e} |")
    return lines


def probe_markdown(results: dict[str, Any]) -> str:
    """Best top-1 per probe type, the quick metrics with their reference lines, then each type's lr × wd grid."""
    protocol = (f"{results['protocol_label']}: {results['epochs']} epochs ({results['warmup_epochs']} warm-up), "
                f"batch {results['batch_size']}, {len(results['lrs'])}×{len(results['wds'])} lr × wd grid, "
                f"{results['lr_rule']}: × {results['lr_scale']:g} here")
    lines = report_heading("Frozen probes", results, protocol) + ["| probe | top-1 % | lr | wd |", "|---|---|---|---|"]
    for kind, r in results["probes"].items():
        b = r["best"]
        lines.append(f"| {kind} | {b['top1']:.2f} | {b['lr']:g} | {b['weight_decay']:g} |")
    if "quick_metrics" in results:
        lines += ["", *quick_markdown(results["quick_metrics"], {"encoder": "this encoder",
                                                                 RANDOM_REFERENCE: "random init, same architecture"})]
    for kind, r in results["probes"].items():
        lines += ["", f"## {kind}: top-1 % (rows lr, columns wd)", "",
                  "| lr \\ wd | " + " | ".join(f"{wd:g}" for wd in results["wds"]) + " |",
                  "|---" * (len(results["wds"]) + 1) + "|"]
        by_point = {(g["lr"], g["weight_decay"]): g["top1"] for g in r["grid"]}
        for lr in results["lrs"]:
            lines.append(f"| {lr:g} | " + " | ".join(f"{by_point[(lr, wd)]:.2f}" for wd in results["wds"]) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["PROBE_GRID", "PROBE_PROTOCOLS", "LR_RULE", "PIXELS", "RANDOM_REFERENCE", "ProbeSweep", "ProbeSettings",
           "run_probes", "probe_markdown", "quick_markdown", "quick_metric_results", "probe_splits", "class_names"]
