"""One training step side by side: the official I-JEPA code vs `BootlegForPretraining` as I-JEPA (and as Bootleg).

    python -m bench.bench_ijepa_official --ijepa-repo /tmp/ijepa-official [--batch-size 16] [--repeats 8]

The official code (github.com/facebookresearch/ijepa) is not a dependency: give the path of an extracted copy
(e.g. `git archive HEAD | tar -x -C /tmp/ijepa-official`); it is imported from there at run time. Without the path,
or when the path does not hold the code, the script says why, writes a JSON saying `skipped` and exits 0.

Contenders, built for the same shapes (`--presets vit-small`: the official `vit_small`, patch 16, 224 px):

* `official`: the official `init_model` (encoder + `vit_predictor` of width `--pred-emb-dim` 192, depth
  `--pred-depth` 6 and the encoder's heads, 6) with a deep-copied EMA target encoder, the official `init_opt`
  (AdamW with its four weight-decay groups; the weight-decay and learning-rate schedules stepped once, as the
  training loop does at the start of a step), and the step of src/train.py: the target encoder's output
  layer-normed and gathered at the targets, encoder on the context, predictor, smooth-L1 loss, backward, AdamW,
  `zero_grad`, the per-parameter EMA update. Left out: DDP (one process), the loss all-reduce, the CUDA grad scaler
  of its `use_bfloat16` switch (bf16 needs no scaling), gradient logging and the step timer.
* `ours_ijepa`: `BootlegForPretraining` configured as that model (`targets="final"`, `mask_mode="ijepa"`, no CLS,
  no registers, the same predictor), **holding the official model's weights** (converted by `ijepa_to_bootleg`;
  fp32 predictions and targets are checked equal to the official ones, `parity` in the JSON); AdamW as
  `BootlegTrainer` builds it (foreach), `update_teacher` (fused `_foreach_lerp_`), the loss as on a non-logging
  step (`MSELossNoForward`; `--logged-loss` for the real MSE).
* `ours_bootleg`: the preset's Bootleg defaults for reference (targets `1:4:12`, CLS + 4 registers, predictor
  192 / 10 blocks / 16 heads with 4 registers), own random init.

Every contender gets the same images and the same masks from the official `MaskCollator` with the official
defaults (4 targets of scale 0.15–0.2, aspect 0.75–1.5, one context of scale 0.85–1, `min_keep` 10, no overlap),
pre-generated: the k-th timed step of every contender uses mask batch k. Ours takes them as `context_indices [B, K]`
and `target_indices [B, 4, T]` (the collator's indices are already in raster order). Each contender runs in fp32
and under `torch.autocast("cpu", dtype=torch.bfloat16)` around its forward (what the official `use_bfloat16`
switch does with CUDA autocast); the six step functions are alternated (`common.time_alternating`). A contender's
*best* precision is the one with the lower median. When ours (I-JEPA mode) misses the target at best precision
(≤ 0.8× official; `--profile auto`), `--profile-steps` steps of each at best precision run under `torch.profiler`
and the ops with the largest differences in self CPU time per step are reported.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
import types
from types import SimpleNamespace
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from bench.bench_pretrain_step import IJEPA_OVERRIDES, BootlegStep, count_params
from bench.common import (cpu_ratio, load_average, machine_info, paired_ratio, preset_bench_parser, ratio,
                          set_threads, time_alternating, write_json)
from bootleg_hf import BootlegConfig
from bootleg_hf.conversion import ijepa_to_bootleg
from bootleg_hf.precision import fast_bf16

OFFICIAL_FILES = ("src/helper.py", "src/models/vision_transformer.py", "src/masks/multiblock.py",
                  "src/masks/utils.py", "src/utils/tensors.py", "src/utils/schedulers.py")
# src/masks/multiblock.py `MaskCollator` with the settings of the official configs (configs/*.yaml)
OFFICIAL_MASKS = dict(pred_mask_scale=(0.15, 0.2), aspect_ratio=(0.75, 1.5), enc_mask_scale=(0.85, 1.0), nenc=1,
                      npred=4, min_keep=10, allow_overlap=False)
# `init_opt` arguments of the official configs (the schedules only set the values; they do not change the cost)
OFFICIAL_OPT = dict(iterations_per_epoch=1000, start_lr=2e-4, ref_lr=1e-3, final_lr=1e-6, warmup=40, num_epochs=300,
                    wd=0.04, final_wd=0.4, ipe_scale=1.0)
OFFICIAL_EMA_START = 0.996  # optimization.ema[0]
# ours as the official model: IJEPA_OVERRIDES (targets "final", ijepa masks, predictor depth 6, EMA 0.996) plus
# I-JEPA's token layout and predictor (no CLS / registers; heads = the encoder's, set per preset)
OURS_IJEPA = {**IJEPA_OVERRIDES, "use_cls_token": False, "num_register_tokens": 0, "predictor_num_register_tokens": 0}
# the official collator retries forever when a target block cannot exceed min_keep patches (4×3 = 12 of an 8×8
# grid can come out as 3×3): 10×10 grids are safe
MIN_GRID = 10
CONTENDERS = ("official", "ours_ijepa", "ours_bootleg")
PRECISIONS = ("fp32", "bf16")
TARGET_RATIO = 0.8  # ours (I-JEPA mode) / official at each one's best precision
DEFAULT_REPEATS = {"vit-tiny": 10, "vit-small": 8, "vit-base": 3}
PROFILE_TOP = 15


# ---------------------------------------------------------------------------------------------- official code
@contextlib.contextmanager
def quiet_official_logging() -> Iterator[None]:
    """The official modules configure the root logger at import (INFO to stdout) and log the whole model at
    `init_model`: keep their INFO lines out and leave the root logger as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        root.handlers[:] = handlers
        root.setLevel(level)


