"""Does `torch.compile` pay on this CPU? The pretraining step and the frozen-encoder forward, eager vs compiled, both
in bf16 autocast (the default where bf16 matmuls are native), alternated after compilation; plus the compilation time
and the number of steps after which compiling has paid for itself.

    python -m bench.bench_compile [--presets vit-micro vit-small] [--out bench/results/compile.json]

The model's `forward` is compiled with `dynamic=True` (the masks' context and target sizes change every batch), with
inductor's default mode; the backward and the optimizer step stay eager, as `Trainer(torch_compile=True)` would not
compile them either. The first call (compilation included) is timed separately; steps 2–3 absorb recompilations.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from bench.bench_pretrain_step import BootlegStep
from bench.common import machine_info, paired_ratio, preset_bench_parser, ratio, set_threads, time_alternating, \
    write_json
from bootleg_hf import BootlegConfig, BootlegModel

DEFAULT_REPEATS = {"vit-micro": 10, "vit-small": 4}
BATCH = {"vit-micro": 64, "vit-small": 16}


def first_call(fn) -> float:
    tick = time.perf_counter()
    fn()
    return time.perf_counter() - tick


def encoder_forward(model: torch.nn.Module, x: torch.Tensor):
    def call():
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16):
            return model(x).last_hidden_state
    return call


def bench_preset(name: str, batch_size: int, repeats: int, backend: str = "inductor",
                 config_overrides: dict | None = None) -> dict[str, Any]:
    config = BootlegConfig.from_preset(name, **(config_overrides or {}))
    eager_step = BootlegStep(config, batch_size, num_batches=4, bf16=True)
    compiled_step = BootlegStep(config, batch_size, num_batches=4, bf16=True)
    compiled_step.model.forward = torch.compile(compiled_step.model.forward, dynamic=True, backend=backend)
    encoder = BootlegModel(config).eval()
    x = torch.randn(batch_size, 3, *config.image_hw)
    eager_encoder = encoder_forward(encoder, x)
    compiled_encoder = encoder_forward(torch.compile(encoder, dynamic=True, backend=backend), x)
    compile_s = {"step": first_call(compiled_step), "encoder": first_call(compiled_encoder)}
    for _ in range(2):  # masks of other sizes may recompile once more
        compiled_step()
    timings = time_alternating({"step_eager": eager_step, "step_compiled": compiled_step,
                                "encoder_eager": eager_encoder, "encoder_compiled": compiled_encoder},
                               repeats=repeats, warmup=1)
    result: dict[str, Any] = {"batch_size": batch_size, "backend": backend, "compile_first_call_s": compile_s,
                              "timings": timings,
                              "ratios": {}, "paired_ratios": {}, "break_even_calls": {}}
    for part in ("step", "encoder"):
        eager, compiled = timings[f"{part}_eager"], timings[f"{part}_compiled"]
        result["ratios"][f"{part}_compiled_over_eager"] = ratio(compiled, eager)
        result["paired_ratios"][f"{part}_compiled_over_eager"] = paired_ratio(compiled, eager)
        saved = eager["median_s"] - compiled["median_s"]
        result["break_even_calls"][part] = round(compile_s[part] / saved) if saved > 0 else None
    print(f"{name}: step compiled/eager {result['ratios']['step_compiled_over_eager']:.3f} (compile "
          f"{compile_s['step']:.0f} s, break-even {result['break_even_calls']['step']} steps); encoder "
          f"{result['ratios']['encoder_compiled_over_eager']:.3f} (compile {compile_s['encoder']:.0f} s)", flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    p = preset_bench_parser(__doc__, ["vit-micro", "vit-small"], DEFAULT_REPEATS, "compile.json", batch_size=None,
                            batch_help=f"default: {BATCH}")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (`eager`: tracing only, for checks)")
    a = p.parse_args(argv)
    result = run(a.presets, a.batch_size, a.repeats, a.backend, threads=a.threads)
    write_json(result, a.out)
    return result


def run(presets: list[str], batch_size: int | None = None, repeats: int | None = None, backend: str = "inductor",
        config_overrides: dict | None = None, threads: int | None = None) -> dict:
    threads = set_threads(threads)
    result = {"benchmark": "compile", "machine": machine_info(), "threads": threads, "results": {}}
    for name in presets:
        result["results"][name] = bench_preset(name, batch_size or BATCH.get(name, 16),
                                               repeats or DEFAULT_REPEATS.get(name, 3), backend, config_overrides)
    return result


if __name__ == "__main__":
    main()
