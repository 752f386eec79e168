"""The main job (`make demo`): pretrain a small Bootleg encoder on the embedded Fashion-MNIST, measure it with the
paper's frozen probes (quick protocol, fewer epochs) and the standard quick metrics (kNN and a converged linear
classifier) against a random-init encoder of the same shape and the raw pixels, publish both heads as Hub-ready
folders (dry run), reload them through `transformers`, and plot what happened.

Writes into `out` (default `demo_out/`): `pretrain/` (checkpoint + `encoder/`), `probes/<encoder>/`,
`segmentation/<encoder>/`, `hub/encoder` and `hub/classifier` (model cards, safetensors, remote code), the plots
`training.png`, `masks.png`, `probes.png`, `segmentation.png`, and `summary.json` / `summary.md`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .checkpoints import check_output
from .data import FASHION_MNIST_DIR, MOSAIC_LABELS, decode_image, load_image_dataset, make_mosaic_segmentation
from .evaluation.classification import PIXELS, ProbeSettings, run_probes
from .evaluation.segmentation import SegmentationSettings, run_segmentation
from .mask_statistics import plot_sample_masks
from .masking import MaskGenerator
from .pretraining import PretrainSettings, run_pretraining
from .publishing import build_hub_folder
from .recipes import recipe_path
from .reports import write_json, write_text


@dataclass
class DemoSettings:
    """The demo's budget: the recipe (a shipped name, e.g. the preset) and its overrides, the pretraining data, steps
    and global batch; the classification probes (types, epochs, train/test images); the mosaic segmentation probes
    (train/test images, epochs); the seed; whether to replace an earlier demo's results in `out` (a non-empty `out` is
    refused otherwise). `smoke()` gives the tiny budget of the test suite."""

    out: str | Path = "demo_out"
    preset: str = "vit-micro"
    dataset: str = "fashion-mnist"
    steps: int = 1200
    batch_size: int = 128
    overrides: Sequence[str] = ()
    probes: Sequence[str] = ("patch", "cls", "xblk")
    probe_epochs: int = 3
    probe_train: int = 6000
    probe_test: int = 2000
    seg_train: int = 500
    seg_test: int = 200
    seg_epochs: int = 30
    seed: int = 0
    overwrite: bool = False

    @classmethod
    def smoke(cls, **overrides: Any) -> "DemoSettings":
        tiny = dict(steps=4, batch_size=16, probe_epochs=1, probe_train=64, probe_test=32, seg_train=24, seg_test=8,
                    seg_epochs=2)
        return cls(**{**tiny, **overrides})


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
    """One group of bars per score (the first entry of `summary` has them all), one bar per entry that has it."""
    names = list(next(iter(summary.values())))
    fig, axes = new_figure(max(6, 1.4 * len(names)), 3.8)
    ax = axes[0, 0]
    x = np.arange(len(names))
    width = 0.8 / len(summary)
    for i, (encoder, scores) in enumerate(summary.items()):
        have = [j for j, n in enumerate(names) if n in scores]
        bars = ax.bar(x[have] + (i - (len(summary) - 1) / 2) * width, [scores[names[j]] for j in have], width,
                      label=encoder)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, names, fontsize=8)
    ax.set(ylabel="% (top-1 / mIoU)", title="frozen encoders: Bootleg-pretrained vs random init vs raw pixels")
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
def run_demo(s: DemoSettings) -> dict[str, Any]:
    """Run the demo (see the module docstring); returns the summary (also in `summary.json`)."""
    out = Path(s.out)
    check_output(out, s.overwrite)  # an earlier demo's results are replaced only when asked
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    if s.dataset == "fashion-mnist" and not Path(FASHION_MNIST_DIR).is_dir():
        print(f"note: {FASHION_MNIST_DIR} is missing (Debian's dataset-fashion-mnist is not installed); "
              "using the Hub copy of Fashion-MNIST instead")
    recipe = recipe_path(s.preset)

    section(f"1/4 pretraining Bootleg ({s.preset}) on {s.dataset}: {s.steps} steps × {s.batch_size} images")
    tick = time.perf_counter()
    pretrain_dir = out / "pretrain"
    overrides = [f"training.logging_steps={max(1, s.steps // 30)}", f"training.save_steps={s.steps}",
                 *s.overrides]
    trainer = run_pretraining(PretrainSettings(recipe=recipe, overrides=overrides, dataset=s.dataset,
                                               output_dir=pretrain_dir, max_steps=s.steps,
                                               batch_size=s.batch_size, seed=s.seed, overwrite=s.overwrite))
    timings["pretrain_s"] = time.perf_counter() - tick
    plot_training(trainer.state.log_history, out / "training.png")
    plot_sample_masks({"bootleg": MaskGenerator.from_config(trainer.model.config)}, n_images=4,
                      batch_size=s.batch_size, path=out / "masks.png")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    encoders = {"bootleg": str(pretrain_dir / "encoder"), "random init": f"random:{s.preset}:{s.seed}"}
    probes = list(s.probes)
    section(f"2/4 frozen probes ({', '.join(probes)}; 5×5 lr × wd sweep) and segmentation (kNN, Lin) for "
            f"{' and '.join(encoders)}")
    results: dict[str, Any] = {}
    tick = time.perf_counter()
    seg_data = datasets.DatasetDict(train=make_mosaic_segmentation("train", s.seg_train, seed=s.seed),
                                    test=make_mosaic_segmentation("test", s.seg_test, seed=s.seed + 1))
    for name, model in encoders.items():
        slug = name.replace(" ", "-")
        print(f"-- {name}: classification probes", flush=True)
        # the Bootleg run measures the reference lines; the random-init encoder is one of them
        cls = run_probes(model, s.dataset, ProbeSettings(probes=probes, epochs=s.probe_epochs,
                                                            limit_train=s.probe_train, limit_test=s.probe_test,
                                                            seed=s.seed, num_workers=0,
                                                            references=name == "bootleg"),
                         out=out / "probes" / slug, overwrite=s.overwrite)
        print(f"-- {name}: segmentation probes", flush=True)
        seg = run_segmentation(model, seg_data, SegmentationSettings(probes=("knn", "lin"), limit_train=None,
                                                                     limit_test=None, epochs=s.seg_epochs,
                                                                     label_names=MOSAIC_LABELS, seed=s.seed),
                               out=out / "segmentation" / slug, overwrite=s.overwrite)
        results[name] = {"classification": cls, "segmentation": seg}
    timings["probes_s"] = time.perf_counter() - tick

    scores = {name: {**{f"{k} top-1": r["classification"]["probes"][k]["best"]["top1"] for k in probes},
                     **quick_scores(r["classification"]["quick_metrics"]["rows"]["encoder"]),
                     **{f"seg {k} mIoU": r["segmentation"]["probes"][k]["best"]["miou"]
                        for k in r["segmentation"]["probes"]}}
              for name, r in results.items()}
    scores[PIXELS] = quick_scores(results["bootleg"]["classification"]["quick_metrics"]["rows"][PIXELS])
    plot_probe_bars(scores, out / "probes.png")

    section("3/4 Hub-ready folders (dry-run publish) and reload through transformers")
    tick = time.perf_counter()
    recipe_text = recipe.read_text()
    hub = {kind: build_hub_folder(source, out / "hub" / kind, f"your-name/bootleg-{s.preset}-{kind}",
                                  overwrite=s.overwrite, datasets=["zalando-datasets/fashion_mnist"],
                                  recipe_text=recipe_text,
                                  probe_results=results["bootleg"]["classification"])
           for kind, source in (("encoder", pretrain_dir / "encoder"),
                                ("classifier", out / "probes" / "bootleg" / "classifier"))}
    from transformers import AutoModel, pipeline

    encoder = AutoModel.from_pretrained(hub["encoder"]).eval()
    classifier = pipeline("image-classification", model=str(hub["classifier"]), device="cpu")
    test = load_image_dataset(s.dataset, "test")
    names = test.features["label"].names
    examples = []
    for i in range(6):
        item = test[i]
        image = decode_image(item["image"])
        top = classifier(image, top_k=1)[0]
        examples.append({"true": names[item["label"]], "predicted": top["label"], "score": round(top["score"], 3)})
    timings["publish_s"] = time.perf_counter() - tick

    section("4/4 plots")
    plot_segmentations({f"{name} (Lin)": out / "segmentation" / name.replace(" ", "-") / "segmenter"
                        for name in encoders}, seg_data["test"], out / "segmentation.png")
    timings["total_s"] = time.perf_counter() - start

    summary = {"preset": s.preset, "dataset": s.dataset, "steps": s.steps, "batch_size": s.batch_size,
               "probe_protocol": results["bootleg"]["classification"]["protocol_label"],
               "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
               "encoder_parameters": sum(p.numel() for p in encoder.parameters()), "scores": scores,
               "examples": examples, "hub_folders": {k: str(v) for k, v in hub.items()},
               "wall_time_s": {k: round(v, 1) for k, v in timings.items()}}
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", summary_markdown(summary))
    section("summary")
    print(summary_markdown(summary))
    return summary


def quick_scores(row: dict[str, Any]) -> dict[str, float]:
    """The demo's names for one feature set's quick metrics (a row of `run_probes`' `quick_metrics`)."""
    return {"knn top-1": row["knn_top1"], "linear top-1": row["linear_top1"]}


def summary_markdown(summary: dict[str, Any]) -> str:
    scores = summary["scores"]
    boot, rand, pixels = scores["bootleg"], scores["random init"], scores[PIXELS]
    lines = [f"Bootleg {summary['preset']} ({summary['encoder_parameters'] / 1e6:.2f} M encoder parameters), "
             f"{summary['steps']} pretraining steps × {summary['batch_size']} images of {summary['dataset']}; "
             f"loss {summary['loss_first']:.3f} → {summary['loss_last']:.3f}. Classification probes: "
             f"{summary['probe_protocol']}; knn / linear: the quick metrics (weighted kNN, k = 20, and a converged "
             "L-BFGS linear classifier on cached features; raw pixels average-pooled to the patch grid).", "",
             "| probe | Bootleg | random init | raw pixels | Bootleg − random init |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {boot[k]:.2f} | {rand[k]:.2f} | {f'{pixels[k]:.2f}' if k in pixels else '–'} | "
              f"{boot[k] - rand[k]:+.2f} |" for k in boot]
    wins = sum(boot[k] > rand[k] for k in boot)
    lines += ["", f"Pretraining beats random init on {wins} of {len(boot)} scores "
              f"(mean difference {np.mean([boot[k] - rand[k] for k in boot]):+.2f} points); Bootleg − raw pixels: "
              + ", ".join(f"{k} {boot[k] - pixels[k]:+.2f}" for k in pixels) + " points.", "",
              "Classifier (best Bootleg probe) reloaded from the Hub folder with `pipeline(\"image-classification\")`:"]
    lines += [f"- true {e['true']}: predicted {e['predicted']} ({e['score']:.2f})" for e in summary["examples"]]
    lines += ["", "Wall time: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in summary["wall_time_s"].items())]
    return "\n".join(lines) + "\n"


__all__ = ["DemoSettings", "run_demo", "summary_markdown"]
