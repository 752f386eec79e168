"""Mask-generation and collator throughput benchmark (docs/design.md §10: 256 × 14×14 in ≤ 5 ms on one core).

    python -m bench.bench_masking [--out bench/results/masking.json]

Part 1 times ``MaskGenerator.generate`` per mode on one thread (median over repeats after warm-up).
Part 2 measures data-loading throughput (images/s) of a ``DataLoader`` with ``BootlegDataCollator`` on a
synthetic in-memory dataset, against a stack-only collator, so the masking share of loading is visible.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bench.common import machine_info, write_json

from bootleg_hf.masking import MODES, BootlegDataCollator, MaskGenerator


class SyntheticImages(Dataset):
    """``length`` examples drawn from a small pool of random ``[3, S, S]`` images (no decoding cost)."""

    def __init__(self, length: int, image_size: int, pool: int = 32) -> None:
        self.length = length
        self.images = torch.randn(pool, 3, image_size, image_size)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.images[i % len(self.images)], "labels": i % 10, "sample_index": i}


def stack_only(examples: list[dict]) -> dict:
    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["labels"] for e in examples])}


def time_generate(gen: MaskGenerator, batch_size: int, repeats: int, warmup: int) -> dict:
    for i in range(warmup):
        gen.generate(batch_size, batch_index=10_000 + i)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        gen.generate(batch_size, batch_index=i)
        times.append((time.perf_counter() - t0) * 1e3)
    q = np.percentile(times, [10, 90])
    return {"median_ms": statistics.median(times), "p10_ms": float(q[0]), "p90_ms": float(q[1]),
            "min_ms": min(times), "repeats": repeats}


def loader_throughput(collate, batch_size: int, batches: int, workers: int, image_size: int) -> dict:
    data = SyntheticImages(batch_size * (batches + 1), image_size)
    loader = DataLoader(data, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    it = iter(loader)
    next(it)  # worker start-up and the first batch are excluded
    t0 = time.perf_counter()
    n = sum(batch["pixel_values"].shape[0] for batch in it)
    dt = time.perf_counter() - t0
    return {"images_per_s": n / dt, "batches": batches, "seconds": dt}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/masking.json")
    p.add_argument("--grid", type=int, nargs=2, default=(14, 14), metavar=("GH", "GW"))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--loader-batches", type=int, default=12)
    p.add_argument("--image-size", type=int, default=224)
    args = p.parse_args(argv)
    if args.repeats < 20:
        p.error("--repeats must be >= 20")
    torch.set_num_threads(1)
    grid = tuple(args.grid)

    result: dict = {
        "machine": machine_info(),
        "config": {"grid": grid, "batch_size": args.batch_size, "warmup": args.warmup},
        "generate": {},
    }
    for mode in args.modes:
        r = time_generate(MaskGenerator(grid, mode), args.batch_size, args.repeats, args.warmup)
        result["generate"][mode] = r
        print(f"generate {mode:8s} {args.batch_size}×{grid[0]}×{grid[1]}: median {r['median_ms']:.3f} ms "
              f"(p10 {r['p10_ms']:.3f}, p90 {r['p90_ms']:.3f})")

    collator = BootlegDataCollator(MaskGenerator(grid, "bootleg"), rank=0)
    collator.set_epoch(0)
    loading = {"workers": args.workers, "image_size": args.image_size, "batch_size": args.batch_size}
    for name, fn in (("bootleg_collator", collator), ("stack_only", stack_only)):
        loading[name] = loader_throughput(fn, args.batch_size, args.loader_batches, args.workers, args.image_size)
        print(f"DataLoader({args.workers} workers, {args.image_size}px) {name:16s}: "
              f"{loading[name]['images_per_s']:.0f} images/s")
    boot = result["generate"].get("bootleg") or time_generate(
        MaskGenerator(grid), args.batch_size, args.repeats, args.warmup)
    loading["mask_only_images_per_s"] = args.batch_size / boot["median_ms"] * 1e3
    print(f"mask generation alone (bootleg, 1 thread): {loading['mask_only_images_per_s']:.0f} images/s")
    result["loading"] = loading

    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
