"""Frozen-encoder classification probes with the paper's protocol (SPEC §7).

    python training/probe.py --model runs/micro/encoder --dataset fashion-mnist --out results/micro
    python training/probe.py --model random:vit-micro --dataset fashion-mnist --epochs 10 --limit-train 10000 \
        --limit-test 2000 --out results/random-micro          # the random-init baseline

`--model` is an encoder folder, a pretraining checkpoint folder (its EMA teacher is loaded, the weights the paper
evaluates; `--weights student` takes the student), or `random:<preset>[:seed]` (a random-init encoder).

Protocol: cross-entropy, AdamW, per-step linear warm-up over 5 epochs (over `epochs // 2` when `--epochs` < 10, so
short runs still reach their cosine phase) then cosine to 0; train augmentation RandomResizedCrop(0.3–1) + flip +
colour jitter 0.4, evaluation on an 87.5 % centre crop. For every requested probe type a 5 × 5 lr × wd grid
({0.5, 1, 2, 4, 8}e-3 each) of heads trains simultaneously, and all of them are fed by ONE frozen encoder forward per
batch (eval mode, no gradients). Like the paper, the best grid point is reported (selected on the evaluation split).

Writes `probe_results.json`, `probe_results.md`, the best head of each type (`heads/<type>.safetensors`) and a
`classifier/` folder (`BootlegForImageClassification` + an image processor doing the evaluation crop) for the best
probe overall, which `pipeline("image-classification", model="<out>/classifier")` loads.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from safetensors.torch import save_file
from transformers import AutoModel, BeitImageProcessorPil

import bootleg_hf
from bootleg_hf import BootlegConfig, BootlegForImageClassification, BootlegForPretraining, BootlegModel
from bootleg_hf.configuration_bootleg import PROBE_TYPES
from bootleg_hf.data import EvalTransform, ProbeTrainTransform, load_image_dataset
from bootleg_hf.probes import PROBE_GRID, ProbeSweep

# --------------------------------------------------------------------------------------------------------------------
# Shared with training/segment.py
# --------------------------------------------------------------------------------------------------------------------


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_encoder(model: str | BootlegModel, weights: str = "teacher") -> BootlegModel:
    """A frozen encoder in eval mode from a folder, a pretraining checkpoint or `random:<preset>[:seed]`.

    `weights="teacher"` loads `AutoModel.from_pretrained(folder)`, which for a pretraining checkpoint is the EMA
    teacher (stored under the `bootleg.` prefix); `"student"` loads the checkpoint's student encoder instead.
    """
    if isinstance(model, BootlegModel):
        encoder = model
    elif model.startswith("random:"):
        preset, _, seed = model.removeprefix("random:").partition(":")
        torch.manual_seed(int(seed or 0))
        encoder = BootlegModel(BootlegConfig.from_preset(preset))
    elif weights == "student":
        encoder = BootlegForPretraining.from_pretrained(model).student
    elif weights == "teacher":
        encoder = AutoModel.from_pretrained(model)
        if not isinstance(encoder, BootlegModel):
            raise ValueError(f"{model} holds a {type(encoder).__name__}, not a Bootleg encoder")
    else:
        raise ValueError(f"weights must be 'teacher' or 'student', got '{weights}'")
    return encoder.requires_grad_(False).eval()


def select_subset(ds: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    """A seeded random subset of `limit` rows (all rows when `limit` is None): folders are often sorted by class."""
    if limit is None or limit >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(limit))


def save_task_model(model: bootleg_hf.BootlegPreTrainedModel, path: Path,
                    processor: BeitImageProcessorPil | None = None) -> None:
    """Save a task model with its image processor (default: the model's, `make_image_processor`) so pipelines load
    the folder directly."""
    model.save_pretrained(path)
    (processor or bootleg_hf.make_image_processor(model.config)).save_pretrained(path)


def write_results(out: Path, name: str, results: dict[str, Any], markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)


def square_size(config: BootlegConfig) -> int:
    h, w = config.image_hw
    if h != w:
        raise ValueError(f"probing needs a square input size, the encoder's is {h}x{w}")
    return h


# --------------------------------------------------------------------------------------------------------------------
# Classification probes
# --------------------------------------------------------------------------------------------------------------------


def eval_processor(config: BootlegConfig, crop_fraction: float = 0.875) -> BeitImageProcessorPil:
    """The evaluation transform as an image processor (shorter side to size / crop_fraction, bicubic, centre crop), so
    the saved classifier sees in a pipeline what it was scored on (equal to `EvalTransform` within 1e-6)."""
    size = square_size(config)
    return BeitImageProcessorPil(**{**bootleg_hf.make_image_processor(config).to_dict(), "do_center_crop": True,
                                    "size": {"shortest_edge": max(size, round(size / crop_fraction))},
                                    "crop_size": {"height": size, "width": size}})


def class_names(ds: datasets.Dataset) -> list[str]:
    """Names of the `label` column's classes (`ClassLabel` names, else the integers up to the largest label)."""
    feature = ds.features.get("label")
    if feature is None:
        raise ValueError(f"classification probes need a label column; the dataset has {ds.column_names}")
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    return [str(i) for i in range(max(ds["label"]) + 1)]


def make_loader(ds: datasets.Dataset, batch_size: int, train: bool, num_workers: int, seed: int):
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=train, drop_last=train and len(ds) >= batch_size,  # BatchNorm needs B > 1
        num_workers=num_workers, persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed))


