"""Command-line entry points: argument parsing and one library call each.

Installed as console scripts (`bootleg-pretrain`, `bootleg-probe`, `bootleg-segment`, `bootleg-analyze`,
`bootleg-masks`, `bootleg-ablation`, `bootleg-demo`, `bootleg-export`, `bootleg-publish`, `bootleg-convert-timm`,
`bootleg-convert-ijepa`); the files in `training/` and `conversion/` of a clone run the same functions. Every
function takes `argv` (default: the command line) and returns the process exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

DATASET_HELP = "'fashion-mnist' (embedded), an image folder (<class>/*.png) or a Hub dataset name"
MODEL_HELP = "encoder folder, pretraining checkpoint, task-model folder, Hub id, or random:<preset>[:seed]"


def _parser(description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options every evaluation command shares: threads, seed, device, output folder."""
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--out", default="results")
    _add_overwrite(p)


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace the results already in --out (refused otherwise)")


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="recipe override, repeatable: e.g. training.lr_max=1e-3, model.targets=1:2:12 (target specs "
                        "such as 1:2:6 are kept as text)")


# --------------------------------------------------------------------------------------------------------------------
# Pretraining
# --------------------------------------------------------------------------------------------------------------------


def pretrain_main(argv: Sequence[str] | None = None) -> int:
    from .pretraining import PretrainSettings, run_pretraining
    from .recipes import available_recipes

    p = _parser("""Pretrain Bootleg with BootlegTrainer.

    bootleg-pretrain --recipe vit-micro --dataset fashion-mnist --output-dir runs/micro
    bootleg-pretrain --recipe vit-small --dataset /data/my_images --output-dir runs/s
    torchrun --nproc_per_node 8 training/pretrain.py --recipe vit-base --dataset <hub name> ...

Writes Trainer checkpoints (checkpoint-*, each complete or absent; resumable with --resume), the final
BootlegForPretraining folder and the teacher encoder with its image processor in <output-dir>/encoder. An output
folder that holds a run is refused unless --resume or --overwrite is given; two processes cannot share one.""")
    p.add_argument("--recipe", default="vit-micro", help=f"a YAML file or one of the shipped recipes "
                                                         f"{available_recipes()}")
    p.add_argument("--dataset", default="fashion-mnist", help=DATASET_HELP)
    p.add_argument("--split", default="train")
    p.add_argument("--output-dir", default="runs/bootleg")
    _add_set(p)
    p.add_argument("--max-steps", type=_positive, help="training steps (overrides the recipe's epochs)")
    p.add_argument("--batch-size", type=_positive, help="global batch size (overrides the recipe)")
    p.add_argument("--limit", type=_positive, help="use only the first N images")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--on-corrupt", choices=("skip", "raise"), default="skip")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--resume", nargs="?", const="auto",
                     help="continue the run in --output-dir from its newest complete checkpoint (or from the given "
                          "checkpoint folder); the checkpoint's schedule continues unless --new-schedule")
    run.add_argument("--overwrite", action="store_true", help="replace the run already in --output-dir")
    p.add_argument("--new-schedule", action="store_true",
                   help="with --resume: switch to the recipe's LR / weight-decay / EMA schedule and length from the "
                        "resumed step, when they differ from the checkpoint's")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    trainer = run_pretraining(PretrainSettings(
        recipe=a.recipe, overrides=a.overrides, dataset=a.dataset, split=a.split, limit=a.limit,
        output_dir=a.output_dir, max_steps=a.max_steps, batch_size=a.batch_size, num_workers=a.num_workers,
        on_corrupt=a.on_corrupt, resume=a.resume, overwrite=a.overwrite, seed=a.seed),
        schedule_on_resume="new" if a.new_schedule else None)
    if trainer.is_world_process_zero():
        print(f"saved {a.output_dir} (BootlegForPretraining) and {a.output_dir}/encoder (teacher encoder)")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------------


