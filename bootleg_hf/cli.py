"""Command-line entry points: argument parsing and one library call each.

Installed as console scripts (`bootleg-pretrain`, `bootleg-finetune`, `bootleg-probe`, `bootleg-segment`,
`bootleg-analyze`, `bootleg-masks`, `bootleg-ablation`, `bootleg-demo`, `bootleg-export`, `bootleg-publish`,
`bootleg-release`, `bootleg-ladders`, `bootleg-convert-timm`, `bootleg-convert-ijepa`); the files in `training/` and
`conversion/` of a clone run the same functions. Every function takes `argv` (default: the command line) and returns
the process exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .precision import PRECISIONS

DATASET_HELP = ("'fashion-mnist' (embedded), an image folder (<class>/*.png), inat21:<folder> (an iNat21-style "
                "<folder>/{train,train_mini,val}/<class>/*.jpg; split test = val) or a Hub dataset name")
SEGMENTATION_DATASET_HELP = ("mosaic, a save_to_disk folder or a Hub dataset with image and mask columns, "
                             "ade20k:<ADEChallengeData2016 folder or Hub name> or cityscapes:<folder>")
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


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="the frozen encoder's precision: auto = bf16 autocast where bf16 matmuls are native (CUDA, "
                        "AMX / AVX-512 BF16 CPUs), else fp32")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options every evaluation command shares: threads, seed, device, precision, output folder."""
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    _add_precision(p)
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
    p.add_argument("--init-from", help="continue pretraining an encoder (folder, Hub id, e.g. a converted I-JEPA "
                                       "checkpoint): its weights and architecture, the recipe's objective")
    a = p.parse_args(argv)
    trainer = run_pretraining(PretrainSettings(
        recipe=a.recipe, overrides=a.overrides, dataset=a.dataset, split=a.split, limit=a.limit,
        output_dir=a.output_dir, max_steps=a.max_steps, batch_size=a.batch_size, num_workers=a.num_workers,
        on_corrupt=a.on_corrupt, resume=a.resume, overwrite=a.overwrite, seed=a.seed, init_from=a.init_from),
        schedule_on_resume="new" if a.new_schedule else None)
    if trainer.is_world_process_zero():
        print(f"saved {a.output_dir} (BootlegForPretraining) and {a.output_dir}/encoder (teacher encoder)")
    return 0


