"""Tests for bootleg_hf.masking (docs/design.md §5): properties of the samplers, not hard-coded outputs."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from bootleg_hf.masking import BootlegDataCollator, MaskBatch, MaskGenerator

GRIDS = [(14, 14), (14, 20), (20, 14), (7, 7), (8, 8), (16, 16), (4, 4)]


def context_mask(m: MaskBatch, n: int) -> np.ndarray:
    """[B, N] bool of context positions."""
    out = np.zeros((m.context_indices.shape[0], n), dtype=bool)
    np.put_along_axis(out, m.context_indices.numpy(), True, axis=1)
    return out


def rect_shape(idx: torch.Tensor, gw: int) -> tuple[int, int]:
    """(h, w) of a raster-ordered rectangle given by its token indices."""
    rows, cols = idx // gw, idx % gw
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def rate_maps(gen: MaskGenerator, batches: int, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-position context and target frequencies, each [Gh, Gw]."""
    vis, tgt = np.zeros(gen.num_patches), np.zeros(gen.num_patches)
    for i in range(batches):
        m = gen.generate(batch_size, batch_index=i)
        vis += context_mask(m, gen.num_patches).mean(0)
        tgt += m.target_mask.numpy().mean(0)
    return (vis / batches).reshape(gen.grid), (tgt / batches).reshape(gen.grid)


@pytest.mark.parametrize("mode", ["bootleg", "ijepa", "random"])
@pytest.mark.parametrize("grid", GRIDS)
def test_batch_invariants(mode: str, grid: tuple[int, int]) -> None:
    gh, gw = grid
    n = gh * gw
    min_context = 4 if (mode == "ijepa" and min(grid) < 7) else 10  # legacy 4×4 background is only 3×3
    gen = MaskGenerator(grid, mode, min_context=min_context)
    assert gen.grid == grid and gen.num_patches == n
    for bi in range(3):
        m = gen.generate(32, batch_index=bi)
        ctx, tgt = m.context_indices, m.target_indices
        assert ctx.dtype == tgt.dtype == torch.int64 and m.target_mask.dtype == torch.bool
        b, k = ctx.shape
        assert b == 32 and tgt.shape[0] == 32 and m.target_mask.shape == (32, n)
        assert 0 <= int(ctx.min()) and int(ctx.max()) < n and 0 <= int(tgt.min()) and int(tgt.max()) < n
        # exactly K tokens per row, strictly increasing = sorted and unique
        assert bool((ctx[:, 1:] > ctx[:, :-1]).all())
        # target_mask is the union of the rectangles
        union = np.zeros((b, n), dtype=bool)
        for r in range(tgt.shape[1]):
            np.put_along_axis(union, tgt[:, r].numpy(), True, axis=1)
        assert np.array_equal(union, m.target_mask.numpy())
        if mode == "random":
            assert tgt.shape == (32, 1, n - k) and k == int(n * 0.25)
            assert not (context_mask(m, n) & union).any() and (context_mask(m, n) | union).all()
            continue
        assert tgt.shape[1] == 4 and k >= min_context + (mode == "ijepa")
        if mode == "bootleg" or min(grid) >= 14:  # legacy relaxation lets small-grid contexts overlap targets
            assert not (context_mask(m, n) & union).any(), "context intersects the targets"
        # every rectangle is a full h×w block of distinct tokens in raster order (so all counts are equal)
        t = tgt.shape[2]
        for r in range(4):
            rects = tgt[:, r]
            assert bool((rects[:, 1:] > rects[:, :-1]).all())
            h, w = rect_shape(rects[0], gw)
            assert h * w == t and h <= gh and w <= gw
            for row in rects[:4]:
                top, left = divmod(int(row[0]), gw)
                expect = (top + torch.arange(h))[:, None] * gw + left + torch.arange(w)
                assert torch.equal(row, expect.flatten())


@pytest.mark.parametrize("mode", ["bootleg", "ijepa", "random"])
def test_determinism_and_distinctness(mode: str) -> None:
    gen = MaskGenerator(14, mode, seed=3)
    base = dict(epoch=2, batch_index=[5, 9, 11], rank=1, worker=1)

    def same(a: MaskBatch, b: MaskBatch) -> bool:
        return all(x.shape == y.shape and torch.equal(x, y) for x, y in
                   ((a.context_indices, b.context_indices), (a.target_indices, b.target_indices)))

    ref = gen.generate(16, **base)
    assert same(ref, gen.generate(16, **base))
    assert same(ref, MaskGenerator(14, mode, seed=0).generate(16, seed=3, **base))  # explicit seed overrides
    for change in [dict(epoch=3), dict(rank=0), dict(rank=2), dict(worker=0), dict(batch_index=[5, 9, 12]),
                   dict(batch_index=5), dict(seed=4)]:
        assert not same(ref, gen.generate(16, **{**base, **change})), change