def probe_main(argv: Sequence[str] | None = None) -> int:
    from .configuration_bootleg import PROBE_TYPES
    from .evaluation.classification import PROBE_GRID, ProbeSettings, probe_markdown, run_probes

    p = _parser("""Frozen-encoder classification probes with the paper's protocol: for every probe type a 5 × 5
lr × wd grid of heads trained at once on one frozen encoder pass per batch; the best grid point is reported.

    bootleg-probe --model runs/micro --dataset fashion-mnist --out results/micro
    bootleg-probe --model random:vit-micro --epochs 10 --out results/random-micro   # the random-init baseline

Writes probe_results.json / .md, the best head of each type (heads/<type>.safetensors) and classifier/, a
BootlegForImageClassification folder for the best probe that pipeline("image-classification") loads.""")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--weights", choices=("teacher", "student"), default="teacher",
                   help="which encoder of a pretraining checkpoint (default: the EMA teacher)")
    p.add_argument("--dataset", default="fashion-mnist", help=DATASET_HELP)
    p.add_argument("--test-split", default="test")
    p.add_argument("--probes", type=_names, default=list(PROBE_TYPES), help="comma list of patch, cls, xattn, xblk")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--warmup-epochs", type=int, default=None, help="default: 5, or epochs // 2 below 10 epochs")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--lrs", type=_floats, default=list(PROBE_GRID))
    p.add_argument("--wds", type=_floats, default=list(PROBE_GRID))
    p.add_argument("--num-workers", type=int, default=1)
    _add_run_options(p)
    a = p.parse_args(argv)
    _set_threads(a.threads)
    settings = ProbeSettings(probes=a.probes, epochs=a.epochs, batch_size=a.batch_size, limit_train=a.limit_train,
                             limit_test=a.limit_test, lrs=a.lrs, wds=a.wds, warmup_epochs=a.warmup_epochs,
                             test_split=a.test_split, weights=a.weights, seed=a.seed, num_workers=a.num_workers,
                             device=a.device)
    print(probe_markdown(run_probes(a.model, a.dataset, settings, out=a.out, overwrite=a.overwrite)))
    return 0


def segment_main(argv: Sequence[str] | None = None) -> int:
    from .evaluation.segmentation import (
        HEAD_LRS,
        KNN_KS,
        KNN_METRICS,
        SEGMENTATION_PROBES,
        SegmentationSettings,
        run_segmentation,
        segment_markdown,
    )

    p = _parser("""Frozen-encoder segmentation probes: kNN (CAPI-style), Lin and Blk (Segmenter, one block).

    bootleg-segment --model random:vit-micro --out results/random-micro      # the Fashion-MNIST mosaics
    bootleg-segment --model runs/micro/encoder --dataset my_seg_dataset --num-labels 150 --ignore-index 0,255 \\
        --image-size 224

--dataset mosaic (default) is the embedded 2×2 Fashion-MNIST mosaic task (56×56, labels 0 = background, 1..10);
otherwise a folder written by Dataset.save_to_disk or a Hub dataset with image and mask columns. Images are resized
to R×R with the model's image processor (R = --image-size, default the encoder's) and masks to R×R (nearest);
features are computed once. Writes segment_results.json / .md and segmenter/, a BootlegForSemanticSegmentation
folder for the best Lin/Blk head that pipeline("image-segmentation") loads.""")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--weights", choices=("teacher", "student"), default="teacher")
    p.add_argument("--dataset", default="mosaic", help="mosaic, a save_to_disk folder or a Hub dataset")
    p.add_argument("--test-split", default="test")
    p.add_argument("--image-column", default="image")
    p.add_argument("--mask-column", default="mask")
    p.add_argument("--probes", type=_names, default=list(SEGMENTATION_PROBES), help="comma list of knn, lin, blk")
    p.add_argument("--limit-train", type=int, default=1000)
    p.add_argument("--limit-test", type=int, default=250)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lrs", type=_floats, default=None, help=f"Lin/Blk learning rates (default: {HEAD_LRS})")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--ks", type=_ints, default=list(KNN_KS))
    p.add_argument("--metrics", type=_names, default=list(KNN_METRICS))
    p.add_argument("--ignore-index", type=_ints, default=[255], help="comma list of label values not scored")
    p.add_argument("--num-labels", type=int, default=None, help="default: max label in train + 1")
    p.add_argument("--labels", type=_names, default=None, help="comma list of class names (default: the values)")
    _add_run_options(p)
    a = p.parse_args(argv)
    _set_threads(a.threads)
    settings = SegmentationSettings(
        probes=a.probes, limit_train=a.limit_train, limit_test=a.limit_test, image_size=a.image_size,
        epochs=a.epochs, batch_size=a.batch_size, lrs=a.lrs, weight_decay=a.weight_decay, ks=a.ks,
        metrics=a.metrics, ignore_index=a.ignore_index, num_labels=a.num_labels, label_names=a.labels,
        test_split=a.test_split, image_column=a.image_column, mask_column=a.mask_column, weights=a.weights,
        seed=a.seed, device=a.device)
    print(segment_markdown(run_segmentation(a.model, a.dataset, settings, out=a.out, overwrite=a.overwrite)))
    return 0


