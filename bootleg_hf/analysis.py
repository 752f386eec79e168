"""Representational analysis of a Bootleg encoder: linear CKA, inter-layer Pearson correlation, spatial autocorrelation.

Conventions used throughout:

* A *representation* is an array whose last axis is the feature (channel) axis; all leading axes are flattened into
  one sample axis, so `[B, N, D]` patch tokens become `B·N` samples of width `D`. Two representations compared with
  each other must hold the same samples in the same order (the same images, the same patch positions).
* Numbers are computed in float64 with NumPy; inputs may be NumPy arrays or (CPU or device) torch tensors.
* Only patch tokens are analysed (`collect_representations` drops CLS and register tokens), because only patch
  tokens are regressed by the predictor and only they have a grid position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

from .targets import TargetSpec, TargetTerm, normalized_pixels, patchify

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
    from .modeling_bootleg import BootlegModel

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
                            batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Patch-token features of `pixel_values [B, C, H, W]` at the requested layers.

    `layers`: `TargetTerm`s, `(block, kind)` pairs, a `TargetSpec`, or a spec string in the target grammar
    (e.g. `"embed,1:1:6,final"`); default `default_layers(depth)` = tokenizer output, every block's output, final-LN
    output. Kind `pixels` gives MAE's per-patch normalised pixels. The encoder runs in eval mode without gradients,
    `batch_size` images at a time, through its teacher fast path (`forward_representations`).

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
            outs = encoder.forward_representations(batch, feature_terms) if feature_terms else []
            for t, out in zip(feature_terms, outs):
                chunks[t].append(out[:, config.num_prefix_tokens:].float().cpu())
            for t in terms:
                if t.kind == "pixels":
                    chunks[t].append(normalized_pixels(patchify(batch.float(), config.patch_size)).cpu())
    finally:
        encoder.train(was_training)
    return {t.name: torch.cat(chunks[t]) for t in terms}


__all__ = [
    "PEARSON_NORMALIZATIONS", "SpatialAutocorrelation", "as_samples", "linear_cka", "cka_matrix", "standardize",
    "pearson", "pearson_matrix", "grid_distances", "spatial_autocorrelation", "default_layers", "encoder_of",
    "collect_representations",
]
