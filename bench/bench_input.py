"""Input-pipeline benchmark: JPEG files → the batches a training step consumes, per CPU worker (issue 16).

    python -m bench.bench_input [--images 128] [--batch-size 32] [--out bench/results/input.json]

Writes `--images` seeded JPEGs of ImageNet-like sizes (long side 400–600 px, aspect 4:3, 3:2, 1:1 or their portrait
forms, quality 90, about 95 kB for 500×375) into a temporary image folder and loads it as a pretraining run does
(`load_image_dataset`, `PretrainTransform(224)`, `IndexedDataset`, `BootlegDataCollator` with ViT-S masks). Each
comparison alternates today's transforms ("after") with the pipeline as it was before issue 16 ("before": the ops
on the PIL image, then torchvision's ToImage + ToDtype + Normalize); the random draws of both are the same.

1. Pretraining path in-process on one thread: end to end (`IndexedDataset.__getitems__` + the collator) and stage
   by stage (read rows, decode, augment, to-float + normalise, mask, collate) for the shares.
2. The same path through a `DataLoader` with 1 and 2 worker processes: images/s and images/s per worker (worker
   start-up and the first batch left out), and images per CPU-second of the workers (what a worker with a core of
   its own delivers; on a shared machine the wall-clock rate also counts the other processes).
3. The probe path in-process: `ProbeTrainTransform` and `EvalTransform` (PIL backend, the saved processor's pixels;
   the tensor backend for comparison) + `default_collate`.
4. Alternatives: torchvision's `decode_jpeg` vs PIL (on bytes, with and without the augmentation after it), PIL's
   JPEG `draft` (DCT-domain downscaling by 1/2) and how often a RandomResizedCrop could use it without upscaling
   afterwards, per-image vs batched normalisation, and what handing a batch to the main process in shared memory
   costs a DataLoader worker (float32 vs uint8 pixels).
5. Workers a GPU needs: images/s of a ViT-B/16 step (`results/gpu.json` when measured, else model FLOPs per image
   from `bench.gpu.step_flops_per_image` at `--gpu-mfu` of `--gpu-peak-tflops`) / images per CPU-second of one
   DataLoader worker.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, default_collate

from bench.common import RESULTS_DIR, machine_info, set_threads, time_alternating, write_json

from bootleg_hf import BootlegConfig
from bootleg_hf.data import (IMAGENET_MEAN, IMAGENET_STD, EvalTransform, IndexedDataset, PretrainTransform,
                             ProbeTrainTransform, decode_image, load_image_dataset)
from bootleg_hf.masking import BootlegDataCollator, MaskGenerator

ASPECTS = (4 / 3, 3 / 2, 1.0, 3 / 4, 2 / 3)  # width / height
STAGES = ("read", "decode", "augment", "normalize", "mask", "collate")


# ------------------------------------------------------------------------------------------------------ data
def _colour_field(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Random colours on a grid of `cell`-pixel cells, bicubically interpolated to h × w (float32 HWC)."""
    small = rng.integers(0, 256, (h // cell + 2, w // cell + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)


def make_jpegs(root: Path, n: int, seed: int = 0, quality: int = 90, long_side: tuple[int, int] = (400, 600)) -> Path:
    """`n` JPEGs in `root/c0`, `root/c1` (two classes, for the probe path): a smooth colour field plus finer detail
    and grain, so the files are about as large (and as slow to decode) as ImageNet's. Returns `root`."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        side, aspect = int(rng.integers(long_side[0], long_side[1] + 1)), ASPECTS[int(rng.integers(len(ASPECTS)))]
        w, h = (side, round(side / aspect)) if aspect >= 1 else (round(side * aspect), side)
        pixels = (0.6 * _colour_field(rng, h, w, 32) + 0.4 * _colour_field(rng, h, w, 4)
                  + rng.normal(0, 8, (h, w, 1)).astype(np.float32))
        folder = root / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=quality)
    return root


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:  # reads the header only
        return img.size


class _Before:
    """Mixin: a transform as it was before issue 16 — its ops on the PIL image, then torchvision's ToImage, ToDtype
    and Normalize on the small image (`_BatchImageTransform.__call__` calls `normalize(augment(image))`)."""

    def augment(self, img: Image.Image) -> Image.Image:
        return self.ops(img)

    def normalize(self, img: Image.Image) -> torch.Tensor:
        return _before_tail()(img)


@functools.cache
def _before_tail() -> Any:
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))])


def before(cls: type, *args: Any, **kwargs: Any) -> Any:
    """`cls(*args, **kwargs)` as it was before issue 16 (see `_Before`)."""
    return type(f"Before{cls.__name__}", (_Before, cls), {})(*args, **{**kwargs, "backend": "pil"})


def batches_of(n: int, batch_size: int) -> list[list[int]]:
    """Consecutive full batches of indices (the last partial batch dropped, as the Trainer does)."""
    return [list(range(i, i + batch_size)) for i in range(0, n - batch_size + 1, batch_size)]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def per_image(timings: dict[str, dict], images: int) -> dict[str, dict]:
    """`time_alternating` results with `ms_per_image`, `images_per_s` and `images_per_cpu_s` (process CPU time: leaves
    out the time other processes held the core) added."""
    return {k: {**v, "ms_per_image": v["median_s"] / images * 1e3, "images_per_s": images / v["median_s"],
                "images_per_cpu_s": images / v["cpu"]["median_s"]} for k, v in timings.items()}


# ------------------------------------------------------------------------------------------------------ parts
def staged_pass(rows: Any, transform: Any, collator: BootlegDataCollator, batches: list[list[int]]) -> dict:
    """Seconds per stage of the pretraining path over `batches`: the same work as `IndexedDataset.__getitems__` →
    the dataset's transform → the collator, timed step by step. `mask` is the collator's mask generation; `collate`
    is the rest of the collator (stacking the batch)."""
    t = dict.fromkeys(STAGES, 0.0)
    for idx in batches:
        t0 = time.perf_counter()
        values = rows[idx]["image"]
        t1 = time.perf_counter()
        images = [decode_image(v) for v in values]
        t2 = time.perf_counter()
        small = [transform.augment(img) for img in images]
        t3 = time.perf_counter()
        examples = [{"pixel_values": transform.normalize(x), "sample_index": i} for x, i in zip(small, idx)]
        t4 = time.perf_counter()
        collator.mask_generator.generate(len(idx), epoch=collator.epoch, batch_index=idx, rank=collator.rank,
                                         seed=collator.seed)
        t5 = time.perf_counter()
        collator(examples)  # stacks, then generates the same masks again
        t6 = time.perf_counter()
        # the collator's own time less its mask generation (timed just before); a sub-microsecond remainder can come
        # out negative on a noisy machine, so it is clipped at 0
        collate = max(0.0, (t6 - t5) - (t5 - t4))
        for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, collate)):
            t[stage] += dt
    return t


def pretrain_in_process(rows: Any, transforms: dict[str, Any], collator: BootlegDataCollator, batch_size: int,
                        repeats: int, warmup: int) -> dict:
    """End-to-end and staged images/s of the pretraining path in this process, per transform, alternated."""
    batches = batches_of(len(rows), batch_size)
    images = len(batches) * batch_size
    indexed = {name: IndexedDataset(rows.with_transform(tf)) for name, tf in transforms.items()}

    def epoch(data: IndexedDataset) -> Callable[[], None]:
        return lambda: [collator(data.__getitems__(idx)) for idx in batches]

    end_to_end = per_image(time_alternating({name: epoch(d) for name, d in indexed.items()}, repeats, warmup), images)
    staged: dict[str, list[dict]] = {name: [] for name in transforms}
    time_alternating({name: (lambda name=name, tf=tf: staged[name].append(staged_pass(rows, tf, collator, batches)))
                      for name, tf in transforms.items()}, repeats, warmup)
    out = {"images": images, "batch_size": batch_size}
    for name, timing in end_to_end.items():
        stages = {s: median([p[s] for p in staged[name][warmup:]]) for s in STAGES}
        total = sum(stages.values())
        out[name] = {"end_to_end": timing,
                     "stage_ms_per_image": {s: v / images * 1e3 for s, v in stages.items()},
                     "stage_shares": {s: v / total for s, v in stages.items()},
                     "staged_images_per_s": images / total}
    out["after_over_before_time"] = end_to_end["after"]["median_s"] / end_to_end["before"]["median_s"]
    return out


def loader_rate(data: IndexedDataset, collator: BootlegDataCollator, batch_size: int, workers: int,
                samples: int) -> tuple[float, float]:
    """One pass over `samples` indices (the folder repeated) through a `DataLoader`: (images/s without worker start-up
    and the first batch, images per CPU-second of the workers). The second leaves out the time other processes held
    the cores; the workers' CPU time is known once they have exited (a finished pass joins them)."""
    order = [i % len(data) for i in range(samples)]
    loader = DataLoader(data, batch_size=batch_size, sampler=order, num_workers=workers, collate_fn=collator,
                        drop_last=True)
    cpu0 = os.times()
    it = iter(loader)
    first = next(it)["pixel_values"].shape[0]
    t0 = time.perf_counter()
    n = sum(batch["pixel_values"].shape[0] for batch in it)
    wall = time.perf_counter() - t0
    del it
    cpu1 = os.times()
    cpu = (cpu1.children_user + cpu1.children_system) - (cpu0.children_user + cpu0.children_system)
    return n / wall, (n + first) / cpu if cpu > 0 else float("nan")


def pretrain_loader(rows: Any, transforms: dict[str, Any], collator: BootlegDataCollator, batch_size: int,
                    worker_counts: list[int], samples: int, rounds: int) -> dict:
    """`loader_rate` per transform and worker count, alternated over `rounds`; medians."""
    rates: dict[str, list[tuple[float, float]]] = {}
    contenders = {}
    for name, tf in transforms.items():
        data = IndexedDataset(rows.with_transform(tf))
        for w in worker_counts:
            key = f"{name}_{w}_workers"
            rates[key] = []
            contenders[key] = (lambda key=key, data=data, w=w:
                               rates[key].append(loader_rate(data, collator, batch_size, w, samples)))
    time_alternating(contenders, rounds, warmup=0)
    out: dict[str, Any] = {"batch_size": batch_size, "samples_per_pass": samples, "rounds": rounds}
    for key, r in rates.items():
        workers, wall = int(key.split("_")[-2]), median([x for x, _ in r])
        out[key] = {"workers": workers, "images_per_s": wall, "images_per_s_per_worker": wall / workers,
                    "images_per_worker_cpu_s": median([c for _, c in r]),
                    "all_images_per_s": [round(x, 1) for x, _ in r]}
    return out


def probe_in_process(rows: Any, image_size: int, batch_size: int, repeats: int, warmup: int) -> dict:
    """Images/s of the probe transforms + `default_collate` (what the probes' DataLoader runs), before / after."""
    transforms = {
        "train_before": before(ProbeTrainTransform, image_size), "train_after": ProbeTrainTransform(image_size),
        "eval_before": before(EvalTransform, image_size), "eval_after": EvalTransform(image_size),
        "eval_after_tensor_backend": EvalTransform(image_size, backend="tensor")}
    batches = batches_of(len(rows), batch_size)
    images = len(batches) * batch_size

    def epoch(data: Any) -> Callable[[], None]:
        return lambda: [default_collate(data.__getitems__(idx)) for idx in batches]

    timings = time_alternating({name: epoch(rows.with_transform(tf)) for name, tf in transforms.items()}, repeats,
                               warmup)
    out: dict[str, Any] = per_image(timings, images)
    out["train_after_over_before_time"] = timings["train_after"]["median_s"] / timings["train_before"]["median_s"]
    out["eval_after_over_before_time"] = timings["eval_after"]["median_s"] / timings["eval_before"]["median_s"]
    return out


def alternatives(blobs: list[bytes], transform: PretrainTransform, batch_size: int, repeats: int, warmup: int,
                 seed: int = 0) -> dict:
    """Decoders (PIL, PIL with `draft` at 1/2, torchvision `decode_jpeg`; alone and followed by the augmentation),
    how often a RandomResizedCrop could decode at 1/2 scale, per-image vs batched normalisation, and the shared-memory
    hand-over of a batch from a DataLoader worker."""
    from torchvision.io import decode_jpeg
    from torchvision.transforms import RandomResizedCrop, v2

    def pil_draft(b: bytes) -> Image.Image:
        img = Image.open(io.BytesIO(b))
        img.draft("RGB", (img.width // 2, img.height // 2))
        return decode_image(img)

    def tv(b: bytes) -> torch.Tensor:
        with warnings.catch_warnings():  # deprecated since torchvision 0.29 (for TorchCodec): recorded below
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8))

    decoders = per_image(time_alternating({
        "pil": lambda: [decode_image(b) for b in blobs],
        "pil_draft_half": lambda: [pil_draft(b) for b in blobs],
        "torchvision_decode_jpeg": lambda: [tv(b) for b in blobs],
        "pil_then_augment": lambda: [transform.augment(decode_image(b)) for b in blobs],
        "torchvision_decode_jpeg_then_augment": lambda: [transform.ops(tv(b)) for b in blobs],
    }, repeats, warmup), len(blobs))

    # a 1/2-scale draft keeps the crop at least as large as the output only when both crop sides are >= 2 × output
    crop = next(op for op in transform.ops.transforms if isinstance(op, v2.RandomResizedCrop))
    state, draws = torch.random.get_rng_state(), 20
    torch.manual_seed(seed)
    sides = [RandomResizedCrop.get_params(Image.open(io.BytesIO(b)), list(crop.scale), list(crop.ratio))[2:]
             for b in blobs for _ in range(draws)]
    torch.random.set_rng_state(state)
    fraction = sum(h >= 2 * crop.size[0] and w >= 2 * crop.size[1] for h, w in sides) / len(sides)
    saving = decoders["pil"]["ms_per_image"] - decoders["pil_draft_half"]["ms_per_image"]

    small = [transform.augment(decode_image(b)) for b in blobs[:batch_size]]
    pil_small = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in small]
    normalize = per_image(time_alternating({
        "per_image_then_stack": lambda: torch.stack([transform.normalize(x) for x in small]),
        "stack_uint8_then_normalize_batch": lambda: transform.normalize(torch.stack(small)),
        "before_per_image_then_stack": lambda: torch.stack([_before_tail()(x) for x in pil_small]),
    }, repeats * 4, warmup), len(small))
    # a DataLoader worker hands each batch over in a fresh shared-memory segment: its cost grows with the bytes
    floats, uint8 = torch.stack([transform.normalize(x) for x in small]), torch.stack(small)
    handover = per_image(time_alternating({"float32": lambda: floats.clone().share_memory_(),
                                           "uint8": lambda: uint8.clone().share_memory_()}, repeats * 4, warmup),
                         len(small))
    return {"decoders": decoders, "torchvision_decode_jpeg_deprecated": True, "normalize": normalize,
            "shared_memory_handover": handover,
            "draft": {"crop_draws": len(sides), "fraction_of_crops_decodable_at_half_scale": fraction,
                      "decode_saving_ms_when_applicable": saving, "expected_saving_ms_per_image": fraction * saving}}


def gpu_demand(per_worker: float, mfu: float, peak_tflops: float, results_dir: Path) -> dict:
    """Images/s a ViT-B/16 Bootleg step consumes on one GPU and the workers that takes at `per_worker` images/s."""
    from bench.gpu import step_flops_per_image

    config = BootlegConfig.from_preset("vit-base")
    masks = [MaskGenerator.from_config(config).generate(256, batch_index=i) for i in range(4)]
    context = statistics.mean(m.context_indices.shape[1] for m in masks)
    target = statistics.mean(m.target_indices.shape[2] for m in masks)
    flops = step_flops_per_image(config, context, target, masks[0].target_indices.shape[1])["total"]
    measured = results_dir / "gpu.json"
    if measured.exists():
        g = json.loads(measured.read_text())
        rate, source = g["train"]["eager"]["images_per_s"], f"measured: {measured.name} ({g['machine'].get('gpu')})"
    else:
        rate = mfu * peak_tflops * 1e12 / flops
        source = f"estimated: {mfu:.0%} MFU of {peak_tflops:g} TFLOP/s (H100 SXM dense bf16) / model FLOPs per image"
    return {"model": "vit-base", "batch_size": 256, "model_gflops_per_image": flops / 1e9, "gpu_images_per_s": rate,
            "source": source, "images_per_s_per_worker": per_worker,
            "workers_needed": math.ceil(rate / per_worker)}


# ------------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=128, help="JPEGs generated (and one in-process pass)")
    p.add_argument("--long-side", type=int, nargs=2, default=(400, 600), metavar=("MIN", "MAX"))
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--image-size", type=int, default=224, help="output side of the transforms")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="alternated rounds of the in-process measurements")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts")
    p.add_argument("--loader-samples", type=int, default=1024, help="images per DataLoader pass")
    p.add_argument("--loader-rounds", type=int, default=2)
    p.add_argument("--gpu-mfu", type=float, default=0.4, help="assumed MFU when results/gpu.json is absent")
    p.add_argument("--gpu-peak-tflops", type=float, default=989.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS_DIR / "input.json"))
    args = p.parse_args(argv)
    set_threads(1)  # per worker: a DataLoader worker runs torch on one thread too

    with tempfile.TemporaryDirectory(prefix="bench_input_") as tmp:
        folder = make_jpegs(Path(tmp, "images"), args.images, args.seed, args.quality, tuple(args.long_side))
        files = sorted(folder.rglob("*.jpg"))
        rows = load_image_dataset(folder, cache_dir=str(Path(tmp, "cache")))
        collator = BootlegDataCollator(MaskGenerator.from_config(BootlegConfig.from_preset("vit-small")), rank=0)
        collator.set_epoch(0)
        size = args.image_size
        transforms = {"before": before(PretrainTransform, size), "after": PretrainTransform(size)}
        result: dict[str, Any] = {
            "machine": machine_info(),
            "config": {"images": args.images, "long_side": list(args.long_side), "quality": args.quality,
                       "mean_file_kb": statistics.mean(f.stat().st_size for f in files) / 1e3,
                       "mean_pixels": statistics.mean(math.prod(_size(f)) for f in files),
                       "image_size": size, "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
                       "masks": "vit-small (14×14, bootleg)"}}
        print(f"{args.images} JPEGs, mean {result['config']['mean_file_kb']:.0f} kB", flush=True)

        result["pretrain_in_process"] = r = pretrain_in_process(rows, transforms, collator, args.batch_size,
                                                                args.repeats, args.warmup)
        for name in transforms:
            x = r[name]
            print(f"pretrain in-process {name}: {x['end_to_end']['images_per_s']:.0f} images/s; ms/image " + ", ".join(
                f"{s} {v:.3f}" for s, v in x["stage_ms_per_image"].items()), flush=True)
        result["pretrain_loader"] = ld = pretrain_loader(rows, transforms, collator, args.batch_size, args.workers,
                                                         args.loader_samples, args.loader_rounds)
        for key, x in ld.items():
            if isinstance(x, dict):
                print(f"DataLoader {key}: {x['images_per_s']:.0f} images/s, {x['images_per_s_per_worker']:.0f} per "
                      f"worker, {x['images_per_worker_cpu_s']:.0f} per worker CPU-second", flush=True)
        result["probe_in_process"] = pr = probe_in_process(rows, size, args.batch_size, args.repeats, args.warmup)
        print("probe in-process: " + ", ".join(f"{k} {v['images_per_s']:.0f}" for k, v in pr.items()
                                               if isinstance(v, dict)) + " images/s", flush=True)
        result["alternatives"] = alt = alternatives([f.read_bytes() for f in files], transforms["after"],
                                                    args.batch_size, args.repeats, args.warmup, args.seed)
        print("decode ms/image: " + ", ".join(f"{k} {v['ms_per_image']:.3f}" for k, v in alt["decoders"].items()) +
              f"; crops decodable at 1/2: {alt['draft']['fraction_of_crops_decodable_at_half_scale']:.1%}", flush=True)

    # a worker with a core of its own delivers its CPU-time rate; the wall-clock rate also counts other processes
    per_worker = ld[f"after_{min(args.workers)}_workers"]["images_per_worker_cpu_s"]
    result["gpu_demand"] = g = gpu_demand(per_worker, args.gpu_mfu, args.gpu_peak_tflops, Path(args.out).parent)
    print(f"GPU ViT-B/16 step ≈ {g['gpu_images_per_s']:.0f} images/s ({g['source']}): "
          f"{g['workers_needed']} workers (cores) at {per_worker:.0f} images/s each", flush=True)
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
