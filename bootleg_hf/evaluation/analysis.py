"""Representational analysis of a Bootleg encoder: linear CKA, inter-layer Pearson correlation, spatial
autocorrelation, and `analyze`, which runs them all on a data set and writes heat-maps and `analysis.json`.

Conventions used throughout:

* A *representation* is an array whose last axis is the feature (channel) axis; all leading axes are flattened into
  one sample axis, so `[B, N, D]` patch tokens become `B·N` samples of width `D`. Two representations compared with
  each other must hold the same samples in the same order (the same images, the same patch positions).
* Numbers are computed in float64 with NumPy; inputs may be NumPy arrays or (CPU or device) torch tensors.
* Only patch tokens are analysed (`collect_representations` drops CLS and register tokens), because only patch
  tokens are regressed by the predictor and only they have a grid position.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..checkpoints import check_output, load_encoder
from ..data import EvalTransform, load_image_dataset
from ..modeling_bootleg import BootlegModel
from ..precision import autocast
from ..reports import write_json
from ..targets import TargetSpec, TargetTerm, instance_zscore, merge_targets, normalized_pixels, patchify, zscore

PEARSON_NORMALIZATIONS = ("token", "channel", "none")
_TINY = 1e-12


def as_samples(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """`[..., d]` array or tensor → float64 NumPy array `[n, d]` (leading axes flattened into samples)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"a representation needs a sample axis and a feature axis, got shape {x.shape}")
    return x.reshape(-1, x.shape[-1])


def _check_same_samples(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"representations must cover the same samples: got {x.shape[0]} and {y.shape[0]} rows")
    if x.shape[0] < 2:
        raise ValueError("need at least 2 samples to compare representations")


# --------------------------------------------------------------------------------------------------------------------
# Linear CKA
# --------------------------------------------------------------------------------------------------------------------


def _centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=0, keepdims=True)


def linear_cka(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """Linear centred kernel alignment of two representations of the same samples.

    `x [n, d1]`, `y [n, d2]` (more leading axes are flattened into samples). With X, Y the column-centred features
    (each feature minus its mean over the n samples),

        CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F),

    which equals HSIC(K, L) / sqrt(HSIC(K, K)·HSIC(L, L)) for the linear kernels K = XXᵀ, L = YYᵀ. It lies in
    [0, 1], is 1 for identical representations, and is invariant to orthogonal transforms and isotropic scaling of
    either side (not to general invertible linear maps). Returns NaN when either side is constant over the samples.
    """
    x, y = as_samples(x), as_samples(y)
    _check_same_samples(x, y)
    x, y = _centred(x), _centred(y)
    cross = np.linalg.norm(y.T @ x) ** 2
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / denom) if denom > 0 else float("nan")


def _values(reps: Sequence | Mapping) -> list:
    return list(reps.values()) if isinstance(reps, Mapping) else list(reps)


def cka_matrix(reps: Sequence | Mapping, others: Sequence | Mapping | None = None) -> np.ndarray:
    """`[L, L]` matrix of `linear_cka` between every pair of representations (a sequence, or a mapping whose values
    are used in order) — symmetric, diagonal 1 — or, with `others`, the `[L, M]` matrix of every representation
    against every one of `others`. Widths may differ; the sample axes must agree. Each representation is centred,
    and its ‖XᵀX‖_F computed, once."""
    def prepare(values):
        mats = [_centred(as_samples(r)) for r in _values(values)]
        return mats, [np.linalg.norm(m.T @ m) for m in mats]

    rows, row_norms = prepare(reps)
    cols, col_norms = (rows, row_norms) if others is None else prepare(others)
    for m in rows + cols:
        _check_same_samples(rows[0], m)
    out = np.empty((len(rows), len(cols)))
    for i, a in enumerate(rows):
        for j in range(i if others is None else 0, len(cols)):
            denom = row_norms[i] * col_norms[j]
            out[i, j] = np.linalg.norm(cols[j].T @ a) ** 2 / denom if denom > 0 else np.nan
            if others is None:
                out[j, i] = out[i, j]
    return out


# --------------------------------------------------------------------------------------------------------------------
# Pearson correlation
# --------------------------------------------------------------------------------------------------------------------


