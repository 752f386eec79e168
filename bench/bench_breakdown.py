"""Where a Bootleg pretraining step spends its time (docs/design.md §10: targets + loss ≤ 3 %, EMA ≤ 1 % of the step).

    python -m bench.bench_breakdown [--presets vit-micro vit-small] [--out bench/results/breakdown.json]

Part 1, phases. `BootlegForPretraining.forward` labels its own phases for `torch.profiler` (`bootleg.checks`,
`bootleg.teacher_forward`, `bootleg.target_building`, `bootleg.student_forward`, `bootleg.predictor_forward`,
`bootleg.loss`); the training step adds `step.backward` (the loss's backward included), `step.optimizer` (AdamW
as `BootlegTrainer` builds it + `zero_grad`) and `step.ema` (`update_teacher`). A few steps on a fixed batch run under
the profiler; a phase's time is the CPU time of its range (on a GPU: the device time of the kernels launched in it),
and shares are of the sum over the phases. The same step without the profiler is timed in alternation with the
profiled one, to show the profiler's overhead.

Part 2, EMA: `update_teacher` (one `_foreach_lerp_`) vs a per-parameter `mul_`/`add_` loop (I-JEPA's reference
update) vs `_foreach_mul_` + `_foreach_add_`, on the preset's teacher/student.

Part 3, loss: forward + backward of `F.mse_loss` vs `MSELossNoForward` at the target size of ViT-S and ViT-B
(`[16, 4, T, 4·D]`, T = the mean rectangle size of the bootleg mask generator at 14×14).
"""

from __future__ import annotations

import torch
from torch.profiler import record_function

from bench.common import (
    make_adamw,
    machine_info,
    preset_bench_parser,
    ratio,
    set_threads,
    stats,
    time_alternating,
    write_json,
)
from bootleg_hf import BootlegConfig, BootlegForPretraining
from bootleg_hf.losses import mse_loss
from bootleg_hf.masking import MaskGenerator

MODEL_PHASES = ("bootleg.checks", "bootleg.teacher_forward", "bootleg.target_building", "bootleg.student_forward",
                "bootleg.predictor_forward", "bootleg.loss")
PHASES = MODEL_PHASES + ("step.backward", "step.optimizer", "step.ema")
DEFAULT_REPEATS = {"vit-micro": 40, "vit-tiny": 5, "vit-small": 5, "vit-base": 3}
DEFAULT_EMA_REPEATS = {"vit-micro": 50, "vit-small": 20, "vit-base": 10}