def finetune_main(argv: Sequence[str] | None = None) -> int:
    from .finetuning import FinetuneSettings, available_finetune_recipes, load_finetune_recipe, run_finetune

    p = _parser("""Fine-tune a Bootleg encoder end to end with the Trainer (full, low-shot, LoRA or dense protocol).

    bootleg-finetune --recipe vit-micro-full --model runs/micro/encoder --output-dir runs/ft
    bootleg-finetune --recipe training/recipes/finetune/vit-micro-lora.yaml --model random:vit-micro ...
    bootleg-finetune --recipe vit-micro-upernet --model runs/micro/encoder --dataset mosaic ...

Writes <output-dir>/model (the fine-tuned model and its image processor, for pipeline(...); LoRA merged), Trainer
checkpoints, finetune_results.json / .md, recipe.yaml, and low_shot_split.json (lowshot) or adapter/ (lora). A
non-empty output folder is refused unless --overwrite (or --resume) is given.""")
    p.add_argument("--recipe", required=True, help=f"a YAML file or one of the shipped fine-tuning recipes "
                                                   f"{available_finetune_recipes()}")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--weights", choices=("teacher", "student"), default="teacher",
                   help="which encoder of a pretraining checkpoint")
    p.add_argument("--dataset", default=None, help=f"classification: {DATASET_HELP} (default fashion-mnist); dense: "
                                                   f"{SEGMENTATION_DATASET_HELP} (default mosaic)")
    p.add_argument("--test-split", default="test")
    p.add_argument("--output-dir", required=True)
    _add_set(p)
    p.add_argument("--limit", type=_positive, help="training images (a seeded subset, before a low-shot split)")
    p.add_argument("--eval-limit", type=_positive, help="test images (a seeded subset)")
    p.add_argument("--low-shot-split", help="reuse the low_shot_split.json of an earlier run")
    p.add_argument("--max-steps", type=_positive, help="training steps (overrides the recipe's epochs)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    run = p.add_mutually_exclusive_group()
    run.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    run.add_argument("--overwrite", action="store_true", help="replace what --output-dir holds")
    a = p.parse_args(argv)
    recipe = load_finetune_recipe(a.recipe, a.overrides)
    dataset = a.dataset or ("mosaic" if recipe.task == "segmentation" else "fashion-mnist")
    results = run_finetune(recipe, FinetuneSettings(
        model=a.model, output_dir=a.output_dir, dataset=dataset, weights=a.weights, limit=a.limit,
        eval_limit=a.eval_limit, test_split=a.test_split, low_shot_split=a.low_shot_split, max_steps=a.max_steps,
        seed=a.seed, num_workers=a.num_workers, resume=a.resume, overwrite=a.overwrite))
    best = next(iter(results["probes"].values()))["best"]
    key = "top1" if recipe.task == "classification" else "miou"
    print(f"{results['protocol']}: {key} {best['initial_' + key]:.2f} before, {best[key]:.2f} after "
          f"{best['steps']} steps; saved {a.output_dir}/model")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------------


def probe_main(argv: Sequence[str] | None = None) -> int:
    from .configuration_bootleg import PROBE_TYPES
    from .evaluation.classification import PROBE_GRID, PROBE_PROTOCOLS, ProbeSettings, probe_markdown, run_probes

    p = _parser("""Frozen-encoder classification probes with the paper's protocol: for every probe type a 5 × 5
lr × wd grid of heads trained at once on one frozen encoder pass per batch; the best grid point is reported. Also
the standard quick metrics (weighted kNN top-1, k = 20, and a converged L-BFGS linear classifier on cached features)
of the encoder and of two reference lines: raw pixels and a random-init encoder of the same architecture.

    bootleg-probe --model runs/micro --dataset fashion-mnist --out results/micro
    bootleg-probe --model runs/micro --protocol paper --out results/micro-paper   # 20 epochs at batch 1024
    bootleg-probe --model random:vit-micro --epochs 10 --out results/random-micro   # the random-init baseline
    bootleg-probe --model runs/s/encoder --dataset inat21:/data/inat21 --out results/s-inat21

Protocols: paper (the appendix: 20 epochs, batch 1024) and quick (CPU-sized: 10 epochs, batch 256; reports say
"quick protocol"); --epochs / --batch-size override either, and the report names the change. LR rule: the grid's
learning rates are for batch 1024; a run at batch B uses lr × B / 1024.

Writes probe_results.json (format bootleg-results/1: best point and grid per probe, which bootleg-publish reads) /
.md, the best head of each type (heads/<type>.safetensors, which bootleg-export --probe-head attaches) and
classifier/, a BootlegForImageClassification folder for the best probe that pipeline("image-classification")
loads.""")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--weights", choices=("teacher", "student"), default="teacher",
                   help="which encoder of a pretraining checkpoint (default: the EMA teacher)")
    p.add_argument("--dataset", default="fashion-mnist", help=DATASET_HELP)
    p.add_argument("--test-split", default="test")
    p.add_argument("--probes", type=_names, default=list(PROBE_TYPES), help="comma list of patch, cls, xattn, xblk")
    p.add_argument("--protocol", choices=tuple(PROBE_PROTOCOLS), default="quick",
                   help="probe budget: " + "; ".join(f"{name}: {v['epochs']} epochs at batch {v['batch_size']}"
                                                     for name, v in PROBE_PROTOCOLS.items()))
    p.add_argument("--epochs", type=_positive, default=None, help="default: the protocol's")
    p.add_argument("--warmup-epochs", type=int, default=None, help="default: 5, or epochs // 2 below 10 epochs")
    p.add_argument("--batch-size", type=_positive, default=None,
                   help="default: the protocol's; learning rates are scaled by batch / 1024")
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--lrs", type=_floats, default=list(PROBE_GRID))
    p.add_argument("--wds", type=_floats, default=list(PROBE_GRID))
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--no-quick-metrics", dest="quick_metrics", action="store_false",
                   help="skip the kNN / linear quick metrics and their reference lines (they hold the features of "
                        "both splits in memory)")
    _add_run_options(p)
    a = p.parse_args(argv)
    _set_threads(a.threads)
    settings = ProbeSettings(probes=a.probes, protocol=a.protocol, epochs=a.epochs, batch_size=a.batch_size,
                             limit_train=a.limit_train, limit_test=a.limit_test, lrs=a.lrs, wds=a.wds,
                             warmup_epochs=a.warmup_epochs, test_split=a.test_split, weights=a.weights, seed=a.seed,
                             num_workers=a.num_workers, device=a.device, precision=a.precision,
                             quick_metrics=a.quick_metrics)
    print(probe_markdown(run_probes(a.model, a.dataset, settings, out=a.out, overwrite=a.overwrite)))
    return 0


