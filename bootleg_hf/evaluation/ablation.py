"""Objective ablation (the paper's central experiment at small scale): pretrain one encoder per objective with the
same architecture, data, budget, schedules, masks and seeds, then score every teacher with the same frozen probes.

Objectives (all expressed through `TargetSpec` and the masking modes; L = encoder depth after recipe overrides):

| name | targets | merge | masking | what it stands for |
|---|---|---|---|---|
| bootleg | `default_targets(L)` (1:2:6, 1:4:12, 1:4:24) | concat | bootleg | Bootleg |
| last | L | concat | bootleg | last block only |
| ijepa | final | concat | ijepa | I-JEPA (final-LN output, legacy I-JEPA masks) |
| average | as bootleg | average | bootleg | data2vec-style averaged layers |
| pixels | pixels | concat | bootleg | MAE-style pixel targets (only the target changes) |
| random-mask | as bootleg | concat | random | Bootleg targets with MAE's 75 % random masking |
| deep | last third of blocks (9-12 for L=12) | concat | bootleg | paper ablation "blocks 9-12" (optional) |
| middle | middle third (5-8 for L=12) | concat | bootleg | paper ablation "blocks 5-8" (optional) |

Everything else is shared: the recipe (LR, weight decay and EMA schedules, augmentation), the step budget and
batch, the warm-up (`warmup_frac` of the steps; recipes express warm-up in epochs, longer than short ablations),
and per seed the initial weights (every objective of a seed starts from the same encoder; `init_sha256` in each
run's JSON shows it), the data order and the masks (per masking mode). `include_random_init` adds that initial
encoder, probed without pretraining, as the baseline row.

Probes: `run_probes`' quick protocol with the ablation's epochs and batch (5 × 5 lr × wd sweep per probe type
trained on one frozen pass, learning rates × batch / 1024, best grid point reported), on `probe_train` / `probe_test`
images drawn with the run's seed, teacher weights; plus the quick metrics `knn` and `linear` (weighted kNN and a
converged linear classifier on cached features, `bootleg_hf.evaluation.quick_metrics`) of every teacher. Their
reference lines, raw pixels and the seed's initial encoder (random init), are computed once per seed (the probe
subsets depend on it), kept in `<out>/references/s<seed>.json`, and shown in the same tables; the random-init run,
when included, takes its quick metrics from there.

Resumable: each run writes `<out>/runs/<objective>-s<seed>/result.json` when done, and finished runs are skipped
(a run whose recorded settings differ from the requested ones is an error: use another `out`). An interrupted
pretraining resumes from its last checkpoint, and a finished pretraining (`pretrain.json` + `encoder/`) is only
probed again. The report (`<report>.md`, `.json`, `.png`) is rebuilt from all finished runs at the end.

Representations: `analyze_images` > 0 runs `analyze` on every teacher and random-init encoder (first N test
images, each layer's per-position mean removed) and adds three numbers per objective to the report — CKA of the
tokenizer output with the last block, mean CKA of consecutive blocks, and the last block's spatial autocorrelation at
distance 1. Added to a finished ablation, only the analysis runs. The commands and results of the runs made so far
are in bench/README.md.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from transformers.trainer_utils import get_last_checkpoint

from ..checkpoints import encoder_copy, load_encoder, save_model_folder
from ..configuration_bootleg import PROBE_TYPES, default_targets
from ..data import MOSAIC_LABELS, load_image_dataset, make_mosaic_segmentation
from ..pretraining import PretrainSettings, build_trainer, initial_model
from ..recipes import build_config, load_recipe, recipe_path
from ..reports import write_json, write_text
from .analysis import analyze, load_pixel_values
from .classification import (
    PIXELS,
    PROBE_GRID,
    RANDOM_REFERENCE,
    ProbeSettings,
    class_names,
    probe_splits,
    quick_metric_results,
    run_probes,
)
from .common import check_names, default_device
from .quick_metrics import KNN_DESCRIPTION, LINEAR_DESCRIPTION
from .segmentation import SEGMENTATION_PROBES, SegmentationSettings, pixel_knn_segmentation, run_segmentation

DEFAULT_OBJECTIVES = ("bootleg", "last", "ijepa", "average", "pixels", "random-mask")
ALL_OBJECTIVES = DEFAULT_OBJECTIVES + ("deep", "middle")
RANDOM_INIT = "random-init"
LABELS = {
    "bootleg": "Bootleg (spaced blocks, concat)",
    "last": "last block only",
    "ijepa": "I-JEPA (final LN, I-JEPA masks)",
    "average": "spaced blocks averaged (data2vec-style)",
    "pixels": "pixels (MAE-style)",
    "random-mask": "Bootleg targets, random 75 % masks",
    "deep": "last third of blocks, concat",
    "middle": "middle third of blocks, concat",
    RANDOM_INIT: "random init (no pretraining)",
    PIXELS: "raw pixels (reference)",
    RANDOM_REFERENCE: "random init (reference, no pretraining)",
}
QUICK_METRICS = ("knn", "linear")  # the quick metrics, reported like probes: "knn" / "linear" → {"top1": ...}
SEG_PREFIX = "seg-"  # segmentation probes on the mosaics, reported like probes: "seg-knn" → {"miou": ...}
# docs/design.md §12, the paper's ablation (ViT-S/16, 300 epochs, IN-1k top-1 %): objective → (X-Blk, Patch)
PAPER_ABLATION = {"bootleg": (74.4, 67.8), "deep": (69.7, 60.2), "middle": (72.2, 61.6), "average": (69.8, 57.2),
                  "pixels": (66.7, 52.9)}


# --------------------------------------------------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------------------------------------------------


def objective_settings(name: str, depth: int) -> dict[str, str]:
    """The config fields (`targets`, `target_merge`, `mask_mode`) of objective `name` for an encoder of `depth`."""
    third = max(1, depth // 3)
    spaced = default_targets(depth)
    targets = {
        "bootleg": spaced, "last": str(depth), "ijepa": "final", "average": spaced, "pixels": "pixels",
        "random-mask": spaced, "deep": f"{depth - third + 1}-{depth}", "middle": f"{third + 1}-{min(depth, 2 * third)}",
    }
    if name not in targets:
        raise ValueError(f"unknown objective '{name}'; choose from {', '.join(ALL_OBJECTIVES)}")
    return {"targets": targets[name], "target_merge": "average" if name == "average" else "concat",
            "mask_mode": {"ijepa": "ijepa", "random-mask": "random"}.get(name, "bootleg")}


@dataclass
class AblationSettings:
    """An ablation: the recipe (default: the preset's shipped recipe) with overrides, the objectives and seeds, the
    pretraining budget per run (steps × global batch, warm-up as a fraction of the steps, the first `pretrain_limit`
    images of `dataset`), the frozen probes (types, epochs, subset sizes — None: all —, batch, lr × wd grid), whether
    to add the random-init baseline, data-loader workers, whether to keep Trainer checkpoints of finished runs, and
    how many test images the representation analysis uses (0: none)."""

    preset: str = "vit-micro"
    recipe: str | None = None
    overrides: Sequence[str] = ()
    objectives: Sequence[str] = DEFAULT_OBJECTIVES
    seeds: Sequence[int] = (0, 1, 2)
    steps: int = 200
    batch_size: int = 64
    warmup_frac: float = 0.15
    dataset: str | datasets.DatasetDict = "fashion-mnist"
    pretrain_limit: int | None = None
    probes: Sequence[str] = ("patch", "xblk")
    probe_epochs: int = 3
    probe_train: int | None = 5000
    probe_test: int | None = 1000
    probe_batch_size: int = 256
    probe_lrs: Sequence[float] = PROBE_GRID
    probe_wds: Sequence[float] = PROBE_GRID
    include_random_init: bool = False
    num_workers: int = 0
    keep_checkpoints: bool = False
    analyze_images: int = 0
    seg_probes: Sequence[str] = ()
    seg_train: int = 1000
    seg_test: int = 250
    seg_epochs: int | None = None

    def __post_init__(self) -> None:
        self.objectives = check_names(dict.fromkeys(self.objectives), ALL_OBJECTIVES, "objectives")
        self.probes = check_names(self.probes, PROBE_TYPES, "probe types")
        self.seg_probes = check_names(self.seg_probes, SEGMENTATION_PROBES, "segmentation probes") \
            if self.seg_probes else []
        for name in ("seg_train", "seg_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.seeds:
            raise ValueError("give at least one seed")
        self.overrides, self.seeds = list(self.overrides), list(self.seeds)

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_frac * self.steps))

    @property
    def metrics(self) -> list[str]:
        """The report's score columns: the probe types, the quick metrics, then the segmentation probes."""
        return [*self.probes, *QUICK_METRICS, *(SEG_PREFIX + k for k in self.seg_probes)]

    def probe_settings(self, seed: int, quick_metrics: bool = True) -> ProbeSettings:
        """The probes of one run: its reference lines come from `reference_scores`, once per seed."""
        return ProbeSettings(probes=self.probes, protocol="quick", epochs=self.probe_epochs,
                             batch_size=self.probe_batch_size, limit_train=self.probe_train,
                             limit_test=self.probe_test, lrs=list(self.probe_lrs), wds=list(self.probe_wds),
                             seed=seed, num_workers=self.num_workers, quick_metrics=quick_metrics,
                             references=False)

    def segmentation_settings(self, seed: int) -> SegmentationSettings:
        """The segmentation probes of one run: the quick protocol on all of the seed's mosaics (`_Data.mosaics`)."""
        return SegmentationSettings(probes=self.seg_probes, limit_train=None, limit_test=None, epochs=self.seg_epochs,
                                    label_names=MOSAIC_LABELS, seed=seed, num_workers=self.num_workers)

    def signature(self, recipe_name: str, base_recipe: dict[str, Any]) -> dict[str, Any]:
        """What a finished run must have been made with to be reused."""
        return {"recipe": recipe_name, "recipe_content": base_recipe, "overrides": self.overrides,
                "dataset": self.dataset if isinstance(self.dataset, str) else "custom",
                "pretrain_limit": self.pretrain_limit, "steps": self.steps, "batch_size": self.batch_size,
                "warmup_steps": self.warmup_steps, "probe_epochs": self.probe_epochs, "probe_train": self.probe_train,
                "probe_test": self.probe_test, "probe_batch_size": self.probe_batch_size,
                "probe_lrs": list(self.probe_lrs), "probe_wds": list(self.probe_wds),
                "probe_protocol": "quick", "probe_lr_scale": self.probe_settings(0).lr_scale,
                **self.segmentation_signature()}

    def segmentation_signature(self) -> dict[str, Any]:
        """The segmentation part of `signature` (empty without segmentation probes, as before they existed)."""
        if not self.seg_probes:
            return {}
        return {"seg_probes": sorted(self.seg_probes), "seg_train": self.seg_train, "seg_test": self.seg_test,
                "seg_protocol": self.segmentation_settings(0).head_training()}


# --------------------------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------------------------


def state_sha256(module: torch.nn.Module) -> str:
    """Fingerprint of a module's weights (to show that runs of one seed start from the same encoder)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def run_recipe_for(base_recipe: dict[str, Any], settings: dict[str, str]) -> dict[str, Any]:
    """The recipe of one run: the shared recipe with the objective's settings (the random-init baseline has none and
    gets any valid targets: they do not change the encoder)."""
    recipe = copy.deepcopy(base_recipe)
    recipe["model"].update(settings or {"targets": "final", "target_merge": "concat"})
    return recipe


def pretrain_run(recipe: dict[str, Any], dataset: datasets.Dataset, seed: int, s: AblationSettings,
                 run_dir: Path) -> dict[str, Any]:
    """Pretrain one objective (resuming from the run's last checkpoint if any); export the teacher to
    `run_dir/encoder`; return the training record (also written to `run_dir/pretrain.json`)."""
    start = time.perf_counter()
    ckpt_dir = run_dir / "checkpoints"
    settings = PretrainSettings(recipe=recipe, dataset=dataset, output_dir=ckpt_dir, max_steps=s.steps,
                                batch_size=s.batch_size, num_workers=s.num_workers, seed=seed)
    trainer, _ = build_trainer(settings, warmup_steps=s.warmup_steps, logging_steps=max(1, s.steps // 20),
                               save_steps=max(1, s.steps // 2), save_total_limit=1, disable_tqdm=True,
                               dataloader_pin_memory=torch.cuda.is_available())
    init_sha = state_sha256(trainer.model.student)
    resume = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if resume:
        print(f"resuming {run_dir.name} from {resume}", flush=True)
    trainer.train(resume_from_checkpoint=resume)
    save_model_folder(encoder_copy(trainer.unwrapped_model), run_dir / "encoder", overwrite=True)  # this run's
    logs = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    record = {
        "init_sha256": init_sha, "steps": trainer.state.global_step, "batch_size": trainer.args.global_batch_size,
        "warmup_steps": s.warmup_steps, "resumed_from": resume,
        "loss_history": [[h["step"], h["loss"]] for h in logs],
        "loss_first": logs[0]["loss"] if logs else None, "loss_last": logs[-1]["loss"] if logs else None,
        "target_std_last": {k.split("/", 1)[1]: v for k, v in (logs[-1] if logs else {}).items()
                            if k.startswith("target_std/")},
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_json(run_dir / "pretrain.json", record)
    return record


def probe_scores(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A run's scores per probe type (best grid point) and, when measured, per quick metric (`quick_scores`)."""
    scores = {kind: {"top1": r["best"]["top1"], "lr": r["best"]["lr"], "weight_decay": r["best"]["weight_decay"]}
              for kind, r in results["probes"].items()}
    if "quick_metrics" in results:
        scores.update(quick_scores(results["quick_metrics"]["rows"]["encoder"]))
    return scores


def segmentation_scores(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`run_segmentation` results → `{"seg-<probe>": {"miou", "pixel_accuracy", "best"}}` (in %; `best`: the kNN
    setting or the head's learning rate that scored highest)."""
    return {SEG_PREFIX + k: {"miou": r["best"]["miou"], "pixel_accuracy": r["best"]["pixel_accuracy"],
                             "best": r["best"].get("setting", r["best"].get("lr"))}
            for k, r in results["probes"].items()}


def metric_value(score: dict[str, Any]) -> float:
    """The number a report shows for one score: top-1 % for classification, mIoU % for segmentation."""
    return score["top1"] if "top1" in score else score["miou"]


def metric_unit(metric: str) -> str:
    return "mIoU %" if metric.startswith(SEG_PREFIX) else "top-1 %"


def quick_scores(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One feature set's quick metrics (a row of `quick_metric_results`) in the form of probe scores."""
    linear = row["linear"]
    return {"knn": {"top1": row["knn_top1"]},
            "linear": {"top1": row["linear_top1"], "l2": linear["l2"], "converged": linear["converged"]}}


# Representation summary: the three numbers of `analyze` compared across objectives
REPRESENTATION_METRICS = {
    "cka_embed_last": "CKA(tokenizer output, last block)",
    "cka_consecutive": "mean CKA of consecutive blocks",
    "spatial_d1_last": "last block: spatial autocorr. at distance 1",
}


def representation_summary(analysis: dict[str, Any]) -> dict[str, float]:
    """From one `analyze` result: how far the last block has moved from the tokenizer output (linear CKA of `embed`
    with `L.out`; 1 = linearly the same), how alike consecutive blocks are (mean CKA of `b.out`, `b+1.out`), and how
    local the last block's patch embeddings are (mean cosine similarity of neighbouring patches)."""
    layers = analysis["layers"]
    last = f"{analysis['config']['num_hidden_layers']}.out"
    blocks = [i for i, name in enumerate(layers) if name.endswith(".out")]
    cka = analysis["cka"]
    distances = analysis["spatial_autocorrelation"]["distances"]
    return {
        "cka_embed_last": cka[layers.index("embed")][layers.index(last)],
        "cka_consecutive": statistics.fmean(cka[i][j] for i, j in zip(blocks[:-1], blocks[1:])),
        "spatial_d1_last": analysis["spatial_autocorrelation"]["layers"][last][distances.index(1.0)],
    }


def analyze_runs(runs: list[dict[str, Any]], runs_dir: Path, base_recipe: dict[str, Any],
                 dataset: str | datasets.DatasetDict, num_images: int) -> None:
    """Analyse every run's teacher (the random-init baseline: its seed's initial encoder) on the first `num_images`
    test images, reusing `<run>/analysis/analysis.json` when it was made with that many images; add
    `representation` (see `representation_summary`) to each run."""
    config = build_config(run_recipe_for(base_recipe, {}))  # the shared encoder shape
    pixel_values = None
    for r in runs:
        run_dir = runs_dir / f"{r['objective']}-s{r['seed']}"
        saved = run_dir / "analysis" / "analysis.json"
        result = json.loads(saved.read_text()) if saved.is_file() else None
        if result is None or result["num_images"] != num_images or not result["remove_position_mean"]:
            if pixel_values is None:
                pixel_values = load_pixel_values(dataset, num_images, tuple(config.image_hw), "test")
            if r["objective"] == RANDOM_INIT:
                encoder: torch.nn.Module = initial_model(config, r["seed"]).student
            else:
                encoder = load_encoder(run_dir / "encoder")
            result = analyze(encoder, pixel_values, num_images, run_dir / "analysis", remove_position_mean=True,
                             overwrite=True)  # redone with other settings
        r["representation"] = representation_summary(result)


# --------------------------------------------------------------------------------------------------------------------
# The ablation
# --------------------------------------------------------------------------------------------------------------------


class _Data:
    """The ablation's data, loaded on first use: the pretraining subset and the probe splits."""

    def __init__(self, s: AblationSettings):
        self.s = s
        self._train: datasets.Dataset | None = None
        self._probe: datasets.DatasetDict | None = None
        self._mosaics: dict[int, datasets.DatasetDict] = {}

    @property
    def pretrain(self) -> datasets.Dataset:
        if self._train is None:
            self._train = load_image_dataset(self.s.dataset, "train")
            if self.s.pretrain_limit:
                self._train = self._train.select(range(min(self.s.pretrain_limit, len(self._train))))
        return self._train

    @property
    def probe(self) -> datasets.DatasetDict:
        if self._probe is None:
            self._probe = datasets.DatasetDict(train=load_image_dataset(self.s.dataset, "train"),
                                               test=load_image_dataset(self.s.dataset, "test"))
        return self._probe

    def mosaics(self, seed: int) -> datasets.DatasetDict:
        """Seed `seed`'s segmentation task: `seg_train` / `seg_test` Fashion-MNIST mosaics (train images from the
        train split, test images from the test split), the same for every objective of the seed."""
        if seed not in self._mosaics:
            self._mosaics[seed] = datasets.DatasetDict(
                train=make_mosaic_segmentation("train", self.s.seg_train, seed=seed),
                test=make_mosaic_segmentation("test", self.s.seg_test, seed=seed + 1))
        return self._mosaics[seed]


def reference_scores(seed: int, base_recipe: dict[str, Any], s: AblationSettings, data: _Data,
                     out: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """The quick metrics (`quick_scores`) of the reference lines on seed `seed`'s probe subsets: raw pixels
    (`PIXELS`) and the seed's initial encoder (`RANDOM_REFERENCE`: the encoder every objective of the seed starts
    from, what the random-init run probes); with segmentation probes, also their scores on the seed's mosaics
    (`segmentation_scores`; raw pixels: the kNN probe on each patch's pixels). Computed once per seed and kept in
    `<out>/references/s<seed>.json` (recomputed when the architecture, data, subset sizes or segmentation probes
    differ)."""
    path = out / "references" / f"s{seed}.json"
    dataset = s.dataset if isinstance(s.dataset, str) else "custom"
    expected = json.loads(json.dumps({"model": base_recipe["model"], "dataset": dataset, "probe_train": s.probe_train,
                                      "probe_test": s.probe_test, "seed": seed, **s.segmentation_signature()}))
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["settings"] == expected:
            return saved["scores"]
    settings = s.probe_settings(seed)
    train, test = probe_splits(data.probe, settings)
    encoder = initial_model(build_config(run_recipe_for(base_recipe, {})), seed).student
    device = default_device()
    quick = quick_metric_results({RANDOM_REFERENCE: encoder.requires_grad_(False).eval().to(device)}, train, test,
                                 len(class_names(train)), settings, device, pixels=True)
    scores = {name: quick_scores(row) for name, row in quick["rows"].items()}
    record: dict[str, Any] = {"settings": expected, "init_sha256": state_sha256(encoder), "quick_metrics": quick}
    if s.seg_probes:
        mosaics, seg_settings = data.mosaics(seed), s.segmentation_settings(seed)
        record["segmentation"] = run_segmentation(encoder, mosaics, seg_settings)
        scores[RANDOM_REFERENCE].update(segmentation_scores(record["segmentation"]))
        if "knn" in s.seg_probes:
            scores[PIXELS].update(segmentation_scores({"probes": {"knn": pixel_knn_segmentation(
                mosaics, encoder.config, seg_settings)}}))
    write_json(path, {**record, "scores": scores})
    return scores


def run_one(name: str, seed: int, expected: dict[str, Any], base_recipe: dict[str, Any], depth: int,
            s: AblationSettings, data: _Data, run_dir: Path, references: dict[str, Any]) -> dict[str, Any]:
    """Pretrain (or reuse the finished pretraining of) one objective and seed, probe its teacher, write
    `result.json`; the random-init baseline is probed without pretraining and takes its quick metrics from the
    seed's `references` (`reference_scores`: the same encoder on the same images)."""
    tick = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    started = run_dir / "settings.json"  # guards the reuse of an unfinished run's checkpoint or encoder
    if started.is_file() and json.loads(started.read_text()) != expected:
        raise ValueError(f"{run_dir} holds an unfinished run with other settings; use another --out or delete it")
    write_json(started, expected)
    shutil.rmtree(run_dir / "analysis", ignore_errors=True)  # it describes the encoder this run replaces
    settings = objective_settings(name, depth) if name != RANDOM_INIT else {}
    run_recipe = run_recipe_for(base_recipe, settings)
    config = build_config(run_recipe)
    if name == RANDOM_INIT:
        encoder = initial_model(config, seed).student
        record: dict[str, Any] = {"init_sha256": state_sha256(encoder)}
        model: str | torch.nn.Module = encoder
    elif (run_dir / "pretrain.json").is_file() and (run_dir / "encoder" / "config.json").is_file():
        record = json.loads((run_dir / "pretrain.json").read_text())
        print(f"  pretraining finished earlier ({record['steps']} steps): probing only", flush=True)
        model = str(run_dir / "encoder")
    else:
        record = pretrain_run(run_recipe, data.pretrain, seed, s, run_dir)
        model = str(run_dir / "encoder")
    if not s.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    tock = time.perf_counter()
    pretrained = name != RANDOM_INIT
    results = run_probes(model, data.probe, s.probe_settings(seed, quick_metrics=pretrained))
    scores = probe_scores(results)
    if pretrained and s.seg_probes:
        scores.update(segmentation_scores(run_segmentation(model, data.mosaics(seed), s.segmentation_settings(seed))))
    elif not pretrained:
        scores.update(references[RANDOM_REFERENCE])
    result = {
        "objective": name, "seed": seed, "label": LABELS[name], "settings": expected,
        "target_spec": str(config.target_spec) if pretrained else None,
        "target_dim": config.target_spec.target_dim(config.hidden_size, config.patch_size, config.num_channels)
        if pretrained else None,
        "depth": depth, "pretrain": record, "probes": scores,
        "probe_wall_s": round(time.perf_counter() - tock, 1), "wall_s": round(time.perf_counter() - tick, 1),
    }
    write_json(run_dir / "result.json", result)
    return result


def run_ablation(settings: AblationSettings | None = None, out: str | Path = "runs/ablation",
                 report: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume) the ablation; write `<report>.md/.json/.png` (default `<out>/ablation.*`) and return the report
    dict, which also lists the runs done now (`ran`) and those reused from an earlier call (`skipped`)."""
    s = settings or AblationSettings()
    start = time.perf_counter()
    out = Path(out)
    report = Path(report) if report is not None else out / "ablation"
    path = recipe_path(s.recipe or s.preset)
    base_recipe = load_recipe(path, s.overrides)
    base_recipe.setdefault("model", {}).setdefault("preset", s.preset)
    base_recipe.setdefault("training", {})["global_batch_size"] = s.batch_size
    # the preset's own targets may not fit an overridden depth: every objective sets them anyway
    depth = build_config(run_recipe_for(base_recipe, {})).num_hidden_layers
    for name in s.objectives:  # every objective's config must be valid for this depth before hours of training
        build_config(run_recipe_for(base_recipe, objective_settings(name, depth)))
    signature = s.signature(path.name, base_recipe)

    plan = [(name, seed) for seed in s.seeds for name in s.objectives]  # seed-major: a partial ablation is balanced
    if s.include_random_init:
        plan += [(RANDOM_INIT, seed) for seed in s.seeds]
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    data = _Data(s)
    references = {seed: reference_scores(seed, base_recipe, s, data, out) for seed in s.seeds}
    ran, skipped = [], []
    for i, (name, seed) in enumerate(plan):
        run_dir = runs_dir / f"{name}-s{seed}"
        if name == RANDOM_INIT:  # no pretraining: only the encoder's shape and the probe protocol matter
            expected = {"model": base_recipe["model"], "dataset": signature["dataset"], "probes": sorted(s.probes),
                        **{k: v for k, v in signature.items() if k.startswith("probe_")}}
        else:
            expected = {**signature, **objective_settings(name, depth), "probes": sorted(s.probes)}
        expected = json.loads(json.dumps(expected))  # compared with what JSON gives back
        if (run_dir / "result.json").is_file():
            done = json.loads((run_dir / "result.json").read_text())
            differ = {k: (done["settings"].get(k), v) for k, v in expected.items() if done["settings"].get(k) != v}
            if differ:
                raise ValueError(f"{run_dir / 'result.json'} was made with other settings ({differ}, as (recorded, "
                                 "requested)); use another --out or delete that run")
            skipped.append(run_dir.name)
            print(f"[{i + 1}/{len(plan)}] {run_dir.name}: done earlier, skipped", flush=True)
            continue
        print(f"[{i + 1}/{len(plan)}] {run_dir.name}: "
              f"{objective_settings(name, depth) if name != RANDOM_INIT else 'no pretraining'}", flush=True)
        result = run_one(name, seed, expected, base_recipe, depth, s, data, run_dir, references[seed])
        ran.append(run_dir.name)
        elapsed = time.perf_counter() - start
        scores = ", ".join(f"{k} {metric_value(v):.2f}" for k, v in result["probes"].items())
        remaining = len(plan) - i - 1
        print(f"  {run_dir.name}: {scores} ({result['wall_s']:.0f} s; {elapsed / 60:.1f} min so far"
              + (f", ~{elapsed / max(1, len(ran)) * remaining / 60:.0f} min to go)" if remaining else ")"), flush=True)

    finished = [json.loads((runs_dir / f"{name}-s{seed}" / "result.json").read_text()) for name, seed in plan]
    if s.analyze_images:
        analyze_runs(finished, runs_dir, base_recipe, s.dataset, s.analyze_images)
    names = s.objectives + ([RANDOM_INIT] if s.include_random_init else [])
    # the reference lines as runs of their own (the random-init one only when no random-init run stands for it)
    reference_runs = [{"objective": name, "seed": seed, "probes": references[seed][name]} for seed in s.seeds
                      for name in (PIXELS, *([] if s.include_random_init else [RANDOM_REFERENCE]))]
    report_data = {
        "preset": s.preset, "depth": depth,
        "objectives": {n: {"label": LABELS[n], **objective_settings(n, depth)} for n in s.objectives},
        "seeds": s.seeds, "probes": s.probes, "metrics": s.metrics, "settings": signature,
        "seg_probes": s.seg_probes, "seg_protocol": s.segmentation_settings(0).head_training() if s.seg_probes else None,
        "probe_protocol": s.probe_settings(s.seeds[0]).protocol_label, "analyze_images": s.analyze_images,
        "threads": torch.get_num_threads(), "device": "cuda" if torch.cuda.is_available() else "cpu",
        "summary": summarize(finished, names, s.metrics),
        "references": {name: {"label": LABELS[name],
                              "probes": {k: mean_std([metric_value(r["probes"][k]) for r in reference_runs
                                                      if r["objective"] == name])
                                         for k in s.metrics if k in references[s.seeds[0]][name]}}
                       for name in dict.fromkeys(r["objective"] for r in reference_runs)},
        "paired_vs_bootleg": paired_differences(finished + reference_runs, s.metrics),
        "runs": finished, "ran": ran, "skipped": skipped,
        "wall_time_s": {"this_call": round(time.perf_counter() - start, 1),
                        "all_runs": round(sum(r["wall_s"] for r in finished), 1)},
    }
    write_report(report_data, report)
    return report_data


def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n − 1; None for a single value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values), "values": values}


def summarize(runs: list[dict[str, Any]], names: list[str], probes: list[str]) -> dict[str, Any]:
    summary = {}
    for name in names:
        mine = sorted((r for r in runs if r["objective"] == name), key=lambda r: r["seed"])
        entry = {"label": LABELS[name], "seeds": [r["seed"] for r in mine],
                 "probes": {k: mean_std([metric_value(r["probes"][k]) for r in mine]) for k in probes}}
        if name != RANDOM_INIT:
            entry.update(targets=mine[0]["settings"]["targets"], target_merge=mine[0]["settings"]["target_merge"],
                         mask_mode=mine[0]["settings"]["mask_mode"], target_spec=mine[0]["target_spec"],
                         target_dim=mine[0]["target_dim"],
                         loss_last=mean_std([r["pretrain"]["loss_last"] for r in mine]),
                         pretrain_wall_s=mean_std([r["pretrain"]["wall_s"] for r in mine]))
        entry["probe_wall_s"] = mean_std([r["probe_wall_s"] for r in mine])
        if all("representation" in r for r in mine):
            entry["representation"] = {k: mean_std([r["representation"][k] for r in mine])
                                       for k in REPRESENTATION_METRICS}
        summary[name] = entry
    return summary


def paired_differences(runs: list[dict[str, Any]], probes: list[str]) -> dict[str, Any]:
    """Per objective and probe, the mean ± std over seeds of (objective − Bootleg) for the same seed: same initial
    encoder, data order and probe subsets, so this removes the between-seed part of the noise."""
    bootleg = {r["seed"]: r for r in runs if r["objective"] == "bootleg"}
    out: dict[str, Any] = {}
    for r in runs:  # in the order of the plan (objectives, the random-init baseline, the reference lines)
        name, seed = r["objective"], r["seed"]
        if name == "bootleg" or seed not in bootleg:
            continue
        for k in (k for k in probes if k in r["probes"]):  # a reference line has the quick metrics only
            diff = metric_value(r["probes"][k]) - metric_value(bootleg[seed]["probes"][k])
            out.setdefault(name, {}).setdefault(k, []).append(diff)
    return {name: {k: {**mean_std(v), "ci95": ci95(v)} for k, v in per.items()} for name, per in out.items()}


# two-sided 97.5 % quantiles of Student's t for 1..10 degrees of freedom
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def ci95(values: list[float]) -> list[float] | None:
    """95 % confidence interval of the mean (Student's t; None below two values)."""
    n = len(values)
    if n < 2:
        return None
    half = (T975[n - 2] if n - 1 <= len(T975) else 1.96) * statistics.stdev(values) / math.sqrt(n)
    mean = statistics.fmean(values)
    return [mean - half, mean + half]


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def fmt(stat: dict[str, Any] | None, digits: int = 2, sign: bool = False) -> str:
    if not stat:
        return "–"
    mean = f"{stat['mean']:+.{digits}f}" if sign else f"{stat['mean']:.{digits}f}"
    return mean if stat["std"] is None else f"{mean} ± {stat['std']:.{digits}f}"


def report_markdown(data: dict[str, Any]) -> str:
    s, probes, metrics, summary = data["settings"], data["probes"], data["metrics"], data["summary"]
    n_seeds = len(data["seeds"])
    lines = [f"# Objective ablation: {data['preset']} ({data['depth']} blocks) on {s['dataset']}", "",
             f"Budget per run: {s['steps']} pretraining steps × batch {s['batch_size']} "
             f"({s['steps'] * s['batch_size']} images), warm-up {s['warmup_steps']} steps, recipe `{s['recipe']}`"
             + (f" with {', '.join(f'`{o}`' for o in s['overrides'])}" if s["overrides"] else "")
             + (f", first {s['pretrain_limit']} images" if s["pretrain_limit"] else "") + "; frozen probes "
             f"{', '.join(probes)}: {data['probe_protocol']}, {s['probe_epochs']} epoch(s) on {s['probe_train']} / "
             f"{s['probe_test']} images (batch {s['probe_batch_size']}, learning rates × {s['probe_lr_scale']:g} = "
             f"batch / 1024), {len(s['probe_lrs'])}×{len(s['probe_wds'])} lr × wd sweep, best grid point; quick "
             f"metrics knn ({KNN_DESCRIPTION}) and linear ({LINEAR_DESCRIPTION}) on the teacher's "
             "pooled output (CLS token, or mean patch token without one), cached for the same images in the "
             "evaluation view; reference lines: the raw pixels (average-pooled to the patch grid) and each seed's "
             "initial encoder, on that seed's images. "
             + (f"Segmentation probes {', '.join(data['seg_probes'])} (columns seg-*): "
                f"{data['seg_protocol']['description']}, {data['seg_protocol']['epochs']} epochs, on "
                f"{s['seg_train']} / {s['seg_test']} Fashion-MNIST mosaics drawn with each seed (`bootleg-segment`'s "
                "task), mIoU % of the best kNN setting or head learning rate on the test mosaics; raw pixels: the kNN "
                "probe on each patch's pixels. " if data.get("seg_probes") else "") + "Seeds "
             f"{', '.join(map(str, data['seeds']))}; mean ± sample std over the {n_seeds} seeds. Device: "
             f"{data['device']}, {data['threads']} torch thread(s). Wall time: "
             f"{data['wall_time_s']['all_runs'] / 60:.1f} min over all runs. The final loss is the MSE on each "
             "objective's own targets: it is not comparable across objectives.", "",
             "| objective | targets | merge | masking | " + " | ".join(f"{k} {metric_unit(k)}" for k in metrics)
             + " | final loss | pretrain s/run |",
             "|---" * (6 + len(metrics)) + "|"]
    for name, e in [*summary.items(), *data["references"].items()]:
        if name in summary and name != RANDOM_INIT:
            lines.append(f"| {e['label']} | `{e['targets']}` ({e['target_spec']}) | {e['target_merge']} | "
                         f"{e['mask_mode']} | " + " | ".join(fmt(e["probes"][k]) for k in metrics)
                         + f" | {fmt(e['loss_last'], 3)} | {e['pretrain_wall_s']['mean']:.0f} |")
        else:  # no pretraining: the random-init run and the reference lines (quick metrics only)
            lines.append(f"| {e['label']} | – | – | – | " + " | ".join(fmt(e["probes"].get(k)) for k in metrics)
                         + " | – | – |")
    if data["paired_vs_bootleg"]:
        lines += ["", "Difference to Bootleg with the same seed (same initial encoder, data order, masks where the "
                  "masking is shared, probe subsets), mean ± std over seeds, points; † where the 95 % confidence "
                  "interval of the mean difference (Student's t) excludes 0:", "",
                  "| objective | " + " | ".join(f"Δ {k}" for k in metrics) + " |", "|---" * (1 + len(metrics)) + "|"]
        for name, per in data["paired_vs_bootleg"].items():
            cells = []
            for k in metrics:
                ci = (per.get(k) or {}).get("ci95")
                cells.append(fmt(per.get(k), sign=True) + (" †" if ci and (ci[0] > 0 or ci[1] < 0) else ""))
            lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    units = "top-1 % / mIoU %" if data.get("seg_probes") else "top-1 %"
    lines += ["", f"Per seed ({units}; target std: each target layer's last logged per-channel std over the target "
              "tokens after per-token z-scoring, 1 = diverse targets, near 0 = collapsed teacher):", "",
              "| objective | seed | " + " | ".join(metrics) + " | final loss | target std |",
              "|---" * (4 + len(metrics)) + "|"]
    for r in sorted(data["runs"], key=lambda r: (list(summary).index(r["objective"]), r["seed"])):
        loss = r["pretrain"].get("loss_last")
        stds = r["pretrain"].get("target_std_last") or {}
        lines.append(f"| {LABELS[r['objective']]} | {r['seed']} | "
                     + " | ".join(f"{metric_value(r['probes'][k]):.2f}" for k in metrics)
                     + f" | {'–' if loss is None else f'{loss:.3f}'} | "
                     + (", ".join(f"{name} {v:.2f}" for name, v in stds.items()) or "–") + " |")
    analysed = [n for n, e in summary.items() if "representation" in e]
    if analysed:
        lines += ["", "Representations (`training/analyze.py` on the first "
                  f"{data['analyze_images']} test images, patch tokens, each layer's mean at every grid position "
                  "removed; per run in `runs/<objective>-s<seed>/analysis/` of the ablation folder), mean ± std "
                  "over seeds:", "",
                  "| objective | " + " | ".join(REPRESENTATION_METRICS.values()) + " |",
                  "|---" * (1 + len(REPRESENTATION_METRICS)) + "|"]
        lines += [f"| {LABELS[n]} | " + " | ".join(fmt(summary[n]["representation"][k], 3)
                                                   for k in REPRESENTATION_METRICS) + " |" for n in analysed]
    paper = [n for n in summary if n in PAPER_ABLATION]
    if paper:
        lines += ["", "The paper's ablation for comparison (docs/design.md §12: ViT-S/16, 300 ImageNet epochs, IN-1k "
                  "top-1 %; "
                  "a different scale, so compare orderings, not values):", "",
                  "| objective | X-Blk | Patch |", "|---|---|---|"]
        lines += [f"| {LABELS[n]} | {PAPER_ABLATION[n][0]} | {PAPER_ABLATION[n][1]} |" for n in paper]
    return "\n".join(lines) + "\n"


def plot_report(data: dict[str, Any], path: Path) -> None:
    """Grouped bars (one group per objective, one bar per probe or quick metric): mean with ± std error bars and the
    seeds as dots; the raw-pixel reference of each quick metric as a dashed line in its colour."""
    summary, probes = data["summary"], data["metrics"]
    names = list(summary)
    fig = Figure(figsize=(max(9.0, (0.6 + 0.15 * len(probes)) * len(names) + 2.5), 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.arange(len(names))
    width = 0.8 / len(probes)
    lows: list[float] = []
    labels: list[tuple[np.ndarray, list[float]]] = []
    for j, kind in enumerate(probes):
        offset = x + (j - (len(probes) - 1) / 2) * width
        means = [summary[n]["probes"][kind]["mean"] for n in names]
        stds = [summary[n]["probes"][kind]["std"] or 0.0 for n in names]
        label = f"{kind} probe" if kind in data["probes"] else kind
        bars = ax.bar(offset, means, width * 0.92, yerr=stds, capsize=3, label=label, color=f"C{j}")
        for bar, n in zip(bars, names):
            if n == RANDOM_INIT:  # the baseline: hatched and paler
                bar.set_hatch("//")
                bar.set_alpha(0.45)
        labels.append((offset, means))
        for xo, n in zip(offset, names):
            values = summary[n]["probes"][kind]["values"]
            lows.extend(values)
            ax.scatter(np.full(len(values), xo), values, s=9, color="black", zorder=3)
        pixels = data["references"][PIXELS]["probes"].get(kind)
        if pixels:
            ax.axhline(pixels["mean"], color=f"C{j}", ls="--", lw=0.9, label=f"{kind}: {LABELS[PIXELS]}")
            lows.append(pixels["mean"])
    floor = max(0.0, 5 * math.floor((min(lows) - 5) / 5))
    ax.set_ylim(floor, min(100.0, max(lows) + 4))
    upright = len(probes) <= 3  # more bars per group are too narrow for horizontal numbers
    for offset, means in labels:  # the means, inside the bars near their base (clear of the error bars)
        for xo, m, n in zip(offset, means, names):
            ax.text(xo, floor + 0.02 * (ax.get_ylim()[1] - floor), f"{m:.1f}", ha="center", va="bottom", fontsize=7,
                    rotation=0 if upright else 90, color="black" if n == RANDOM_INIT else "white", fontweight="bold")
    ax.set_xticks(x, [LABELS[n].replace(" (", "\n(").replace(", ", ",\n", 1) for n in names], fontsize=7)
    s, seeds = data["settings"], data["seeds"]
    ax.set(ylabel=("top-1 % / mIoU %" if data.get("seg_probes") else "top-1 %") + " (frozen encoder)",
           title=f"Objective ablation, {data['preset']} on {s['dataset']}: {s['steps']} steps × {s['batch_size']}, "
                 + (f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}"))
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: the bars reach the top
    fig.savefig(path, dpi=120)


def write_report(data: dict[str, Any], report: Path) -> None:
    """`<report>.json`, `.md` and `.png`."""
    write_json(report.with_suffix(".json"), data)
    write_text(report.with_suffix(".md"), report_markdown(data))
    plot_report(data, report.with_suffix(".png"))


__all__ = ["DEFAULT_OBJECTIVES", "ALL_OBJECTIVES", "RANDOM_INIT", "LABELS", "objective_settings", "AblationSettings",
           "run_ablation", "report_markdown"]
