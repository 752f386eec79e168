"""Frozen-encoder segmentation probes (SPEC §7): kNN (CAPI-style), Lin and Blk (Segmenter, one block).

    python training/segment.py --model random:vit-micro --out results/random-micro      # Fashion-MNIST mosaics
    python training/segment.py --model runs/micro/encoder --dataset my_seg_dataset --num-labels 150 \
        --ignore-index 0,255 --image-size 224

`--dataset mosaic` (default) is the embedded 2×2 Fashion-MNIST mosaic task (56×56, labels 0 = background, 1..10);
otherwise a folder written by `Dataset.save_to_disk` or a Hub dataset with image and mask columns
(`--image-column`, `--mask-column`). Images are resized to R×R with the model's image processor (R = `--image-size`,
default the encoder's size; other sizes interpolate the position embedding) and masks to R×R (nearest); features are
computed once (no augmentation) and scored at R×R.

kNN: train patch features standardised on train, patches whose most frequent label is ignored dropped, each patch
carrying its P×P label block; k ∈ {1, 3, 10, 30} × {cosine, L2}, per-pixel vote. Lin / Blk: AdamW on cached
features (one head per learning rate, `HEAD_LRS` or `--lrs`; 40 epochs, 1 warm-up epoch + cosine), logits upsampled
bilinearly. Every setting is scored on the test split and the best is reported (mIoU and pixel accuracy, see
`bootleg_hf.segmentation`); the best Lin/Blk head is saved as a `BootlegForSemanticSegmentation` folder
(`<out>/segmenter`, with processor) that `pipeline("image-segmentation", model=...)` loads.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers in training/probe.py

import bootleg_hf  # noqa: E402
from bootleg_hf import BootlegForSemanticSegmentation, BootlegModel  # noqa: E402
from bootleg_hf.data import MOSAIC_LABELS, decode_image, make_mosaic_segmentation  # noqa: E402
from bootleg_hf.modeling_bootleg_heads import build_segmentation_head  # noqa: E402
from bootleg_hf.segmentation import (  # noqa: E402
    KNN_KS,
    KNN_METRICS,
    encode,
    knn_segmentation,
    miou,
    predict_segmentation,
    train_segmentation_head,
)
from probe import default_device, load_encoder, save_task_model, select_subset, write_results  # noqa: E402

SEGMENTATION_PROBES = ("knn", "lin", "blk")
# Learning rates tried per head (the best is reported). On vit-micro, a Linear head on 96 normalised channels wants
# 1e-2 or more, the transformer block of Blk 1e-3 (its accuracy collapses from 1e-2 on).
HEAD_LRS = {"lin": (3e-3, 1e-2, 3e-2, 1e-1), "blk": (3e-4, 1e-3, 3e-3)}


def load_segmentation_split(dataset: str | datasets.DatasetDict, split: str, limit: int | None, seed: int,
                            image_column: str, mask_column: str) -> datasets.Dataset:
    """The mosaic task (`limit` images, default 1000) or a dataset with image and mask columns."""
    if isinstance(dataset, datasets.DatasetDict):
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


def prepare(ds: datasets.Dataset, config: bootleg_hf.BootlegConfig, size: int, image_column: str,
            mask_column: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`pixel_values [N, 3, R, R]` through the model's image processor (as the pipeline sees images) and label maps
    `[N, R, R]` resized with nearest neighbour. (transformers' BEiT PIL processor resizes segmentation maps with the
    image's bicubic filter, which invents labels at class borders, so masks are resized here.)"""
    processor = bootleg_hf.make_image_processor(config)
    images = [decode_image(v) for v in ds[image_column]]
    pixel_values = processor(images=images, size={"height": size, "width": size}, return_tensors="pt")["pixel_values"]
    masks = [np.asarray(decode_mask(v).resize((size, size), Image.NEAREST)) for v in ds[mask_column]]
    return pixel_values, torch.from_numpy(np.stack(masks)).long()


def decode_mask(value: Any) -> Image.Image:
    """A label map (PIL image, path or `{"bytes", "path"}` dict) as a single-channel image; values are labels."""
    if isinstance(value, dict):
        value = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
    img = value if isinstance(value, Image.Image) else Image.open(value)
    if img.mode not in ("L", "P", "I", "I;16"):
        raise ValueError(f"segmentation masks must be single-channel label images, got mode {img.mode}")
    return img