def test_position_coverage_bootleg_vs_ijepa() -> None:
    n = 196
    ever_ctx = {m: np.zeros(n, bool) for m in ("bootleg", "ijepa")}
    ever_tgt = {m: np.zeros(n, bool) for m in ("bootleg", "ijepa")}
    for mode in ever_ctx:
        gen = MaskGenerator(14, mode)
        for i in range(40):
            m = gen.generate(64, batch_index=i)
            ever_ctx[mode] |= context_mask(m, n).any(0)
            ever_tgt[mode] |= m.target_mask.numpy().any(0)
    assert ever_ctx["bootleg"].all() and ever_tgt["bootleg"].all()
    edge = np.zeros((14, 14), bool)
    edge[-1, :] = edge[:, -1] = True
    edge = edge.ravel()
    assert not ever_ctx["ijepa"][edge].any() and not ever_tgt["ijepa"][edge].any()
    assert ever_ctx["ijepa"][~edge].all() and ever_tgt["ijepa"][~edge].all()


def _scale_aspect(gen: MaskGenerator, batches: int) -> tuple[np.ndarray, np.ndarray]:
    """Token count and log(h/w) of rectangle 1, one pair per batch."""
    counts, log_aspect = [], []
    for i in range(batches):
        h, w = rect_shape(gen.generate(1, batch_index=i).target_indices[0, 0], gen.grid[1])
        counts.append(h * w)
        log_aspect.append(np.log(h / w))
    return np.array(counts, float), np.array(log_aspect)


@pytest.mark.parametrize("grid,ijepa_min", [(14, 0.5), (64, 0.95)])
def test_scale_aspect_correlation(grid: int, ijepa_min: float) -> None:
    # Rounding h and w blurs the shared draw on a small grid; on a fine grid the I-JEPA coupling is ~exact.
    c, a = _scale_aspect(MaskGenerator(grid, "bootleg"), 1500)
    assert a.std() > 0 and abs(np.corrcoef(c, a)[0, 1]) < 0.1
    assert abs(a.mean()) < 0.05  # log-uniform over a symmetric range: wide and tall equally likely
    c, a = _scale_aspect(MaskGenerator(grid, "ijepa"), 1500)
    assert np.corrcoef(c, a)[0, 1] > ijepa_min


def test_shape_alternation() -> None:
    for grid in [(14, 14), (14, 20), (6, 12)]:
        scale = (0.16, 0.183) if grid != (6, 12) else (0.5, 0.6)  # (6, 12): sides must be clipped to 6
        gen = MaskGenerator(grid, "bootleg", target_scale=scale, target_aspect=(0.5, 2.0), min_context=2)
        non_square = 0
        for i in range(30):
            tgt = gen.generate(4, batch_index=i).target_indices
            h, w = rect_shape(tgt[0, 0], grid[1])
            non_square += h != w
            for b in range(4):
                for r in range(4):
                    assert rect_shape(tgt[b, r], grid[1]) == ((h, w) if r % 2 == 0 else (w, h))
        assert non_square > 5


def test_background_sizes() -> None:
    boot, legacy = MaskGenerator(14, "bootleg"), MaskGenerator(14, "ijepa")
    sides = {boot._background_size(s) for s in np.linspace(0.85, 1.0, 50)}
    assert sides == {(13, 13), (14, 14)}  # both context sides occur
    assert {legacy._background_size(s) for s in np.linspace(0.85, 1.0, 50)} == {(13, 13)}
    bh, bw = MaskGenerator((14, 20), "bootleg")._background_size(0.85)
    assert bh < 14 and bw < 20 and abs(bh / bw - 14 / 20) < 0.05  # both sides scaled by one factor


def test_truncation_bias() -> None:
    vis, _ = rate_maps(MaskGenerator(14, "bootleg"), 20)
    assert np.abs(vis - vis[:, ::-1]).max() < 0.06 and np.abs(vis - vis[::-1]).max() < 0.06
    assert abs(vis[:7].mean() - vis[7:].mean()) < 0.03 and abs(vis[:, :7].mean() - vis[:, 7:].mean()) < 0.03
    vis, _ = rate_maps(MaskGenerator(14, "ijepa"), 10)
    assert vis[:7].mean() - vis[7:].mean() > 0.2  # legacy raster truncation favours the top rows


