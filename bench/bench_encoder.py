"""Encoder inference speed: `BootlegModel` vs timm `VisionTransformer` vs `transformers.ViTModel` (docs/design.md §10).

    python -m bench.bench_encoder [--presets vit-micro vit-small vit-base] [--out bench/results/encoder.json]

Per preset, the three encoders get the same shape (width, depth, heads, MLP ratio 4, qkv bias, LN eps 1e-6,
patch 16 at 224 px or the preset's own geometry) and the same input batch:

* `bootleg`: `BootlegModel` with SDPA attention (the default), full forward (final-LN tokens + CLS pooler).
* `timm`: `VisionTransformer(class_token=True, reg_tokens=4, no_embed_class=True, num_classes=0)` holding the
  *same weights* (converted with `bootleg_to_timm`; the max abs difference of the final tokens is recorded), full
  forward (features + CLS pooling). Same 1 + 4 + N tokens as ours.
* `hf_vit`: `transformers.ViTModel(add_pooling_layer=False)`, `attn_implementation="sdpa"`, random weights. It has
  no register tokens, so it runs 1 + N tokens (197 at 224/16, 2 % fewer than ours).
* `bootleg_noreg`: `BootlegModel` with `num_register_tokens=0`, i.e. the same 1 + N tokens as `hf_vit`, to separate
  the cost of the 4 registers from implementation differences (`ours_noreg_over_hf`).

All run under `torch.inference_mode()`, alternated (bootleg, timm, hf_vit, bootleg, …), median of the repeats after
warm-up. Ratios `ours/timm` and `ours/hf` are ratios of medians from the same run; `paired_ratios` are medians of the
per-round ratios (robust to the machine changing speed mid-run); `cpu_time_ratios` compare median process CPU
times (robust to other processes taking the cores). < 1 means ours is faster.
"""

from __future__ import annotations


import torch

from bench.common import (preset_bench_parser, cpu_ratio, machine_info, paired_ratio, ratio, set_threads,
                    time_alternating, write_json)

from bootleg_hf import BootlegConfig, BootlegModel, bootleg_to_timm

DEFAULT_BATCH = {"vit-micro": 16, "vit-tiny": 16, "vit-small": 16, "vit-base": 4, "vit-large": 2}
DEFAULT_REPEATS = {"vit-micro": 20, "vit-tiny": 7, "vit-small": 9, "vit-base": 9, "vit-large": 3}


def build_contenders(config: BootlegConfig, with_timm: bool = True, with_hf: bool = True,
                     with_noreg: bool = False) -> dict[str, torch.nn.Module]:
    """The encoders of `config`'s shape, in eval mode; timm's holds our weights."""
    ours = BootlegModel(config).eval()
    models: dict[str, torch.nn.Module] = {"bootleg": ours}
    if with_timm:
        import timm

        ref = timm.models.vision_transformer.VisionTransformer(
            img_size=config.image_hw, patch_size=config.patch_size, in_chans=config.num_channels,
            embed_dim=config.hidden_size, depth=config.num_hidden_layers, num_heads=config.num_attention_heads,
            mlp_ratio=config.intermediate_size / config.hidden_size, qkv_bias=config.qkv_bias, class_token=True,
            reg_tokens=config.num_register_tokens, no_embed_class=True, num_classes=0, global_pool="token")
        ref.load_state_dict(bootleg_to_timm(ours.state_dict(), config))
        models["timm"] = ref.eval()
    if with_hf:
        from transformers import ViTConfig, ViTModel

        hf_config = ViTConfig(hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
                              num_attention_heads=config.num_attention_heads,
                              intermediate_size=config.intermediate_size, image_size=config.image_size,
                              patch_size=config.patch_size, num_channels=config.num_channels, qkv_bias=config.qkv_bias,
                              layer_norm_eps=config.layer_norm_eps, hidden_dropout_prob=0.0,
                              attention_probs_dropout_prob=0.0, attn_implementation="sdpa")
        models["hf_vit"] = ViTModel(hf_config, add_pooling_layer=False).eval()
        assert models["hf_vit"].config._attn_implementation == "sdpa"
    if with_noreg:
        noreg = BootlegConfig(**{**config.to_dict(), "num_register_tokens": 0})
        noreg._attn_implementation = config._attn_implementation
        models["bootleg_noreg"] = BootlegModel(noreg).eval()
    return models


def autocast_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        return model(x).last_hidden_state


