"""Where a Bootleg pretraining step spends its time (SPEC §10: targets + loss ≤ 3 %, EMA ≤ 1 % of the step).

    python bench/bench_breakdown.py [--presets vit-micro vit-small] [--out bench/results/breakdown.json]

Part 1, phases. One training step on a fixed batch (batch 16, one mask batch from the config's `MaskGenerator`) is
run phase by phase with a clock read between phases (on CPU every op is synchronous, so the boundaries are exact):

  checks           input validation of `BootlegForPretraining.forward` (`check_indices`)
  teacher_forward  `teacher_features`: the EMA teacher's fast path, no grad, all tokens
  target_building  `build_targets`: gather at the target cells + per-token z-score + merge (+ the per-layer std
                   that feeds the collapse monitor)
  student_forward  the student encoder on the context tokens
  predictor_forward
  loss_forward     `mse_loss` (`MSELossNoForward` unless `--logged-loss`)
  loss_backward    the loss's own backward (to the predictions; split off by back-propagating the predictions'
                   gradient separately, which is the same chain rule autograd applies)
  backward         predictor + student backward
  optimizer        AdamW step (foreach, as `BootlegTrainer` builds it) + `zero_grad(set_to_none=True)`
  ema              `update_teacher` (fused `_foreach_lerp_`)

The phased step alternates with an uninstrumented step (`model(...)`, `backward`, AdamW, EMA) on the same inputs, so
the sum of the phases can be checked against the real step; median per phase over the repeats; shares are of the sum
of phase medians. Unless `--no-profile`, up to three more phased steps run under `torch.profiler` with a
`record_function` label per phase, as an independent cross-check of the shares. The instrumented path is checked to
give exactly the loss of `model(...)` before timing.

Part 2, EMA: `update_teacher` (one `_foreach_lerp_`) vs a per-parameter `mul_`/`add_` loop (I-JEPA's reference
update) vs `_foreach_mul_` + `_foreach_add_`, on the preset's teacher/student.

Part 3, loss: forward + backward of `F.mse_loss` vs `MSELossNoForward` at the target size of ViT-S and ViT-B
(`[16, 4, T, 4·D]`, T = the mean rectangle size of the bootleg mask generator at 14×14).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pretrain_step import make_adamw  # noqa: E402
from common import (preset_bench_parser, machine_info, ratio, set_threads, stats, time_alternating,  # noqa: E402
                    write_json)

from bootleg_hf import BootlegConfig, BootlegForPretraining  # noqa: E402
from bootleg_hf.losses import mse_loss  # noqa: E402
from bootleg_hf.modeling_bootleg import check_indices  # noqa: E402
from bootleg_hf.trainer import mask_generator_from_config  # noqa: E402

PHASES = ("checks", "teacher_forward", "target_building", "student_forward", "predictor_forward", "loss_forward",
          "loss_backward", "backward", "optimizer", "ema")
DEFAULT_REPEATS = {"vit-micro": 40, "vit-tiny": 5, "vit-small": 5, "vit-base": 3}
DEFAULT_EMA_REPEATS = {"vit-micro": 50, "vit-small": 20, "vit-base": 10}


class PhaseClock:
    """Context-manager factory: `with clock("name"): …` adds the elapsed seconds to `clock.times[name]`."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.times: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str):
        with torch.profiler.record_function(f"phase/{name}"):
            self._sync()
            t0 = time.perf_counter()
            yield
            self._sync()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0


