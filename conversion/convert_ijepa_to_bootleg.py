"""Convert an official I-JEPA checkpoint (`.pth.tar`) into a Bootleg folder (safetensors + config + processor).

    python conversion/convert_ijepa_to_bootleg.py --checkpoint IN1K-vit.h.14-300e.pth.tar --out ijepa-vith14
    python conversion/convert_ijepa_to_bootleg.py --checkpoint ... --with-predictor --out ijepa-vith14-pretraining

Default: the EMA `target_encoder` as a `BootlegModel` without CLS or registers (`pooler_output` = mean patch token);
`--student` takes `encoder` instead. `--with-predictor` writes a `BootlegForPretraining` (student = `encoder`,
teacher = `target_encoder`, I-JEPA's predictor with no predictor registers and `targets="final"`) to continue
training. The checkpoint is read with `torch.load(weights_only=True)` only; every key is checked strictly.
I-JEPA ViT-H/14 and ViT-g/16 use 16 heads (inferred for the official widths; `--num-heads` otherwise).
Meta released the I-JEPA weights under CC-BY-NC 4.0: publish conversions with `--license cc-by-nc-4.0`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import bootleg_hf
from bootleg_hf.conversion import ijepa_to_bootleg


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="I-JEPA .pth.tar (dict with encoder/target_encoder/predictor)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--student", action="store_true", help="convert 'encoder' instead of the EMA 'target_encoder'")
    p.add_argument("--with-predictor", action="store_true", help="write a BootlegForPretraining with the predictor")
    p.add_argument("--num-heads", type=int, help="encoder heads (inferred for the official I-JEPA widths)")
    p.add_argument("--predictor-num-heads", type=int, help="predictor heads (default: the encoder's, as in I-JEPA)")
    p.add_argument("--image-size", type=int, nargs="+", help="H [W]; default: square grid from pos_embed × patch")
    args = p.parse_args(argv)
    if args.student and args.with_predictor:
        p.error("--with-predictor keeps both encoders (student and teacher); --student applies to encoder-only output")
    image_size = None if args.image_size is None else (args.image_size[0] if len(args.image_size) == 1
                                                       else args.image_size[:2])
    model, notes = ijepa_to_bootleg(args.checkpoint, student=args.student, with_predictor=args.with_predictor,
                                    num_heads=args.num_heads, predictor_num_heads=args.predictor_num_heads,
                                    image_size=image_size)
    model.save_pretrained(args.out)
    bootleg_hf.make_image_processor(model.config).save_pretrained(args.out)
    for note in notes:
        print(f"note: {note}")
    c = model.config
    print(f"wrote {type(model).__name__} (width {c.hidden_size}, depth {c.num_hidden_layers}, heads "
          f"{c.num_attention_heads}, patch {c.patch_size}, image {c.image_size}) to {Path(args.out).resolve()}")


if __name__ == "__main__":
    main()
