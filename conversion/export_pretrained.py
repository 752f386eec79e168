"""Export a Bootleg pretraining checkpoint (Trainer output folder or `checkpoint-N`) as a clean inference folder.

    python conversion/export_pretrained.py runs/micro/checkpoint-500 --out bootleg-micro            # teacher encoder
    python conversion/export_pretrained.py runs/micro --student --out bootleg-micro-student
    python conversion/export_pretrained.py runs/micro --probe-head probes/xblk.safetensors --probe-type xblk \
        --labels labels.json --out bootleg-micro-xblk                                      # image classification
    python conversion/export_pretrained.py runs/micro --segmentation-head seg/blk.safetensors --segmentation-type blk \
        --labels background item --out bootleg-micro-seg                                   # semantic segmentation

The output holds `config.json` (architectures = BootlegModel, BootlegForImageClassification or
BootlegForSemanticSegmentation), `model.safetensors` and the image processor config: no student/predictor weights,
optimizer state or other pickles. The source may also be an encoder folder (e.g. a converted I-JEPA checkpoint) to
attach a head to. `--labels` takes class names, or one JSON (list or id2label) or text file (one name per line).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bootleg_hf.configuration_bootleg import PROBE_TYPES, SEGMENTATION_HEADS
from bootleg_hf.export import export_pretrained


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="BootlegForPretraining folder (save_pretrained / Trainer checkpoint)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--student", action="store_true", help="export the student instead of the EMA teacher")
    heads = p.add_mutually_exclusive_group()
    heads.add_argument("--probe-head", help="trained probe head (safetensors) → BootlegForImageClassification")
    heads.add_argument("--segmentation-head", help="trained segmentation head (safetensors) → "
                                                   "BootlegForSemanticSegmentation")
    p.add_argument("--probe-type", choices=PROBE_TYPES,
                   help="type of --probe-head (default: the head file's probe_type metadata, else the config's)")
    p.add_argument("--segmentation-type", choices=SEGMENTATION_HEADS, help="type of --segmentation-head")
    p.add_argument("--labels", nargs="+", help="class names, or one .json / .txt file with them")
    args = p.parse_args(argv)
    if (args.probe_head or args.segmentation_head) and not args.labels:
        p.error("a head needs --labels")
    labels = args.labels[0] if args.labels and len(args.labels) == 1 and Path(args.labels[0]).is_file() \
        else args.labels
    out = export_pretrained(args.checkpoint, args.out, student=args.student, probe_head=args.probe_head,
                            probe_type=args.probe_type, segmentation_head=args.segmentation_head,
                            segmentation_type=args.segmentation_type, labels=labels)
    what = "classification model" if args.probe_head else "segmentation model" if args.segmentation_head else "encoder"
    print(f"wrote {what} ({'student' if args.student else 'teacher'} weights) to {out.resolve()}")
    return out


if __name__ == "__main__":
    main()