def segment_main(argv: Sequence[str] | None = None) -> int:
    from .evaluation.segmentation import (
        KNN_KS,
        KNN_METRICS,
        SEGMENTATION_PROBES,
        SEGMENTATION_PROTOCOLS,
        SegmentationSettings,
        run_segmentation,
        segment_markdown,
    )

    p = _parser("""Frozen-encoder segmentation probes: kNN (CAPI-style), Lin and Blk (Segmenter mask transformers
with 0 and 1 block).

    bootleg-segment --model random:vit-micro --out results/random-micro      # the Fashion-MNIST mosaics
    bootleg-segment --model runs/micro/encoder --dataset my_seg_dataset --num-labels 150 --ignore-index 0,255 \\
        --image-size 224
    bootleg-segment --model runs/s/encoder --dataset ade20k:/data/ADEChallengeData2016 --image-size 224
    bootleg-segment --model runs/s/encoder --dataset ade20k:/data/ADEChallengeData2016 --image-size 224 \\
        --protocol paper --probes lin,blk --limit-train 30000 --limit-test 2000   # the appendix's, on a GPU

--dataset mosaic (default) is the embedded 2×2 Fashion-MNIST mosaic task (56×56, labels 0 = background, 1..10);
otherwise a folder written by Dataset.save_to_disk or a Hub dataset with image and mask columns, or one of the
paper's data sets in its official layout, which supplies its classes and ignore label 255:
ade20k:<ADEChallengeData2016 folder or Hub name with image + annotation columns> (150 classes, 0 = other ignored)
or cityscapes:<folder with leftImg8bit/ and gtFine/> (the 19 train ids); --test-split test means their validation
split. Images are resized to R×R with the model's image processor (R = --image-size, default the encoder's) and
masks to R×R (nearest). Lin/Blk training: --protocol quick (default, CPU-sized: the features of these images,
computed once, 40 epochs at batch 64, 3 learning rates per head) or paper (the appendix's: augmented training
images — RandScale 0.5-2, crop/pad, flip, colour jitter, cutout — through the frozen encoder every step, 128 epochs
at batch 64, 5 warm-up epochs, 6 learning rates per head, weight decay 1e-4 Lin / 0.05 Blk; GPU-sized); --epochs,
--batch-size, --lrs, --weight-decay override the protocol's values, and the report names the protocol and the
values used. Writes segment_results.json (format bootleg-results/1, which
bootleg-publish reads) / .md, the best Lin and Blk heads (heads/<kind>.safetensors, which bootleg-export
--segmentation-head attaches) and segmenter/, a BootlegForSemanticSegmentation folder for the best of them that
pipeline("image-segmentation") loads.""")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--weights", choices=("teacher", "student"), default="teacher")
    p.add_argument("--dataset", default="mosaic", help=SEGMENTATION_DATASET_HELP)
    p.add_argument("--test-split", default="test")
    p.add_argument("--image-column", default="image")
    p.add_argument("--mask-column", default="mask")
    p.add_argument("--probes", type=_names, default=list(SEGMENTATION_PROBES), help="comma list of knn, lin, blk")
    p.add_argument("--protocol", choices=list(SEGMENTATION_PROTOCOLS), default="quick",
                   help="how Lin/Blk train (default: quick)")
    p.add_argument("--limit-train", type=int, default=1000)
    p.add_argument("--limit-test", type=int, default=250)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="default: the protocol's")
    p.add_argument("--batch-size", type=int, default=None, help="default: the protocol's")
    p.add_argument("--lrs", type=_floats, default=None,
                   help="Lin/Blk learning rates (default: the protocol's, per head: "
                        + "; ".join(f"{name} {dict(p.lrs)}" for name, p in SEGMENTATION_PROTOCOLS.items()) + ")")
    p.add_argument("--weight-decay", type=float, default=None, help="default: the protocol's, per head")
    p.add_argument("--num-workers", type=int, default=1, help="data-loader workers (--protocol paper)")
    p.add_argument("--ks", type=_ints, default=list(KNN_KS))
    p.add_argument("--metrics", type=_names, default=list(KNN_METRICS))
    p.add_argument("--ignore-index", type=_ints, default=[255], help="comma list of label values not scored")
    p.add_argument("--num-labels", type=int, default=None,
                   help="default: the paper data set's (ade20k 150, cityscapes 19), else max label in train + 1")
    p.add_argument("--labels", type=_names, default=None,
                   help="comma list of class names (default: the paper data set's, else the values)")
    _add_run_options(p)
    a = p.parse_args(argv)
    _set_threads(a.threads)
    settings = SegmentationSettings(
        probes=a.probes, protocol=a.protocol, limit_train=a.limit_train, limit_test=a.limit_test,
        image_size=a.image_size, epochs=a.epochs, batch_size=a.batch_size, lrs=a.lrs, weight_decay=a.weight_decay,
        ks=a.ks, metrics=a.metrics, ignore_index=a.ignore_index, num_labels=a.num_labels, label_names=a.labels,
        test_split=a.test_split, image_column=a.image_column, mask_column=a.mask_column, weights=a.weights,
        seed=a.seed, device=a.device, num_workers=a.num_workers, precision=a.precision)
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
    _add_precision(p)
    p.add_argument("--out", default="analysis", help="output folder")
    _add_overwrite(p)
    a = p.parse_args(argv)
    if a.num_images < 2:
        p.error("--num-images must be at least 2")
    result = analyze(a.model, a.dataset, a.num_images, a.out, split=a.split, batch_size=a.batch_size,
                     max_distance=a.max_distance, pearson_normalize=a.pearson_normalize,
                     remove_position_mean=a.remove_position_mean, weights=a.encoder, device=a.device,
                     overwrite=a.overwrite, precision=a.precision)
    print_summary(result)
    print(f"wrote {', '.join(result['figures'])} and analysis.json to {a.out} in {result['wall_s']:.1f} s")
    return 0