def standardize(x: np.ndarray | torch.Tensor, normalize: str = "token") -> np.ndarray:
    """Standardise a representation `[n, d]` before the flattened Pearson correlation (see `pearson`).

    `token`: per sample (token), z-score over the d channels — the per-token normalisation of the Bootleg targets.
    `channel`: per channel, z-score over the n samples. `none`: unchanged. Population variance; a constant row
    (`token`) or column (`channel`) becomes zeros.
    """
    if normalize not in PEARSON_NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {PEARSON_NORMALIZATIONS}, got {normalize!r}")
    x = as_samples(x)
    if normalize == "none":
        return x
    axis = 1 if normalize == "token" else 0
    centred = x - x.mean(axis=axis, keepdims=True)
    std = centred.std(axis=axis, keepdims=True)
    return np.divide(centred, std, out=np.zeros_like(centred), where=std > _TINY)


def _unit_flat(z: np.ndarray) -> np.ndarray:
    """Flatten, centre globally and scale to unit norm (zeros stay zeros)."""
    v = z.ravel() - z.mean()
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v


def pearson(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, normalize: str = "token") -> float:
    """Pearson correlation of two equally shaped representations `[n, d]` over all n·d aligned (sample, channel)
    pairs, after standardising each with `standardize(·, normalize)`:

        r = np.corrcoef(standardize(x).ravel(), standardize(y).ravel())[0, 1].

    With `normalize="token"` (default) every token is a zero-mean unit-variance vector, so r is the mean over tokens
    of the per-token Pearson correlation across channels: "how similar is token t's feature vector in the two layers,
    in the normalisation the loss sees". With `"channel"` r is the mean over channels of the per-channel correlation
    across tokens; with `"none"` it is the plain correlation of the raw values (dominated by high-variance channels).
    Requires equal widths (channel c of one layer is paired with channel c of the other — the residual stream keeps
    channel identity across blocks). NaN when either side is constant.
    """
    x, y = as_samples(x), as_samples(y)
    if x.shape != y.shape:
        raise ValueError(f"Pearson correlation needs equally shaped representations, got {x.shape} and {y.shape}")
    _check_same_samples(x, y)
    a, b = _unit_flat(standardize(x, normalize)), _unit_flat(standardize(y, normalize))
    if not (a.any() and b.any()):
        return float("nan")
    return float(a @ b)


def pearson_matrix(reps: Sequence | Mapping, normalize: str = "token",
                   others: Sequence | Mapping | None = None) -> np.ndarray:
    """`[L, L]` matrix of `pearson(·, ·, normalize)` between every pair of equally shaped representations (a
    sequence, or a mapping whose values are used in order) — symmetric, diagonal 1 (NaN for a constant layer) — or,
    with `others`, the `[L, M]` matrix of every representation against every one of `others` (same shapes)."""
    rows = [as_samples(r) for r in _values(reps)]
    cols = rows if others is None else [as_samples(r) for r in _values(others)]
    for m in rows + cols:
        if m.shape != rows[0].shape:
            raise ValueError(f"Pearson correlation needs equally shaped representations, got {rows[0].shape} and "
                             f"{m.shape}")
    if rows[0].shape[0] < 2:
        raise ValueError("need at least 2 samples to compare representations")
    flat_rows = np.stack([_unit_flat(standardize(m, normalize)) for m in rows])
    flat_cols = flat_rows if others is None else np.stack([_unit_flat(standardize(m, normalize)) for m in cols])
    out = flat_rows @ flat_cols.T
    out[~flat_rows.any(axis=1), :] = np.nan
    out[:, ~flat_cols.any(axis=1)] = np.nan
    return out


# --------------------------------------------------------------------------------------------------------------------
# Spatial autocorrelation
# --------------------------------------------------------------------------------------------------------------------


class SpatialAutocorrelation(NamedTuple):
    """`similarity[i]` = mean cosine similarity of patch pairs whose grid centres lie `distances[i]` apart (in patch
    units, exact Euclidean distances, ascending); `pairs[i]` = number of ordered position pairs per image at that
    distance (each image contributes every pair once, so every image has the same weight)."""

    distances: np.ndarray
    similarity: np.ndarray
    pairs: np.ndarray


def grid_distances(grid_h: int, grid_w: int) -> np.ndarray:
    """`[N, N]` Euclidean distances between the centres of the raster-ordered positions of a grid_h × grid_w grid."""
    rows, cols = np.divmod(np.arange(grid_h * grid_w), grid_w)
    return np.hypot(rows[:, None] - rows[None, :], cols[:, None] - cols[None, :])


