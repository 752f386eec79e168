"""One full pretraining step: Bootleg vs `transformers.ViTMAEForPreTraining` vs Bootleg-as-I-JEPA (docs/design.md §10).

    python -m bench.bench_pretrain_step [--presets vit-micro vit-small] [--out bench/results/pretrain_step.json]

A step is what `BootlegTrainer` does per optimizer step, without data loading: forward, backward, AdamW
(fused, β = (0.9, 0.95), weight decay on matrices only), `zero_grad(set_to_none=True)` and, for the Bootleg
contenders, the EMA teacher update (`update_teacher`, fused `_foreach_lerp_`). Contenders per preset:

* `bootleg`: `BootlegForPretraining` of the preset (targets `1:4:12` for ViT-S), masks from the config's
  `MaskGenerator` (`bootleg` mode, docs/design.md §5). The loss runs as on a non-logging Trainer step
  (`compute_loss_value=False`, i.e. `MSELossNoForward`); `--logged-loss` uses the real MSE instead.
* `mae`: `ViTMAEForPreTraining` with the same encoder (width, depth, heads, MLP 4×, qkv bias, LN eps 1e-6) and a
  decoder of the *same width, depth and heads as Bootleg's predictor* (ViT-S: 192 wide, 10 blocks, 16 heads, MLP
  4×), mask ratio 0.75, `norm_pix_loss=True`, SDPA. No teacher, no EMA.
* `ijepa`: Bootleg configured as I-JEPA: `targets="final"`, `mask_mode="ijepa"`, `predictor_num_hidden_layers=6`
  (predictor width and heads as the preset), EMA momentum 0.996.
* `bootleg_bf16`, `ijepa_bf16`: the same steps with the forward under bf16 autocast (weights, optimizer state,
  targets and loss in float32), the Trainer's default where bf16 matmuls are native; ratios `*_bf16_over_fp32`.

Masks are pre-generated (mask sampling lives in DataLoader workers; see `bench_masking.py`): the k-th timed step of
each Bootleg contender uses mask batch k of its own generator, so every contender sees the same sequence of mask
sizes in every run. Contenders are alternated, median of the repeats after warm-up.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from bench.common import (make_adamw, preset_bench_parser, cpu_ratio, machine_info, paired_ratio, ratio, set_threads,
                    time_alternating, write_json)

from bootleg_hf import BootlegConfig, BootlegForPretraining
from bootleg_hf.masking import MaskGenerator

# `*_bf16`: the same step under bf16 autocast (the Trainer's default where bf16 matmuls are native)
CONTENDERS = ("bootleg", "bootleg_bf16", "mae", "ijepa", "ijepa_bf16")
DEFAULT_REPEATS = {"vit-micro": 20, "vit-tiny": 5, "vit-small": 5, "vit-base": 3}
IJEPA_OVERRIDES = dict(targets="final", mask_mode="ijepa", predictor_num_hidden_layers=6, ema_start=0.996,
                       ema_end=1.0)


def mae_config(config: BootlegConfig, mask_ratio: float = 0.75):
    """`ViTMAEConfig` with `config`'s encoder and a decoder shaped like `config`'s predictor."""
    from transformers import ViTMAEConfig

    dp = config.predictor_hidden_size
    return ViTMAEConfig(
        hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        image_size=config.image_size, patch_size=config.patch_size, num_channels=config.num_channels,
        qkv_bias=config.qkv_bias, layer_norm_eps=config.layer_norm_eps, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, decoder_hidden_size=dp,
        decoder_num_hidden_layers=config.predictor_num_hidden_layers,
        decoder_num_attention_heads=config.predictor_num_attention_heads,
        decoder_intermediate_size=int(dp * config.intermediate_size / config.hidden_size), mask_ratio=mask_ratio,
        norm_pix_loss=True, attn_implementation="sdpa")


def count_params(model: torch.nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for p in model.parameters())}


class BootlegStep:
    """A callable running one Bootleg training step on pre-generated batch `k` (cycling)."""

    def __init__(self, config: BootlegConfig, batch_size: int, num_batches: int, seed: int = 0,
                 logged_loss: bool = False, device: str | torch.device = "cpu", bf16: bool = False):
        torch.manual_seed(seed)
        self.bf16 = bf16  # bf16 autocast around the forward (as the Trainer's mixed precision), float32 otherwise
        self.config = config
        self.model = BootlegForPretraining(config).to(device).train()
        self.optimizer = make_adamw(self.model)
        self.momentum = config.ema_start
        self.logged_loss = logged_loss
        gen = MaskGenerator.from_config(config)
        h, w = config.image_hw
        self.pixel_values = torch.randn(batch_size, config.num_channels, h, w, device=device)
        self.masks = [gen.generate(batch_size, batch_index=i, seed=seed) for i in range(num_batches)]
        self.masks = [(m.context_indices.to(device), m.target_indices.to(device)) for m in self.masks]
        self.calls = 0

    def __call__(self) -> None:
        ctx, tgt = self.masks[self.calls % len(self.masks)]
        self.calls += 1
        with torch.autocast(self.pixel_values.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(self.pixel_values, ctx, tgt, compute_loss_value=self.logged_loss)
        out.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.update_teacher(self.momentum)

    def mask_stats(self) -> dict:
        ks = [c.shape[1] for c, _ in self.masks]
        ts = [t.shape[2] for _, t in self.masks]
        return {"mask_mode": self.config.mask_mode, "mask_batches": len(self.masks),
                "context_tokens_mean": float(np.mean(ks)), "context_tokens_range": [min(ks), max(ks)],
                "target_tokens_per_rectangle_mean": float(np.mean(ts)), "rectangles": self.masks[0][1].shape[1]}


class MAEStep:
    """One `ViTMAEForPreTraining` training step (its random masking is part of its forward)."""

    def __init__(self, config: BootlegConfig, batch_size: int, seed: int = 0, device: str | torch.device = "cpu"):
        from transformers import ViTMAEForPreTraining

        torch.manual_seed(seed)
        self.mae_config = mae_config(config)
        self.model = ViTMAEForPreTraining(self.mae_config).to(device).train()
        self.optimizer = make_adamw(self.model)
        h, w = config.image_hw
        self.pixel_values = torch.randn(batch_size, config.num_channels, h, w, device=device)

    def __call__(self) -> None:
        loss = self.model(pixel_values=self.pixel_values).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def bench_preset(name: str, batch_size: int, repeats: int, warmup: int = 1, contenders: tuple[str, ...] = (
        "bootleg", "mae", "ijepa"), config_overrides: dict | None = None, logged_loss: bool = False,
        seed: int = 0) -> dict:
    base = dict(config_overrides or {})
    steps: dict[str, Callable[[], None]] = {}
    info: dict[str, dict] = {}
    num_batches = warmup + repeats
    for c in contenders:
        if c.removesuffix("_bf16") in ("bootleg", "ijepa"):
            cfg = BootlegConfig.from_preset(name, **{**base, **(IJEPA_OVERRIDES if c.startswith("ijepa") else {})})
            cfg._attn_implementation = "sdpa"
            step = BootlegStep(cfg, batch_size, num_batches, seed, logged_loss, bf16=c.endswith("_bf16"))
            info[c] = {"targets": str(cfg.target_spec), "predictor": {
                "hidden_size": cfg.predictor_hidden_size, "num_hidden_layers": cfg.predictor_num_hidden_layers,
                "num_attention_heads": cfg.predictor_num_attention_heads},
                "ema_momentum": step.momentum, **step.mask_stats(), "params": count_params(step.model),
                "loss": "mse (logged step)" if logged_loss else "MSELossNoForward (non-logged step)"}
        elif c == "mae":
            cfg = BootlegConfig.from_preset(name, **base)
            step = MAEStep(cfg, batch_size, seed)
            mc = step.mae_config
            info[c] = {"decoder": {"hidden_size": mc.decoder_hidden_size,
                                   "num_hidden_layers": mc.decoder_num_hidden_layers,
                                   "num_attention_heads": mc.decoder_num_attention_heads,
                                   "intermediate_size": mc.decoder_intermediate_size},
                       "mask_ratio": mc.mask_ratio, "norm_pix_loss": mc.norm_pix_loss,
                       "encoder_tokens": 1 + int(cfg.num_patches * (1 - mc.mask_ratio)),
                       "params": count_params(step.model)}
        else:
            raise ValueError(f"unknown contender {c!r}")
        steps[c] = step
    cfg = BootlegConfig.from_preset(name, **base)
    timings = time_alternating(steps, repeats=repeats, warmup=warmup)
    for t in timings.values():
        t["images_per_s"] = batch_size / t["median_s"]
    ratios, paired, cpu = {}, {}, {}
    pairs = [("bootleg_over_mae", "bootleg", "mae"), ("bootleg_over_ijepa", "bootleg", "ijepa"),
             ("bootleg_bf16_over_fp32", "bootleg_bf16", "bootleg"), ("ijepa_bf16_over_fp32", "ijepa_bf16", "ijepa")]
    for key, a, b in pairs:
        if a in timings and b in timings:
            ratios[key] = ratio(timings[a], timings[b])
            paired[key] = paired_ratio(timings[a], timings[b])
            cpu[key] = cpu_ratio(timings[a], timings[b])
    return {"encoder": {"hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
                        "num_attention_heads": cfg.num_attention_heads, "image_size": list(cfg.image_hw),
                        "patch_size": cfg.patch_size},
            "batch_size": batch_size, "warmup": warmup, "contenders": info, "timings": timings, "ratios": ratios,
            "paired_ratios": paired, "cpu_time_ratios": cpu}


def run(presets: list[str], batch_size: int = 16, repeats: int | None = None, warmup: int = 1,
        contenders: tuple[str, ...] = CONTENDERS, config_overrides: dict | None = None,
        logged_loss: bool = False) -> dict:
    out: dict = {"benchmark": "pretrain_step", "machine": machine_info(), "results": {}}
    for name in presets:
        r = bench_preset(name, batch_size, repeats or DEFAULT_REPEATS.get(name, 3), warmup, contenders,
                         config_overrides, logged_loss)
        out["results"][name] = r
        line = "  ".join(f"{k} {v['median_s']:.3f} s/step ({v['images_per_s']:.1f} img/s)"
                         for k, v in r["timings"].items())
        print(f"{name:10s} batch {batch_size}: {line}  | " + "  ".join(f"{k} {v:.3f}" for k, v in r["ratios"].items()),
              flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = preset_bench_parser(__doc__, ["vit-micro", "vit-small"], DEFAULT_REPEATS, "pretrain_step.json")
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    p.add_argument("--logged-loss", action="store_true", help="real MSE instead of MSELossNoForward")
    args = p.parse_args(argv)
    set_threads(args.threads)
    result = run(args.presets, args.batch_size, args.repeats, args.warmup, tuple(args.contenders),
                 logged_loss=args.logged_loss)
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
