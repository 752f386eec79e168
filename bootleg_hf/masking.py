"""Multi-block masking for Bootleg (docs/design.md §5), legacy I-JEPA masking, MAE random masking, data2vec 2.0's
inverse block masking, ColorMAE's green-noise masking and Franca's cyclic block masking.

Conventions: the patch grid is ``Gh × Gw`` with ``N = Gh·Gw`` tokens in raster (row-major) order, token
``t`` ↔ (row ``t // Gw``, column ``t % Gw``). Rectangle shapes are ``h × w`` = rows × columns and the
aspect ratio is ``a = h / w``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .configuration_bootleg import HIDDEN_TARGET_MODES
from .configuration_bootleg import MASK_MODES as MODES

__all__ = ["MaskBatch", "MaskGenerator", "BootlegDataCollator", "MODES"]

# target rectangles exist in the block modes only; the other modes keep the Bootleg values (unused, shown in repr)
_DEFAULT_TARGET_SCALE = {mode: (0.16, 0.183) for mode in MODES} | {"ijepa": (0.15, 0.2)}
# cyclic_block: the aspect range of its visible block, Franca's (min_aspect 0.3 of its masking generator)
_DEFAULT_TARGET_ASPECT = ({mode: (2 / 3, 3 / 2) for mode in MODES}
                          | {"ijepa": (0.75, 1.5), "cyclic_block": (0.3, 1 / 0.3)})
_MAX_REPLACEMENTS = 100  # bootleg: rounds of re-placing images whose context is below min_context
_LEGACY_TIMEOUT = 20  # ijepa: failed context placements before one target constraint is dropped


@dataclass
class MaskBatch:
    """Masks of one batch.

    Attributes:
        context_indices: ``[B, K]`` int64, visible (student) token indices, raster order per row, unique.
        target_indices: ``[B, R, T]`` int64, token indices of each target rectangle (raster order);
            ``R`` = number of rectangles (1 in ``random`` mode, where ``T`` = all hidden tokens).
        target_mask: ``[B, N]`` bool, union of all target positions (statistics only).
    """

    context_indices: torch.Tensor
    target_indices: torch.Tensor
    target_mask: torch.Tensor


def _pair(name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    return lo, hi


class MaskGenerator:
    """Samples context/target token sets for a ``Gh × Gw`` patch grid (docs/design.md §5).

    Modes:
        ``"bootleg"``: the fixed multi-block sampler. Per batch one target size (scale and log-aspect drawn
            independently; rectangles 1, 3, … are ``h × w`` and 2, 4, … are ``w × h``) and one background
            size; per image uniform placement over all valid offsets; context = background minus the union
            of rectangles; images with fewer than ``min_context`` context tokens are re-placed; contexts are
            truncated to the batch minimum by dropping tokens from a random corner in a random scan
            orientation.
        ``"ijepa"``: the legacy I-JEPA sampler, bugs included (one uniform draw for both scale and aspect,
            exclusive placement bound, background clamped below the full grid, context constrained to avoid
            the targets with ``> min_context`` acceptance and the drop-a-constraint-every-20-failures
            relaxation, truncation keeping the first raster indices). Not reproduced: the legacy seeding
            (a shared step counter plus the worker's global RNG, identical across ranks); masks here are
            seeded like every other mode. Legacy also requires each *target* block to have more than
            ``min_keep`` tokens, which either always holds or makes it loop forever; that check is skipped.
        ``"random"``: MAE uniform masking; ``int(N·(1 − mask_ratio))`` visible tokens, one "rectangle"
            holding every hidden token (or, with ``prediction_ratio``, CrossMAE's partial reconstruction: a
            uniformly drawn subset of them, ``N − int(N·(1 − mask_ratio)) − int(N·(mask_ratio −
            prediction_ratio))`` tokens, as CrossMAE's ``kept_mask_ratio`` counts them).
        ``"inverse_block"``: data2vec 2.0's inverse block masking: ``int(N·(1 − mask_ratio + block_adjust) /
            block_size²)`` block centres drawn uniformly with replacement, each grown to a ``block_size`` square
            (centred, offsets ``i − block_size // 2``, clamped to the grid as data2vec clamps them) that is
            *visible*; then exactly ``int(N·(1 − mask_ratio))`` visible tokens per image (surplus ones dropped,
            missing ones added, each uniformly at random); one "rectangle" holding every hidden token (or the
            ``prediction_ratio`` subset, as in ``"random"``).
        ``"green_noise"``: ColorMAE's green-noise masking: per image, white Gaussian noise band-pass filtered as the
            difference of two Gaussian blurs (standard deviations ``noise_sigmas`` = (σ1, σ2), σ1 < σ2, in patches;
            computed on a grid padded by ⌈3σ2⌉ on each side and cropped, so no border effects, as ColorMAE crops
            windows from larger patterns); the ``int(N·(1 − mask_ratio))`` tokens with the largest values are
            visible (ColorMAE keeps the strongest values); targets as in ``"random"``. ColorMAE's own σ values are
            not published in a form this project could read: (1, 2), a band around a period of ~6.5 patches, is
            ours.
        ``"cyclic_block"``: Franca's CyclicMask (its inverse block masking with a circular shift): per image one
            visible rectangle of ``k = int(N·(1 − mask_ratio))`` tokens — log-aspect uniform in ``target_aspect``
            (default Franca's (0.3, 1/0.3)) narrowed so that the rectangle fits the grid, sides
            ``⌈√(k·a)⌉ × ⌈√(k/a)⌉``, uniform placement, the first ``k`` of its tokens in raster order — then
            cyclically shifted by a uniform (rows, columns) offset, wrapping around the grid edges, so every
            position is equally likely to be visible; targets as in ``"random"``.

    Every ``generate`` call builds a fresh ``numpy`` RNG from
    ``SeedSequence([seed, epoch, rank, worker, *batch_index])``, so masks are a pure function of these inputs.
    """

    def __init__(
        self,
        grid: int | tuple[int, int],
        mode: str = "bootleg",
        *,
        num_targets: int = 4,
        target_scale: tuple[float, float] | None = None,
        target_aspect: tuple[float, float] | None = None,
        context_scale: tuple[float, float] = (0.85, 1.0),
        min_context: int = 10,
        mask_ratio: float = 0.75,
        block_size: int = 3,
        block_adjust: float = 0.07,
        prediction_ratio: float | None = None,
        noise_sigmas: tuple[float, float] = (1.0, 2.0),
        seed: int = 0,
    ) -> None:
        dims = (grid, grid) if isinstance(grid, (int, np.integer)) else tuple(int(g) for g in grid)
        if len(dims) != 2:
            raise ValueError(f"grid must be an int or a (height, width) pair, got {grid!r}")
        gh, gw = dims
        if gh < 4 or gw < 4:
            raise ValueError(f"grid must be at least 4×4 patches, got {gh}×{gw}")
        if mode not in MODES:
            raise ValueError(f"unknown masking mode {mode!r}; expected one of {MODES}")
        if num_targets < 1:
            raise ValueError(f"num_targets must be >= 1, got {num_targets}")
        self.grid: tuple[int, int] = (int(gh), int(gw))
        self.mode = mode
        self.num_targets = int(num_targets)
        self.target_scale = _pair("target_scale",
                                  _DEFAULT_TARGET_SCALE[mode] if target_scale is None else target_scale)
        self.target_aspect = _pair("target_aspect",
                                   _DEFAULT_TARGET_ASPECT[mode] if target_aspect is None else target_aspect)
        self.context_scale = _pair("context_scale", context_scale)
        for name in ("target_scale", "context_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got {(lo, hi)}")
        lo, hi = self.target_aspect
        if not 0 < lo <= hi:
            raise ValueError(f"target_aspect must satisfy 0 < low <= high, got {(lo, hi)}")
        n = self.num_patches
        if not 0 <= min_context < n:
            raise ValueError(f"min_context must be in [0, {n}) for a {gh}×{gw} grid, got {min_context}")
        self.min_context = int(min_context)
        if not 0 < mask_ratio < 1 or not 1 <= int(n * (1 - mask_ratio)) < n:
            raise ValueError(f"mask_ratio={mask_ratio} must leave between 1 and {n - 1} of {n} tokens visible")
        self.mask_ratio = float(mask_ratio)
        if not 1 <= block_size <= min(gh, gw):
            raise ValueError(f"block_size must be in [1, {min(gh, gw)}] for a {gh}×{gw} grid, got {block_size}")
        if block_adjust < 0:
            raise ValueError(f"block_adjust must be >= 0, got {block_adjust}")
        self.block_size, self.block_adjust = int(block_size), float(block_adjust)
        sigma1, sigma2 = _pair("noise_sigmas", noise_sigmas)
        if not 0 < sigma1 < sigma2:
            raise ValueError(f"noise_sigmas must satisfy 0 < sigma1 < sigma2 (a band-pass), got {(sigma1, sigma2)}")
        self.noise_sigmas = (sigma1, sigma2)
        if prediction_ratio is not None:
            if mode not in HIDDEN_TARGET_MODES:
                raise ValueError(f"prediction_ratio (partial reconstruction) needs a mode in {HIDDEN_TARGET_MODES}, "
                                 f"whose targets are every hidden token; got mode {mode!r}")
            if not 0 < prediction_ratio <= mask_ratio:
                raise ValueError(f"prediction_ratio must lie in (0, mask_ratio={mask_ratio}], got {prediction_ratio}")
        self.prediction_ratio = None if prediction_ratio is None else float(prediction_ratio)
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.seed = int(seed)
        if mode in ("bootleg", "ijepa"):
            # The smallest background must be able to hold the context at all; otherwise re-placement (bootleg)
            # or the legacy relaxation (ijepa, which would loop forever) cannot succeed.
            bh, bw = self._background_size(self.context_scale[0])
            strict = mode == "ijepa"
            if bh * bw < self.min_context + strict:
                need, fix = ("more than", "") if strict else ("at least", " or raise context_scale")
                raise ValueError(
                    f"min_context={self.min_context} is infeasible: the smallest {mode} background on a "
                    f"{gh}×{gw} grid is {bh}×{bw} = {bh * bw} tokens, but the context needs {need} "
                    f"{self.min_context}; lower min_context{fix}")
        # Scan orders for the bootleg truncation: 4 corners × (row-wise, column-wise). rank[c, p] is the scan
        # position of raster token p under order c; perm[c] is its inverse (scan position → raster token).
        r, c = np.divmod(np.arange(n), gw)
        ranks = []
        for flip_r in (False, True):
            for flip_c in (False, True):
                rr, cc = (gh - 1 - r if flip_r else r), (gw - 1 - c if flip_c else c)
                ranks += [rr * gw + cc, cc * gh + rr]
        self._scan_rank = np.stack(ranks)  # [8, N]
        self._scan_perm = np.argsort(self._scan_rank, axis=1)  # [8, N]

    @classmethod
    def from_config(cls, config: Any, seed: int = 0) -> "MaskGenerator":
        """The generator a `BootlegConfig` describes (its `mask_*` fields, at the config's patch grid); every value is
        validated here."""
        return cls(config.grid_size, mode=config.mask_mode, num_targets=config.mask_num_targets,
                   target_scale=config.mask_target_scale, target_aspect=config.mask_target_aspect,
                   context_scale=config.mask_context_scale, min_context=config.mask_min_context,
                   mask_ratio=config.mask_ratio, block_size=config.mask_block_size,
                   block_adjust=config.mask_block_adjust, prediction_ratio=config.mask_prediction_ratio,
                   noise_sigmas=tuple(config.mask_noise_sigmas), seed=seed)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def __repr__(self) -> str:
        return (f"MaskGenerator(grid={self.grid}, mode={self.mode!r}, num_targets={self.num_targets}, "
                f"target_scale={self.target_scale}, target_aspect={self.target_aspect}, "
                f"context_scale={self.context_scale}, min_context={self.min_context}, "
                f"mask_ratio={self.mask_ratio}, block_size={self.block_size}, block_adjust={self.block_adjust}, "
                f"prediction_ratio={self.prediction_ratio}, noise_sigmas={self.noise_sigmas}, seed={self.seed})")

    # ------------------------------------------------------------------------------------------------ API
    def generate(
        self,
        batch_size: int,
        *,
        epoch: int = 0,
        batch_index: int | Sequence[int] = 0,
        rank: int = 0,
        worker: int = 0,
        seed: int | None = None,
    ) -> MaskBatch:
        """Masks for ``batch_size`` images; a pure function of (seed, epoch, rank, worker, batch_index).

        ``batch_index`` is an int or a sequence of ints (e.g. the dataset indices of the batch's samples).
        Returns a :class:`MaskBatch` (``context_indices [B, K]``, ``target_indices [B, R, T]``,
        ``target_mask [B, N]``).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        bidx = [int(batch_index)] if isinstance(batch_index, (int, np.integer)) else [int(i) for i in batch_index]
        words = [self.seed if seed is None else int(seed), int(epoch), int(rank), int(worker), *bidx]
        if min(words) < 0:
            raise ValueError(f"seed, epoch, rank, worker and batch_index must be non-negative, got {words}")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))
        sampler = {"bootleg": self._bootleg, "ijepa": self._ijepa, "random": self._random,
                   "inverse_block": self._inverse_block, "green_noise": self._green_noise,
                   "cyclic_block": self._cyclic_block}[self.mode]
        ctx, tgt, union = sampler(rng, int(batch_size))
        return MaskBatch(torch.from_numpy(ctx.astype(np.int64, copy=False)),
                         torch.from_numpy(tgt.astype(np.int64, copy=False)), torch.from_numpy(union))

    # -------------------------------------------------------------------------------------------- helpers
    def _background_size(self, s: float) -> tuple[int, int]:
        """Background (context block) side lengths for background scale ``s``."""
        gh, gw = self.grid
        m = int(self.num_patches * s)
        if self.mode == "ijepa":  # legacy: aspect 1, then `while side >= grid: side -= 1`
            side = round(math.sqrt(m))
            return max(1, min(side, gh - 1)), max(1, min(side, gw - 1))
        f = math.sqrt(m / self.num_patches)  # for a square grid round(G·f) == round(√m)
        return max(1, min(gh, round(gh * f))), max(1, min(gw, round(gw * f)))

    def _boxes(self, top: np.ndarray, left: np.ndarray, h: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Boolean ``[..., N]`` masks of boxes with corners ``top``/``left`` (``[...]``) and sizes broadcastable."""
        gh, gw = self.grid
        rows, cols = np.arange(gh), np.arange(gw)
        t, l = top[..., None], left[..., None]
        row_in = (rows >= t) & (rows < t + np.asarray(h)[..., None])  # [..., Gh]
        col_in = (cols >= l) & (cols < l + np.asarray(w)[..., None])  # [..., Gw]
        return (row_in[..., :, None] & col_in[..., None, :]).reshape(*top.shape, gh * gw)

    def _target_indices(self, top: np.ndarray, left: np.ndarray, shapes: np.ndarray) -> np.ndarray:
        """``[B, R, T]`` raster-ordered indices of rectangles ``[B, R]`` with per-rectangle shapes ``[R, 2]``."""
        gw = self.grid[1]
        offsets = np.stack([(np.arange(h)[:, None] * gw + np.arange(w)).ravel() for h, w in shapes])  # [R, T]
        return (top * gw + left)[..., None] + offsets

    @staticmethod
    def _rows(mask: np.ndarray, k: int) -> np.ndarray:
        """Indices of the True entries of a ``[B, N]`` mask with exactly ``k`` per row → ``[B, k]`` (sorted)."""
        return np.nonzero(mask)[1].reshape(mask.shape[0], k)

    # --------------------------------------------------------------------------------------------- modes
    def _bootleg(self, rng: np.random.Generator, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        gh, gw = self.grid
        n_tok, r_cnt = self.num_patches, self.num_targets
        # Target size: scale and log-aspect independent (fixes I-JEPA's shared draw).
        s = rng.uniform(*self.target_scale)
        a = math.exp(rng.uniform(math.log(self.target_aspect[0]), math.log(self.target_aspect[1])))
        n = int(n_tok * s)
        h, w = round(math.sqrt(n * a)), round(math.sqrt(n / a))
        # Rectangles alternate h×w / w×h, so each side must fit both grid dimensions (when both are used).
        cap = min(gh, gw) if r_cnt > 1 else None
        h, w = max(1, min(h, cap or gh)), max(1, min(w, cap or gw))
        shapes = np.array([(h, w) if k % 2 == 0 else (w, h) for k in range(r_cnt)])  # [R, 2]
        bh, bw = self._background_size(rng.uniform(*self.context_scale))

        def place(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            # Inclusive upper bounds: every offset that keeps the box inside the grid is possible.
            top = rng.integers(0, gh - shapes[:, 0] + 1, size=(m, r_cnt))
            left = rng.integers(0, gw - shapes[:, 1] + 1, size=(m, r_cnt))
            union = self._boxes(top, left, shapes[:, 0], shapes[:, 1]).any(axis=1)  # [m, N]
            bg = self._boxes(rng.integers(0, gh - bh + 1, size=m), rng.integers(0, gw - bw + 1, size=m), bh, bw)
            return top, left, union, bg & ~union

        top, left, union, ctx = place(b)
        counts = ctx.sum(axis=1)
        bad = np.flatnonzero(counts < self.min_context)
        for _ in range(_MAX_REPLACEMENTS):  # re-place only the failing subset, vectorised
            if bad.size == 0:
                break
            top[bad], left[bad], union[bad], ctx[bad] = place(bad.size)
            counts[bad] = ctx[bad].sum(axis=1)
            bad = bad[counts[bad] < self.min_context]
        if bad.size:
            raise ValueError(
                f"could not place a context of >= {self.min_context} tokens on a {gh}×{gw} grid with "
                f"{r_cnt} targets of {h}×{w} and a {bh}×{bw} background after {_MAX_REPLACEMENTS} "
                f"re-placements; lower min_context, num_targets or target_scale")

        # Truncate to the batch minimum K: per image, drop the first (count − K) context tokens along a scan
        # that starts at a random corner, row- or column-wise (8 orders), so no side of the grid is favoured.
        k = int(counts.min())
        order = rng.integers(0, 8, size=b)
        ctx_scan = np.take_along_axis(ctx, self._scan_perm[order], axis=1)  # [B, N] in scan order
        keep_scan = ctx_scan & (np.cumsum(ctx_scan, axis=1) > (counts - k)[:, None])
        keep = np.take_along_axis(keep_scan, self._scan_rank[order], axis=1)  # back to raster order
        return self._rows(keep, k), self._target_indices(top, left, shapes), union

    def _ijepa(self, rng: np.random.Generator, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        gh, gw = self.grid
        r_cnt = self.num_targets
        # Legacy size rule: ONE uniform r drives both scale and aspect; sides clamped strictly below the grid.
        r = rng.random()
        (s0, s1), (a0, a1) = self.target_scale, self.target_aspect
        s, a = s0 + r * (s1 - s0), a0 + r * (a1 - a0)
        n = int(self.num_patches * s)
        h = max(1, min(round(math.sqrt(n * a)), gh - 1))
        w = max(1, min(round(math.sqrt(n / a)), gw - 1))
        bh, bw = self._background_size(rng.uniform(*self.context_scale))

        # Exclusive upper bounds (legacy off-by-one): the last row/column is never covered.
        top, left = rng.integers(0, gh - h, size=(b, r_cnt)), rng.integers(0, gw - w, size=(b, r_cnt))
        rects = self._boxes(top, left, h, w)  # [B, R, N]
        # covered[:, j] = union of the first j rectangles: the constraint when j target complements are active.
        covered = np.concatenate([np.zeros_like(rects[:, :1]), np.logical_or.accumulate(rects, axis=1)], axis=1)
        ctx = np.zeros((b, self.num_patches), dtype=bool)
        pending = np.arange(b)
        for active in range(r_cnt, -1, -1):  # legacy: after 20 failures drop the last constraint
            for _ in range(_LEGACY_TIMEOUT):
                if pending.size == 0:
                    break
                bg = self._boxes(rng.integers(0, gh - bh, size=pending.size),
                                 rng.integers(0, gw - bw, size=pending.size), bh, bw)
                cand = bg & ~covered[pending, active]
                ok = cand.sum(axis=1) > self.min_context  # legacy acceptance is strict
                ctx[pending[ok]] = cand[ok]
                pending = pending[~ok]
        assert pending.size == 0  # the unconstrained background always passes (checked in __init__)
        counts = ctx.sum(axis=1)
        k = int(counts.min())
        keep = ctx & (np.cumsum(ctx, axis=1) <= k)  # legacy: keep the first K raster indices
        shapes = np.array([(h, w)] * r_cnt)
        return self._rows(keep, k), self._target_indices(top, left, shapes), rects.any(axis=1)

    def _random(self, rng: np.random.Generator, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.num_patches
        k = int(n * (1 - self.mask_ratio))
        visible = np.zeros((b, n), dtype=bool)
        np.put_along_axis(visible, np.argsort(rng.random((b, n)))[:, :k], True, axis=1)
        return self._hidden_targets(rng, visible, k)


    def _inverse_block(self, rng: np.random.Generator, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        gh, gw = self.grid
        n, size = self.num_patches, self.block_size
        k = int(n * (1 - self.mask_ratio))
        centres = rng.integers(0, n, size=(b, int(n * (1 - self.mask_ratio + self.block_adjust) / size**2)))
        offsets = np.arange(size) - size // 2
        rows = np.clip(centres[..., None, None] // gw + offsets[:, None], 0, gh - 1)  # [B, C, size, 1]
        cols = np.clip(centres[..., None, None] % gw + offsets[None, :], 0, gw - 1)  # [B, C, 1, size]
        blocks = np.zeros((b, n), dtype=bool)
        np.put_along_axis(blocks, (rows * gw + cols).reshape(b, -1), True, axis=1)
        # exactly k visible: block tokens first in random order, then the others in random order; keep the first k
        order = np.argsort(rng.random((b, n)) + ~blocks, axis=1)[:, :k]
        visible = np.zeros((b, n), dtype=bool)
        np.put_along_axis(visible, order, True, axis=1)
        return self._hidden_targets(rng, visible, k)

    def _green_noise(self, rng: np.random.Generator, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        gh, gw = self.grid
        pad = math.ceil(3 * self.noise_sigmas[1])
        noise = rng.standard_normal((b, gh + 2 * pad, gw + 2 * pad))
        # separable blurs as matrices: out[i] = sum_j K[i, j] noise[j] over the padded axis, cropped to the grid
        band = sum(sign * _blur_matrix(gh, pad, sigma) @ noise @ _blur_matrix(gw, pad, sigma).T
                   for sign, sigma in zip((1, -1), self.noise_sigmas))
        k = int(self.num_patches * (1 - self.mask_ratio))
        strongest = np.argsort(-band.reshape(b, -1), axis=1, kind="stable")[:, :k]
        visible = np.zeros((b, self.num_patches), dtype=bool)
        np.put_along_axis(visible, strongest, True, axis=1)
        return self._hidden_targets(rng, visible, k)

    def _cyclic_block(self, rng: np.random.Generator, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        gh, gw = self.grid
        n = self.num_patches
        k = int(n * (1 - self.mask_ratio))
        # aspect a = h / w: ⌈√(k·a)⌉ ≤ Gh needs a ≤ Gh²/k and ⌈√(k/a)⌉ ≤ Gw needs a ≥ k/Gw²
        hi = min(math.log(self.target_aspect[1]), math.log(gh**2 / k))
        lo = min(max(math.log(self.target_aspect[0]), math.log(k / gw**2)), hi)
        a = np.exp(rng.uniform(lo, hi, size=b))
        h = np.minimum(np.ceil(np.sqrt(k * a)), gh).astype(np.int64)
        w = np.minimum(np.ceil(np.sqrt(k / a)), gw).astype(np.int64)
        block = self._boxes(rng.integers(0, gh - h + 1), rng.integers(0, gw - w + 1), h, w)  # [B, N], h·w ≥ k
        block &= np.cumsum(block, axis=1) <= k
        # shift by (dy, dx) with wrap-around: position p shows the block's token at p − (dy, dx)
        dy, dx = rng.integers(0, gh, size=(b, 1)), rng.integers(0, gw, size=(b, 1))
        rows, cols = np.divmod(np.arange(n), gw)
        visible = np.take_along_axis(block, (rows - dy) % gh * gw + (cols - dx) % gw, axis=1)
        return self._hidden_targets(rng, visible, k)

    def _num_predicted(self, ratio: float) -> int:
        n = self.num_patches
        return n - int(n * (1 - self.mask_ratio)) - int(n * (self.mask_ratio - ratio))

    def _hidden_targets(self, rng: np.random.Generator, visible: np.ndarray,
                        k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Context = the `k` visible tokens; one target "rectangle" = every hidden token, or with `prediction_ratio`
        a uniformly drawn subset of them (drawn after the context, so the context is the same either way)."""
        targets = ~visible
        if self.prediction_ratio is not None:
            p = self._num_predicted(self.prediction_ratio)
            chosen = np.argsort(rng.random(visible.shape) + visible, axis=1)[:, :p]  # hidden tokens sort first
            targets = np.zeros_like(visible)
            np.put_along_axis(targets, chosen, True, axis=1)
        return self._rows(visible, k), self._rows(targets, int(targets[0].sum()))[:, None, :], targets


def _blur_matrix(size: int, pad: int, sigma: float) -> np.ndarray:
    """``[size, size + 2·pad]``: a normalised Gaussian blur (std ``sigma``) of a padded axis, cropped to its centre."""
    offsets = np.arange(size + 2 * pad)[None, :] - (np.arange(size)[:, None] + pad)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2) * (np.abs(offsets) <= pad)
    return weights / weights.sum(axis=1, keepdims=True)


def _default_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


class BootlegDataCollator:
    """Stacks examples and adds ``context_indices [B, K]`` and ``target_indices [B, R, T]`` masks.

    Input examples are dicts with ``image_key`` (a ``[C, H, W]`` tensor/array), optional ``labels`` and
    optional ``sample_index`` (the example's dataset index). Output: ``pixel_values [B, C, H, W]``,
    ``labels [B]`` (int64, when present), ``context_indices``, ``target_indices``; other keys are dropped.

    With ``repeats`` M > 1 (data2vec 2.0's multi-mask) each image gets M masked views: the mask tensors have
    ``B·M`` rows, rows ``b·M … b·M + M − 1`` for image b (``BootlegForPretraining`` runs its teacher once per image).

    Reproducibility: masks are seeded from ``(seed, epoch, rank, worker=0, batch_index)``.

    * ``rank`` defaults to ``torch.distributed.get_rank()`` when a process group is initialised, else to
      ``$RANK`` (set by torchrun/accelerate, and inherited by DataLoader workers); resolved on first use.
    * ``set_epoch(epoch)`` must be called at the start of each epoch, before the DataLoader iterator (and
      thus its workers, which receive a copy of this object) is created.
    * If every example has an integer ``sample_index``, those indices are the ``batch_index``: a run that
      replays the same data order (e.g. a resume) regenerates identical masks regardless of worker count
      and timing. Otherwise a per-process batch counter is used, made worker-aware through
      ``torch.utils.data.get_worker_info()`` as ``count · num_workers + worker_id``; this equals the
      global batch number under the DataLoader's round-robin batch assignment, but is only reset by
      ``set_epoch`` (so ``persistent_workers=True`` needs ``sample_index`` for per-epoch masks).
    """

    def __init__(self, mask_generator: MaskGenerator, seed: int = 0, rank: int | None = None,
                 image_key: str = "pixel_values", repeats: int = 1) -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.repeats = int(repeats)
        self.mask_generator = mask_generator
        self.seed = int(seed)
        self.rank = rank
        self.image_key = image_key
        self.epoch = 0
        self._count = 0

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch used for seeding and restarts the fallback batch counter."""
        self.epoch = int(epoch)
        self._count = 0
        if self.rank is None:  # resolve in the main process, where the process group exists
            self.rank = _default_rank()

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("BootlegDataCollator received an empty batch")
        if self.rank is None:
            self.rank = _default_rank()
        pixel_values = torch.stack([torch.as_tensor(ex[self.image_key]) for ex in examples])
        out: dict[str, torch.Tensor] = {"pixel_values": pixel_values}
        if "labels" in examples[0]:
            out["labels"] = torch.stack([torch.as_tensor(ex["labels"]) for ex in examples]).long()

        indices = [ex.get("sample_index") for ex in examples]
        if all(isinstance(i, (int, np.integer)) or (torch.is_tensor(i) and i.numel() == 1
                                                    and not i.is_floating_point()) for i in indices):
            batch_index: int | list[int] = [int(i) for i in indices]
        else:
            info = torch.utils.data.get_worker_info()
            workers, worker_id = (1, 0) if info is None else (info.num_workers, info.id)
            batch_index = self._count * workers + worker_id
            self._count += 1
        # with `repeats` M, rows b·M … b·M + M − 1 are image b's masked views (one draw of M·B masks)
        masks = self.mask_generator.generate(len(examples) * self.repeats, epoch=self.epoch, batch_index=batch_index,
                                             rank=self.rank, seed=self.seed)
        out["context_indices"] = masks.context_indices
        out["target_indices"] = masks.target_indices
        return out
