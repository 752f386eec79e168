"""GPU benchmark: ViT-B/16 Bootleg pretraining step in bf16 (SDPA, optional `torch.compile`), MFU, memory, inference.

    python -m bench.gpu                          # lent GPU: ViT-B/16, batch 256, eager (+ --compile blocks|model)
    python -m bench.gpu --device cpu --tiny      # a seconds-long dry run of every code path on the CPU

One prepared script for a machine with a GPU (nothing here is part of `make bench`). It measures, on synthetic
data already on the device (model-only throughput; data loading is measured separately by `bench_masking.py`):

1. **Training step** (forward + backward + fused AdamW + EMA teacher update) under `torch.autocast(bfloat16)`,
   masks from the config's `MaskGenerator` (pre-generated, cycled): seconds/step, images/s, model-FLOPs utilisation,
   peak memory. `--compile blocks` compiles every transformer block (teacher, student, predictor) with
   `dynamic=True` (context and target lengths change from batch to batch); `--compile model` compiles the whole
   `BootlegForPretraining`. The eager step always runs first, as the baseline.
2. **Phase breakdown** of the eager step (teacher, targets, student, predictor, loss, backward, optimizer, EMA): the
   device time of each phase's kernels, from the labels the model's forward and the training step carry
   (`bench_breakdown.profile_phases`).
3. **Inference** images/s of `BootlegModel` vs timm's `VisionTransformer` of the same shape (same weights), bf16.

MFU (notes §5, PaLM convention) = images/s × model FLOPs per image / peak. Model FLOPs count matmuls and attention
(multiply-add = 2): the teacher's forward on all tokens, 3× (forward + backward) the student on its context tokens,
and 3× the predictor (input projection once per image, blocks and head once per target rectangle). EMA, loss, norms,
activations and data work are excluded. The peak comes from `--peak-tflops` (default 989: H100 SXM dense bf16).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from bench.bench_breakdown import profile_phases, training_step
from bench.common import RESULTS_DIR, machine_info, make_adamw, set_threads, stats, write_json

from bootleg_hf import BootlegConfig, BootlegForPretraining
from bootleg_hf.masking import MaskGenerator

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
            predictor_hidden_size=32, predictor_num_hidden_layers=1, predictor_num_attention_heads=4, targets="1:1:2")


# ------------------------------------------------------------------------------------------------------ FLOPs
def transformer_flops(width: int, depth: int, tokens: float, mlp_width: int) -> float:
    """Forward FLOPs of `depth` pre-LN blocks on `tokens` tokens: qkv + out projections (8·d²), MLP (4·d·d_mlp),
    attention scores and weighted sum (4·N·d) per token."""
    return depth * tokens * (8 * width * width + 4 * width * mlp_width + 4 * tokens * width)


def encoder_flops(config: BootlegConfig, tokens: float, depth: int | None = None) -> float:
    """Forward FLOPs of the encoder (patch embedding over the whole image + `depth` blocks on `tokens` tokens)."""
    patch = 2 * config.num_patches * config.num_channels * config.patch_size ** 2 * config.hidden_size
    return patch + transformer_flops(config.hidden_size, config.num_hidden_layers if depth is None else depth, tokens,
                                     config.intermediate_size)


def step_flops_per_image(config: BootlegConfig, context_tokens: float, target_tokens: float,
                         rectangles: int) -> dict[str, float]:
    """Model FLOPs per image of one Bootleg training step (see the module docstring)."""
    spec = config.target_spec
    deepest = config.num_hidden_layers if any(t.kind == "final" for t in spec.terms) else max(
        [t.block for t in spec.feature_terms], default=0)
    teacher = encoder_flops(config, config.num_prefix_tokens + config.num_patches, deepest) if spec.feature_terms \
        else 0.0
    student = 3 * encoder_flops(config, config.num_prefix_tokens + context_tokens)
    d, dp = config.hidden_size, config.predictor_hidden_size
    dt = spec.target_dim(d, config.patch_size, config.num_channels)
    seq = config.predictor_num_register_tokens + int(config.use_cls_token) + context_tokens + target_tokens
    mlp = int(dp * config.intermediate_size / config.hidden_size)
    per_rectangle = transformer_flops(dp, config.predictor_num_hidden_layers, seq, mlp) + 2 * target_tokens * dp * dt
    embed = 2 * (context_tokens + int(config.use_cls_token)) * d * dp
    predictor = 3 * (embed + rectangles * per_rectangle)
    return {"teacher": teacher, "student": student, "predictor": predictor, "total": teacher + student + predictor}


# ------------------------------------------------------------------------------------------------------ helpers
class DeviceTimer:
    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn, iters: int) -> list[float]:
        """Per-call seconds of `iters` calls; with CUDA events on a GPU (the launch queue stays full)."""
        if self.device.type != "cuda":
            out = []
            for _ in range(iters):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
            return out
        events = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
        self.sync()
        events[0].record()
        for i in range(iters):
            fn()
            events[i + 1].record()
        self.sync()
        return [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(iters)]


def autocast(device: torch.device, enabled: bool = True):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def peak_memory(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def compile_model(model: BootlegForPretraining, mode: str) -> torch.nn.Module:
    if mode == "blocks":
        for encoder in (model.student, model.teacher, model.predictor):
            for block in encoder.blocks:
                block.compile(dynamic=True)
        return model
    if mode == "model":
        return torch.compile(model, dynamic=True)
    raise ValueError(f"unknown compile mode {mode!r}")


# ------------------------------------------------------------------------------------------------------ parts
def train_throughput(config: BootlegConfig, device: torch.device, batch_size: int, steps: int, warmup: int,
                     compile_mode: str | None, peak_tflops: float, bf16: bool = True, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = BootlegForPretraining(config).to(device).train()
    optimizer = make_adamw(model)
    runner = compile_model(model, compile_mode) if compile_mode else model
    gen = MaskGenerator.from_config(config)
    masks = [gen.generate(batch_size, batch_index=i, seed=seed) for i in range(min(16, warmup + steps))]
    masks = [(m.context_indices.to(device), m.target_indices.to(device)) for m in masks]
    h, w = config.image_hw
    x = torch.randn(batch_size, config.num_channels, h, w, device=device)
    momentum = config.ema_start
    calls = [0]

    def step():
        ctx, tgt = masks[calls[0] % len(masks)]
        calls[0] += 1
        with autocast(device, bf16):
            out = runner(x, ctx, tgt, compute_loss_value=False)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_teacher(momentum)

    timer = DeviceTimer(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    timer.sync()
    warmup_s = time.perf_counter() - t0
    reset_peak(device)
    start = calls[0]
    times = timer.time(step, steps)
    used = [masks[i % len(masks)] for i in range(start, start + steps)]
    k = statistics.mean(c.shape[1] for c, _ in used)
    t = statistics.mean(tg.shape[2] for _, tg in used)
    flops = step_flops_per_image(config, k, t, used[0][1].shape[1])
    s_per_step = statistics.median(times)
    images_per_s = batch_size / s_per_step
    achieved = images_per_s * flops["total"]
    return {"compile": compile_mode or "none", "batch_size": batch_size, "steps": steps, "warmup": warmup,
            "warmup_s_including_compile": warmup_s, "step": stats(times), "s_per_step": s_per_step,
            "images_per_s": images_per_s, "context_tokens_mean": k, "target_tokens_per_rectangle_mean": t,
            "model_gflops_per_image": {n: v / 1e9 for n, v in flops.items()},
            "achieved_tflops": achieved / 1e12, "mfu": achieved / (peak_tflops * 1e12),
            "peak_memory_gib": peak_memory(device)}


def train_breakdown(config: BootlegConfig, device: torch.device, batch_size: int, repeats: int, bf16: bool = True,
                    seed: int = 0) -> dict:
    """Phase shares of the eager step under bf16 autocast from the model's profiler labels (device time of each
    phase's kernels on a GPU): `bench_breakdown.profile_phases`."""
    torch.manual_seed(seed)
    model = BootlegForPretraining(config).to(device).train()
    optimizer = make_adamw(model)
    m = MaskGenerator.from_config(config).generate(batch_size, seed=seed)
    ctx, tgt = m.context_indices.to(device), m.target_indices.to(device)
    h, w = config.image_hw
    x = torch.randn(batch_size, config.num_channels, h, w, device=device)

    def step():
        with autocast(device, bf16):
            training_step(model, optimizer, x, ctx, tgt, config.ema_start)

    step()  # warm-up
    per_phase = profile_phases(step, repeats, device)
    total = sum(per_phase.values())
    shares = {p: v / total for p, v in per_phase.items()}
    return {"repeats": repeats, "phase_mean_s": per_phase, "sum_s": total, "shares": shares,
            "targets_plus_loss_share": shares["bootleg.target_building"] + shares["bootleg.loss"],
            "ema_share": shares["step.ema"], "teacher_share": shares["bootleg.teacher_forward"]}