def spatial_autocorrelation(patch_tokens: np.ndarray | torch.Tensor, max_distance: float | None = None,
                            center: bool = True) -> SpatialAutocorrelation:
    """Mean cosine similarity between patch embeddings as a function of their distance on the patch grid.

    `patch_tokens [n, gh, gw, d]`: one layer's patch features of n images. With `center=True` (default) the
    dataset-mean patch vector (mean over all images and positions) is first subtracted, so that a component shared
    by every token (large in ViT residual streams) does not make all pairs look alike. Then, for every image and
    every ordered pair of positions (p, q) with Euclidean grid distance ‖p − q‖ ≤ `max_distance` (default: the
    shorter grid side − 1), the cosine similarity of the two vectors is averaged over all images and all pairs at
    that exact distance. Distance 0 pairs each token with itself, so the value there is 1 (unless a centred token is
    exactly zero, which counts as similarity 0).
    """
    if isinstance(patch_tokens, torch.Tensor):
        patch_tokens = patch_tokens.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(patch_tokens, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"patch_tokens must be [images, grid_h, grid_w, channels], got shape {x.shape}")
    n, gh, gw, d = x.shape
    x = x.reshape(n, gh * gw, d)
    if center:
        x = x - x.mean(axis=(0, 1), keepdims=True)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    x = np.divide(x, norm, out=np.zeros_like(x), where=norm > _TINY)
    by_position = x.transpose(1, 0, 2).reshape(gh * gw, n * d)
    mean_gram = by_position @ by_position.T / n  # [N, N]: mean over images of the pairwise cosines
    dist = grid_distances(gh, gw)
    max_distance = min(gh, gw) - 1 if max_distance is None else max_distance
    keys = np.round(dist, 9)
    distances = np.unique(keys[keys <= max_distance + 1e-9])
    similarity = np.array([mean_gram[keys == r].mean() for r in distances])
    pairs = np.array([int((keys == r).sum()) for r in distances])
    return SpatialAutocorrelation(distances, similarity, pairs)


# --------------------------------------------------------------------------------------------------------------------
# Collecting representations from a model
# --------------------------------------------------------------------------------------------------------------------


def default_layers(num_hidden_layers: int) -> list[TargetTerm]:
    """Tokenizer output, the output of every block (before the final LayerNorm), and the final-LN output."""
    return [TargetTerm(0, "embed"), *(TargetTerm(k, "out") for k in range(1, num_hidden_layers + 1)),
            TargetTerm(num_hidden_layers, "final")]


def encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The `BootlegModel` inside `model`: itself, the teacher of a `BootlegForPretraining`, or the base model of a
    task model (classification, segmentation)."""
    if isinstance(model, BootlegModel):
        return model
    teacher = getattr(model, "teacher", None)
    if isinstance(teacher, BootlegModel):
        return teacher
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if isinstance(base, BootlegModel):
        return base
    raise TypeError(f"expected a Bootleg encoder (or a model holding one), got {type(model).__name__}")


def _as_terms(layers, num_hidden_layers: int) -> list[TargetTerm]:
    if layers is None:
        return default_layers(num_hidden_layers)
    if isinstance(layers, str):
        return list(TargetSpec.parse(layers, num_hidden_layers).terms)
    if isinstance(layers, TargetSpec):
        return list(layers.terms)
    return [t if isinstance(t, TargetTerm) else TargetTerm(*t) for t in layers]


@torch.no_grad()
def collect_representations(model: torch.nn.Module, pixel_values: torch.Tensor, layers=None,
                            batch_size: int = 64, precision: str = "auto") -> dict[str, torch.Tensor]:
    """Patch-token features of `pixel_values [B, C, H, W]` at the requested layers.

    `layers`: `TargetTerm`s, `(block, kind)` pairs, a `TargetSpec`, or a spec string in the target grammar
    (e.g. `"embed,1:1:6,final"`); default `default_layers(depth)` = tokenizer output, every block's output, final-LN
    output. Kind `pixels` gives MAE's per-patch normalised pixels. The encoder runs in eval mode without gradients,
    `batch_size` images at a time, through its teacher fast path (`forward_representations`), with `precision`
    (`auto`: bf16 autocast where bf16 matmuls are native, `bootleg_hf.precision`).

    Returns `{term.name: [B, N, D] float32 CPU tensor}` in the order of `layers` (names: `embed`, `1.out`, …,
    `final`, `pixels`), with CLS and register tokens dropped.
    """
    encoder = encoder_of(model)
    config = encoder.config
    terms = _as_terms(layers, config.num_hidden_layers)
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be [batch, channels, height, width], got shape {tuple(pixel_values.shape)}")
    feature_terms = [t for t in terms if t.kind != "pixels"]
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    chunks: dict[TargetTerm, list[torch.Tensor]] = {t: [] for t in terms}
    try:
        for start in range(0, pixel_values.shape[0], batch_size):
            batch = pixel_values[start:start + batch_size].to(device)
            with autocast(device, precision):
                outs = encoder.forward_representations(batch, feature_terms) if feature_terms else []
            for t, out in zip(feature_terms, outs):
                chunks[t].append(out[:, config.num_prefix_tokens:].float().cpu())
            for t in terms:
                if t.kind == "pixels":
                    chunks[t].append(normalized_pixels(patchify(batch.float(), config.patch_size)).cpu())
    finally:
        encoder.train(was_training)
    return {t.name: torch.cat(chunks[t]) for t in terms}


# --------------------------------------------------------------------------------------------------------------------
# Inputs and the whole analysis
# --------------------------------------------------------------------------------------------------------------------


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


def target_representations(reps: dict[str, torch.Tensor], spec, norm: str = "token") -> dict[str, torch.Tensor]:
    """Per-target-term regression targets (``reps[name]``: ``[images, patches, D]``; z-scored per token, or per
    channel over each image's patches with ``norm="instance"``; pixels already normalised) plus, for several terms,
    the merged target under ``spec.merge`` (concatenation or data2vec-style average), as pretraining builds them."""
    normalise = instance_zscore if norm == "instance" else zscore
    targets = {t.name: (reps[t.name] if t.kind == "pixels" else normalise(reps[t.name])) for t in spec.terms}
    if len(targets) > 1:
        merged = merge_targets(list(targets.values()), spec.merge, layer_norm=norm == "instance")
        targets[f"merged ({spec.merge})"] = merged
    return targets


def analyze(model: torch.nn.Module | str, dataset: Any, num_images: int, out_dir: str | Path, *, split: str = "test",
            batch_size: int = 64, max_distance: float | None = None, pearson_normalize: str = "token",
            remove_position_mean: bool = False, plots: bool = True, weights: str = "teacher",
            device: str | torch.device | None = None, overwrite: bool = False,
            precision: str = "auto") -> dict[str, Any]:
    """Run the whole analysis on ``num_images`` images of ``dataset``; write PNGs and ``analysis.json`` into
    ``out_dir`` and return the JSON content.

    ``model``: a ``BootlegModel`` (or a model holding one, e.g. ``BootlegForPretraining`` → its teacher) or a spec for
    ``load_encoder`` (with ``weights``: the teacher or the student of a pretraining folder), moved to ``device`` and
    run with ``precision`` (``auto``: bf16 autocast where bf16 matmuls are native).
    ``dataset``: anything ``load_image_dataset`` accepts, or a ``[B, C, H, W]`` tensor.
    ``remove_position_mean``: subtract from every layer (and target) its mean over the images at each grid position
    first, so that the analysis sees only image-dependent variation, not the part of a token fixed by its position
    (at initialisation the sin-cos position embedding dominates every layer). A non-empty ``out_dir`` is refused
    unless ``overwrite``.
    """
    start = time.perf_counter()
    source = type(model).__name__ if not isinstance(model, str) else model + (f" ({weights})" if weights != "teacher"
                                                                               else "")
    encoder = encoder_of(load_encoder(model, weights) if isinstance(model, str) else model)
    if device is not None:
        encoder = encoder.to(device)
    config = encoder.config
    out_dir = Path(out_dir)
    check_output(out_dir, overwrite, inputs=[model, dataset])
    out_dir.mkdir(parents=True, exist_ok=True)

    pixel_values = load_pixel_values(dataset, num_images, tuple(config.image_hw), split)
    spec = config.target_spec
    layers = default_layers(config.num_hidden_layers)
    extra = [t for t in spec.terms if t not in layers]  # mid/attn/mlp/pixels targets are collected as well
    reps = collect_representations(encoder, pixel_values, layers + extra, batch_size=batch_size, precision=precision)
    if remove_position_mean:
        reps = {name: r - r.mean(0, keepdim=True) for name, r in reps.items()}
    names = [t.name for t in layers]
    layer_reps = {name: reps[name] for name in names}

    pear = pearson_matrix(layer_reps, normalize=pearson_normalize)
    cka = cka_matrix(layer_reps)

    targets = target_representations(reps, spec, config.target_norm)
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
    write_json(out_dir / "analysis.json", result)
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


__all__ = ["PEARSON_NORMALIZATIONS", "as_samples", "linear_cka", "cka_matrix", "standardize", "pearson",
           "pearson_matrix", "SpatialAutocorrelation", "grid_distances", "spatial_autocorrelation", "default_layers",
           "encoder_of", "collect_representations", "load_pixel_values", "target_representations", "analyze",
           "write_figures", "print_summary"]