def phased_step(model: BootlegForPretraining, optimizer: torch.optim.Optimizer, pixel_values: torch.Tensor,
                context_indices: torch.Tensor, target_indices: torch.Tensor, momentum: float, clock: PhaseClock,
                compute_loss_value: bool = False, step: bool = True) -> torch.Tensor:
    """`BootlegForPretraining.forward` + backward + AdamW + EMA, phase by phase (see the module docstring)."""
    config = model.config
    with clock("checks"):
        b, n = pixel_values.shape[0], config.num_patches
        context_indices = check_indices(context_indices, b, n, "context_indices").to(pixel_values.device)
        check_indices(target_indices.flatten(1), b, n, "target_indices")
        target_indices = target_indices.long().to(pixel_values.device)
    with clock("teacher_forward"):
        features = model.teacher_features(pixel_values)
    with clock("target_building"):
        targets, _ = model.build_targets(features, pixel_values, target_indices)
    with clock("student_forward"):
        encoded = model.student(pixel_values, context_indices=context_indices).last_hidden_state
    with clock("predictor_forward"):
        prefix = config.num_prefix_tokens
        cls = encoded[:, :1] if config.use_cls_token else None
        predictions = model.predictor(cls, encoded[:, prefix:], context_indices, target_indices).float()
    with clock("loss_forward"):
        leaf = predictions.detach().requires_grad_()
        loss = mse_loss(leaf, targets, compute_loss_value)
    if not step:
        return loss.detach()
    with clock("loss_backward"):
        loss.backward()
    with clock("backward"):
        predictions.backward(leaf.grad)
    with clock("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    with clock("ema"):
        model.update_teacher(momentum)
    return loss.detach()


def full_step(model, optimizer, pixel_values, context_indices, target_indices, momentum, compute_loss_value=False):
    out = model(pixel_values, context_indices, target_indices, compute_loss_value=compute_loss_value)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.update_teacher(momentum)


def profile_phases(fn, calls: int = 1) -> dict[str, float]:
    """CPU time per `phase/*` label over `calls` calls of `fn` under `torch.profiler` (seconds, summed)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    totals = {}
    for evt in prof.key_averages():
        if evt.key.startswith("phase/"):
            totals[evt.key[len("phase/"):]] = evt.cpu_time_total / 1e6
    return totals


def breakdown(config: BootlegConfig, batch_size: int = 16, repeats: int = 5, warmup: int = 1, seed: int = 0,
              logged_loss: bool = False, profile: bool = True) -> dict:
    torch.manual_seed(seed)
    model = BootlegForPretraining(config).train()
    optimizer = make_adamw(model)
    momentum = config.ema_start
    h, w = config.image_hw
    x = torch.randn(batch_size, config.num_channels, h, w)
    masks = mask_generator_from_config(config).generate(batch_size, batch_index=0, seed=seed)
    ctx, tgt = masks.context_indices, masks.target_indices

    # the phased path computes exactly what forward computes
    with torch.no_grad():
        ref = model(x, ctx, tgt).loss
    mine = phased_step(model, optimizer, x, ctx, tgt, momentum, PhaseClock(), compute_loss_value=True, step=False)
    if not torch.equal(ref, mine):
        raise AssertionError(f"phased loss {mine.item()} != model loss {ref.item()}")

    per_phase: dict[str, list[float]] = {p: [] for p in PHASES}
    totals: list[float] = []

    def phased():
        clock = PhaseClock()
        t0 = time.perf_counter()
        phased_step(model, optimizer, x, ctx, tgt, momentum, clock, logged_loss)
        totals.append(time.perf_counter() - t0)
        for p in PHASES:
            per_phase[p].append(clock.times[p])

    def full():
        full_step(model, optimizer, x, ctx, tgt, momentum, logged_loss)

    timed = time_alternating({"full_step": full, "phased_step": phased}, repeats=repeats, warmup=warmup)
    per_phase = {p: v[warmup:] for p, v in per_phase.items()}  # drop the warm-up calls
    medians = {p: statistics.median(v) for p, v in per_phase.items()}
    total = sum(medians.values())
    shares = {p: medians[p] / total for p in PHASES}
    result = {
        "batch_size": batch_size, "repeats": repeats, "warmup": warmup,
        "context_tokens": int(ctx.shape[1]), "target_shape": list(tgt.shape), "targets": str(config.target_spec),
        "loss": "mse (logged step)" if logged_loss else "MSELossNoForward (non-logged step)",
        "phases": {p: stats(per_phase[p]) for p in PHASES},
        "phase_medians_s": medians, "sum_of_phase_medians_s": total, "shares": shares,
        "full_step": timed["full_step"], "phased_step_total": stats(totals[warmup:]),
        "targets_plus_loss_share": shares["target_building"] + shares["loss_forward"] + shares["loss_backward"],
        "teacher_share": shares["teacher_forward"], "ema_share": shares["ema"],
    }
    result["requirements"] = {"targets_plus_loss_le_3pct": result["targets_plus_loss_share"] <= 0.03,
                              "ema_le_1pct": result["ema_share"] <= 0.01}
    if profile:
        calls = max(1, min(3, repeats))
        prof = profile_phases(lambda: phased_step(model, optimizer, x, ctx, tgt, momentum, PhaseClock(), logged_loss),
                              calls)
        prof_total = sum(prof.values())
        result["profiler"] = {"steps": calls, "phase_cpu_time_s": prof,
                              "shares": {p: v / prof_total for p, v in prof.items()}}
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
        gen = mask_generator_from_config(config)
        sizes = [gen.generate(batch_size, batch_index=i).target_indices.shape for i in range(64)]
        t = round(sum(s[2] for s in sizes) / len(sizes))
        dim = config.target_spec.target_dim(config.hidden_size, config.patch_size, config.num_channels)
        shapes[name] = [batch_size, sizes[0][1], t, dim]
    return shapes


def run(presets: list[str], batch_size: int = 16, repeats: int | None = None, warmup: int = 1,
        config_overrides: dict | None = None, logged_loss: bool = False, profile: bool = True,
        ema_repeats: int | None = None, loss_repeats: int = 30, loss_shapes: dict | None = None) -> dict:
    out: dict = {"benchmark": "step_breakdown", "machine": machine_info(), "results": {}, "ema": {}}
    for name in presets:
        config = BootlegConfig.from_preset(name, **(config_overrides or {}))
        config._attn_implementation = "sdpa"
        r = breakdown(config, batch_size, repeats or DEFAULT_REPEATS.get(name, 3), warmup, logged_loss=logged_loss,
                      profile=profile)
        out["results"][name] = r
        print(f"{name:10s} batch {batch_size}: step {r['sum_of_phase_medians_s']:.3f} s (uninstrumented "
              f"{r['full_step']['median_s']:.3f} s); " +
              ", ".join(f"{p} {s * 100:.1f}%" for p, s in r["shares"].items()),
              flush=True)
        print(f"{'':10s} targets+loss {r['targets_plus_loss_share'] * 100:.2f}%  EMA {r['ema_share'] * 100:.2f}%  "
              f"teacher {r['teacher_share'] * 100:.1f}%" + (
                  "  | profiler: " + ", ".join(f"{p} {s * 100:.1f}%" for p, s in r["profiler"]["shares"].items())
                  if "profiler" in r else ""), flush=True)
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
    p.add_argument("--no-profile", action="store_true", help="skip the torch.profiler cross-check")
    args = p.parse_args(argv)
    set_threads(args.threads)
    result = run(args.presets, args.batch_size, args.repeats, args.warmup, logged_loss=args.logged_loss,
                 profile=not args.no_profile)
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
