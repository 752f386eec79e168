"""Shared helpers of the `bench/` scripts (run from the repository root as `python -m bench.<script>`): machine
description, alternating timing, statistics, the training optimizer, JSON output.

Timing protocol (docs/design.md §10: ratios are measured in one run): every contender is warmed up, then the contenders
are run in turn (A B C A B C …) so slow drifts of a shared, noisy machine hit all of them alike; each reports
its raw per-repeat times and their median. Ratios are ratios of medians from the same run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bootleg_hf.optim import adamw, param_groups

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's marketing name (`/proc/cpuinfo` on Linux), else whatever `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # absent or broken (e.g. timm without a working torchvision)
        return None


def load_average() -> list[float] | None:
    """1/5/15-minute load averages (other processes competing for the cores make timings noisy)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """Where a result came from: platform, CPU, cores, library versions, torch threads, date (and the GPU if any)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "timm": _version("timm"),
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average_1_5_15min": load_average(),
    }
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(idx)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def stats(times: list[float]) -> dict[str, Any]:
    """Median / p10 / p90 / min of per-repeat seconds, plus the raw list."""
    q = np.percentile(times, [10, 90]) if times else (float("nan"), float("nan"))
    return {"median_s": statistics.median(times), "p10_s": float(q[0]), "p90_s": float(q[1]), "min_s": min(times),
            "repeats": len(times), "times_s": [round(t, 6) for t in times]}


def synchronize(device: str | torch.device | None = None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(contenders: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                     device: str | torch.device | None = None) -> dict[str, dict[str, Any]]:
    """Run each callable `warmup` times, then `repeats` rounds of A B C …; returns `stats` per name.

    Wall-clock times are the result; each entry also has `cpu`, the same statistics of the process CPU time of every
    call (`time.process_time`, all threads), which leaves out the time the process waited while other processes had
    the cores: on a shared machine it is the steadier of the two (on a GPU it means nothing).
    Python's cyclic garbage collector is paused while timing (after one full collection whose survivors are frozen),
    so a collection of the many long-lived objects of `transformers` never lands inside one contender's time.
    """
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, fn in contenders.items():
                synchronize(device)
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                synchronize(device)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    finally:
        gc.enable()
        gc.unfreeze()
    return {name: {**stats(t), "cpu": stats(cpu[name])} for name, t in times.items()}


def ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Ratio of the medians of two `stats` results (a / b)."""
    return a["median_s"] / b["median_s"]


def cpu_ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Ratio of the median process CPU times of two `time_alternating` results (a / b)."""
    return a["cpu"]["median_s"] / b["cpu"]["median_s"]


def paired_ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Median over rounds of a_i / b_i for two `stats` results of the same `time_alternating` run.

    Each round's two times were taken back to back, so this ratio is robust to the machine speeding up or slowing
    down in the middle of a run (which can move the two medians to different regimes).
    """
    return statistics.median(x / y for x, y in zip(a["times_s"], b["times_s"]))


def write_json(result: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def make_adamw(model: torch.nn.Module, lr: float = 1e-4, weight_decay: float = 0.05) -> torch.optim.AdamW:
    """AdamW as `BootlegTrainer.create_optimizer` builds it: the package's parameter groups (no decay on biases,
    norms and tokens; frozen parameters such as the teacher left out), β = (0.9, 0.95), foreach (fused on a GPU)."""
    return adamw(param_groups(model, weight_decay), lr, betas=(0.9, 0.95))


def set_threads(threads: int | None) -> int:
    """Use `threads` intra-op threads (default: all cores this process may use); returns the count in force."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def preset_bench_parser(description: str | None, presets: list[str], default_repeats: dict[str, int], out_name: str,
                        batch_size: int | None = 16, batch_help: str | None = None) -> argparse.ArgumentParser:
    """The options the per-preset CPU benchmarks share (presets, batch size, timed and warm-up rounds, threads,
    output JSON under `bench/results/`); each script adds its own."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=presets)
    p.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    p.add_argument("--repeats", type=int, default=None, help=f"timed rounds (default: {default_repeats})")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--out", default=str(RESULTS_DIR / out_name))
    return p