def analyze_main(argv: Sequence[str] | None = None) -> int:
    from .evaluation.analysis import analyze, print_summary

    p = _parser("""Representational analysis of a Bootleg encoder: inter-layer Pearson and linear-CKA matrices,
correlation of every layer with the target layers, spatial autocorrelation per layer.

    bootleg-analyze --model runs/micro --dataset fashion-mnist --num-images 256 --out analysis/

Writes pearson.png, cka.png, targets.png, spatial.png and analysis.json. A pretraining checkpoint is analysed
through its teacher (--encoder student for the student); random:<preset> is the baseline to compare with.""")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--encoder", choices=("teacher", "student"), default="teacher",
                   help="which encoder of a pretraining checkpoint to analyse (default: teacher)")
    p.add_argument("--dataset", default="fashion-mnist", help=DATASET_HELP)
    p.add_argument("--split", default="test")
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-distance", type=float, default=None,
                   help="largest grid distance of the spatial autocorrelation (default: shorter side - 1)")
    p.add_argument("--pearson-normalize", choices=("token", "channel", "none"), default="token")
    p.add_argument("--remove-position-mean", action="store_true",
                   help="subtract each layer's per-position mean over the images first (content variation only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="analysis", help="output folder")
    _add_overwrite(p)
    a = p.parse_args(argv)
    if a.num_images < 2:
        p.error("--num-images must be at least 2")
    result = analyze(a.model, a.dataset, a.num_images, a.out, split=a.split, batch_size=a.batch_size,
                     max_distance=a.max_distance, pearson_normalize=a.pearson_normalize,
                     remove_position_mean=a.remove_position_mean, weights=a.encoder, device=a.device,
                     overwrite=a.overwrite)
    print_summary(result)
    print(f"wrote {', '.join(result['figures'])} and analysis.json to {a.out} in {result['wall_s']:.1f} s")
    return 0


def masks_main(argv: Sequence[str] | None = None) -> int:
    from .configuration_bootleg import MASK_MODES
    from .mask_statistics import write_mask_report
    from .masking import MaskGenerator

    p = _parser("""Inspect the masking samplers: seen/target rates, rectangle shapes, sample masks, heat-maps.

    bootleg-masks --grid 14 14 --batch-size 256 --batches 200 --out masks_out/ [--modes bootleg ijepa random]

Prints per mode the seen (context) and target rates (mean ± std over batches) and the rectangle shapes; writes
sample_masks.png, rate_maps.png (per-position context visibility and target rate) and mask_stats.json.""")
    p.add_argument("--grid", type=int, nargs=2, default=(14, 14), metavar=("GH", "GW"))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--modes", nargs="+", default=["bootleg", "ijepa"], choices=MASK_MODES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-images", type=int, default=4, help="sample images per mode in sample_masks.png")
    p.add_argument("--out", type=Path, default=Path("masks_out"))
    _add_overwrite(p)
    a = p.parse_args(argv)
    generators = {mode: MaskGenerator(tuple(a.grid), mode, seed=a.seed) for mode in a.modes}
    write_mask_report(generators, a.batch_size, a.batches, a.n_images, a.out, a.overwrite)
    return 0