def load_official(repo: str | None) -> tuple[SimpleNamespace | None, str | None]:
    """The official modules imported from the extracted repository `repo` (`helper`, `multiblock`, `utils`,
    `tensors`, plus `root` and a `sha256` of the files used), or `(None, why not)`."""
    if not repo:
        return None, ("no --ijepa-repo given: pass the path of an extracted copy of github.com/facebookresearch/ijepa "
                      "(e.g. git archive HEAD | tar -x -C /tmp/ijepa-official)")
    root = Path(repo).expanduser().resolve()
    missing = [f for f in OFFICIAL_FILES if not (root / f).is_file()]
    if missing:
        return None, f"{root} does not hold the official I-JEPA code (missing {', '.join(missing)})"
    # the official code is the top-level package `src`: another `src` already imported would shadow it
    loaded = sys.modules.get("src")
    if loaded is not None and root / "src" not in [Path(p).resolve() for p in getattr(loaded, "__path__", [])]:
        return None, f"another top-level package 'src' is already imported ({loaded!r}); run in a fresh process"
    # `src` registered as a namespace package rooted in the copy (the official modules import each other as
    # `src.…`), so nothing is added to the import path
    package = types.ModuleType("src")
    package.__path__ = [str(root / "src")]
    sys.modules.setdefault("src", package)
    try:
        with quiet_official_logging():
            helper = importlib.import_module("src.helper")  # imports the models, schedulers and tensor utilities
            multiblock = importlib.import_module("src.masks.multiblock")
            mask_utils = importlib.import_module("src.masks.utils")
            tensors = importlib.import_module("src.utils.tensors")
    except Exception as err:  # a broken or different copy: say so instead of failing the benchmark set
        return None, f"importing the official code from {root} failed: {err!r}"
    digest = hashlib.sha256(b"".join((root / f).read_bytes() for f in OFFICIAL_FILES)).hexdigest()
    return SimpleNamespace(root=root, sha256=digest, helper=helper, multiblock=multiblock, utils=mask_utils,
                           tensors=tensors), None