def test_min_context_and_infeasible() -> None:
    loose, tight = MaskGenerator(7, "bootleg", min_context=0), MaskGenerator(7, "bootleg", min_context=20)
    k_loose = [loose.generate(64, batch_index=i).context_indices.shape[1] for i in range(10)]
    k_tight = [tight.generate(64, batch_index=i).context_indices.shape[1] for i in range(10)]
    assert min(k_loose) < 20 <= min(k_tight)  # re-placement lifted the small contexts
    gen = MaskGenerator(4, "bootleg", num_targets=8, target_scale=(0.5, 0.5), min_context=12)
    with pytest.raises(ValueError, match="could not place a context"):
        gen.generate(4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(grid=3), "at least 4×4"),
    (dict(grid=(14, 2)), "at least 4×4"),
    (dict(grid=(14, 14, 3)), "height, width"),
    (dict(grid=14, mode="mae"), "unknown masking mode"),
    (dict(grid=14, num_targets=0), "num_targets"),
    (dict(grid=14, target_scale=(0.0, 0.2)), "target_scale"),
    (dict(grid=14, target_scale=(0.3, 0.2)), "target_scale"),
    (dict(grid=14, context_scale=(0.9, 1.1)), "context_scale"),
    (dict(grid=14, target_aspect=(1.5, 0.75)), "target_aspect"),
    (dict(grid=14, target_aspect=(-1.0, 2.0)), "target_aspect"),
    (dict(grid=14, target_aspect=0.5), "target_aspect"),
    (dict(grid=14, min_context=196), "min_context"),
    (dict(grid=4, mode="ijepa"), "min_context=10 is infeasible"),
    (dict(grid=14, mode="random", mask_ratio=1.0), "mask_ratio"),
    (dict(grid=14, seed=-1), "seed"),
])
def test_invalid_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MaskGenerator(**kwargs)


def test_invalid_generate_arguments() -> None:
    gen = MaskGenerator(14)
    with pytest.raises(ValueError, match="batch_size"):
        gen.generate(0)
    with pytest.raises(ValueError, match="non-negative"):
        gen.generate(2, batch_index=-1)


def test_random_mode_rates() -> None:
    gen = MaskGenerator(14, "random", mask_ratio=0.75)
    vis, tgt = rate_maps(gen, 10)
    assert np.allclose(vis + tgt, 1.0)
    assert abs(vis.mean() - 49 / 196) < 1e-9 and np.abs(vis - 0.25).max() < 0.06  # uniform over positions


# ------------------------------------------------------------------------------------------------ collator
class ToyImages(Dataset):
    def __init__(self, n: int = 24, with_index: bool = True) -> None:
        self.n, self.with_index = n, with_index

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        ex = {"pixel_values": torch.full((3, 8, 8), float(i)), "labels": i % 3, "caption": "x"}
        if self.with_index:
            ex["sample_index"] = i
        return ex


def _collect(loader: DataLoader) -> list[dict]:
    return [{k: v.clone() for k, v in batch.items()} for batch in loader]


def test_collator_stacks_and_drops_keys() -> None:
    col = BootlegDataCollator(MaskGenerator(4, min_context=4), rank=0)
    out = col([ToyImages()[i] for i in range(5)])
    assert set(out) == {"pixel_values", "labels", "context_indices", "target_indices"}
    assert out["pixel_values"].shape == (5, 3, 8, 8) and torch.equal(out["pixel_values"][:, 0, 0, 0], torch.arange(5.0))
    assert out["labels"].dtype == torch.int64 and out["labels"].tolist() == [0, 1, 2, 0, 1]
    assert out["context_indices"].shape[0] == 5 and out["target_indices"].shape[:2] == (5, 4)
    no_labels = col([{"pixel_values": torch.zeros(3, 8, 8)}])
    assert "labels" not in no_labels


def test_collator_pickle_and_seeding() -> None:
    col = BootlegDataCollator(MaskGenerator(14), seed=1, rank=0)
    batch = [ToyImages()[i] for i in range(4)]
    a = col(batch)
    clone = pickle.loads(pickle.dumps(col))
    assert torch.equal(clone(batch)["context_indices"], a["context_indices"])
    assert torch.equal(col(batch)["target_indices"], a["target_indices"])  # sample_index: no counter
    col.set_epoch(1)
    assert not torch.equal(col(batch)["target_indices"], a["target_indices"])
    other_rank = BootlegDataCollator(MaskGenerator(14), seed=1, rank=1)
    assert not torch.equal(other_rank(batch)["target_indices"], a["target_indices"])


def test_collator_default_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    col = BootlegDataCollator(MaskGenerator(14))
    col.set_epoch(0)
    assert col.rank == 3