def ablation_main(argv: Sequence[str] | None = None) -> int:
    from .evaluation.ablation import ALL_OBJECTIVES, DEFAULT_OBJECTIVES, AblationSettings, report_markdown, run_ablation
    from .evaluation.classification import PROBE_GRID

    p = _parser("""Objective ablation: one encoder per objective with the same architecture, data, budget,
schedules, masks and seeds, every teacher scored with the same frozen probes (see bootleg_hf.evaluation.ablation;
the commands of the runs made so far are in bench/README.md).

    bootleg-ablation --preset vit-micro --steps 500 --batch-size 128 --seeds 0,1,2 --include-random-init \\
        --set model.ema_start=0.99 --set model.ema_end=0.998 --out runs/ablation --report runs/ablation/report""")
    p.add_argument("--preset", default="vit-micro", help="model preset and default recipe name")
    p.add_argument("--recipe", default=None, help="recipe name or YAML (default: the preset's)")
    _add_set(p)
    p.add_argument("--objectives", type=_names, default=list(DEFAULT_OBJECTIVES),
                   help=f"comma list from {', '.join(ALL_OBJECTIVES)}")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=200, help="pretraining steps per run")
    p.add_argument("--batch-size", type=int, default=64, help="pretraining global batch")
    p.add_argument("--warmup-frac", type=float, default=0.15, help="LR warm-up as a fraction of the steps")
    p.add_argument("--dataset", default="fashion-mnist", help=DATASET_HELP)
    p.add_argument("--limit", type=int, default=None, help="pretrain on the first N images only")
    p.add_argument("--probes", type=_names, default=["patch", "xblk"])
    p.add_argument("--probe-epochs", type=int, default=3)
    p.add_argument("--probe-train", type=int, default=5000, help="probe training images (0: all)")
    p.add_argument("--probe-test", type=int, default=1000, help="probe test images (0: all)")
    p.add_argument("--probe-batch-size", type=int, default=256)
    p.add_argument("--probe-lrs", type=_floats, default=list(PROBE_GRID))
    p.add_argument("--probe-wds", type=_floats, default=list(PROBE_GRID))
    p.add_argument("--include-random-init", action="store_true", help="add the random-init encoder as a baseline")
    p.add_argument("--out", default="runs/ablation", help="working folder (runs, encoders)")
    p.add_argument("--report", default=None, help="report path without suffix (default: <out>/ablation)")
    p.add_argument("--num-workers", type=int, default=0, help="data-loader workers")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy 2-core machine)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep Trainer checkpoints of finished runs")
    p.add_argument("--analyze-images", type=int, default=0,
                   help="also analyse every encoder's representations on this many test images (0: no)")
    a = p.parse_args(argv)
    _set_threads(a.threads)
    settings = AblationSettings(
        preset=a.preset, recipe=a.recipe, overrides=a.overrides, objectives=a.objectives, seeds=a.seeds,
        steps=a.steps, batch_size=a.batch_size, warmup_frac=a.warmup_frac, dataset=a.dataset, pretrain_limit=a.limit,
        probes=a.probes, probe_epochs=a.probe_epochs, probe_train=a.probe_train or None,
        probe_test=a.probe_test or None, probe_batch_size=a.probe_batch_size, probe_lrs=a.probe_lrs,
        probe_wds=a.probe_wds, include_random_init=a.include_random_init, num_workers=a.num_workers,
        keep_checkpoints=a.keep_checkpoints, analyze_images=a.analyze_images)
    print(report_markdown(run_ablation(settings, a.out, a.report)))
    return 0


