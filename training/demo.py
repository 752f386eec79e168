"""The main job (`make demo`): pretrain a small Bootleg encoder on the embedded Fashion-MNIST, measure it with the
paper's frozen probes against a random-init encoder of the same shape, publish both heads as Hub-ready folders
(dry run), reload them through `transformers`, and plot what happened.

    python training/demo.py                                   # ~10 minutes on 2 CPU cores
    python training/demo.py --steps 1500 --probe-epochs 8     # a longer budget
    python training/demo.py --dataset /path/to/images --preset vit-micro   # your own images (classification folders)
    make demo DEMO_ARGS="--steps 300"

Writes into `--out` (default `demo_out/`): `pretrain/` (checkpoint + `encoder/`), `probes/<encoder>/`,
`segmentation/<encoder>/`, `hub/encoder` and `hub/classifier` (model cards, safetensors, remote code), the plots
`training.png`, `masks.png`, `probes.png`, `segmentation.png`, and `summary.json` / `summary.md`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
import masks as mask_tools  # noqa: E402
import pretrain  # noqa: E402
import probe  # noqa: E402
import segment  # noqa: E402

import bootleg_hf  # noqa: E402
from bootleg_hf.data import FASHION_MNIST_DIR, MOSAIC_LABELS, load_image_dataset, make_mosaic_segmentation  # noqa: E402
from bootleg_hf.publishing import build_hub_folder  # noqa: E402

RECIPES = Path(__file__).resolve().parent / "recipes"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out")
    p.add_argument("--preset", default="vit-micro", help="recipe name in training/recipes/")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist, an image folder, or a Hub dataset")
    p.add_argument("--steps", type=int, default=700, help="pretraining steps")
    p.add_argument("--batch-size", type=int, default=128, help="pretraining global batch")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="recipe overrides")
    p.add_argument("--probes", default="patch,cls,xblk")
    p.add_argument("--probe-epochs", type=int, default=3)
    p.add_argument("--probe-train", type=int, default=6000, help="images for probe training")
    p.add_argument("--probe-test", type=int, default=2000)
    p.add_argument("--seg-train", type=int, default=500, help="mosaic images for the segmentation probes")
    p.add_argument("--seg-test", type=int, default=200)
    p.add_argument("--seg-epochs", type=int, default=30)
    p.add_argument("--smoke", action="store_true", help="tiny budget everywhere (for the test suite)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.probe_epochs = 4, 16, 1
        args.probe_train, args.probe_test, args.seg_train, args.seg_test, args.seg_epochs = 64, 32, 24, 8, 2
    return args


def section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


# ---- plots --------------------------------------------------------------------------------------------------------
def new_figure(width: float, height: float, rows: int = 1, cols: int = 1):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def plot_training(log_history: list[dict[str, Any]], path: Path) -> None:
    logs = [h for h in log_history if "loss" in h and "step" in h]
    fig, axes = new_figure(10, 3.6, 1, 2)
    steps = [h["step"] for h in logs]
    axes[0, 0].plot(steps, [h["loss"] for h in logs], marker="o", ms=3)
    axes[0, 0].set(title="pretraining loss (MSE on z-scored targets)", xlabel="step", ylabel="loss")
    for key in sorted({k for h in logs for k in h if k.startswith("target_std/")}):
        axes[0, 1].plot(steps, [h.get(key, np.nan) for h in logs], label=key.split("/", 1)[1])
    axes[0, 1].set(title="per-layer target std (collapse monitor)", xlabel="step")
    axes[0, 1].legend(title="target layer", fontsize=8)
    fig.savefig(path, dpi=110)


def plot_probe_bars(summary: dict[str, dict[str, float]], path: Path) -> None:
    names = list(next(iter(summary.values())))
    fig, axes = new_figure(max(6, 1.3 * len(names)), 3.8)
    ax = axes[0, 0]
    x = np.arange(len(names))
    for i, (encoder, scores) in enumerate(summary.items()):
        bars = ax.bar(x + (i - 0.5) * 0.38, [scores[n] for n in names], 0.38, label=encoder)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, names)
    ax.set(ylabel="% (top-1 / mIoU)", title="frozen probes: Bootleg-pretrained vs random init")
    ax.legend()
    fig.savefig(path, dpi=110)


def plot_segmentations(folders: dict[str, Path], dataset, path: Path, n: int = 4) -> None:
    from transformers import pipeline

    pipes = {name: pipeline("image-segmentation", model=str(folder), device="cpu") for name, folder in folders.items()}
    fig, axes = new_figure(2.2 * (2 + len(pipes)), 2.2 * n, n, 2 + len(pipes))
    for row in range(n):
        item = dataset[row]
        axes[row, 0].imshow(item["image"], cmap="gray")
        axes[row, 1].imshow(np.asarray(item["mask"]), cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
        for col, (name, pipe) in enumerate(pipes.items(), start=2):
            predicted = np.zeros(np.asarray(item["mask"]).shape, dtype=int)
            for segment_ in pipe(item["image"].convert("RGB")):
                predicted[np.asarray(segment_["mask"]) > 0] = MOSAIC_LABELS.index(segment_["label"])
            axes[row, col].imshow(predicted, cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
            axes[0, col].set_title(name, fontsize=9)
    axes[0, 0].set_title("image", fontsize=9)
    axes[0, 1].set_title("ground truth", fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.savefig(path, dpi=110)


# ---- the job ------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    if args.dataset == "fashion-mnist" and not Path(FASHION_MNIST_DIR).is_dir():
        print(f"note: {FASHION_MNIST_DIR} is missing (Debian's dataset-fashion-mnist is not installed); "
              "using the Hub copy of Fashion-MNIST instead")
    recipe_path = RECIPES / f"{args.preset}.yaml"

    section(f"1/4 pretraining Bootleg ({args.preset}) on {args.dataset}: {args.steps} steps × {args.batch_size} images")
    tick = time.perf_counter()
    pretrain_dir = out / "pretrain"
    trainer = pretrain.main(["--recipe", str(recipe_path), "--dataset", args.dataset, "--output-dir", str(pretrain_dir),
                             "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
                             "--seed", str(args.seed), "--set", f"training.logging_steps={max(1, args.steps // 30)}",
                             "--set", f"training.save_steps={args.steps}",
                             *sum((["--set", s] for s in args.set), [])])
    timings["pretrain_s"] = time.perf_counter() - tick
    plot_training(trainer.state.log_history, out / "training.png")
    config = trainer.model.config
    mask_tools.plot_sample_masks({"bootleg": bootleg_hf.mask_generator_from_config(config)}, n_images=4,
                                 batch_size=args.batch_size, path=out / "masks.png")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    encoders = {"bootleg": str(pretrain_dir / "encoder"), "random init": f"random:{args.preset}:{args.seed}"}
    probes = args.probes.split(",")
    section(f"2/4 frozen probes ({', '.join(probes)}; 5×5 lr × wd sweep) and segmentation (kNN, Lin) for "
            f"{' and '.join(encoders)}")
    results: dict[str, Any] = {}
    tick = time.perf_counter()
    seg_data = datasets.DatasetDict(train=make_mosaic_segmentation("train", args.seg_train, seed=args.seed),
                                    test=make_mosaic_segmentation("test", args.seg_test, seed=args.seed + 1))
    for name, model in encoders.items():
        slug = name.replace(" ", "-")
        print(f"-- {name}: classification probes", flush=True)
        cls = probe.run_probes(model, args.dataset, probes=probes, epochs=args.probe_epochs,
                               limit_train=args.probe_train, limit_test=args.probe_test, out=out / "probes" / slug,
                               seed=args.seed, num_workers=0)
        print(f"-- {name}: segmentation probes", flush=True)
        seg = segment.run_segmentation(model, seg_data, probes=("knn", "lin"), limit_train=None, limit_test=None,
                                       epochs=args.seg_epochs, label_names=MOSAIC_LABELS,
                                       out=out / "segmentation" / slug, seed=args.seed)
        results[name] = {"classification": cls, "segmentation": seg}
    timings["probes_s"] = time.perf_counter() - tick

    scores = {name: {**{f"{k} top-1": r["classification"]["probes"][k]["best"]["top1"] for k in probes},
                     **{f"seg {k} mIoU": r["segmentation"]["probes"][k]["best"]["miou"]
                        for k in r["segmentation"]["probes"]}}
              for name, r in results.items()}
    plot_probe_bars(scores, out / "probes.png")

    section("3/4 Hub-ready folders (dry-run publish) and reload through transformers")
    tick = time.perf_counter()
    recipe_text = recipe_path.read_text()
    hub = {kind: build_hub_folder(source, out / "hub" / kind, f"your-name/bootleg-{args.preset}-{kind}",
                                  overwrite=True, datasets=["zalando-datasets/fashion_mnist"], recipe_text=recipe_text,
                                  probe_results=results["bootleg"]["classification"])
           for kind, source in (("encoder", pretrain_dir / "encoder"),
                                ("classifier", out / "probes" / "bootleg" / "classifier"))}
    from transformers import AutoModel, pipeline

    encoder = AutoModel.from_pretrained(hub["encoder"]).eval()
    classifier = pipeline("image-classification", model=str(hub["classifier"]), device="cpu")
    test = load_image_dataset(args.dataset, "test")
    names = test.features["label"].names
    examples = []
    for i in range(6):
        item = test[i]
        image = bootleg_hf.data.decode_image(item["image"])
        top = classifier(image, top_k=1)[0]
        examples.append({"true": names[item["label"]], "predicted": top["label"], "score": round(top["score"], 3)})
    timings["publish_s"] = time.perf_counter() - tick

    section("4/4 plots")
    plot_segmentations({f"{name} (Lin)": out / "segmentation" / name.replace(" ", "-") / "segmenter"
                        for name in encoders}, seg_data["test"], out / "segmentation.png")
    timings["total_s"] = time.perf_counter() - start

    summary = {"preset": args.preset, "dataset": args.dataset, "steps": args.steps, "batch_size": args.batch_size,
               "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
               "encoder_parameters": sum(p.numel() for p in encoder.parameters()), "scores": scores,
               "examples": examples, "hub_folders": {k: str(v) for k, v in hub.items()},
               "wall_time_s": {k: round(v, 1) for k, v in timings.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(summary_markdown(summary))
    section("summary")
    print(summary_markdown(summary))
    return summary


def summary_markdown(summary: dict[str, Any]) -> str:
    scores = summary["scores"]
    boot, rand = scores["bootleg"], scores["random init"]
    lines = [f"Bootleg {summary['preset']} ({summary['encoder_parameters'] / 1e6:.2f} M encoder parameters), "
             f"{summary['steps']} pretraining steps × {summary['batch_size']} images of {summary['dataset']}; "
             f"loss {summary['loss_first']:.3f} → {summary['loss_last']:.3f}.", "",
             "| probe | Bootleg | random init | difference |", "|---|---|---|---|"]
    lines += [f"| {k} | {boot[k]:.2f} | {rand[k]:.2f} | {boot[k] - rand[k]:+.2f} |" for k in boot]
    wins = sum(boot[k] > rand[k] for k in boot)
    lines += ["", f"Pretraining beats random init on {wins} of {len(boot)} probes "
              f"(mean difference {np.mean([boot[k] - rand[k] for k in boot]):+.2f} points).", "",
              "Classifier (best Bootleg probe) reloaded from the Hub folder with `pipeline(\"image-classification\")`:"]
    lines += [f"- true {e['true']}: predicted {e['predicted']} ({e['score']:.2f})" for e in summary["examples"]]
    lines += ["", "Wall time: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in summary["wall_time_s"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