@dataclass
class MaskBatch:
    """One collator output in both layouts: the official lists and ours (`context [B, K]`, `target [B, R, T]`)."""

    masks_enc: list[torch.Tensor]
    masks_pred: list[torch.Tensor]

    @property
    def ours(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.masks_enc[0], torch.stack(self.masks_pred, dim=1)


def official_masks(code: SimpleNamespace, image_size: int, patch_size: int, batch_size: int, num_batches: int,
                   seed: int) -> list[MaskBatch]:
    """`num_batches` batches of the official `MaskCollator` (block sizes seeded by its step counter, placements
    by torch's global generator, seeded here)."""
    collator = code.multiblock.MaskCollator(input_size=(image_size, image_size), patch_size=patch_size,
                                            **OFFICIAL_MASKS)
    torch.manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        _, masks_enc, masks_pred = collator([0] * batch_size)  # the images are ours; only the masks are used
        batches.append(MaskBatch(list(masks_enc), list(masks_pred)))
    return batches


# ----------------------------------------------------------------------------------------------- contenders
class Contender(Protocol):
    optimizer: torch.optim.Optimizer

    def loss(self, k: int) -> torch.Tensor: ...

    def update_teacher(self) -> None: ...


class OfficialStep:
    """The official models, optimizer and loss (src/helper.py `init_model` / `init_opt`, src/train.py's step)."""

    def __init__(self, code: SimpleNamespace, model_name: str, image_size: int, patch_size: int, pred_emb_dim: int,
                 pred_depth: int, images: torch.Tensor, masks: list[MaskBatch], seed: int = 0):
        torch.manual_seed(seed)
        with quiet_official_logging():
            self.encoder, self.predictor = code.helper.init_model(
                device=torch.device("cpu"), patch_size=patch_size, model_name=model_name, crop_size=image_size,
                pred_depth=pred_depth, pred_emb_dim=pred_emb_dim)
            self.optimizer, _, lr_schedule, wd_schedule = code.helper.init_opt(
                self.encoder, self.predictor, use_bfloat16=False, **OFFICIAL_OPT)  # True adds CUDA's grad scaler
        lr_schedule.step()
        wd_schedule.step()
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.code, self.images, self.masks, self.momentum = code, images, masks, OFFICIAL_EMA_START

    def forward(self, m: MaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions `[R·B, T, D]`, targets `[R·B, T, D]`) in the official order (rectangle-major)."""
        with torch.no_grad():
            h = self.target_encoder(self.images)
            h = F.layer_norm(h, (h.size(-1),))
            h = self.code.tensors.repeat_interleave_batch(self.code.utils.apply_masks(h, m.masks_pred),
                                                          len(self.images), repeat=len(m.masks_enc))
        z = self.predictor(self.encoder(self.images, m.masks_enc), m.masks_enc, m.masks_pred)
        return z, h

    def loss(self, k: int) -> torch.Tensor:
        return F.smooth_l1_loss(*self.forward(self.masks[k % len(self.masks)]))

    @torch.no_grad()
    def update_teacher(self) -> None:
        m = self.momentum  # the official per-parameter update, as in src/train.py
        for student, teacher in zip(self.encoder.parameters(), self.target_encoder.parameters()):
            teacher.mul_(m).add_((1.0 - m) * student.detach())

    def params(self) -> dict[str, int]:
        modules = (self.encoder, self.predictor, self.target_encoder)
        return {"trainable": sum(count_params(m)["trainable"] for m in modules),
                "total": sum(count_params(m)["total"] for m in modules)}


class OursStep(BootlegStep):
    """`BootlegStep`'s model, AdamW and EMA momentum, fed the given images and masks (optionally given weights)."""

    def __init__(self, config: BootlegConfig, images: torch.Tensor, masks: list[MaskBatch], seed: int = 0,
                 logged_loss: bool = False, state_dict: dict[str, torch.Tensor] | None = None):
        super().__init__(config, len(images), num_batches=1, seed=seed, logged_loss=logged_loss)
        if state_dict is not None:
            self.model.load_state_dict(state_dict)  # strict: the shapes must be the official model's
        self.pixel_values, self.masks = images, [m.ours for m in masks]

    def loss(self, k: int) -> torch.Tensor:
        context, target = self.masks[k % len(self.masks)]
        return self.model(self.pixel_values, context, target, compute_loss_value=self.logged_loss).loss

    def update_teacher(self) -> None:
        self.model.update_teacher(self.momentum)


def train_step(contender: Contender, k: int, bf16: bool) -> None:
    """Forward (under CPU bf16 autocast when asked, as the official loop's autocast covers the forward only),
    backward, optimizer step, `zero_grad`, EMA."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = contender.loss(k)
    loss.backward()
    contender.optimizer.step()
    contender.optimizer.zero_grad(set_to_none=True)
    contender.update_teacher()


@dataclass
class TimedStep:
    """A contender at one precision; its k-th call runs mask batch k."""

    contender: Contender
    bf16: bool
    calls: int = 0

    def __call__(self) -> None:
        train_step(self.contender, self.calls, self.bf16)
        self.calls += 1


# ------------------------------------------------------------------------------------------------- analysis
@torch.no_grad()
def parity(official: OfficialStep, ours: OursStep, m: MaskBatch, images: int = 2) -> dict[str, float]:
    """Max abs differences of predictions and targets (fp32) of the two I-JEPA models on the first `images`."""
    sub = MaskBatch([x[:images] for x in m.masks_enc], [x[:images] for x in m.masks_pred])
    full = official.images
    official.images = full[:images]
    try:
        z, h = official.forward(sub)
    finally:
        official.images = full
    out = ours.model(full[:images], *sub.ours, output_predictions=True)
    def to_ours(x: torch.Tensor) -> torch.Tensor:  # the official rectangle-major [R·B, T, D] → [B, R, T, D]
        return x.reshape(len(sub.masks_pred), images, *x.shape[1:]).transpose(0, 1)

    return {"images": images, "predictions_max_abs_diff": (to_ours(z) - out.predictions).abs().max().item(),
            "targets_max_abs_diff": (to_ours(h) - out.targets).abs().max().item(),
            "prediction_scale_max_abs": z.abs().max().item()}


def profile_ops(step: Callable[[], None], steps: int = 2) -> dict[str, dict[str, float]]:
    """Self CPU time (ms) and calls per op and per step, over `steps` calls of `step` under `torch.profiler` (more
    than one: a single step on a shared machine catches other processes' bursts)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return {e.key: {"self_cpu_ms": e.self_cpu_time_total / 1e3 / steps, "calls": e.count / steps}
            for e in prof.key_averages()}


def profile_comparison(ours: dict[str, dict[str, float]], official: dict[str, dict[str, float]],
                       top: int = PROFILE_TOP) -> dict[str, Any]:
    """Each profile's top ops by self CPU time, and the ops with the largest differences (ours − official)."""
    def top_ops(p: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
        return [{"op": k, **v} for k, v in sorted(p.items(), key=lambda kv: -kv[1]["self_cpu_ms"])[:top]]

    zero = {"self_cpu_ms": 0.0, "calls": 0}
    diffs = [{"op": k, "ours_ms": ours.get(k, zero)["self_cpu_ms"], "official_ms": official.get(k, zero)["self_cpu_ms"],
              "ours_calls": ours.get(k, zero)["calls"], "official_calls": official.get(k, zero)["calls"]}
             for k in ours.keys() | official.keys()]
    for d in diffs:
        d["diff_ms"] = d["ours_ms"] - d["official_ms"]
    return {"ours_total_self_cpu_ms": sum(v["self_cpu_ms"] for v in ours.values()),
            "official_total_self_cpu_ms": sum(v["self_cpu_ms"] for v in official.values()),
            "ours_top": top_ops(ours), "official_top": top_ops(official),
            "largest_differences": sorted(diffs, key=lambda d: -abs(d["diff_ms"]))[:top]}


def compare(timings: dict[str, dict], pairs: dict[str, tuple[str, str]]) -> dict[str, dict[str, float]]:
    """`ratios`, `paired_ratios` and `cpu_time_ratios` (common.py) for each `name: (a, b)` present in `timings`."""
    present = {n: (a, b) for n, (a, b) in pairs.items() if a in timings and b in timings}
    return {key: {n: fn(timings[a], timings[b]) for n, (a, b) in present.items()}
            for key, fn in (("ratios", ratio), ("paired_ratios", paired_ratio), ("cpu_time_ratios", cpu_ratio))}


# ----------------------------------------------------------------------------------------------------- bench
def bench_preset(code: SimpleNamespace, preset: str, batch_size: int, repeats: int, warmup: int = 1,
                 image_size: int = 224, patch_size: int = 16, pred_emb_dim: int = 192, pred_depth: int = 6,
                 contenders: tuple[str, ...] = CONTENDERS, precisions: tuple[str, ...] = PRECISIONS,
                 logged_loss: bool = False, profile: str = "auto", profile_steps: int = 2,
                 seed: int = 0) -> dict[str, Any]:
    if image_size // patch_size < MIN_GRID:
        raise ValueError(f"a {image_size // patch_size}×{image_size // patch_size} patch grid is too small for the "
                         f"official MaskCollator (at least {MIN_GRID} patches a side)")
    model_name = preset.replace("-", "_")  # the official archs vit_tiny / vit_small / vit_base are our presets
    geometry = dict(image_size=image_size, patch_size=patch_size)
    torch.manual_seed(seed)
    images = torch.randn(batch_size, 3, image_size, image_size)
    masks = official_masks(code, image_size, patch_size, batch_size, warmup + repeats + 1, seed)
    official = OfficialStep(code, model_name, image_size, patch_size, pred_emb_dim, pred_depth, images, masks, seed)
    heads = official.encoder.num_heads  # the official predictor uses the encoder's heads
    ijepa_config = BootlegConfig.from_preset(preset, **geometry, **{
        **OURS_IJEPA, "predictor_hidden_size": pred_emb_dim, "predictor_num_hidden_layers": pred_depth,
        "predictor_num_attention_heads": heads})
    checkpoint = {"encoder": official.encoder.state_dict(), "target_encoder": official.target_encoder.state_dict(),
                  "predictor": official.predictor.state_dict()}
    weights = ijepa_to_bootleg(checkpoint, with_predictor=True)[0].state_dict()
    steps: dict[str, Contender] = {"official": official,
                                   "ours_ijepa": OursStep(ijepa_config, images, masks, seed, logged_loss, weights)}
    if "ours_bootleg" in contenders:
        bootleg_config = BootlegConfig.from_preset(preset, **geometry)
        steps["ours_bootleg"] = OursStep(bootleg_config, images, masks, seed, logged_loss)
    ours_ijepa = steps["ours_ijepa"]
    check = parity(official, ours_ijepa, masks[-1])  # the last batch: never timed
    steps = {k: v for k, v in steps.items() if k in contenders}

    def describe(name: str) -> dict[str, Any]:
        if name == "official":
            return {"model": f"official {model_name} + vit_predictor {pred_emb_dim}/{pred_depth}/{heads} + EMA target "
                             "encoder", "optimizer": "official init_opt: torch.optim.AdamW, 4 groups, foreach left "
                             "to torch (CPU: the per-parameter loop)", "ema": "per-parameter mul_ + add_",
                    "loss": "smooth_l1 on layer-normed target-encoder output", "attention": "explicit matmul + softmax",
                    "params": official.params()}
        c = steps[name].config
        return {"targets": str(c.target_spec), "tokens": f"CLS {c.use_cls_token}, {c.num_register_tokens} registers",
                "predictor": {"hidden_size": c.predictor_hidden_size,
                              "num_hidden_layers": c.predictor_num_hidden_layers,
                              "num_attention_heads": c.predictor_num_attention_heads,
                              "num_register_tokens": c.predictor_num_register_tokens},
                "weights": "the official model's (converted)" if name == "ours_ijepa" else "own random init",
                "optimizer": "make_adamw (foreach AdamW, package param groups)",
                "ema": "update_teacher (_foreach_lerp_)",
                "loss": "mse (logged step)" if logged_loss else "MSELossNoForward (non-logged step)",
                "attention": "SDPA, except with gradients in half precision on a CPU (student, predictor): explicit "
                             "matmul + float32 softmax; the no-grad teacher keeps SDPA",
                "ema_momentum": steps[name].momentum, "params": count_params(steps[name].model)}

    timed = {f"{name}/{p}": TimedStep(step, p == "bf16") for p in precisions for name, step in steps.items()}
    load_before = load_average()
    timings = time_alternating(timed, repeats=repeats, warmup=warmup)
    load_after = load_average()
    for t in timings.values():
        t["images_per_s"] = batch_size / t["median_s"]
    best = {name: min((p for p in precisions if f"{name}/{p}" in timings),
                      key=lambda p: timings[f"{name}/{p}"]["median_s"]) for name in steps}
    pairs = {f"{ours}_over_official_{p}": (f"{ours}/{p}", f"official/{p}") for ours in steps if ours != "official"
             for p in precisions}
    pairs.update({f"{ours}_over_official_best": (f"{ours}/{best[ours]}", f"official/{best['official']}")
                  for ours in steps if ours != "official" and "official" in steps})
    result: dict[str, Any] = {
        "official_code": {"path": str(code.root), "sha256_of_files_used": code.sha256, "files": list(OFFICIAL_FILES)},
        "shape": {"model": model_name, "image_size": image_size, "patch_size": patch_size,
                  "predictor": {"hidden_size": pred_emb_dim, "num_hidden_layers": pred_depth, "num_heads": heads}},
        "batch_size": batch_size, "warmup": warmup, "precisions": list(precisions),
        "bf16_fast_on_this_cpu": fast_bf16("cpu"),
        "masks": {**ours_ijepa.mask_stats(), "mask_mode": "official src/masks/multiblock.py MaskCollator",
                  **OFFICIAL_MASKS},
        "contenders": {name: describe(name) for name in steps}, "parity": check, "timings": timings,
        "best_precision": best, **compare(timings, pairs),
        "load_average_before_after": [load_before, load_after]}
    key = "ours_ijepa_over_official_best"
    if key in result["ratios"]:
        met = result["ratios"][key] <= TARGET_RATIO
        result["target"] = {"ratio": key, "max": TARGET_RATIO, "met": met}
        if profile == "always" or (profile == "auto" and not met):
            result["profile"] = {"precision": {"ours_ijepa": best["ours_ijepa"], "official": best["official"]},
                                 "steps": profile_steps, "unit": "ms of self CPU time per step", **profile_comparison(
                                     *(profile_ops(timed[f"{n}/{best[n]}"], profile_steps)
                                       for n in ("ours_ijepa", "official")))}
    return result


def skipped(reason: str) -> dict[str, Any]:
    return {"benchmark": "ijepa_official", "skipped": reason, "machine": machine_info()}


def run(ijepa_repo: str | None, presets: list[str] | None = None, batch_size: int = 16, repeats: int | None = None,
        **kwargs: Any) -> dict[str, Any]:
    """The result document: `results[preset]` from `bench_preset`, or `skipped` with the reason."""
    code, why = load_official(ijepa_repo)
    if code is None:
        print(f"bench_ijepa_official: skipped: {why}", flush=True)
        return skipped(why)
    out: dict[str, Any] = {"benchmark": "ijepa_official", "machine": machine_info(), "results": {}}
    for name in presets or ["vit-small"]:
        r = bench_preset(code, name, batch_size, repeats or DEFAULT_REPEATS.get(name, 3), **kwargs)
        out["results"][name] = r
        line = "  ".join(f"{k} {v['median_s']:.3f}" for k, v in r["timings"].items())
        print(f"{name} batch {batch_size} (s/step): {line}\n  " + "  ".join(
            f"{k} {v:.3f} (paired {r['paired_ratios'][k]:.3f}, CPU {r['cpu_time_ratios'][k]:.3f})"
            for k, v in r["ratios"].items()), flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = preset_bench_parser(__doc__, ["vit-small"], DEFAULT_REPEATS, "ijepa_official.json")
    threads = next(a for a in p._actions if a.dest == "threads")  # one thread: see bench/README.md, "Threads"
    threads.default, threads.help = 1, "torch intra-op threads (default 1: stable per-core numbers when shared)"
    p.add_argument("--ijepa-repo", default=None, help="path of an extracted copy of facebookresearch/ijepa")
    p.add_argument("--image-size", type=int, default=224, help=f"at least {MIN_GRID} patches a side")
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--pred-emb-dim", type=int, default=192, help="predictor width (official pred_emb_dim)")
    p.add_argument("--pred-depth", type=int, default=6, help="predictor depth (official pred_depth)")
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--logged-loss", action="store_true", help="ours: real MSE instead of MSELossNoForward")
    p.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                   help=f"profile ours (I-JEPA) and official at best precision (auto: when their ratio > "
                        f"{TARGET_RATIO})")
    p.add_argument("--profile-steps", type=int, default=2, help="steps per profile")
    args = p.parse_args(argv)
    set_threads(args.threads)
    result = run(args.ijepa_repo, args.presets, args.batch_size, args.repeats, warmup=args.warmup,
                 image_size=args.image_size, patch_size=args.patch_size, pred_emb_dim=args.pred_emb_dim,
                 pred_depth=args.pred_depth, contenders=tuple(args.contenders), precisions=tuple(args.precisions),
                 logged_loss=args.logged_loss, profile=args.profile, profile_steps=args.profile_steps)
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