def demo_main(argv: Sequence[str] | None = None) -> int:
    from .demo import DemoSettings, run_demo

    p = _parser("""The main job (`make demo`): pretrain a small Bootleg encoder on the embedded Fashion-MNIST,
measure it with the paper's frozen probes against a random-init encoder of the same shape, publish both as Hub-ready
folders (dry run), reload them through transformers and plot what happened.

    bootleg-demo                                   # ~5 minutes on 2 CPU cores
    bootleg-demo --steps 1500 --probe-epochs 8     # a longer budget
    bootleg-demo --dataset /path/to/images         # your own images (class folders)""")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--preset", default="vit-micro", help="recipe (and model preset) name")
    p.add_argument("--dataset", default="fashion-mnist", help=DATASET_HELP)
    p.add_argument("--steps", type=int, default=700, help="pretraining steps")
    p.add_argument("--batch-size", type=int, default=128, help="pretraining global batch")
    _add_set(p)
    p.add_argument("--probes", type=_names, default=["patch", "cls", "xblk"])
    p.add_argument("--probe-epochs", type=int, default=3)
    p.add_argument("--probe-train", type=int, default=6000, help="images for probe training")
    p.add_argument("--probe-test", type=int, default=2000)
    p.add_argument("--seg-train", type=int, default=500, help="mosaic images for the segmentation probes")
    p.add_argument("--seg-test", type=int, default=200)
    p.add_argument("--seg-epochs", type=int, default=30)
    p.add_argument("--smoke", action="store_true", help="tiny budget everywhere (for the test suite)")
    p.add_argument("--seed", type=int, default=0)
    _add_overwrite(p)
    a = vars(p.parse_args(argv))
    smoke = a.pop("smoke")
    run_demo(DemoSettings.smoke(out=a["out"], preset=a["preset"], dataset=a["dataset"], overrides=a["overrides"],
                                seed=a["seed"], overwrite=a["overwrite"]) if smoke else DemoSettings(**a))
    return 0


# --------------------------------------------------------------------------------------------------------------------
# Conversion and publishing
# --------------------------------------------------------------------------------------------------------------------


def export_main(argv: Sequence[str] | None = None) -> int:
    from .checkpoints import export_pretrained
    from .configuration_bootleg import PROBE_TYPES, SEGMENTATION_HEADS

    p = _parser("""Export a Bootleg pretraining checkpoint (Trainer output folder or checkpoint-N) as a clean
inference folder.

    bootleg-export runs/micro/checkpoint-500 --out bootleg-micro                  # teacher encoder
    bootleg-export runs/micro --student --out bootleg-micro-student
    bootleg-export runs/micro --probe-head probes/xblk.safetensors --labels labels.json --out bootleg-micro-xblk
    bootleg-export runs/micro --segmentation-head seg/blk.safetensors --segmentation-type blk \\
        --labels background item --out bootleg-micro-seg

The output holds config.json, model.safetensors and the image processor config: no student/predictor weights,
optimizer state or other pickles. The source may also be an encoder folder (e.g. a converted I-JEPA checkpoint) to
attach a head to. --labels takes class names, or one JSON (list or id2label) or text file (one name per line).""")
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
    _add_overwrite(p)
    a = p.parse_args(argv)
    if (a.probe_head or a.segmentation_head) and not a.labels:
        p.error("a head needs --labels")
    labels = a.labels[0] if a.labels and len(a.labels) == 1 and Path(a.labels[0]).is_file() else a.labels
    try:
        out = export_pretrained(a.checkpoint, a.out, student=a.student, probe_head=a.probe_head,
                                probe_type=a.probe_type, segmentation_head=a.segmentation_head,
                                segmentation_type=a.segmentation_type, labels=labels, overwrite=a.overwrite)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    what = "classification model" if a.probe_head else "segmentation model" if a.segmentation_head else "encoder"
    print(f"wrote {what} ({'student' if a.student else 'teacher'} weights) to {out.resolve()}")
    return 0