@pytest.mark.parametrize("with_index", [True, False])
def test_collator_dataloader_workers(with_index: bool) -> None:
    """Masks are the same for 0 and 2 workers: via sample_index, or via the worker-aware batch counter."""
    data = ToyImages(24, with_index)
    runs = {}
    for workers in (0, 2):
        col = BootlegDataCollator(MaskGenerator(14), rank=0)
        col.set_epoch(0)
        runs[workers] = _collect(DataLoader(data, batch_size=4, num_workers=workers, collate_fn=col))
    assert len(runs[0]) == len(runs[2]) == 6
    for b0, b2 in zip(runs[0], runs[2]):
        for key in b0:
            assert torch.equal(b0[key], b2[key]), key
    masks = {tuple(b["context_indices"][0].tolist()) for b in runs[0]}
    assert len(masks) == 6  # every batch gets its own masks
    # a new epoch (set before the iterator, hence before workers start) gives new masks
    col = BootlegDataCollator(MaskGenerator(14), rank=0)
    col.set_epoch(1)
    epoch1 = _collect(DataLoader(data, batch_size=4, num_workers=2, collate_fn=col))
    assert not any(torch.equal(a["target_indices"], b["target_indices"]) for a, b in zip(runs[0], epoch1))


def _target_boxes(batch) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of every target rectangle of a `MaskBatch`, from its raster indices."""
    gw = int(batch.target_mask.shape[1] ** 0.5)
    boxes = []
    for rect in batch.target_indices.reshape(-1, batch.target_indices.shape[-1]).tolist():
        rows, cols = {i // gw for i in rect}, {i % gw for i in rect}
        boxes.append((min(rows), min(cols), len(rows), len(cols)))
    return boxes


@pytest.mark.parametrize("grid,kwargs", [
    (14, {}),  # I-JEPA's defaults: scale 0.15–0.2, aspect 0.75–1.5
    (4, dict(target_scale=(0.1, 0.15), min_context=2)),  # sides that round to 0 become 1
    (6, dict(target_scale=(0.7, 0.9), min_context=2)),  # sides clamped to grid − 1
])
def test_legacy_target_size_is_one_draw_for_scale_and_aspect(grid, kwargs):
    """I-JEPA's legacy size rule, written out: one r ~ U(0, 1) per batch gives scale s0 + r(s1 − s0) and aspect
    a0 + r(a1 − a0); n = int(N·s); h = round(√(n·a)), w = round(√(n/a)), each clamped to [1, grid − 1]. Every
    sampled target has one of these sizes, the sizes of both ends of r occur, and placements vary per image and per
    target."""
    gen = MaskGenerator(grid, "ijepa", **kwargs)
    (s0, s1), (a0, a1) = gen.target_scale, gen.target_aspect
    allowed = []
    for r in np.linspace(0, 1, 4001):
        n = int(grid * grid * (s0 + r * (s1 - s0)))
        a = a0 + r * (a1 - a0)
        side = [round(math.sqrt(n * a)), round(math.sqrt(n / a))]
        allowed.append(tuple(max(1, min(x, grid - 1)) for x in side))
    seen, corners = set(), set()
    for index in range(300):
        boxes = _target_boxes(gen.generate(8, batch_index=index))
        sizes = {(h, w) for _, _, h, w in boxes}
        assert len(sizes) == 1 and sizes <= set(allowed), sizes  # one size per batch, from the rule
        seen |= sizes
        corners |= {(t, l) for t, l, h, w in boxes}
        if grid == 14:  # each image and each target is placed on its own
            assert len({t for t, _, _, _ in boxes}) > 1 and len({l for _, l, _, _ in boxes}) > 1
        assert all(t + h <= grid - 1 and l + w <= grid - 1 for t, l, h, w in boxes)  # last row / column free
    assert {allowed[0], allowed[-1]} <= seen
    if grid == 14:  # room to move: every row and column offset the exclusive bound allows occurs
        assert {t for t, _ in corners} == set(range(grid - min(h for h, _ in seen)))
        assert {l for _, l in corners} == set(range(grid - min(w for _, w in seen)))


def test_legacy_sampler_drops_target_constraints_until_a_context_fits():
    """When no background beside the targets holds more than `min_context` tokens, I-JEPA's sampler drops the
    constraints one at a time (after 20 failures each) down to none: the context then overlaps the targets."""
    gen = MaskGenerator(6, "ijepa", num_targets=3, target_scale=(0.6, 0.6), target_aspect=(1.0, 1.0),
                        context_scale=(1.0, 1.0))
    batch = gen.generate(4)
    # 5×5 targets and a 5×5 background on a 6×6 grid, all at (0, 0) under the exclusive bound: context = target
    for context, targets in zip(batch.context_indices.tolist(), batch.target_indices.tolist()):
        assert sorted(context) == sorted(targets[0]) == sorted(targets[2]) and len(context) == 25
