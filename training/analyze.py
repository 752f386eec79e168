"""Representational analysis of a Bootleg encoder: how its layers relate to each other and to its targets.

    python training/analyze.py --model <encoder folder | pretraining checkpoint | Hub id | random:vit-micro[:seed]> \
        --dataset fashion-mnist --num-images 256 --out analysis/

For the first ``--num-images`` images of ``--split`` (default ``test``; evaluation transform: resize + centre crop
to the model's image size), the patch tokens of every layer — tokenizer output (``embed``), the output of every
block before the final LayerNorm (``1.out`` … ``L.out``) and the final-LN output (``final``) — are collected, with
every (image, patch) pair a sample. Then:

* ``pearson.png`` / ``cka.png``: inter-layer Pearson-correlation and linear-CKA matrices
  (``bootleg_hf.analysis.pearson_matrix`` with per-token z-scoring, ``cka_matrix``);
* ``targets.png``: Pearson and CKA of every layer with each target layer of ``config.targets`` and with the merged
  target (their concatenation or average, what the predictor regresses). Both sides are z-scored per token first,
  as the loss sees them (pixel targets: MAE's per-patch normalised pixels); Pearson is left out (null) where the
  widths differ (pixels, a concatenated target);
* ``spatial.png``: the spatial autocorrelation of each layer — the mean cosine similarity of dataset-centred patch
  embeddings against the Euclidean distance of their grid positions;
* ``analysis.json``: all the numbers (plus consecutive-layer summaries and the run's settings).

``--remove-position-mean`` first subtracts each layer's mean over the images at every grid position, leaving only
image-dependent variation (at initialisation the fixed sin-cos position embedding dominates every layer, so without
it a random encoder looks like one representation repeated).

A pretraining checkpoint is analysed through its teacher (``--encoder student`` for the student). ``random:<preset>``
builds a freshly initialised encoder (seed 0 unless given) — the baseline any trained model should be compared with.
``analyze(model, dataset, num_images, out_dir)`` is importable; figures use matplotlib's object API on the Agg
canvas, so nothing here touches pyplot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

try:
    import bootleg_hf
except ImportError:  # run as a script from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import bootleg_hf

from bootleg_hf.analysis import (
    cka_matrix,
    collect_representations,
    default_layers,
    encoder_of,
    pearson_matrix,
    spatial_autocorrelation,
)
from bootleg_hf.data import EvalTransform, load_image_dataset
from bootleg_hf.targets import merge_targets, zscore


# --------------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------------


def load_encoder(spec: str, encoder: str = "teacher", device: str | torch.device = "cpu") -> torch.nn.Module:
    """``random:<preset>[:seed]`` → a freshly initialised ``BootlegModel``; otherwise a folder or Hub id.

    A folder holding a pretraining checkpoint loads its teacher (stored under the base-model prefix) unless
    ``encoder="student"``. Raises ``ValueError`` if the checkpoint does not supply every encoder weight (so a wrong
    folder never silently analyses a random model).
    """
    if encoder not in ("teacher", "student"):
        raise ValueError(f"encoder must be 'teacher' or 'student', got {encoder!r}")
    if spec.startswith("random:"):
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[1]:
            raise ValueError(f"expected random:<preset>[:seed], got {spec!r}")
        seed = int(parts[2]) if len(parts) == 3 else 0
        torch.manual_seed(seed)
        model = bootleg_hf.BootlegModel(bootleg_hf.BootlegConfig.from_preset(parts[1]))
    elif encoder == "student":
        model = bootleg_hf.BootlegForPretraining.from_pretrained(spec).student
    else:
        model, info = bootleg_hf.BootlegModel.from_pretrained(spec, output_loading_info=True)
        if info.get("missing_keys"):
            missing = sorted(info["missing_keys"])
            raise ValueError(f"{spec}: checkpoint lacks {len(missing)} encoder weights (e.g. {missing[:3]}); "
                             "is it a Bootleg encoder or pretraining checkpoint?")
    return model.to(device).eval()


def load_pixel_values(dataset: Any, num_images: int, image_size: int | tuple[int, int], split: str = "test",
                      ) -> torch.Tensor:
    """The first ``num_images`` images of ``dataset`` (name, folder, ``datasets`` object, or a ready
    ``[B, C, H, W]`` tensor) through the evaluation transform → ``[num_images, 3, H, W]``."""
    if isinstance(dataset, torch.Tensor):
        if dataset.ndim != 4:
            raise ValueError(f"a pixel_values tensor must be [images, channels, height, width], got {tuple(dataset.shape)}")
        return dataset[:num_images].float()
    ds = load_image_dataset(dataset, split)
    if len(ds) == 0:
        raise ValueError(f"dataset {dataset!r} (split {split!r}) is empty")
    n = min(num_images, len(ds))
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    transform = EvalTransform(max(h, w), on_error="raise")
    pixels = torch.stack(transform(ds[:n])["pixel_values"])
    if (h, w) != (max(h, w), max(h, w)):  # non-square model: centre-crop the square evaluation view
        top, left = (max(h, w) - h) // 2, (max(h, w) - w) // 2
        pixels = pixels[..., top:top + h, left:left + w]
    return pixels


# --------------------------------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------------------------------


def _json_matrix(m: np.ndarray) -> list[list[float | None]]:
    return [[None if not math.isfinite(v) else round(float(v), 6) for v in row] for row in np.asarray(m)]


def _json_vector(v) -> list[float | None]:
    return [None if v_ is None or not math.isfinite(v_) else round(float(v_), 6) for v_ in v]


def target_representations(reps: dict[str, torch.Tensor], spec) -> dict[str, torch.Tensor]:
    """Per-target-term regression targets (z-scored per token; pixels already normalised) plus, for several terms,
    the merged target under ``spec.merge`` (concatenation or data2vec-style average)."""
    targets = {t.name: (reps[t.name] if t.kind == "pixels" else zscore(reps[t.name])) for t in spec.terms}
    if len(targets) > 1:
        targets[f"merged ({spec.merge})"] = merge_targets(list(targets.values()), spec.merge)
    return targets


def analyze(model: torch.nn.Module | str, dataset: Any, num_images: int, out_dir: str | Path, *, split: str = "test",
            batch_size: int = 64, max_distance: float | None = None, pearson_normalize: str = "token",
            remove_position_mean: bool = False, plots: bool = True) -> dict[str, Any]:
    """Run the whole analysis on ``num_images`` images of ``dataset``; write PNGs and ``analysis.json`` into
    ``out_dir`` and return the JSON content.

    ``model``: a ``BootlegModel`` (or a model holding one, e.g. ``BootlegForPretraining`` → its teacher) or a spec for
    ``load_encoder``. ``dataset``: anything ``load_image_dataset`` accepts, or a ``[B, C, H, W]`` tensor.
    ``remove_position_mean``: subtract from every layer (and target) its mean over the images at each grid position
    first, so that the analysis sees only image-dependent variation, not the part of a token fixed by its position
    (at initialisation the sin-cos position embedding dominates every layer).
    """
    start = time.perf_counter()
    source = model if isinstance(model, str) else type(model).__name__
    encoder = encoder_of(load_encoder(model) if isinstance(model, str) else model)
    config = encoder.config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    pixel_values = load_pixel_values(dataset, num_images, tuple(config.image_hw), split)
    spec = config.target_spec
    layers = default_layers(config.num_hidden_layers)
    extra = [t for t in spec.terms if t not in layers]  # mid/attn/mlp/pixels targets are collected as well
    reps = collect_representations(encoder, pixel_values, layers + extra, batch_size=batch_size)
    if remove_position_mean:
        reps = {name: r - r.mean(0, keepdim=True) for name, r in reps.items()}
    names = [t.name for t in layers]
    layer_reps = {name: reps[name] for name in names}

    pear = pearson_matrix(layer_reps, normalize=pearson_normalize)
    cka = cka_matrix(layer_reps)

    targets = target_representations(reps, spec)
    zscored = {name: zscore(r) for name, r in layer_reps.items()}
    tgt_cka = cka_matrix(zscored, targets)
    tgt_pearson = np.full(tgt_cka.shape, np.nan)
    same_width = [j for j, t in enumerate(targets.values()) if t.shape == next(iter(zscored.values())).shape]
    if same_width:
        tgt_pearson[:, same_width] = pearson_matrix(zscored, "token", [list(targets.values())[j] for j in same_width])

    gh, gw = config.grid_size
    grid_h, grid_w = pixel_values.shape[-2] // config.patch_size, pixel_values.shape[-1] // config.patch_size
    spatial = {name: spatial_autocorrelation(r.reshape(r.shape[0], grid_h, grid_w, -1), max_distance)
               for name, r in layer_reps.items()}
    distances = next(iter(spatial.values())).distances

    consecutive = list(zip(names[:-1], names[1:]))
    result: dict[str, Any] = {
        "model": source,
        "config": {"hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
                   "image_size": list(config.image_hw), "patch_size": config.patch_size, "grid": [gh, gw],
                   "targets": config.targets, "target_merge": config.target_merge},
        "dataset": os.fspath(dataset) if isinstance(dataset, (str, os.PathLike)) else type(dataset).__name__,
        "split": split,
        "num_images": int(pixel_values.shape[0]),
        "num_samples": int(pixel_values.shape[0] * grid_h * grid_w),
        "samples": "patch tokens (image x position); CLS and registers excluded",
        "remove_position_mean": remove_position_mean,
        "layers": names,
        "pearson_normalize": pearson_normalize,
        "pearson": _json_matrix(pear),
        "cka": _json_matrix(cka),
        "consecutive": {
            "pairs": [f"{a}->{b}" for a, b in consecutive],
            "pearson": _json_vector([pear[i, i + 1] for i in range(len(consecutive))]),
            "cka": _json_vector([cka[i, i + 1] for i in range(len(consecutive))]),
        },
        "targets": {
            "terms": list(targets),
            "normalization": "both sides z-scored per token (pixels: per-patch normalised); pearson null where "
                             "widths differ",
            "pearson": _json_matrix(tgt_pearson),
            "cka": _json_matrix(tgt_cka),
        },
        "spatial_autocorrelation": {
            "metric": "mean cosine similarity of dataset-centred patch embeddings",
            "distances": _json_vector(distances),
            "pairs_per_image": [int(p) for p in next(iter(spatial.values())).pairs],
            "layers": {name: _json_vector(s.similarity) for name, s in spatial.items()},
        },
    }
    if plots:
        result["figures"] = write_figures(result, out_dir)
    result["wall_s"] = round(time.perf_counter() - start, 3)
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# --------------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> str:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120)
    return path.name


def _nan(m) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in m], dtype=float)


def plot_matrix(matrix, labels: list[str], title: str, path: Path) -> str:
    """Annotated heat-map of a symmetric layer × layer matrix. The colour scale runs from the smallest entry
    (rounded down to 0.05, at most 0) to 1, so that near-1 matrices still show their structure."""
    m = _nan(matrix)
    low = float(np.nanmin(m)) if np.isfinite(m).any() else 0.0
    vmin = min(math.floor(low * 20) / 20, 0.95) if low > 0 else math.floor(low * 20) / 20
    size = 1.2 + 0.55 * len(labels)
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot()
    im = ax.imshow(m, vmin=vmin, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    digits = 3 if vmin >= 0.9 else 2
    if len(labels) <= 16:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.{digits}f}", ha="center", va="center", fontsize=7 if digits == 2 else 6,
                            color="black" if m[i, j] > vmin + 0.6 * (1 - vmin) else "white")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, path)


def plot_targets(result: dict[str, Any], path: Path) -> str:
    """Pearson and CKA of every layer with each target (one line per target)."""
    layers, tg = result["layers"], result["targets"]
    fig = Figure(figsize=(11, 4))
    for k, key in enumerate(("pearson", "cka")):
        ax = fig.add_subplot(1, 2, k + 1)
        m = _nan(tg[key])
        for j, term in enumerate(tg["terms"]):
            if np.isfinite(m[:, j]).any():
                ax.plot(range(len(layers)), m[:, j], marker="o", label=term)
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right")
        ax.set_ylim(top=1.0 + 0.02 * (1.0 - min(np.nanmin(m) if np.isfinite(m).any() else 0.0, 0.99)))
        ax.set_ylabel(key)
        ax.set_title(f"{'Pearson (per-token z-scored)' if key == 'pearson' else 'linear CKA'} with targets")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_spatial(result: dict[str, Any], path: Path) -> str:
    """Spatial autocorrelation curves, one per layer, coloured by depth."""
    sp = result["spatial_autocorrelation"]
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"]
    n = len(sp["layers"])
    for i, (name, values) in enumerate(sp["layers"].items()):
        ax.plot(sp["distances"], [np.nan if v is None else v for v in values], marker=".", label=name,
                color=cmap(i / max(n - 1, 1)))
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("grid distance (patches)")
    ax.set_ylabel("mean cosine similarity")
    ax.set_title("Spatial autocorrelation of patch embeddings")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def write_figures(result: dict[str, Any], out_dir: Path) -> list[str]:
    layers = result["layers"]
    norm = result["pearson_normalize"]
    return [
        plot_matrix(result["pearson"], layers, f"Inter-layer Pearson ({norm}-standardised)", out_dir / "pearson.png"),
        plot_matrix(result["cka"], layers, "Inter-layer linear CKA", out_dir / "cka.png"),
        plot_targets(result, out_dir / "targets.png"),
        plot_spatial(result, out_dir / "spatial.png"),
    ]


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def print_summary(result: dict[str, Any]) -> None:
    print(f"model {result['model']}: {result['num_images']} images, {result['num_samples']} patch tokens, "
          f"targets {result['config']['targets']} ({result['config']['target_merge']})")
    cons = result["consecutive"]
    print("consecutive layers     pearson     cka")
    for pair, p, c in zip(cons["pairs"], cons["pearson"], cons["cka"]):
        print(f"  {pair:<20} {p if p is not None else float('nan'):8.4f} {c if c is not None else float('nan'):7.4f}")
    tg = result["targets"]
    print("CKA with targets: " + ", ".join(tg["terms"]))
    for name, row in zip(result["layers"], tg["cka"]):
        print(f"  {name:<8} " + " ".join(f"{v:7.4f}" if v is not None else "    n/a" for v in row))
    sp = result["spatial_autocorrelation"]
    shown = [i for i, d in enumerate(sp["distances"]) if float(d).is_integer()]
    print("spatial autocorrelation at d = " + ", ".join(f"{sp['distances'][i]:g}" for i in shown))
    for name, values in sp["layers"].items():
        print(f"  {name:<8} " + " ".join(f"{values[i]:6.3f}" if values[i] is not None else "   n/a" for i in shown))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="encoder folder, pretraining checkpoint, Hub id, or random:<preset>[:seed]")
    parser.add_argument("--encoder", choices=("teacher", "student"), default="teacher",
                        help="which encoder of a pretraining checkpoint to analyse (default: teacher)")
    parser.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist, an image folder or a Hub dataset")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-distance", type=float, default=None,
                        help="largest grid distance of the spatial autocorrelation (default: shorter side - 1)")
    parser.add_argument("--pearson-normalize", choices=("token", "channel", "none"), default="token")
    parser.add_argument("--remove-position-mean", action="store_true",
                        help="subtract each layer's per-position mean over the images first (content variation only)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="analysis", help="output folder")
    args = parser.parse_args(argv)
    if args.num_images < 2:
        parser.error("--num-images must be at least 2")
    model = load_encoder(args.model, args.encoder, args.device)
    result = analyze(model, args.dataset, args.num_images, args.out, split=args.split, batch_size=args.batch_size,
                     max_distance=args.max_distance, pearson_normalize=args.pearson_normalize,
                     remove_position_mean=args.remove_position_mean)
    result["model"] = args.model + ("" if args.encoder == "teacher" else " (student)")
    (Path(args.out) / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
    print_summary(result)
    print(f"wrote {', '.join(result['figures'])} and analysis.json to {args.out} in {result['wall_s']:.1f} s")
    return result


if __name__ == "__main__":
    main()