def bench_preset(config: BootlegConfig, batch_size: int, repeats: int, warmup: int = 1, with_timm: bool = True,
                 with_hf: bool = True, with_noreg: bool = True, seed: int = 0, with_bf16: bool = True) -> dict:
    """Time the forward of each contender on one `[batch, C, H, W]` batch; returns a JSON-ready dict."""
    torch.manual_seed(seed)
    models = build_contenders(config, with_timm, with_hf, with_noreg)
    h, w = config.image_hw
    x = torch.randn(batch_size, config.num_channels, h, w)
    tokens = {"bootleg": config.num_prefix_tokens + config.num_patches,
              "timm": config.num_prefix_tokens + config.num_patches, "hf_vit": 1 + config.num_patches,
              "bootleg_noreg": int(config.use_cls_token) + config.num_patches,
              "bootleg_bf16": config.num_prefix_tokens + config.num_patches}
    result: dict = {"shape": {"hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
                              "num_attention_heads": config.num_attention_heads,
                              "intermediate_size": config.intermediate_size, "image_size": [h, w],
                              "patch_size": config.patch_size, "batch_size": batch_size},
                    "tokens": {k: v for k, v in tokens.items() if k in models or (with_bf16 and k == "bootleg_bf16")},
                    "warmup": warmup}
    with torch.inference_mode():
        if "timm" in models:
            diff = (models["bootleg"](x).last_hidden_state - models["timm"].forward_features(x)).abs().max().item()
            result["timm_parity_max_abs_diff"] = diff
        calls = {name: (lambda m=m: m(x)) for name, m in models.items()}
        if with_bf16:  # ours under bf16 autocast: the frozen-encoder default where bf16 matmuls are native
            calls["bootleg_bf16"] = lambda: autocast_forward(models["bootleg"], x)
        timings = time_alternating(calls, repeats=repeats, warmup=warmup)
    for name, t in timings.items():
        t["images_per_s"] = batch_size / t["median_s"]
    result["timings"] = timings
    result["ratios"], result["paired_ratios"], result["cpu_time_ratios"] = {}, {}, {}
    pairs = [("ours_over_timm", "bootleg", "timm"), ("ours_over_hf", "bootleg", "hf_vit"),
             ("ours_noreg_over_hf", "bootleg_noreg", "hf_vit"), ("ours_bf16_over_fp32", "bootleg_bf16", "bootleg")]
    for key, a, b in pairs:
        if a in timings and b in timings:
            result["ratios"][key] = ratio(timings[a], timings[b])
            result["paired_ratios"][key] = paired_ratio(timings[a], timings[b])
            result["cpu_time_ratios"][key] = cpu_ratio(timings[a], timings[b])
    return result


def run(presets: list[str], batch_sizes: dict[str, int] | None = None, repeats: int | None = None, warmup: int = 1,
        config_overrides: dict | None = None, with_timm: bool = True, with_hf: bool = True,
        with_noreg: bool = True) -> dict:
    out: dict = {"benchmark": "encoder_forward", "machine": machine_info(), "results": {}}
    for name in presets:
        config = BootlegConfig.from_preset(name, **(config_overrides or {}))
        config._attn_implementation = "sdpa"
        bs = (batch_sizes or {}).get(name, DEFAULT_BATCH.get(name, 16))
        reps = repeats or DEFAULT_REPEATS.get(name, 5)
        r = bench_preset(config, bs, reps, warmup, with_timm, with_hf, with_noreg)
        out["results"][name] = r
        line = "  ".join(f"{k} {v['median_s'] * 1e3:8.1f} ms ({v['images_per_s']:6.1f} img/s)"
                         for k, v in r["timings"].items())
        ratios = "  ".join(f"{k} {v:.3f} (paired {r['paired_ratios'][k]:.3f}, CPU {r['cpu_time_ratios'][k]:.3f})"
                           for k, v in r["ratios"].items())
        print(f"{name:10s} batch {bs:3d}: {line}  | {ratios}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = preset_bench_parser(__doc__, ["vit-micro", "vit-small", "vit-base"], DEFAULT_REPEATS, "encoder.json",
                            batch_size=None, batch_help=f"one batch size for every preset (default: {DEFAULT_BATCH})")
    args = p.parse_args(argv)
    set_threads(args.threads)
    sizes = {name: args.batch_size for name in args.presets} if args.batch_size else None
    result = run(args.presets, sizes, args.repeats, args.warmup)
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