def publish_main(argv: Sequence[str] | None = None) -> int:
    from .publishing import PublishError, RemoteCodeError, build_hub_folder, upload

    p = _parser("""Build a Hub folder from a Bootleg encoder / classification / segmentation folder and upload it.

    bootleg-publish runs/micro/encoder --repo-id me/bootleg-vit-micro --probe-results probe_results.json \\
        --recipe vit-micro --dataset zalando-datasets/fashion_mnist [--private] [--revision v1]
    bootleg-publish ijepa-vith14 --repo-id me/ijepa-vith14-bootleg --license cc-by-nc-4.0 \\
        --base-model facebook/ijepa_vith14_1k --converted --dry-run

The folder (default <source>-hub) gets config.json with auto_map for every Auto class, the modeling code those need
(so trust_remote_code=True works without bootleg-hf), safetensors weights only, the processor config and a README.md
model card (YAML metadata with model-index from the probe results). --dry-run stops after writing the folder. The
token comes from --token, HF_TOKEN or `hf auth login`. Exit status 0 only when the commit holds every file.""")
    p.add_argument("source", help="folder from save_pretrained (BootlegModel / …ForImageClassification / "
                                  "…ForSemanticSegmentation)")
    p.add_argument("--repo-id", required=True, help="namespace/name on the Hub")
    p.add_argument("--out", help="Hub folder to write (default: <source>-hub)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--dry-run", action="store_true", help="write the folder, do not upload")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", help="branch to commit to (created from main if missing)")
    p.add_argument("--commit-message")
    p.add_argument("--license", default="apache-2.0", help="e.g. cc-by-nc-4.0 for weights converted from Meta's")
    p.add_argument("--dataset", action="append", default=[], help="Hub id of a training dataset (repeatable)")
    p.add_argument("--probe-results", action="append", default=[],
                   help="probe results JSON: bootleg-probe's or see bootleg_hf.publishing.probe_rows (repeatable)")
    p.add_argument("--recipe", help="training recipe (a shipped name or a YAML file) to quote in the card")
    p.add_argument("--base-model", help="Hub id of the model these weights come from")
    p.add_argument("--converted", action="store_true",
                   help="the weights are --base-model's converted to Bootleg classes (e.g. I-JEPA), not trained with "
                        "Bootleg")
    p.add_argument("--model-name", help="card title and model-index name (default: the repo name)")
    a = p.parse_args(argv)

    out = Path(a.out or str(Path(a.source).resolve()) + "-hub")
    try:
        from .recipes import recipe_path

        probe_results = [json.loads(Path(path).read_text()) for path in a.probe_results]
        recipe_text = recipe_path(a.recipe).read_text() if a.recipe else None
        folder = build_hub_folder(a.source, out, a.repo_id, overwrite=a.overwrite, license=a.license,
                                  datasets=a.dataset, probe_results=probe_results, recipe_text=recipe_text,
                                  base_model=a.base_model, converted=a.converted, model_name=a.model_name)
        print(f"wrote {folder}: {', '.join(sorted(q.name for q in folder.iterdir()))}")
        if a.dry_run:
            print("dry run: nothing uploaded")
            return 0
        commit = upload(folder, a.repo_id, token=a.token, private=a.private, revision=a.revision,
                        commit_message=a.commit_message)
    except (PublishError, RemoteCodeError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"published {a.repo_id} at {commit.oid} ({commit.commit_url})")
    return 0