def inference_throughput(config: BootlegConfig, device: torch.device, batch_size: int, iters: int, warmup: int,
                         compile_mode: str | None, peak_tflops: float, bf16: bool = True) -> dict:
    from bench.bench_encoder import build_contenders

    models = {k: v.to(device) for k, v in build_contenders(config, with_hf=False).items()}
    if compile_mode:
        models = {k: torch.compile(v) for k, v in models.items()}
    h, w = config.image_hw
    x = torch.randn(batch_size, config.num_channels, h, w, device=device)
    timer = DeviceTimer(device)
    out = {"batch_size": batch_size, "iters": iters, "compile": compile_mode or "none"}
    flops = encoder_flops(config, config.num_prefix_tokens + config.num_patches)
    with torch.inference_mode(), autocast(device, bf16):
        for _ in range(warmup):
            for m in models.values():
                m(x)
        for rnd in range(2):  # two alternating rounds: ours, timm, ours, timm
            for name, m in models.items():
                t = statistics.median(timer.time(lambda m=m: m(x), iters))
                best = out.get(name, {}).get("s_per_batch")
                if best is None or t < best:
                    out[name] = {"s_per_batch": t, "images_per_s": batch_size / t,
                                 "mfu": batch_size / t * flops / (peak_tflops * 1e12)}
    out["gflops_per_image"] = flops / 1e9
    if "timm" in out:
        out["ours_over_timm_time"] = out["bootleg"]["s_per_batch"] / out["timm"]["s_per_batch"]
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="vit-base")
    p.add_argument("--tiny", action="store_true", help="a tiny config (64 wide, 2 blocks, 32 px) for dry runs")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default 256; 8 with --tiny)")
    p.add_argument("--inference-batch", type=int, default=None, help="default 256; 8 with --tiny")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 20; 2 with --tiny)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; 1 with --tiny)")
    p.add_argument("--compile", choices=["none", "blocks", "model"], default="none",
                   help="also time a torch.compile'd step (the eager step always runs)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the device (H100 SXM: 989)")
    p.add_argument("--no-bf16", action="store_true", help="fp32 instead of bf16 autocast")
    p.add_argument("--skip", nargs="*", default=[], choices=["breakdown", "inference"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (for --device cpu dry runs)")
    p.add_argument("--out", default=None, help="default bench/results/gpu.json (gpu_tiny_<device>.json with --tiny)")
    args = p.parse_args(argv)

    set_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            p.error("no CUDA device; use --device cpu --tiny for a dry run")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    tiny = args.tiny
    batch = args.batch_size or (8 if tiny else 256)
    inf_batch = args.inference_batch or (8 if tiny else 256)
    steps = args.steps or (2 if tiny else 20)
    warmup = args.warmup or (1 if tiny else 5)
    bf16 = not args.no_bf16
    config = BootlegConfig(**TINY) if tiny else BootlegConfig.from_preset(args.preset)
    config._attn_implementation = "sdpa"

    result: dict = {"benchmark": "gpu", "machine": machine_info(device), "device": str(device),
                    "config": "tiny" if tiny else args.preset, "dtype": "bf16 autocast" if bf16 else "fp32",
                    "attention": "sdpa", "peak_tflops": args.peak_tflops, "data": "synthetic, on device"}
    result["train"] = {"eager": train_throughput(config, device, batch, steps, warmup, None, args.peak_tflops, bf16)}
    _print_train("eager", result["train"]["eager"])
    if args.compile != "none":
        r = train_throughput(config, device, batch, steps, warmup, args.compile, args.peak_tflops, bf16)
        result["train"][f"compile_{args.compile}"] = r
        _print_train(f"compile {args.compile}", r)
        result["train"]["compile_speedup"] = result["train"]["eager"]["s_per_step"] / r["s_per_step"]
    if "breakdown" not in args.skip:
        b = train_breakdown(config, device, batch, repeats=3 if tiny else 5, bf16=bf16)
        result["breakdown_eager"] = b
        print("breakdown: " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in b["shares"].items()), flush=True)
    if "inference" not in args.skip:
        inf = inference_throughput(config, device, inf_batch, steps, warmup, None, args.peak_tflops, bf16)
        result["inference"] = {"eager": inf}
        print(f"inference batch {inf_batch}: ours {inf['bootleg']['images_per_s']:.0f} img/s, timm "
              f"{inf['timm']['images_per_s']:.0f} img/s (ours/timm time {inf['ours_over_timm_time']:.3f})", flush=True)
        if args.compile != "none":
            inf = inference_throughput(config, device, inf_batch, steps, warmup, args.compile, args.peak_tflops, bf16)
            result["inference"]["compiled"] = inf
            print(f"inference compiled: ours {inf['bootleg']['images_per_s']:.0f} img/s, timm "
                  f"{inf['timm']['images_per_s']:.0f} img/s", flush=True)
    out = args.out or str(RESULTS_DIR / ("gpu.json" if not tiny else f"gpu_tiny_{device.type}.json"))
    write_json(result, out)
    return result


def _print_train(name: str, r: dict) -> None:
    mem = f", peak memory {r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else ""
    print(f"train {name}: batch {r['batch_size']}, {r['s_per_step'] * 1e3:.1f} ms/step, {r['images_per_s']:.0f} img/s, "
          f"{r['model_gflops_per_image']['total']:.1f} GFLOP/img, {r['achieved_tflops']:.1f} TFLOP/s, "
          f"MFU {r['mfu'] * 100:.1f}%{mem}", flush=True)


if __name__ == "__main__":
    main()