def ladders_main(argv: Sequence[str] | None = None) -> int:
    from .recipes import LADDERS, ladder_commands

    p = _parser("""The paper's Table 3 as commands: each system from its own settings to Bootleg with its decoder, one
change per row (bootleg_hf/recipes/ladders/table3.yaml).

    bootleg-ladders --dataset /data/imagenet/train""")
    p.add_argument("--dataset", default='"$IMAGENET_TRAIN"', help="the --dataset of every command")
    p.add_argument("--ladders", default=str(LADDERS), help="a ladder file in the same format")
    a = p.parse_args(argv)
    print(ladder_commands(a.ladders, a.dataset), end="")
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
    p.add_argument("--seg-probes", type=_names, default=[],
                   help="segmentation probes on the Fashion-MNIST mosaics, comma list from knn, lin, blk (default: "
                        "none)")
    p.add_argument("--seg-train", type=int, default=1000, help="train mosaics per seed")
    p.add_argument("--seg-test", type=int, default=250, help="test mosaics per seed")
    p.add_argument("--seg-epochs", type=int, default=None, help="Lin / Blk epochs (default: the quick protocol's)")
    a = p.parse_args(argv)
    _set_threads(a.threads)
    settings = AblationSettings(
        preset=a.preset, recipe=a.recipe, overrides=a.overrides, objectives=a.objectives, seeds=a.seeds,
        steps=a.steps, batch_size=a.batch_size, warmup_frac=a.warmup_frac, dataset=a.dataset, pretrain_limit=a.limit,
        probes=a.probes, probe_epochs=a.probe_epochs, probe_train=a.probe_train or None,
        probe_test=a.probe_test or None, probe_batch_size=a.probe_batch_size, probe_lrs=a.probe_lrs,
        probe_wds=a.probe_wds, include_random_init=a.include_random_init, num_workers=a.num_workers,
        keep_checkpoints=a.keep_checkpoints, analyze_images=a.analyze_images, seg_probes=a.seg_probes,
        seg_train=a.seg_train, seg_test=a.seg_test, seg_epochs=a.seg_epochs)
    print(report_markdown(run_ablation(settings, a.out, a.report)))
    return 0


def demo_main(argv: Sequence[str] | None = None) -> int:
    from .demo import DemoSettings, run_demo

    p = _parser("""The main job (`make demo`): pretrain a small Bootleg encoder on the embedded Fashion-MNIST,
measure it with the paper's frozen probes against a random-init encoder of the same shape, publish both as Hub-ready
folders (dry run), reload them through transformers and plot what happened.

    bootleg-demo                                   # ~5 minutes on 2 CPU cores (1200 bf16 steps)
    bootleg-demo --steps 3000 --probe-epochs 8     # a longer budget
    bootleg-demo --dataset /path/to/images         # your own images (class folders)""")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--preset", default="vit-micro", help="recipe (and model preset) name")
    p.add_argument("--dataset", default="fashion-mnist", help=DATASET_HELP)
    p.add_argument("--steps", type=int, default=DemoSettings.steps, help="pretraining steps")
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
    bootleg-export runs/micro --probe-head probes/heads/xblk.safetensors --out bootleg-micro-xblk
    bootleg-export runs/micro --segmentation-head seg/heads/blk.safetensors --out bootleg-micro-seg
    bootleg-export runs/micro --probe-head my_head.safetensors --probe-type cls --labels labels.json --out x

The output holds config.json, model.safetensors and the image processor config: no student/predictor weights,
optimizer state or other pickles. The source may also be an encoder folder (e.g. a converted I-JEPA checkpoint) to
attach a head to. The head files of bootleg-probe and bootleg-segment (their heads/ folders) record the head's type,
class names and (segmentation) input size, so the exported model gives the logits the head was scored with; for other
head files pass --probe-type / --segmentation-type and --labels (class names, or one JSON (list or id2label) or text
file with one name per line).""")
    p.add_argument("checkpoint", help="BootlegForPretraining folder (save_pretrained / Trainer checkpoint)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--student", action="store_true", help="export the student instead of the EMA teacher")
    heads = p.add_mutually_exclusive_group()
    heads.add_argument("--probe-head", help="trained probe head (safetensors) → BootlegForImageClassification")
    heads.add_argument("--segmentation-head", help="trained segmentation head (safetensors) → "
                                                   "BootlegForSemanticSegmentation")
    p.add_argument("--probe-type", choices=PROBE_TYPES,
                   help="type of --probe-head (default: the head file's metadata, else the config's)")
    p.add_argument("--segmentation-type", choices=SEGMENTATION_HEADS,
                   help="type of --segmentation-head (default: the head file's metadata, else the config's)")
    p.add_argument("--labels", nargs="+",
                   help="class names, or one .json / .txt file with them (default: the head file's metadata)")
    _add_overwrite(p)
    a = p.parse_args(argv)
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
    from .publishing import PublishError, RemoteCodeError, build_hub_folder, load_results, training_facts, upload

    p = _parser("""Build a Hub folder from a Bootleg encoder / classification / segmentation folder and upload it.

    bootleg-publish runs/micro/encoder --repo-id me/bootleg-vit-micro --probe-results probe_results.json \\
        --probe-results segment_results.json --recipe vit-micro --dataset zalando-datasets/fashion_mnist \\
        --training-run runs/micro [--private] [--revision v1]
    bootleg-publish ijepa-vith14 --repo-id me/ijepa-vith14-bootleg --license cc-by-nc-4.0 \\
        --base-model facebook/ijepa_vith14_1k --converted --dry-run

