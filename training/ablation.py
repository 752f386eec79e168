"""Objective ablation (the paper's central experiment at small scale): pretrain one encoder per objective with the
same architecture, data, budget, schedules, masks and seeds, then score every teacher with the same frozen probes.

    # CPU, session-sized (the committed bench/results/ablation_cpu_500.*: 500 × 128 steps ≈ 1.07 epochs per run,
    # measured at 2 threads on the otherwise idle 2-core machine; the time is in the report)
    python training/ablation.py --preset vit-micro --steps 500 --batch-size 128 --seeds 0,1,2 \
        --set training.ema_start=0.99 --set training.ema_end=0.998 --probes patch,xblk --probe-epochs 3 \
        --probe-train 6000 --probe-test 2000 --probe-batch-size 64 --include-random-init --threads 2 \
        --analyze-images 512 --out runs/ablation_cpu500 --report bench/results/ablation_cpu_500
    # the same at 3× the steps for two objectives and 2 seeds (bench/results/ablation_cpu_1500.*, 37 min; then
    # `--seeds 0 --objectives bootleg,random-mask,last,pixels --report bench/results/ablation_cpu_1500_seed0`):
    python training/ablation.py ... --steps 1500 --seeds 0,1 --objectives bootleg,random-mask \
        --out runs/ablation_cpu1500 --report bench/results/ablation_cpu_1500
    # the first, smaller CPU budget (bench/results/ablation_cpu.*: 80 × 128 steps, 39 min at 1 thread on busy cores)
    OMP_NUM_THREADS=1 python training/ablation.py --preset vit-micro --steps 80 --batch-size 128 --seeds 0,1,2 \
        --set training.ema_start=0.98 --set training.ema_end=0.995 --probes patch,xblk --probe-epochs 2 \
        --probe-train 3000 --probe-test 2000 --probe-batch-size 64 --include-random-init --threads 1 \
        --out runs/ablation_cpu --report bench/results/ablation_cpu

    # GPU (prepared, not run yet: no GPU in the sessions so far). 8× the session-sized CPU run's images (2000 steps
    # × 256 ≈ 8.5 epochs), the paper's 10 probe epochs, the full test set. Time one run first
    # (`--objectives bootleg --seeds 0`, reused by the full call) and size --steps to the device time you have; the
    # ablation resumes run by run, so it may span several sessions.
    python training/ablation.py --preset vit-micro --steps 2000 --batch-size 256 --seeds 0,1,2 \
        --set training.ema_start=0.99 --set training.ema_end=0.999 --probes patch,cls,xblk --probe-epochs 10 \
        --probe-train 20000 --probe-test 10000 --probe-batch-size 256 --num-workers 8 --include-random-init \
        --analyze-images 1024 --out runs/ablation_gpu --report bench/results/ablation_gpu
    # the same at the paper's depth (12 blocks: Bootleg's targets are then exactly 1:4:12 = {1, 4, 8, 12}) with the
    # paper's two extra ablation rows (blocks 9-12 and 5-8, concatenated):
    python training/ablation.py ... --set model.num_hidden_layers=12 \
        --objectives bootleg,last,ijepa,average,pixels,random-mask,deep,middle

Objectives (all expressed through `TargetSpec` and the masking modes; L = encoder depth after `--set` overrides):

| name | targets | merge | masking | what it stands for |
|---|---|---|---|---|
| bootleg | 1:s:L, s = min(4, max(1, L // 3)) (1:2:6, 1:4:12, 1:4:24) | concat | bootleg | Bootleg |
| last | L | concat | bootleg | last block only |
| ijepa | final | concat | ijepa | I-JEPA (final-LN output, legacy I-JEPA masks) |
| average | as bootleg | average | bootleg | data2vec-style averaged layers |
| pixels | pixels | concat | bootleg | MAE-style pixel targets (only the target changes) |
| random-mask | as bootleg | concat | random | Bootleg targets with MAE's 75 % random masking |
| deep | last third of blocks (9-12 for L=12) | concat | bootleg | paper ablation "blocks 9-12" (optional) |
| middle | middle third (5-8 for L=12) | concat | bootleg | paper ablation "blocks 5-8" (optional) |

Everything else is shared: the recipe (LR, weight decay and EMA schedules, augmentation), the step budget and
batch, the warm-up (`--warmup-frac` of the steps; recipes express warm-up in epochs, longer than short ablations),
and per seed the initial weights (the encoder is built first from the seed, so every objective of a seed starts
from the same encoder; `init_sha256` in each run's JSON shows it), the data order and the masks (per masking mode).
`--include-random-init` adds that initial encoder, probed without pretraining, as the baseline row.

Short budgets: the recipes' EMA momentum (vit-micro: 0.996 → 0.9995, a time constant of 250–2000 steps) would
leave the teacher of a run of a few hundred steps mostly at its random init, so the commands above shorten it (the
same for every objective); and with few probe epochs a smaller probe batch gives the heads more optimizer steps.

Probes: `training/probe.py`'s protocol (5 × 5 lr × wd sweep per probe type trained on one frozen pass, best grid
point reported), on `--probe-train` / `--probe-test` images drawn with the run's seed, teacher weights.

Resumable: each run writes `<out>/runs/<objective>-s<seed>/result.json` when done, and finished runs are skipped
(a run whose recorded settings differ from the requested ones is an error: use another `--out`). An interrupted
pretraining resumes from its last checkpoint, and a finished pretraining (`pretrain.json` + `encoder/`) is only
probed again. The report (`<report>.md`, `.json`, `.png`) is rebuilt from all finished runs at the end.

Representations: `--analyze-images N` runs `training/analyze.py` on every teacher and random-init encoder (first N
test images, each layer's per-position mean removed) and adds three numbers per objective to the report — CKA of the
tokenizer output with the last block, mean CKA of consecutive blocks, and the last block's spatial autocorrelation at
distance 1. Added to a finished ablation, only the analysis runs.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from transformers.trainer_utils import get_last_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
import analyze  # noqa: E402
import pretrain  # noqa: E402
import probe  # noqa: E402

import bootleg_hf  # noqa: E402
from bootleg_hf.configuration_bootleg import PROBE_TYPES  # noqa: E402
from bootleg_hf.data import PretrainTransform, load_image_dataset  # noqa: E402
from bootleg_hf.probes import PROBE_GRID  # noqa: E402

RECIPES = Path(__file__).resolve().parent / "recipes"
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
}
# SPEC §12, the paper's ablation (ViT-S/16, 300 epochs, IN-1k top-1 %): objective → (X-Blk, Patch)
PAPER_ABLATION = {"bootleg": (74.4, 67.8), "deep": (69.7, 60.2), "middle": (72.2, 61.6), "average": (69.8, 57.2),
                  "pixels": (66.7, 52.9)}


# --------------------------------------------------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------------------------------------------------


def spaced_blocks(depth: int) -> str:
    """Bootleg's targets for a depth: every s-th block from block 1, s = min(4, max(1, depth // 3)): `1:4:12` for
    12 blocks (the paper's {1, 4, 8, 12}), `1:4:24` for 24 (ViT-L), `1:2:6` for the 6-block micro model."""
    return f"1:{min(4, max(1, depth // 3))}:{depth}"


def objective_settings(name: str, depth: int) -> dict[str, str]:
    """The config fields (`targets`, `target_merge`, `mask_mode`) of objective `name` for an encoder of `depth`."""
    third = max(1, depth // 3)
    targets = {
        "bootleg": spaced_blocks(depth), "last": str(depth), "ijepa": "final", "average": spaced_blocks(depth),
        "pixels": "pixels", "random-mask": spaced_blocks(depth),
        "deep": f"{depth - third + 1}-{depth}", "middle": f"{third + 1}-{min(depth, 2 * third)}",
    }
    if name not in targets:
        raise ValueError(f"unknown objective '{name}'; choose from {', '.join(ALL_OBJECTIVES)}")
    return {"targets": targets[name], "target_merge": "average" if name == "average" else "concat",
            "mask_mode": {"ijepa": "ijepa", "random-mask": "random"}.get(name, "bootleg")}


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


def initial_model(config: bootleg_hf.BootlegConfig, seed: int) -> bootleg_hf.BootlegForPretraining:
    """The seeded initial model. The student encoder is initialised before the predictor, so for one seed every
    objective starts from the same encoder (the predictor's output width depends on the targets)."""
    transformers.set_seed(seed)
    return bootleg_hf.BootlegForPretraining(config)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so an interruption never leaves a half-written result that would be taken as finished."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def pretrain_run(recipe: dict[str, Any], config: bootleg_hf.BootlegConfig, dataset: datasets.Dataset, seed: int,
                 steps: int, warmup_steps: int, run_dir: Path, num_workers: int) -> dict[str, Any]:
    """Pretrain one objective (resuming from the run's last checkpoint if any); export the teacher to
    `run_dir/encoder`; return the training record (also written to `run_dir/pretrain.json`)."""
    start = time.perf_counter()
    ckpt_dir = run_dir / "checkpoints"
    args = pretrain.build_training_args(
        recipe, str(ckpt_dir), len(dataset), max_steps=steps, seed=seed, warmup_steps=warmup_steps,
        dataloader_num_workers=num_workers, logging_steps=max(1, steps // 20), save_steps=max(1, steps // 2),
        save_total_limit=1, disable_tqdm=True, dataloader_pin_memory=torch.cuda.is_available())
    model = initial_model(config, seed)
    init_sha = state_sha256(model.student)
    trainer = bootleg_hf.BootlegTrainer(model=model, args=args, train_dataset=dataset)
    resume = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if resume:
        print(f"resuming {run_dir.name} from {resume}", flush=True)
    trainer.train(resume_from_checkpoint=resume)
    pretrain.export_encoder(model, run_dir / "encoder")
    logs = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    record = {
        "init_sha256": init_sha, "steps": trainer.state.global_step, "batch_size": args.global_batch_size,
        "warmup_steps": warmup_steps, "resumed_from": resume,
        "loss_history": [[h["step"], h["loss"]] for h in logs],
        "loss_first": logs[0]["loss"] if logs else None, "loss_last": logs[-1]["loss"] if logs else None,
        "target_std_last": {k.split("/", 1)[1]: v for k, v in (logs[-1] if logs else {}).items()
                            if k.startswith("target_std/")},
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_json(run_dir / "pretrain.json", record)
    return record


def run_recipe_for(base_recipe: dict[str, Any], settings: dict[str, str]) -> dict[str, Any]:
    """The recipe of one run: the shared recipe with the objective's settings (the random-init baseline has none and
    gets any valid targets: they do not change the encoder)."""
    recipe = copy.deepcopy(base_recipe)
    recipe["model"].update(settings or {"targets": "final", "target_merge": "concat"})
    return recipe


def probe_scores(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {kind: {"top1": r["best"]["top1"], "lr": r["best"]["lr"], "weight_decay": r["best"]["weight_decay"]}
            for kind, r in results["probes"].items()}


# Representation summary: the three numbers of `analyze.analyze` compared across objectives
REPRESENTATION_METRICS = {
    "cka_embed_last": "CKA(tokenizer output, last block)",
    "cka_consecutive": "mean CKA of consecutive blocks",
    "spatial_d1_last": "last block: spatial autocorr. at distance 1",
}


def representation_summary(analysis: dict[str, Any]) -> dict[str, float]:
    """From one `analyze.analyze` result: how far the last block has moved from the tokenizer output (linear CKA of
    `embed` with `L.out`; 1 = linearly the same), how alike consecutive blocks are (mean CKA of `b.out`, `b+1.out`),
    and how local the last block's patch embeddings are (mean cosine similarity of neighbouring patches)."""
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
    config = pretrain.build_config(run_recipe_for(base_recipe, {}))  # the shared encoder shape
    pixel_values = None
    for r in runs:
        run_dir = runs_dir / f"{r['objective']}-s{r['seed']}"
        saved = run_dir / "analysis" / "analysis.json"
        result = json.loads(saved.read_text()) if saved.is_file() else None
        if result is None or result["num_images"] != num_images or not result["remove_position_mean"]:
            if pixel_values is None:
                pixel_values = analyze.load_pixel_values(dataset, num_images, tuple(config.image_hw), "test")
            if r["objective"] == RANDOM_INIT:
                encoder: torch.nn.Module = initial_model(config, r["seed"]).student
            else:
                encoder = analyze.load_encoder(str(run_dir / "encoder"))
            result = analyze.analyze(encoder, pixel_values, num_images, run_dir / "analysis", remove_position_mean=True)
        r["representation"] = representation_summary(result)


# --------------------------------------------------------------------------------------------------------------------
# The ablation
# --------------------------------------------------------------------------------------------------------------------


def resolve_recipe(preset: str, recipe_path: str | os.PathLike | None) -> Path:
    path = Path(recipe_path) if recipe_path else RECIPES / f"{preset}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no recipe {path}; pass --recipe")
    return path


def run_ablation(
    preset: str = "vit-micro",
    objectives: Sequence[str] = DEFAULT_OBJECTIVES,
    seeds: Sequence[int] = (0, 1, 2),
    steps: int = 200,
    batch_size: int = 64,
    warmup_frac: float = 0.15,
    probes: Sequence[str] = ("patch", "xblk"),
    probe_epochs: int = 3,
    probe_train: int | None = 5000,
    probe_test: int | None = 1000,
    probe_batch_size: int = 256,
    probe_lrs: Sequence[float] = PROBE_GRID,
    probe_wds: Sequence[float] = PROBE_GRID,
    include_random_init: bool = False,
    out: str | os.PathLike = "runs/ablation",
    report: str | os.PathLike | None = None,
    dataset: str | datasets.DatasetDict = "fashion-mnist",
    pretrain_limit: int | None = None,
    recipe: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    num_workers: int = 0,
    keep_checkpoints: bool = False,
    analyze_images: int = 0,
) -> dict[str, Any]:
    """Run (or resume) the ablation; write `<report>.md/.json/.png` (default `<out>/ablation.*`) and return the report
    dict, which also lists the runs done now (`ran`) and those reused from an earlier call (`skipped`).

    `analyze_images` > 0 also analyses every teacher (and the random-init encoders) on that many test images with
    `training/analyze.py` (position mean removed; per run in `<run>/analysis/`) and adds the representation summary
    of `representation_summary` to the report. It can be added to a finished ablation: only the analysis runs."""
    start = time.perf_counter()
    objectives = list(dict.fromkeys(objectives))
    bad = [name for name in objectives if name not in ALL_OBJECTIVES]
    if bad or not objectives:
        raise ValueError(f"unknown objectives {bad}; choose from {', '.join(ALL_OBJECTIVES)}")
    unknown = sorted(set(probes) - set(PROBE_TYPES))
    if unknown:
        raise ValueError(f"unknown probe types {unknown}; choose from {PROBE_TYPES}")
    if not seeds:
        raise ValueError("give at least one seed")
    out = Path(out)
    report = Path(report) if report is not None else out / "ablation"
    recipe_path = resolve_recipe(preset, recipe)
    base_recipe = pretrain.load_recipe(recipe_path, list(overrides))
    base_recipe.setdefault("model", {}).setdefault("preset", preset)
    base_recipe.setdefault("training", {})["global_batch_size"] = batch_size
    # the preset's own targets may not fit an overridden depth (1:2:6 with 2 blocks): every objective sets them anyway
    depth = pretrain.build_config({**base_recipe, "model": {**base_recipe["model"], "targets": "final",
                                                            "target_merge": "concat"}}).num_hidden_layers
    for name in objectives:  # every objective's config must be valid for this depth before hours of training
        pretrain.build_config({**base_recipe, "model": {**base_recipe["model"], **objective_settings(name, depth)}})
    warmup_steps = int(round(warmup_frac * steps))
    signature = {"recipe": recipe_path.name, "recipe_content": base_recipe, "overrides": list(overrides),
                 "dataset": dataset if isinstance(dataset, str) else "custom",
                 "pretrain_limit": pretrain_limit, "steps": steps, "batch_size": batch_size,
                 "warmup_steps": warmup_steps, "probe_epochs": probe_epochs, "probe_train": probe_train,
                 "probe_test": probe_test, "probe_batch_size": probe_batch_size,
                 "probe_lrs": list(probe_lrs), "probe_wds": list(probe_wds)}

    plan = [(name, seed) for seed in seeds for name in objectives]  # seed-major: a partial ablation is balanced
    if include_random_init:
        plan += [(RANDOM_INIT, seed) for seed in seeds]
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    train_data = None
    probe_data = None
    ran, skipped = [], []
    for i, (name, seed) in enumerate(plan):
        run_dir = runs_dir / f"{name}-s{seed}"
        result_path = run_dir / "result.json"
        settings = objective_settings(name, depth) if name != RANDOM_INIT else {}
        expected = {**signature, **settings, "probes": sorted(probes)}
        if name == RANDOM_INIT:  # no pretraining: only the encoder's shape and the probe protocol matter
            expected = {"model": base_recipe["model"], "dataset": signature["dataset"], "probes": sorted(probes),
                        **{k: v for k, v in signature.items() if k.startswith("probe_")}}
        expected = json.loads(json.dumps(expected))  # compared with what JSON gives back
        if result_path.is_file():
            done = json.loads(result_path.read_text())
            differ = {k: (done["settings"].get(k), v) for k, v in expected.items() if done["settings"].get(k) != v}
            if differ:
                raise ValueError(f"{result_path} was made with other settings ({differ}, as (recorded, requested)); "
                                 "use another --out or delete that run")
            skipped.append(run_dir.name)
            print(f"[{i + 1}/{len(plan)}] {run_dir.name}: done earlier, skipped", flush=True)
            continue

        tick = time.perf_counter()
        print(f"[{i + 1}/{len(plan)}] {run_dir.name}: {settings or 'no pretraining'}", flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        started = run_dir / "settings.json"  # guards the reuse of an unfinished run's checkpoint or encoder
        if started.is_file() and json.loads(started.read_text()) != expected:
            raise ValueError(f"{run_dir} holds an unfinished run with other settings; use another --out or delete it")
        write_json(started, expected)
        shutil.rmtree(run_dir / "analysis", ignore_errors=True)  # it describes the encoder this run replaces
        run_recipe = run_recipe_for(base_recipe, settings)
        config = pretrain.build_config(run_recipe)
        if probe_data is None:
            probe_data = datasets.DatasetDict(train=load_image_dataset(dataset, "train"),
                                              test=load_image_dataset(dataset, "test"))
        if name == RANDOM_INIT:
            encoder = initial_model(config, seed).student
            record = {"init_sha256": state_sha256(encoder)}
            model: str | bootleg_hf.BootlegModel = encoder
        elif (run_dir / "pretrain.json").is_file() and (run_dir / "encoder" / "config.json").is_file():
            record = json.loads((run_dir / "pretrain.json").read_text())
            print(f"  pretraining finished earlier ({record['steps']} steps): probing only", flush=True)
            model = str(run_dir / "encoder")
        else:
            if train_data is None:
                train_data = load_image_dataset(dataset, "train")
                if pretrain_limit:
                    train_data = train_data.select(range(min(pretrain_limit, len(train_data))))
            # (re)set on every run: with an in-memory dataset the probes may share this object and its transform
            crop_scale = tuple(base_recipe.get("data", {}).get("crop_scale", (0.35, 1.0)))
            train_data.set_transform(PretrainTransform(config.image_hw[0], scale=crop_scale))
            record = pretrain_run(run_recipe, config, train_data, seed, steps, warmup_steps, run_dir, num_workers)
            model = str(run_dir / "encoder")
        if not keep_checkpoints:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        tock = time.perf_counter()
        results = probe.run_probes(model, probe_data, probes=list(probes), epochs=probe_epochs,
                                   batch_size=probe_batch_size, limit_train=probe_train, limit_test=probe_test,
                                   lrs=list(probe_lrs), wds=list(probe_wds), seed=seed, num_workers=num_workers)
        result = {
            "objective": name, "seed": seed, "label": LABELS[name], "settings": expected,
            "target_spec": str(config.target_spec) if name != RANDOM_INIT else None,
            "target_dim": config.target_spec.target_dim(config.hidden_size, config.patch_size, config.num_channels)
            if name != RANDOM_INIT else None,
            "depth": depth, "pretrain": record, "probes": probe_scores(results),
            "probe_wall_s": round(time.perf_counter() - tock, 1), "wall_s": round(time.perf_counter() - tick, 1),
        }
        write_json(result_path, result)
        ran.append(run_dir.name)
        elapsed = time.perf_counter() - start
        scores = ", ".join(f"{k} {v['top1']:.2f}" for k, v in result["probes"].items())
        remaining = len(plan) - i - 1
        print(f"  {run_dir.name}: {scores} ({result['wall_s']:.0f} s; {elapsed / 60:.1f} min so far"
              + (f", ~{elapsed / max(1, len(ran)) * remaining / 60:.0f} min to go)" if remaining else ")"), flush=True)

    finished = [json.loads((runs_dir / f"{name}-s{seed}" / "result.json").read_text()) for name, seed in plan]
    if analyze_images:
        analyze_runs(finished, runs_dir, base_recipe, dataset, analyze_images)
    summary = summarize(finished, objectives + ([RANDOM_INIT] if include_random_init else []), list(probes))
    report_data = {
        "preset": preset, "depth": depth, "objectives": {n: {"label": LABELS[n], **objective_settings(n, depth)}
                                                         for n in objectives},
        "seeds": list(seeds), "probes": list(probes), "settings": signature, "analyze_images": analyze_images,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "summary": summary, "paired_vs_bootleg": paired_differences(finished, list(probes)),
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
                 "probes": {k: mean_std([r["probes"][k]["top1"] for r in mine]) for k in probes}}
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
    for r in runs:  # in the order of the plan (objectives, then the random-init baseline)
        name, seed = r["objective"], r["seed"]
        if name == "bootleg" or seed not in bootleg:
            continue
        for k in probes:
            diff = r["probes"][k]["top1"] - bootleg[seed]["probes"][k]["top1"]
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
    s, probes, summary = data["settings"], data["probes"], data["summary"]
    n_seeds = len(data["seeds"])
    lines = [f"# Objective ablation: {data['preset']} ({data['depth']} blocks) on {s['dataset']}", "",
             f"Budget per run: {s['steps']} pretraining steps × batch {s['batch_size']} "
             f"({s['steps'] * s['batch_size']} images), warm-up {s['warmup_steps']} steps, recipe `{s['recipe']}`"
             + (f" with {', '.join(f'`{o}`' for o in s['overrides'])}" if s["overrides"] else "")
             + (f", first {s['pretrain_limit']} images" if s["pretrain_limit"] else "") + "; frozen probes "
             f"{', '.join(probes)}: {s['probe_epochs']} epoch(s) on {s['probe_train']} / {s['probe_test']} images "
             f"(batch {s['probe_batch_size']}), {len(s['probe_lrs'])}×{len(s['probe_wds'])} lr × wd sweep, best grid "
             "point. Seeds "
             f"{', '.join(map(str, data['seeds']))}; mean ± sample std over the {n_seeds} seeds. Device: "
             f"{data['device']}, {data['threads']} torch thread(s). Wall time: "
             f"{data['wall_time_s']['all_runs'] / 60:.1f} min over all runs. The final loss is the MSE on each "
             "objective's own targets: it is not comparable across objectives.", "",
             "| objective | targets | merge | masking | " + " | ".join(f"{k} top-1 %" for k in probes)
             + " | final loss | pretrain s/run |",
             "|---" * (6 + len(probes)) + "|"]
    for name, e in summary.items():
        if name == RANDOM_INIT:
            lines.append(f"| {e['label']} | – | – | – | " + " | ".join(fmt(e["probes"][k]) for k in probes)
                         + " | – | – |")
        else:
            lines.append(f"| {e['label']} | `{e['targets']}` ({e['target_spec']}) | {e['target_merge']} | "
                         f"{e['mask_mode']} | " + " | ".join(fmt(e["probes"][k]) for k in probes)
                         + f" | {fmt(e['loss_last'], 3)} | {e['pretrain_wall_s']['mean']:.0f} |")
    if data["paired_vs_bootleg"]:
        lines += ["", "Difference to Bootleg with the same seed (same initial encoder, data order, masks where the "
                  "masking is shared, probe subsets), mean ± std over seeds, points; † where the 95 % confidence "
                  "interval of the mean difference (Student's t) excludes 0:", "",
                  "| objective | " + " | ".join(f"Δ {k}" for k in probes) + " |", "|---" * (1 + len(probes)) + "|"]
        for name, per in data["paired_vs_bootleg"].items():
            cells = []
            for k in probes:
                ci = (per.get(k) or {}).get("ci95")
                cells.append(fmt(per.get(k), sign=True) + (" †" if ci and (ci[0] > 0 or ci[1] < 0) else ""))
            lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed (top-1 %; target std: each target layer's last logged per-channel std over the target "
              "tokens after per-token z-scoring, 1 = diverse targets, near 0 = collapsed teacher):", "",
              "| objective | seed | " + " | ".join(probes) + " | final loss | target std |",
              "|---" * (4 + len(probes)) + "|"]
    for r in sorted(data["runs"], key=lambda r: (list(summary).index(r["objective"]), r["seed"])):
        loss = r["pretrain"].get("loss_last")
        stds = r["pretrain"].get("target_std_last") or {}
        lines.append(f"| {LABELS[r['objective']]} | {r['seed']} | "
                     + " | ".join(f"{r['probes'][k]['top1']:.2f}" for k in probes)
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
        lines += ["", "The paper's ablation for comparison (SPEC §12: ViT-S/16, 300 ImageNet epochs, IN-1k top-1 %; "
                  "a different scale, so compare orderings, not values):", "",
                  "| objective | X-Blk | Patch |", "|---|---|---|"]
        lines += [f"| {LABELS[n]} | {PAPER_ABLATION[n][0]} | {PAPER_ABLATION[n][1]} |" for n in paper]
    return "\n".join(lines) + "\n"


def plot_report(data: dict[str, Any], path: Path) -> None:
    """Grouped bars (one group per objective, one bar per probe): mean with ± std error bars and the seeds as dots."""
    summary, probes = data["summary"], data["probes"]
    names = list(summary)
    fig = Figure(figsize=(max(7.0, 1.45 * len(names)), 4.4), layout="constrained")
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
        bars = ax.bar(offset, means, width * 0.92, yerr=stds, capsize=3, label=f"{kind} probe", color=f"C{j}")
        for bar, n in zip(bars, names):
            if n == RANDOM_INIT:  # the baseline: hatched and paler
                bar.set_hatch("//")
                bar.set_alpha(0.45)
        labels.append((offset, means))
        for xo, n in zip(offset, names):
            values = summary[n]["probes"][kind]["values"]
            lows.extend(values)
            ax.scatter(np.full(len(values), xo), values, s=9, color="black", zorder=3)
    floor = max(0.0, 5 * math.floor((min(lows) - 5) / 5))
    ax.set_ylim(floor, min(100.0, max(lows) + 4))
    for offset, means in labels:  # the means, inside the bars near their base (clear of the error bars)
        for xo, m, n in zip(offset, means, names):
            ax.text(xo, floor + 0.02 * (ax.get_ylim()[1] - floor), f"{m:.1f}", ha="center", va="bottom", fontsize=7,
                    color="black" if n == RANDOM_INIT else "white", fontweight="bold")
    ax.set_xticks(x, [LABELS[n].replace(" (", "\n(").replace(", ", ",\n", 1) for n in names], fontsize=7)
    s = data["settings"]
    ax.set(ylabel="top-1 % (frozen probe)",
           title=f"Objective ablation, {data['preset']} on {s['dataset']}: {s['steps']} steps × {s['batch_size']}, "
                 f"mean ± std over {len(data['seeds'])} seeds")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def write_report(data: dict[str, Any], report: Path) -> None:
    report.parent.mkdir(parents=True, exist_ok=True)
    report.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    report.with_suffix(".md").write_text(report_markdown(data))
    plot_report(data, report.with_suffix(".png"))


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def comma_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="vit-micro", help="recipe name in training/recipes/ (and model preset)")
    p.add_argument("--recipe", default=None, help="recipe YAML (default: training/recipes/<preset>.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="recipe overrides, e.g. model.num_hidden_layers=12 (quote target specs: "
                        "model.targets='\"1:2:6\"', YAML reads 1:2:6 as a number)")
    p.add_argument("--objectives", type=comma_list, default=list(DEFAULT_OBJECTIVES),
                   help=f"comma list from {', '.join(ALL_OBJECTIVES)}")
    p.add_argument("--seeds", type=lambda t: [int(v) for v in comma_list(t)], default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=200, help="pretraining steps per run")
    p.add_argument("--batch-size", type=int, default=64, help="pretraining global batch")
    p.add_argument("--warmup-frac", type=float, default=0.15, help="LR warm-up as a fraction of the steps")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--limit", type=int, default=None, help="pretrain on the first N images only")
    p.add_argument("--probes", type=comma_list, default=["patch", "xblk"])
    p.add_argument("--probe-epochs", type=int, default=3)
    p.add_argument("--probe-train", type=int, default=5000, help="probe training images (0: all)")
    p.add_argument("--probe-test", type=int, default=1000, help="probe test images (0: all)")
    p.add_argument("--probe-batch-size", type=int, default=256)
    p.add_argument("--probe-lrs", type=probe.parse_floats, default=list(PROBE_GRID))
    p.add_argument("--probe-wds", type=probe.parse_floats, default=list(PROBE_GRID))
    p.add_argument("--include-random-init", action="store_true", help="add the random-init encoder as a baseline")
    p.add_argument("--out", default="runs/ablation", help="working folder (runs, encoders)")
    p.add_argument("--report", default=None, help="report path without suffix (default: <out>/ablation)")
    p.add_argument("--num-workers", type=int, default=0, help="data-loader workers")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy 2-core machine)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep Trainer checkpoints of finished runs")
    p.add_argument("--analyze-images", type=int, default=0,
                   help="also analyse every encoder's representations on this many test images (0: no)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = run_ablation(
        preset=args.preset, objectives=args.objectives, seeds=args.seeds, steps=args.steps,
        batch_size=args.batch_size, warmup_frac=args.warmup_frac, probes=args.probes, probe_epochs=args.probe_epochs,
        probe_train=args.probe_train or None, probe_test=args.probe_test or None,
        probe_batch_size=args.probe_batch_size, probe_lrs=args.probe_lrs,
        probe_wds=args.probe_wds, include_random_init=args.include_random_init, out=args.out, report=args.report,
        dataset=args.dataset, pretrain_limit=args.limit, recipe=args.recipe, overrides=args.set,
        num_workers=args.num_workers, keep_checkpoints=args.keep_checkpoints, analyze_images=args.analyze_images)
    print(report_markdown(data))
    return data


if __name__ == "__main__":
    main()
