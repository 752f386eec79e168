"""Inspect the masking samplers: seen/target rates, rectangle shapes, sample masks and per-position heat-maps.

    python training/masks.py --grid 14 14 --batch-size 256 --batches 200 --out masks_out/ [--modes bootleg ijepa random]

Prints, per mode, the seen (context) rate and target rate as mean ± std over batches and the distribution of
rectangle shapes; writes ``sample_masks.png`` (context / each rectangle / unused, modes side by side),
``rate_maps.png`` (per-position context visibility and target rate) and ``mask_stats.json``.
The functions are importable (``mask_statistics``, ``plot_sample_masks``, ``plot_rate_maps``); figures are
built with matplotlib's object API on the Agg canvas, so importing this module does not touch pyplot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .checkpoints import check_output
from .configuration_bootleg import HIDDEN_TARGET_MODES
from .masking import MaskBatch, MaskGenerator
from .reports import write_json

UNUSED, CONTEXT = "#dcdcdc", "#59a14f"
RECT_COLOURS = ["#e15759", "#4e79a7", "#f28e2b", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f"]


def rectangle_shape(indices: np.ndarray, grid_w: int) -> tuple[int, int]:
    """(h, w) of a rectangle given by its raster-ordered token indices ``[T]``."""
    rows, cols = np.divmod(np.asarray(indices), grid_w)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def mask_statistics(generator: MaskGenerator, batch_size: int = 256, batches: int = 200, *, seed: int | None = None,
                    epoch: int = 0) -> dict[str, Any]:
    """Rates and shapes over ``batches`` batches (batch_index 0 … batches−1).

    Returns ``seen_rate`` / ``target_rate`` (``[batches]`` arrays: context tokens / N, union of targets / N,
    averaged over the images of each batch), their ``*_mean`` / ``*_std``, ``context_freq`` and
    ``target_freq`` (``[Gh, Gw]`` per-position frequencies over all images) and ``shapes`` (a Counter of
    ``"h×w"`` over every rectangle of every batch; empty in the modes whose target is every hidden token, not a rectangle).
    """
    gh, gw = generator.grid
    n = generator.num_patches
    seen, target = np.empty(batches), np.empty(batches)
    ctx_count, tgt_count = np.zeros(n), np.zeros(n)
    shapes: Counter[str] = Counter()
    for i in range(batches):
        m = generator.generate(batch_size, batch_index=i, epoch=epoch, seed=seed)
        ctx, union = m.context_indices.numpy(), m.target_mask.numpy()
        seen[i] = ctx.shape[1] / n
        target[i] = union.mean()
        ctx_count += np.bincount(ctx.ravel(), minlength=n)
        tgt_count += union.sum(axis=0)
        if generator.mode not in HIDDEN_TARGET_MODES:  # rectangle sizes are shared by the batch: read them from image 0
            shapes.update("%d×%d" % rectangle_shape(r, gw) for r in m.target_indices[0].numpy())
    total = batches * batch_size
    return {"mode": generator.mode, "grid": (gh, gw), "batch_size": batch_size, "batches": batches,
            "seen_rate": seen, "target_rate": target,
            "seen_mean": float(seen.mean()), "seen_std": float(seen.std()),
            "target_mean": float(target.mean()), "target_std": float(target.std()),
            "context_freq": (ctx_count / total).reshape(gh, gw), "target_freq": (tgt_count / total).reshape(gh, gw),
            "shapes": shapes}


def format_statistics(stats: Mapping[str, Any]) -> str:
    """Human-readable summary of :func:`mask_statistics` output."""
    gh, gw = stats["grid"]
    lines = [f"[{stats['mode']}] grid {gh}×{gw}, batch {stats['batch_size']}, {stats['batches']} batches",
             f"  seen (context) rate: {stats['seen_mean']:.4f} ± {stats['seen_std']:.4f}",
             f"  target rate:         {stats['target_mean']:.4f} ± {stats['target_std']:.4f}"]
    total = sum(stats["shapes"].values())
    if total:
        lines.append("  rectangle shapes (h×w: count, share of rectangles):")
        for shape, count in sorted(stats["shapes"].items(), key=lambda kv: -kv[1]):
            lines.append(f"    {shape:>6s}: {count:6d}  {count / total:6.1%}")
    return "\n".join(lines)


def mask_labels(masks: MaskBatch, grid: tuple[int, int], image: int) -> np.ndarray:
    """``[Gh, Gw]`` int map for one image: 0 unused, 1 context, 2 + k rectangle k (later rectangles on top)."""
    labels = np.zeros(grid[0] * grid[1], dtype=int)
    labels[masks.context_indices[image].numpy()] = 1
    for k, rect in enumerate(masks.target_indices[image].numpy()):
        labels[rect] = 2 + k
    return labels.reshape(grid)


def plot_sample_masks(generators: Mapping[str, MaskGenerator] | Sequence[MaskGenerator], n_images: int = 4,
                      batch_size: int = 256, *, batch_index: int = 0, seed: int | None = None,
                      path: str | Path | None = None) -> Figure:
    """Sample masks, one column per generator, ``n_images`` rows (the first images of one batch).

    Cells: context (green), each rectangle in its own colour (outlined, so overlaps stay visible), unused grey.
    Truncation depends on the batch minimum, so a whole ``batch_size`` batch is drawn and its first images shown.
    """
    if not isinstance(generators, Mapping):
        generators = {g.mode: g for g in generators}
    n_rect = max(1 if g.mode in HIDDEN_TARGET_MODES else g.num_targets for g in generators.values())
    cmap = ListedColormap([UNUSED, CONTEXT] + [RECT_COLOURS[k % len(RECT_COLOURS)] for k in range(n_rect)])
    aspect = max(g.grid[0] / g.grid[1] for g in generators.values())  # panel height / width
    fig = Figure(figsize=(2.6 * len(generators), 2.6 * aspect * n_images + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_images, len(generators), squeeze=False)
    for col, (name, gen) in enumerate(generators.items()):
        gh, gw = gen.grid
        masks = gen.generate(max(batch_size, n_images), batch_index=batch_index, seed=seed)
        for row in range(n_images):
            ax = axes[row, col]
            ax.imshow(mask_labels(masks, gen.grid, row), cmap=cmap, vmin=0, vmax=1 + n_rect, interpolation="nearest")
            if gen.mode not in HIDDEN_TARGET_MODES:
                for k, rect in enumerate(masks.target_indices[row].numpy()):
                    (top, left), (h, w) = divmod(int(rect[0]), gw), rectangle_shape(rect, gw)
                    ax.add_patch(Rectangle((left - 0.5, top - 0.5), w, h, fill=False, lw=1.8,
                                           edgecolor=RECT_COLOURS[k % len(RECT_COLOURS)]))
            ax.set_xticks(np.arange(-0.5, gw, 1), minor=True)
            ax.set_yticks(np.arange(-0.5, gh, 1), minor=True)
            ax.grid(which="minor", color="white", lw=0.4)
            ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
            if row == 0:  # K is the batch minimum, shared by every image of the batch
                ax.set_title(f"{name}: K={masks.context_indices.shape[1]} context tokens", fontsize=9)
    handles = [Patch(color=CONTEXT, label="context"), Patch(color=UNUSED, label="unused")]
    handles += [Patch(color=RECT_COLOURS[k % len(RECT_COLOURS)], label=f"target {k + 1}") for k in range(n_rect)]
    hidden = [name for name, g in generators.items() if g.mode in HIDDEN_TARGET_MODES]
    if hidden:
        handles[2].set_label(f"target 1 ({', '.join(hidden)}: all hidden)")
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def plot_rate_maps(stats: Mapping[str, Mapping[str, Any]], path: str | Path | None = None) -> Figure:
    """Per-position context visibility (top row) and target rate (bottom row), one column per mode."""
    fig = Figure(figsize=(3.4 * len(stats), 6.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(stats), squeeze=False)
    for col, (name, st) in enumerate(stats.items()):
        for row, (key, label) in enumerate((("context_freq", "context (seen) rate"), ("target_freq", "target rate"))):
            ax = axes[row, col]
            im = ax.imshow(st[key], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"{name}: {label}\nmean {st[key].mean():.3f}, min {st[key].min():.3f}", fontsize=9)
            ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=axes, shrink=0.6, label="fraction of images")
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def write_mask_report(generators: Mapping[str, MaskGenerator], batch_size: int, batches: int, n_images: int,
                      out: str | Path, overwrite: bool = False) -> dict[str, dict[str, Any]]:
    """Statistics of every generator (printed), `sample_masks.png`, `rate_maps.png` and `mask_stats.json` in `out`
    (a non-empty `out` is refused unless `overwrite`)."""
    out = Path(out)
    check_output(out, overwrite)
    stats = {mode: mask_statistics(gen, batch_size, batches) for mode, gen in generators.items()}
    for st in stats.values():
        print(format_statistics(st))
    out.mkdir(parents=True, exist_ok=True)
    plot_sample_masks(generators, n_images, batch_size, path=out / "sample_masks.png")
    plot_rate_maps(stats, path=out / "rate_maps.png")
    summary = {mode: {k: st[k] for k in ("grid", "batch_size", "batches", "seen_mean", "seen_std",
                                         "target_mean", "target_std")} | {"shapes": dict(st["shapes"])}
               for mode, st in stats.items()}
    write_json(out / "mask_stats.json", summary)
    print(f"wrote {out / 'sample_masks.png'}, {out / 'rate_maps.png'}, {out / 'mask_stats.json'}")
    return stats


__all__ = ["rectangle_shape", "mask_statistics", "format_statistics", "mask_labels", "plot_sample_masks",
           "plot_rate_maps", "write_mask_report"]