The folder (default <source>-hub) gets config.json with auto_map for every Auto class, the modeling code those need
(so trust_remote_code=True works without bootleg-hf), safetensors weights only, the processor config and a README.md
model card (YAML metadata with model-index from the probe results; with --training-run, the run's steps, batch,
images seen and loss end points). --dry-run stops after writing the folder. The token comes from --token, HF_TOKEN or
`hf auth login`. Exit status 0 only when the commit holds every file. Unreadable results or run folders are refused
before anything is written.""")
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
                   help="results JSON of bootleg-probe or bootleg-segment (format bootleg-results/1, see "
                        "bootleg_hf.publishing.read_results; repeatable)")
    p.add_argument("--training-run", help="the pretraining run folder, whose trainer state gives the card's training "
                                          "facts (with --recipe and the first --dataset)")
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

        probe_results = [load_results(path) for path in a.probe_results]  # checked before anything is written
        recipe_text = recipe_path(a.recipe).read_text() if a.recipe else None
        training = training_facts(a.training_run, a.recipe, dataset=(a.dataset or [None])[0]) \
            if a.training_run else None
        folder = build_hub_folder(a.source, out, a.repo_id, overwrite=a.overwrite, license=a.license,
                                  datasets=a.dataset, probe_results=probe_results, recipe_text=recipe_text,
                                  base_model=a.base_model, converted=a.converted, model_name=a.model_name,
                                  training=training)
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


def release_main(argv: Sequence[str] | None = None) -> int:
    from .configuration_bootleg import PROBE_TYPES
    from .evaluation.classification import PROBE_GRID, PROBE_PROTOCOLS, ProbeSettings
    from .evaluation.segmentation import KNN_KS, SEGMENTATION_PROBES, SEGMENTATION_PROTOCOLS, SegmentationSettings
    from .pretraining import OutputDirError, PretrainSettings
    from .publishing import PublishError, RemoteCodeError, ResultsError
    from .recipes import RecipeError
    from .release import ReleaseError, ReleaseSettings, run_release, upload_release

    p = _parser("""Release a Bootleg checkpoint: pretrain from a recipe (or --resume the run), run the classification