def training_step(model: BootlegForPretraining, optimizer: torch.optim.Optimizer, pixel_values: torch.Tensor,
                  context_indices: torch.Tensor, target_indices: torch.Tensor, momentum: float,
                  compute_loss_value: bool = False) -> torch.Tensor:
    """What `BootlegTrainer` does per optimizer step (without data loading), with the step's phases labelled."""
    loss = model(pixel_values, context_indices, target_indices, compute_loss_value=compute_loss_value).loss
    with record_function("step.backward"):
        loss.backward()
    with record_function("step.optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    with record_function("step.ema"):
        model.update_teacher(momentum)
    return loss.detach()


def profile_phases(fn, calls: int = 1, device: str | torch.device = "cpu") -> dict[str, float]:
    """Seconds per call of every phase label in `PHASES` over `calls` calls of `fn` under `torch.profiler`: CPU time
    of the range, or on a GPU the device time of the kernels it launched."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
    totals = {evt.key: (evt.device_time_total if cuda else evt.cpu_time_total) / 1e6 / calls
              for evt in prof.key_averages() if evt.key in PHASES}
    return {p: totals.get(p, 0.0) for p in PHASES}


def breakdown(config: BootlegConfig, batch_size: int = 16, repeats: int = 5, warmup: int = 1, seed: int = 0,
              logged_loss: bool = False, device: str | torch.device = "cpu") -> dict:
    """Phase shares of one training step on a fixed batch (see the module docstring)."""
    torch.manual_seed(seed)
    model = BootlegForPretraining(config).to(device).train()
    optimizer = make_adamw(model)
    momentum = config.ema_start
    h, w = config.image_hw
    x = torch.randn(batch_size, config.num_channels, h, w, device=device)
    masks = MaskGenerator.from_config(config).generate(batch_size, batch_index=0, seed=seed)
    ctx, tgt = masks.context_indices.to(device), masks.target_indices.to(device)

    def step():
        training_step(model, optimizer, x, ctx, tgt, momentum, logged_loss)

    profiled = []

    def profiled_step():
        profiled.append(profile_phases(step, 1, device))

    timed = time_alternating({"step": step, "profiled_step": profiled_step}, repeats=repeats, warmup=warmup,
                             device=device)
    phases = {p: stats([r[p] for r in profiled[warmup:]]) for p in PHASES}
    medians = {p: phases[p]["median_s"] for p in PHASES}
    total = sum(medians.values())
    shares = {p: medians[p] / total for p in PHASES}
    result = {
        "batch_size": batch_size, "repeats": repeats, "warmup": warmup, "device": str(device),
        "context_tokens": int(ctx.shape[1]), "target_shape": list(tgt.shape), "targets": str(config.target_spec),
        "loss": "mse (logged step)" if logged_loss else "MSELossNoForward (non-logged step)",
        "phases": phases, "phase_medians_s": medians, "sum_of_phase_medians_s": total, "shares": shares,
        "step": timed["step"], "profiled_step": timed["profiled_step"],
        "targets_plus_loss_share": shares["bootleg.target_building"] + shares["bootleg.loss"],
        "teacher_share": shares["bootleg.teacher_forward"], "ema_share": shares["step.ema"],
    }
    result["requirements"] = {"targets_plus_loss_le_3pct": result["targets_plus_loss_share"] <= 0.03,
                              "ema_le_1pct": result["ema_share"] <= 0.01}
    return result


def ema_comparison(config: BootlegConfig, repeats: int = 20, warmup: int = 2, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = BootlegForPretraining(config)
    m = config.ema_start
    teacher = list(model.teacher.parameters())
    student = [p.detach() for p in model.student.parameters()]

    @torch.no_grad()
    def per_parameter_loop():
        for t, s in zip(teacher, student):
            t.mul_(m).add_(s, alpha=1.0 - m)

    @torch.no_grad()
    def foreach_mul_add():
        torch._foreach_mul_(teacher, m)
        torch._foreach_add_(teacher, student, alpha=1.0 - m)

    timings = time_alternating({"foreach_lerp": lambda: model.update_teacher(m), "per_parameter_loop":
                                per_parameter_loop, "foreach_mul_add": foreach_mul_add}, repeats, warmup)
    return {"tensors": len(teacher), "parameters": sum(p.numel() for p in teacher), "timings": timings,
            "speedup_foreach_lerp_vs_loop": ratio(timings["per_parameter_loop"], timings["foreach_lerp"])}


def loss_comparison(shapes: dict[str, list[int]], repeats: int = 30, warmup: int = 3, seed: int = 0) -> dict:
    out = {}
    g = torch.Generator().manual_seed(seed)
    for name, shape in shapes.items():
        pred = torch.randn(*shape, generator=g).requires_grad_()
        target = torch.randn(*shape, generator=g)

        def run(compute_value: bool):
            pred.grad = None
            mse_loss(pred, target, compute_value).backward()

        timings = time_alternating({"mse_loss": lambda: run(True), "mse_no_forward": lambda: run(False)},
                                   repeats, warmup)
        out[name] = {"shape": shape, "elements": pred.numel(), "timings": timings,
                     "no_forward_over_mse": ratio(timings["mse_no_forward"], timings["mse_loss"]),
                     "saving_s": timings["mse_loss"]["median_s"] - timings["mse_no_forward"]["median_s"]}
    return out


def target_shapes(batch_size: int = 16) -> dict[str, list[int]]:
    """`[B, 4, T, 4·D]` prediction/target shapes of ViT-S and ViT-B, T = mean rectangle size of 64 mask batches."""
    shapes = {}
    for name in ("vit-small", "vit-base"):
        config = BootlegConfig.from_preset(name)
        gen = MaskGenerator.from_config(config)
        sizes = [gen.generate(batch_size, batch_index=i).target_indices.shape for i in range(64)]
        t = round(sum(s[2] for s in sizes) / len(sizes))
        dim = config.target_spec.target_dim(config.hidden_size, config.patch_size, config.num_channels)
        shapes[name] = [batch_size, sizes[0][1], t, dim]
    return shapes


def run(presets: list[str], batch_size: int = 16, repeats: int | None = None, warmup: int = 1,
        config_overrides: dict | None = None, logged_loss: bool = False,
        ema_repeats: int | None = None, loss_repeats: int = 30, loss_shapes: dict | None = None) -> dict:
    out: dict = {"benchmark": "step_breakdown", "machine": machine_info(), "results": {}, "ema": {}}
    for name in presets:
        config = BootlegConfig.from_preset(name, **(config_overrides or {}))
        config._attn_implementation = "sdpa"
        r = breakdown(config, batch_size, repeats or DEFAULT_REPEATS.get(name, 3), warmup, logged_loss=logged_loss)
        out["results"][name] = r
        print(f"{name:10s} batch {batch_size}: phases {r['sum_of_phase_medians_s']:.3f} s (step without profiler "
              f"{r['step']['median_s']:.3f} s); " +
              ", ".join(f"{p} {s * 100:.1f}%" for p, s in r["shares"].items()),
              flush=True)
        print(f"{'':10s} targets+loss {r['targets_plus_loss_share'] * 100:.2f}%  EMA {r['ema_share'] * 100:.2f}%  "
              f"teacher {r['teacher_share'] * 100:.1f}%", flush=True)
        e = ema_comparison(config, ema_repeats or DEFAULT_EMA_REPEATS.get(name, 10))
        out["ema"][name] = e
        print(f"{'':10s} EMA ({e['tensors']} tensors, {e['parameters'] / 1e6:.1f} M): " + ", ".join(
            f"{k} {v['median_s'] * 1e3:.2f} ms" for k, v in e["timings"].items()) +
            f"; foreach lerp is {e['speedup_foreach_lerp_vs_loop']:.1f}x faster than the loop", flush=True)
    shapes = loss_shapes or target_shapes(batch_size)
    out["loss"] = loss_comparison(shapes, loss_repeats)
    for name, r in out["loss"].items():
        t = r["timings"]
        print(f"loss fwd+bwd {name} {r['shape']}: mse {t['mse_loss']['median_s'] * 1e3:.2f} ms, no-forward "
              f"{t['mse_no_forward']['median_s'] * 1e3:.2f} ms (ratio {r['no_forward_over_mse']:.2f})", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = preset_bench_parser(__doc__, ["vit-micro", "vit-small"], DEFAULT_REPEATS, "breakdown.json")
    p.add_argument("--logged-loss", action="store_true", help="real MSE instead of MSELossNoForward")
    args = p.parse_args(argv)
    set_threads(args.threads)
    result = run(args.presets, args.batch_size, args.repeats, args.warmup, logged_loss=args.logged_loss)
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
