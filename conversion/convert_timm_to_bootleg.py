"""Convert a timm VisionTransformer (class token, R registers, no_embed_class=True, sin-cos pos_embed) to a
Bootleg encoder folder, or a Bootleg folder back to a timm state dict.

    python conversion/convert_timm_to_bootleg.py --timm-arch vit_small_patch16_224 --reg-tokens 4 \
        [--checkpoint weights.safetensors|.pth] --out bootleg-vit-small
    python conversion/convert_timm_to_bootleg.py --reverse --bootleg bootleg-vit-small --out timm.safetensors

Without --checkpoint the timm model keeps its random init with Bootleg's sin-cos table (useful for parity checks).
`.pth` files are read with torch.load(weights_only=True) only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

import bootleg_hf


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state.get("model", state))


def timm_to_folder(arch: str, reg_tokens: int, checkpoint: str | None, out: str) -> bootleg_hf.BootlegModel:
    ref = timm.create_model(arch, pretrained=False, num_classes=0, reg_tokens=reg_tokens, no_embed_class=True)
    config = bootleg_hf.config_from_timm(ref)
    if checkpoint:
        ref.load_state_dict(load_state_dict(checkpoint), strict=True)
    else:  # random weights: give timm our fixed table so both models agree
        ref.pos_embed.data.copy_(bootleg_hf.sincos_position_embedding(config.hidden_size, *config.grid_size)[None])
    model = bootleg_hf.BootlegModel(config)
    converted = bootleg_hf.timm_to_bootleg(ref.state_dict(), config)
    bootleg_hf.conversion.check_keys(converted, model.state_dict(), f"timm {arch} → BootlegModel")
    model.load_state_dict(converted)
    model.save_pretrained(out)
    bootleg_hf.make_image_processor(config).save_pretrained(out)
    return model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timm-arch", default="vit_small_patch16_224")
    p.add_argument("--reg-tokens", type=int, default=4)
    p.add_argument("--checkpoint", help="timm weights (.safetensors or .pth)")
    p.add_argument("--reverse", action="store_true", help="Bootleg folder → timm safetensors")
    p.add_argument("--bootleg", help="Bootleg encoder folder (with --reverse)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.reverse:
        if not args.bootleg:
            p.error("--reverse needs --bootleg FOLDER")
        model = bootleg_hf.BootlegModel.from_pretrained(args.bootleg)
        state = bootleg_hf.bootleg_to_timm(model.state_dict(), model.config)
        save_file({k: v.contiguous() for k, v in state.items()}, args.out)
    else:
        timm_to_folder(args.timm_arch, args.reg_tokens, args.checkpoint, args.out)
    print(f"wrote {Path(args.out).resolve()}")


if __name__ == "__main__":
    main()