and segmentation probes on the teacher, export the encoder, the best classifier and the best segmenter, build their
Hub folders (model cards with the measured numbers and the run's training facts) and publish them.

    bootleg-release --recipe vit-micro --max-steps 200 --repo-id me/bootleg-micro --out runs/release   # dry run
    bootleg-release --out runs/release --upload-only          # then upload what the dry run built
    bootleg-release ... --repo-id me/bootleg-micro --push     # all in one go

A dry run (the default) builds everything and prints what would be uploaded where; --push uploads (token from
--token, HF_TOKEN or `hf auth login`, checked before training starts). Repos: the encoder to --repo-id org/name, the
classifier to org/name-<probe data>-cls and the segmenter to org/name-<segmentation data>-seg (e.g.
org/bootleg-vitb16-imagenet-1k-cls) unless --classifier-repo-id / --segmenter-repo-id say otherwise.

--out gets pretrain/ (the run), probes/, segmentation/, models/ (exported folders), hub/ (Hub folders), results.json
and release.json. A non-empty --out is refused unless --overwrite (replaces what a release writes) or --resume
(continues the run in <out>/pretrain; with --overwrite the probes, exports and Hub folders are redone). Under
torchrun every process pretrains, then the first one alone measures and publishes. Probe and segmentation sizes of 0
mean the whole split.""")
    p.add_argument("--repo-id", help="Hub repo of the encoder, namespace/name (required unless --upload-only)")
    p.add_argument("--out", default="release", help="release folder")
    run = p.add_argument_group("pretraining (see bootleg-pretrain)")
    run.add_argument("--recipe", default="vit-micro", help="a shipped recipe name or a YAML file")
    run.add_argument("--dataset", default="fashion-mnist", help=DATASET_HELP)
    run.add_argument("--split", default="train")
    _add_set(run)
    run.add_argument("--max-steps", type=_positive, help="training steps (overrides the recipe's epochs)")
    run.add_argument("--batch-size", type=_positive, help="global batch size (overrides the recipe)")
    run.add_argument("--limit", type=_positive, help="pretrain on the first N images only")
    run.add_argument("--num-workers", type=int, default=0, help="data-loader workers (pretraining and probes)")
    run.add_argument("--resume", action="store_true", help="continue the run in <out>/pretrain")
    run.add_argument("--weights", choices=("teacher", "student"), default="teacher",
                     help="the encoder that is measured and released (default: the EMA teacher)")
    run.add_argument("--seed", type=int, default=0)
    cls = p.add_argument_group("classification probes (see bootleg-probe)")
    cls.add_argument("--probes", type=_names, default=list(PROBE_TYPES), help="comma list of patch, cls, xattn, xblk")
    cls.add_argument("--probe-dataset", help="default: --dataset")
    cls.add_argument("--probe-test-split", default="test", help="e.g. validation for ImageNet-1k")
    cls.add_argument("--probe-protocol", choices=tuple(PROBE_PROTOCOLS), default="quick",
                     help="paper: 20 epochs at batch 1024; quick: 10 epochs at batch 256")
    cls.add_argument("--probe-epochs", type=_positive, default=None, help="default: the protocol's")
    cls.add_argument("--probe-batch-size", type=_positive, default=None,
                     help="default: the protocol's; learning rates are scaled by batch / 1024")
    cls.add_argument("--probe-train", type=int, default=0, help="training images (0: all)")
    cls.add_argument("--probe-test", type=int, default=0, help="test images (0: all)")
    cls.add_argument("--probe-lrs", type=_floats, default=list(PROBE_GRID))
    cls.add_argument("--probe-wds", type=_floats, default=list(PROBE_GRID))
    seg = p.add_argument_group("segmentation probes (see bootleg-segment)")
    seg.add_argument("--seg-probes", type=_names, default=list(SEGMENTATION_PROBES),
                     help="comma list of knn, lin, blk; 'none' skips segmentation and the segmenter")
    seg.add_argument("--seg-dataset", default="mosaic", help="mosaic, a save_to_disk folder or a Hub dataset")
    seg.add_argument("--seg-test-split", default="test")
    seg.add_argument("--seg-image-column", default="image")
    seg.add_argument("--seg-mask-column", default="mask")
    seg.add_argument("--seg-train", type=int, default=1000, help="training images (0: all)")
    seg.add_argument("--seg-test", type=int, default=250, help="test images (0: all)")
    seg.add_argument("--seg-protocol", choices=list(SEGMENTATION_PROTOCOLS), default="quick",
                     help="how Lin/Blk train: quick (CPU-sized, cached features) or paper (the appendix's)")
    seg.add_argument("--seg-epochs", type=_positive, default=None, help="default: the protocol's")
    seg.add_argument("--seg-lrs", type=_floats, default=None,
                     help="Lin/Blk learning rates (default: the protocol's, per head)")
    seg.add_argument("--seg-ks", type=_ints, default=list(KNN_KS))
    seg.add_argument("--seg-image-size", type=int, default=None, help="default: the encoder's")
    seg.add_argument("--seg-num-labels", type=int, default=None, help="default: max label in train + 1")
    seg.add_argument("--seg-ignore-index", type=_ints, default=[255], help="comma list of label values not scored")
    hub = p.add_argument_group("Hub")
    hub.add_argument("--classifier-repo-id", help="default: <repo-id>-<probe data>-cls")
    hub.add_argument("--segmenter-repo-id", help="default: <repo-id>-<segmentation data>-seg")
    hub.add_argument("--license", default="apache-2.0")
    hub.add_argument("--push", action="store_true", help="upload (default: dry run)")
    hub.add_argument("--upload-only", action="store_true",
                     help="upload the Hub folders an earlier (dry) run of this release built in --out, nothing else")
    hub.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    hub.add_argument("--private", action="store_true")
    hub.add_argument("--revision", help="branch to commit to (created from main if missing)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default=None, help="device of the probes (default: cuda if available, else cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier release in --out")
    a = p.parse_args(argv)
    if not a.upload_only and not a.repo_id:
        p.error("--repo-id is required (unless --upload-only)")
    _set_threads(a.threads)
    try:
        if a.upload_only:
            upload_release(a.out, token=a.token, private=a.private, revision=a.revision)
            return 0
        segmentation = None if a.seg_probes == ["none"] else SegmentationSettings(
            probes=a.seg_probes, protocol=a.seg_protocol, limit_train=a.seg_train or None,
            limit_test=a.seg_test or None,
            image_size=a.seg_image_size, epochs=a.seg_epochs, lrs=a.seg_lrs, ks=a.seg_ks,
            ignore_index=a.seg_ignore_index, num_labels=a.seg_num_labels, test_split=a.seg_test_split,
            image_column=a.seg_image_column, mask_column=a.seg_mask_column, seed=a.seed, device=a.device)
        run_release(ReleaseSettings(
            repo_id=a.repo_id, out=a.out, weights=a.weights, resume=a.resume, overwrite=a.overwrite,
            pretrain=PretrainSettings(recipe=a.recipe, overrides=a.overrides, dataset=a.dataset, split=a.split,
                                      limit=a.limit, max_steps=a.max_steps, batch_size=a.batch_size,
                                      num_workers=a.num_workers, seed=a.seed),
            probes=ProbeSettings(probes=a.probes, protocol=a.probe_protocol, epochs=a.probe_epochs,
                                 batch_size=a.probe_batch_size, limit_train=a.probe_train or None,
                                 limit_test=a.probe_test or None, lrs=a.probe_lrs, wds=a.probe_wds,
                                 test_split=a.probe_test_split, seed=a.seed, num_workers=a.num_workers,
                                 device=a.device),
            probe_dataset=a.probe_dataset, segmentation=segmentation, segmentation_dataset=a.seg_dataset,
            classifier_repo_id=a.classifier_repo_id, segmenter_repo_id=a.segmenter_repo_id, license=a.license,
            push=a.push, token=a.token, private=a.private, revision=a.revision))
    except (ReleaseError, PublishError, RemoteCodeError, ResultsError, RecipeError, OutputDirError,
            FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def convert_timm_main(argv: Sequence[str] | None = None) -> int:
    import ast

    from .conversion import bootleg_to_timm, build_timm_model, timm_image_processor, timm_vit_to_bootleg

    def timm_arg(text: str) -> tuple[str, object]:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
        try:
            return key, ast.literal_eval(value)  # numbers, booleans, tuples, None
        except (ValueError, SyntaxError):
            return key, value  # a plain word, e.g. global_pool=avg

    p = _parser("""Convert a timm VisionTransformer to a Bootleg encoder folder, or a Bootleg folder back to a timm
state dict.

    # Bootleg's twin of an arch (class token, R registers, no_embed_class=True, sin-cos or learned pos_embed)
    bootleg-convert-timm --timm-arch vit_small_patch16_224 --reg-tokens 4 [--checkpoint w.safetensors|.pth] \\
        --out bootleg-vit-small
    # a standard timm ViT as timm defines it (learned pos_embed incl. the CLS position; head dropped); the image
    # processor takes the pretrained_cfg's mean/std/crop_pct/interpolation
    bootleg-convert-timm --layout timm --timm-arch vit_small_patch16_224.augreg_in21k_ft_in1k \\
        --checkpoint model.safetensors --out vit-small-augreg
    bootleg-convert-timm --layout timm --timm-arch vit_base_patch16_224 --timm-arg class_token=False \\
        --timm-arg global_pool=avg --timm-arg fc_norm=False --checkpoint w.pth --out vit-base-avg
    bootleg-convert-timm --reverse --bootleg bootleg-vit-small --out timm.safetensors

Without --checkpoint the timm model keeps its random init (in the Bootleg layout with Bootleg's sin-cos table), for
parity checks. Options Bootleg cannot compute exactly (qk_norm, layer scale, fc_norm, pre_norm, other norms or
activations, attention pooling, ...) are refused with their names before anything is written. .pth files are read
with torch.load(weights_only=True) only.""")
    p.add_argument("--timm-arch", default="vit_small_patch16_224", help="timm model name (a .tag picks its "
                   "pretrained_cfg)")
    p.add_argument("--layout", choices=["bootleg", "timm"], default="bootleg",
                   help="bootleg: the arch with --reg-tokens registers and no_embed_class=True, no head (default); "
                        "timm: the arch as timm registers it")
    p.add_argument("--reg-tokens", type=int, help="register tokens (default 4 in the bootleg layout, the arch's in "
                                                   "the timm layout)")
    p.add_argument("--timm-arg", type=timm_arg, action="append", default=[], metavar="KEY=VALUE", dest="timm_args",
                   help="timm.create_model keyword, repeatable (values parsed as Python literals, else text)")
    p.add_argument("--checkpoint", help="timm weights (.safetensors or .pth)")
    p.add_argument("--with-head", action="store_true",
                   help="keep timm's classifier: writes a BootlegForImageClassification with a 'linear' head (the "
                        "final-norm CLS or mean patch token → Linear, timm's head exactly)")
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

        out, source = Path(a.out).resolve(), Path(a.bootleg).resolve()
        if source.exists() and (out.is_relative_to(source) or source.is_relative_to(out)):
            raise ValueError(f"the output {a.out} and the input {a.bootleg} overlap (one is or lies inside the "
                             "other): writing the output would alter the input; choose another output file")
        if out.exists() and not a.overwrite:  # a file, as every command's --out: replaced only when asked
            raise ValueError(f"{a.out} exists and is not empty (pass --overwrite to replace it)")
        model = BootlegModel.from_pretrained(a.bootleg)
        state = bootleg_to_timm(model.state_dict(), model.config)
        save_file({k: v.contiguous() for k, v in state.items()}, a.out)
        print(f"wrote {Path(a.out).resolve()}")
        return 0
    from .checkpoints import check_output, save_model_folder

    # a non-empty --out is refused as by every command, before any work, and never one holding the checkpoint
    check_output(a.out, a.overwrite, inputs=[a.checkpoint])
    try:  # every check runs before anything is written
        ref = build_timm_model(a.timm_arch, a.reg_tokens, a.checkpoint, a.layout, **dict(a.timm_args))
        model = timm_vit_to_bootleg(ref, with_head=a.with_head)
        # the Bootleg twin holds Bootleg weights, evaluated with Bootleg's default view, not the arch's timm one
        processor = timm_image_processor(ref, model.config) if a.layout == "timm" else None
        save_model_folder(model, a.out, processor, overwrite=a.overwrite)
    except (ValueError, FileNotFoundError) as err:  # KeyMismatchError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 1
    c = model.config
    print(f"wrote {type(model).__name__} (width {c.hidden_size}, depth {c.num_hidden_layers}, CLS {c.use_cls_token}, registers "
          f"{c.num_register_tokens}, {c.position_embedding_type} position embedding"
          f"{' incl. prefix rows' if c.position_embedding_includes_prefix else ''}) to {Path(a.out).resolve()}")
    return 0


def convert_ijepa_main(argv: Sequence[str] | None = None) -> int:
    from .checkpoints import check_output, save_model_folder
    from .conversion import ijepa_to_bootleg

    p = _parser("""Convert an I-JEPA checkpoint into a Bootleg folder: an official .pth.tar, or transformers' IJepaModel
layout (a folder with config.json + model.safetensors or a sharded index, e.g. a download of
facebook/ijepa_vith14_1k, or one .safetensors file).

    bootleg-convert-ijepa --checkpoint IN1K-vit.h.14-300e.pth.tar --out ijepa-vith14
    bootleg-convert-ijepa --checkpoint ... --with-predictor --out ijepa-vith14-pretraining
    bootleg-convert-ijepa --checkpoint ijepa_vith14_1k/ --out ijepa-vith14

Default: the EMA target_encoder as a BootlegModel without CLS or registers (pooler_output = mean patch token);
--student takes encoder instead. --with-predictor writes a BootlegForPretraining (student = encoder, teacher =
target_encoder, I-JEPA's predictor with no predictor registers and targets="final") to continue training. The
checkpoint is read with torch.load(weights_only=True) only; every key is checked strictly. I-JEPA ViT-H/14 and
ViT-g/16 use 16 heads (inferred for the official widths; --num-heads otherwise). An IJepaModel checkpoint holds the
target encoder only; its config.json gives heads, eps and activation (without one: --num-heads, --layer-norm-eps or
official I-JEPA's). Meta released the I-JEPA weights under CC-BY-NC 4.0: publish conversions with
--license cc-by-nc-4.0.""")
    p.add_argument("--checkpoint", required=True, help="I-JEPA .pth.tar (dict with encoder/target_encoder/predictor), "
                                                       "or an IJepaModel folder / .safetensors file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--student", action="store_true", help="convert 'encoder' instead of the EMA 'target_encoder'")
    p.add_argument("--with-predictor", action="store_true", help="write a BootlegForPretraining with the predictor")
    p.add_argument("--num-heads", type=int, help="encoder heads (inferred for the official I-JEPA widths)")
    p.add_argument("--predictor-num-heads", type=int, help="predictor heads (default: the encoder's, as in I-JEPA)")
    p.add_argument("--image-size", type=int, nargs="+", help="H [W]; default: square grid from pos_embed × patch")
    p.add_argument("--layer-norm-eps", type=float, help="LayerNorm eps (default: config.json's, else 1e-6)")
    _add_overwrite(p)
    a = p.parse_args(argv)
    if a.student and a.with_predictor:
        p.error("--with-predictor keeps both encoders (student and teacher); --student applies to encoder-only output")
    image_size = None if a.image_size is None else (a.image_size[0] if len(a.image_size) == 1 else a.image_size[:2])
    options = {k: v for k, v in dict(num_heads=a.num_heads, predictor_num_heads=a.predictor_num_heads,
                                     image_size=image_size, layer_norm_eps=a.layer_norm_eps).items() if v is not None}
    check_output(a.out, a.overwrite, inputs=[a.checkpoint])  # before any work; never over or into the checkpoint
    try:  # every check runs before anything is written
        model, notes = ijepa_to_bootleg(a.checkpoint, student=a.student, with_predictor=a.with_predictor, **options)
        save_model_folder(model, a.out, overwrite=a.overwrite)
    except (ValueError, FileNotFoundError) as err:  # KeyMismatchError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"note: {note}")
    c = model.config
    print(f"wrote {type(model).__name__} (width {c.hidden_size}, depth {c.num_hidden_layers}, heads "
          f"{c.num_attention_heads}, patch {c.patch_size}, image {c.image_size}) to {Path(a.out).resolve()}")
    return 0