def run_probes(
    model: str | BootlegModel,
    dataset: str | datasets.DatasetDict = "fashion-mnist",
    probes: Sequence[str] = PROBE_TYPES,
    epochs: int = 10,
    batch_size: int = 256,
    limit_train: int | None = None,
    limit_test: int | None = None,
    lrs: Sequence[float] = PROBE_GRID,
    wds: Sequence[float] = PROBE_GRID,
    warmup_epochs: int | None = None,
    test_split: str = "test",
    weights: str = "teacher",
    out: str | Path | None = None,
    seed: int = 0,
    num_workers: int = 1,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train the lr × wd sweep of every probe type in `probes` on a frozen encoder; return (and with `out`, write)
    the results: per type the full grid (`top1` in %, final-epoch `train_loss`) and the best point."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    start = time.perf_counter()
    device = torch.device(device) if device is not None else default_device()
    encoder = load_encoder(model, weights).to(device)
    config = encoder.config
    size = square_size(config)
    train = select_subset(load_image_dataset(dataset, "train"), limit_train, seed)
    test = select_subset(load_image_dataset(dataset, test_split), limit_test, seed)
    label_names = class_names(train)
    train.set_transform(ProbeTrainTransform(size, scale=(0.3, 1.0), jitter=0.4))
    test.set_transform(EvalTransform(size, crop_fraction=0.875))  # what `eval_processor` saves for pipelines
    train_loader = make_loader(train, batch_size, True, num_workers, seed)
    test_loader = make_loader(test, batch_size, False, num_workers, seed)
    warmup_epochs = warmup_epochs if warmup_epochs is not None else min(5, epochs // 2)
    steps = epochs * len(train_loader)
    sweeps = {}
    for kind in probes:
        torch.manual_seed(seed)
        sweeps[kind] = ProbeSweep(kind, config, len(label_names), lrs, wds, total_steps=steps,
                                  warmup_steps=warmup_epochs * len(train_loader)).to(device)

    timings = {"encoder_s": 0.0, "heads_s": 0.0}
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        losses = {kind: torch.zeros(len(s.grid)) for kind, s in sweeps.items()}
        for batch in train_loader:
            tick = time.perf_counter()
            with torch.no_grad():
                tokens = encoder(batch["pixel_values"].to(device)).last_hidden_state
            timings["encoder_s"] += time.perf_counter() - tick
            tick = time.perf_counter()
            labels = batch["label"].to(device)
            for kind, sweep in sweeps.items():
                losses[kind] += sweep.train_step(tokens, labels).cpu() / len(train_loader)
            timings["heads_s"] += time.perf_counter() - tick
        summary = ", ".join(f"{kind} {float(loss.min()):.3f}" for kind, loss in losses.items())
        print(f"epoch {epoch + 1}/{epochs} ({time.perf_counter() - epoch_start:.1f} s): best train loss {summary}",
              flush=True)

    correct = {kind: torch.zeros(len(s.grid), dtype=torch.long) for kind, s in sweeps.items()}
    with torch.no_grad():
        for batch in test_loader:
            tokens = encoder(batch["pixel_values"].to(device)).last_hidden_state
            labels = batch["label"].to(device)
            for kind, sweep in sweeps.items():
                correct[kind] += sweep.num_correct(tokens, labels).cpu()

    results: dict[str, Any] = {
        "model": model if isinstance(model, str) else type(model).__name__, "weights": weights,
        "dataset": dataset if isinstance(dataset, str) else "custom", "num_train": len(train), "num_test": len(test),
        "image_size": size, "epochs": epochs, "warmup_epochs": warmup_epochs, "batch_size": batch_size,
        "lrs": list(lrs), "wds": list(wds), "seed": seed, "probes": {},
    }
    for kind, sweep in sweeps.items():
        top1 = 100.0 * correct[kind].double() / len(test)
        grid = [{"lr": lr, "weight_decay": wd, "top1": float(a), "train_loss": float(l)}
                for (lr, wd), a, l in zip(sweep.grid, top1, losses[kind])]
        best = int(top1.argmax())
        results["probes"][kind] = {"best": {**grid[best], "index": best}, "grid": grid}
    best_kind = max(results["probes"], key=lambda k: results["probes"][k]["best"]["top1"])
    results["best_probe"] = best_kind
    timings["total_s"] = time.perf_counter() - start
    results["wall_time_s"] = {k: round(v, 2) for k, v in timings.items()}

    if out is not None:
        out = Path(out)
        (out / "heads").mkdir(parents=True, exist_ok=True)
        for kind, sweep in sweeps.items():
            best = results["probes"][kind]["best"]
            state = {k: v.detach().cpu().contiguous() for k, v in sweep.heads[best["index"]].state_dict().items()}
            save_file(state, out / "heads" / f"{kind}.safetensors",
                      metadata={"probe_type": kind, **{k: str(best[k]) for k in ("lr", "weight_decay", "top1")}})
        best_head = sweeps[best_kind].heads[results["probes"][best_kind]["best"]["index"]].state_dict()
        classifier = BootlegForImageClassification.from_encoder(encoder, best_head, id2label=label_names,
                                                                probe_type=best_kind)
        save_task_model(classifier, out / "classifier", eval_processor(config))
        write_results(out, "probe_results", results, probe_markdown(results))
    return results


def probe_markdown(results: dict[str, Any]) -> str:
    """Best top-1 per probe type, then each type's full lr × wd grid."""
    lines = [f"# Frozen probes: `{results['model']}` on {results['dataset']}", "",
             f"{results['num_train']} train / {results['num_test']} test images at {results['image_size']} px, "
             f"{results['epochs']} epochs ({results['warmup_epochs']} warm-up), batch {results['batch_size']}, "
             f"{len(results['lrs'])}×{len(results['wds'])} lr × wd grid; wall time "
             f"{results['wall_time_s']['total_s']:.0f} s.", "",
             "| probe | top-1 % | lr | wd |", "|---|---|---|---|"]
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


def parse_floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="encoder folder, pretraining checkpoint or random:<preset>[:seed]")
    parser.add_argument("--weights", choices=("teacher", "student"), default="teacher")
    parser.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist, an image folder or a Hub dataset")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--probes", default=",".join(PROBE_TYPES), help="comma list of patch, cls, xattn, xblk")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--warmup-epochs", type=int, default=None, help="default: 5, or epochs // 2 below 10 epochs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--limit-test", type=int, default=None)
    parser.add_argument("--lrs", type=parse_floats, default=list(PROBE_GRID))
    parser.add_argument("--wds", type=parse_floats, default=list(PROBE_GRID))
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    probes = [p.strip() for p in args.probes.split(",") if p.strip()]
    unknown = sorted(set(probes) - set(PROBE_TYPES))
    if unknown:
        parser.error(f"unknown probe types {unknown}; choose from {PROBE_TYPES}")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run_probes(args.model, args.dataset, probes, args.epochs, args.batch_size, args.limit_train,
                         args.limit_test, args.lrs, args.wds, args.warmup_epochs, args.test_split, args.weights,
                         args.out, args.seed, args.num_workers, args.device)
    print(probe_markdown(results))
    return results


if __name__ == "__main__":
    main()