def run_segmentation(
    model: str | BootlegModel,
    dataset: str | datasets.DatasetDict = "mosaic",
    probes: Sequence[str] = SEGMENTATION_PROBES,
    limit_train: int | None = 1000,
    limit_test: int | None = 250,
    image_size: int | None = None,
    epochs: int = 40,
    batch_size: int = 64,
    lrs: Sequence[float] | None = None,
    weight_decay: float = 1e-4,
    ks: Sequence[int] = KNN_KS,
    metrics: Sequence[str] = KNN_METRICS,
    ignore_index: Sequence[int] = (255,),
    num_labels: int | None = None,
    label_names: Sequence[str] | None = None,
    test_split: str = "test",
    image_column: str = "image",
    mask_column: str = "mask",
    weights: str = "teacher",
    out: str | Path | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Score the segmentation probes in `probes` on a frozen encoder; return (and with `out`, write) the results:
    every kNN setting and each trained head with mIoU / pixel accuracy (in %), plus the best of each family.

    Class names: `label_names`, else the mosaic's for `dataset="mosaic"`, else `"0"`, `"1"`, … up to `num_labels`
    (default: the largest non-ignored train label + 1)."""
    start = time.perf_counter()
    device = torch.device(device) if device is not None else default_device()
    encoder = load_encoder(model, weights).to(device)
    config = encoder.config
    size = image_size or config.image_hw[0]
    if size % config.patch_size:
        raise ValueError(f"image size {size} is not a multiple of the patch size {config.patch_size}")
    grid = (size // config.patch_size,) * 2
    train = load_segmentation_split(dataset, "train", limit_train, seed, image_column, mask_column)
    test = load_segmentation_split(dataset, test_split, limit_test, seed + 1, image_column, mask_column)
    train_pixels, train_labels = prepare(train, config, size, image_column, mask_column)
    test_pixels, test_labels = prepare(test, config, size, image_column, mask_column)
    ignored = [int(i) for i in ignore_index]
    if label_names is None and isinstance(dataset, str) and dataset == "mosaic":
        label_names = MOSAIC_LABELS
    elif label_names is None:
        valid = train_labels[~torch.isin(train_labels, torch.tensor(ignored))]
        label_names = [str(i) for i in range(num_labels or int(valid.max()) + 1)]
    label_names = list(label_names)
    timings = {}
    tick = time.perf_counter()
    train_tokens, test_tokens = encode(encoder, train_pixels), encode(encoder, test_pixels)
    timings["features_s"] = time.perf_counter() - tick

    results: dict[str, Any] = {
        "model": model if isinstance(model, str) else type(model).__name__, "weights": weights,
        "dataset": dataset if isinstance(dataset, str) else "custom", "num_train": len(train), "num_test": len(test),
        "image_size": size, "num_labels": len(label_names), "ignore_index": ignored, "probes": {},
    }

    def percent(scores: dict) -> dict:
        return {**scores, "miou": 100 * scores["miou"], "pixel_accuracy": 100 * scores["pixel_accuracy"]}

    if "knn" in probes:
        tick = time.perf_counter()
        knn = knn_segmentation(train_tokens, train_labels, test_tokens, test_labels, len(label_names),
                               config.patch_size, config.num_prefix_tokens, ks, metrics, ignored)
        timings["knn_s"] = time.perf_counter() - tick
        settings = {name: percent(r) for name, r in knn.items()}
        best = max(settings, key=lambda name: settings[name]["miou"])
        results["probes"]["knn"] = {"best": {"setting": best, **settings[best]}, "settings": settings}
    trained = {}
    for kind in [p for p in probes if p in ("lin", "blk")]:
        tick = time.perf_counter()
        by_lr, heads = {}, {}
        for lr in lrs or HEAD_LRS[kind]:
            torch.manual_seed(seed)
            heads[lr] = build_segmentation_head(kind, config, len(label_names)).to(device)
            history = train_segmentation_head(heads[lr], train_tokens, train_labels, grid, epochs=epochs,
                                              batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                              ignore_index=ignored, seed=seed)
            pred = predict_segmentation(heads[lr], test_tokens, grid, (size, size))
            by_lr[lr] = {**percent(miou(pred, test_labels, len(label_names), ignored)), "train_loss": history}
        timings[f"{kind}_s"] = time.perf_counter() - tick
        best_lr = max(by_lr, key=lambda lr: by_lr[lr]["miou"])
        trained[kind] = heads[best_lr]
        results["probes"][kind] = {
            "best": {"lr": best_lr, **by_lr[best_lr]}, "epochs": epochs, "weight_decay": weight_decay,
            "by_lr": {f"{lr:g}": {k: r[k] for k in ("miou", "pixel_accuracy")} | {"final_loss": r["train_loss"][-1]}
                      for lr, r in by_lr.items()}}
    timings["total_s"] = time.perf_counter() - start
    results["wall_time_s"] = {k: round(v, 2) for k, v in timings.items()}

    if out is not None:
        out = Path(out)
        if trained:
            best_kind = max(trained, key=lambda k: results["probes"][k]["best"]["miou"])
            segmenter = BootlegForSemanticSegmentation.from_encoder(
                encoder, trained[best_kind].state_dict(), id2label=label_names, segmentation_head=best_kind,
                image_size=size, semantic_loss_ignore_index=ignored[0] if ignored else 255)
            save_task_model(segmenter, out / "segmenter")
            results["saved_head"] = best_kind
        write_results(out, "segment_results", results, segment_markdown(results))
    return results


def segment_markdown(results: dict[str, Any]) -> str:
    lines = [f"# Segmentation probes: `{results['model']}` on {results['dataset']}", "",
             f"{results['num_train']} train / {results['num_test']} test images at {results['image_size']} px, "
             f"{results['num_labels']} classes, ignored labels {results['ignore_index']}; wall time "
             f"{results['wall_time_s']['total_s']:.0f} s.", "",
             "| probe | mIoU % | pixel acc. % | setting |", "|---|---|---|---|"]
    for kind, r in results["probes"].items():
        b = r["best"]
        setting = b["setting"] if kind == "knn" else f"lr {b['lr']:g}, wd {r['weight_decay']:g}, {r['epochs']} epochs"
        lines.append(f"| {kind} | {b['miou']:.2f} | {b['pixel_accuracy']:.2f} | {setting} |")
    if "knn" in results["probes"]:
        lines += ["", "## kNN settings", "", "| setting | mIoU % | pixel acc. % |", "|---|---|---|"]
        for name, r in results["probes"]["knn"]["settings"].items():
            lines.append(f"| {name} | {r['miou']:.2f} | {r['pixel_accuracy']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="encoder folder, pretraining checkpoint or random:<preset>[:seed]")
    parser.add_argument("--weights", choices=("teacher", "student"), default="teacher")
    parser.add_argument("--dataset", default="mosaic", help="mosaic, a save_to_disk folder or a Hub dataset")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--mask-column", default="mask")
    parser.add_argument("--probes", default=",".join(SEGMENTATION_PROBES), help="comma list of knn, lin, blk")
    parser.add_argument("--limit-train", type=int, default=1000)
    parser.add_argument("--limit-test", type=int, default=250)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lrs", default=None, help=f"Lin/Blk learning rates (default: {HEAD_LRS})")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--ks", default=",".join(map(str, KNN_KS)))
    parser.add_argument("--metrics", default=",".join(KNN_METRICS))
    parser.add_argument("--ignore-index", default="255", help="comma list of label values not scored")
    parser.add_argument("--num-labels", type=int, default=None, help="default: max label in train + 1")
    parser.add_argument("--labels", default=None, help="comma list of class names (default: the label values)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    probes = [p.strip() for p in args.probes.split(",") if p.strip()]
    unknown = sorted(set(probes) - set(SEGMENTATION_PROBES))
    if unknown:
        parser.error(f"unknown probes {unknown}; choose from {SEGMENTATION_PROBES}")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run_segmentation(
        args.model, args.dataset, probes, args.limit_train, args.limit_test, args.image_size, args.epochs,
        args.batch_size, [float(lr) for lr in args.lrs.split(",")] if args.lrs else None, args.weight_decay,
        [int(k) for k in args.ks.split(",")], args.metrics.split(","),
        [int(i) for i in args.ignore_index.split(",") if i], args.num_labels,
        args.labels.split(",") if args.labels else None, args.test_split, args.image_column,
        args.mask_column, args.weights, args.out, args.seed, args.device)
    print(segment_markdown(results))
    return results


if __name__ == "__main__":
    main()