def convert_timm_main(argv: Sequence[str] | None = None) -> int:
    from .conversion import bootleg_to_timm, timm_model_to_bootleg

    p = _parser("""Convert a timm VisionTransformer (class token, R registers, no_embed_class=True, sin-cos pos_embed)
to a Bootleg encoder folder, or a Bootleg folder back to a timm state dict.

    bootleg-convert-timm --timm-arch vit_small_patch16_224 --reg-tokens 4 [--checkpoint w.safetensors|.pth] \\
        --out bootleg-vit-small
    bootleg-convert-timm --reverse --bootleg bootleg-vit-small --out timm.safetensors

Without --checkpoint the timm model keeps its random init with Bootleg's sin-cos table (for parity checks). .pth files
are read with torch.load(weights_only=True) only.""")
    p.add_argument("--timm-arch", default="vit_small_patch16_224")
    p.add_argument("--reg-tokens", type=int, default=4)
    p.add_argument("--checkpoint", help="timm weights (.safetensors or .pth)")
    p.add_argument("--reverse", action="store_true", help="Bootleg folder → timm safetensors")
    p.add_argument("--bootleg", help="Bootleg encoder folder (with --reverse)")
    p.add_argument("--out", required=True)
    _add_overwrite(p)
    a = p.parse_args(argv)
    if a.reverse:
        if not a.bootleg:
            p.error("--reverse needs --bootleg FOLDER")
        from safetensors.torch import save_file

        from .modeling_bootleg import BootlegModel

        model = BootlegModel.from_pretrained(a.bootleg)
        state = bootleg_to_timm(model.state_dict(), model.config)
        save_file({k: v.contiguous() for k, v in state.items()}, a.out)
    else:
        from .checkpoints import save_model_folder

        save_model_folder(timm_model_to_bootleg(a.timm_arch, a.reg_tokens, a.checkpoint), a.out,
                          overwrite=a.overwrite)
    print(f"wrote {Path(a.out).resolve()}")
    return 0


def convert_ijepa_main(argv: Sequence[str] | None = None) -> int:
    from .checkpoints import save_model_folder
    from .conversion import ijepa_to_bootleg

    p = _parser("""Convert an official I-JEPA checkpoint (.pth.tar) into a Bootleg folder.

    bootleg-convert-ijepa --checkpoint IN1K-vit.h.14-300e.pth.tar --out ijepa-vith14
    bootleg-convert-ijepa --checkpoint ... --with-predictor --out ijepa-vith14-pretraining

Default: the EMA target_encoder as a BootlegModel without CLS or registers (pooler_output = mean patch token);
--student takes encoder instead. --with-predictor writes a BootlegForPretraining (student = encoder, teacher =
target_encoder, I-JEPA's predictor with no predictor registers and targets="final") to continue training. The
checkpoint is read with torch.load(weights_only=True) only; every key is checked strictly. I-JEPA ViT-H/14 and
ViT-g/16 use 16 heads (inferred for the official widths; --num-heads otherwise). Meta released the I-JEPA weights
under CC-BY-NC 4.0: publish conversions with --license cc-by-nc-4.0.""")
    p.add_argument("--checkpoint", required=True, help="I-JEPA .pth.tar (dict with encoder/target_encoder/predictor)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--student", action="store_true", help="convert 'encoder' instead of the EMA 'target_encoder'")
    p.add_argument("--with-predictor", action="store_true", help="write a BootlegForPretraining with the predictor")
    p.add_argument("--num-heads", type=int, help="encoder heads (inferred for the official I-JEPA widths)")
    p.add_argument("--predictor-num-heads", type=int, help="predictor heads (default: the encoder's, as in I-JEPA)")
    p.add_argument("--image-size", type=int, nargs="+", help="H [W]; default: square grid from pos_embed × patch")
    _add_overwrite(p)
    a = p.parse_args(argv)
    if a.student and a.with_predictor:
        p.error("--with-predictor keeps both encoders (student and teacher); --student applies to encoder-only output")
    image_size = None if a.image_size is None else (a.image_size[0] if len(a.image_size) == 1 else a.image_size[:2])
    model, notes = ijepa_to_bootleg(a.checkpoint, student=a.student, with_predictor=a.with_predictor,
                                    num_heads=a.num_heads, predictor_num_heads=a.predictor_num_heads,
                                    image_size=image_size)
    save_model_folder(model, a.out, overwrite=a.overwrite)
    for note in notes:
        print(f"note: {note}")
    c = model.config
    print(f"wrote {type(model).__name__} (width {c.hidden_size}, depth {c.num_hidden_layers}, heads "
          f"{c.num_attention_heads}, patch {c.patch_size}, image {c.image_size}) to {Path(a.out).resolve()}")
    return 0
