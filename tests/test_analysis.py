"""Representational analysis (issue 9): linear CKA, inter-layer Pearson, spatial autocorrelation, `analyze` and its
command line."""

import json

import datasets
import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image
from safetensors.torch import load_file, save_file

from bootleg_hf import BootlegForPretraining, BootlegModel
from bootleg_hf.checkpoints import load_encoder
from bootleg_hf.cli import analyze_main
from bootleg_hf.evaluation.analysis import (
    analyze,
    cka_matrix,
    collect_representations,
    grid_distances,
    linear_cka,
    pearson,
    pearson_matrix,
    spatial_autocorrelation,
)
from bootleg_hf.data import write_image_folder

@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


# --- linear CKA --------------------------------------------------------------------------------------------------


def test_cka_hand_computed_example():
    x = np.array([[2, 1], [1, 2], [0, 0], [1, 1]], dtype=float)  # column means (1, 1)
    y = np.array([[3, 0], [1, 0], [1, 0], [1, 4]], dtype=float)  # column means (1.5, 1)
    # centred: Xc = [[1,0],[0,1],[-1,-1],[0,0]], Yc = [[1.5,-1],[-0.5,-1],[-0.5,-1],[-0.5,3]]
    # XcᵀXc = [[2,1],[1,2]]        → ‖·‖_F² = 4 + 1 + 1 + 4 = 10
    # YcᵀYc = [[3,-2],[-2,12]]     → ‖·‖_F² = 9 + 4 + 4 + 144 = 161
    # YcᵀXc = [[2,0],[0,0]]        → ‖·‖_F² = 4
    expected = 4 / (np.sqrt(10) * np.sqrt(161))  # = 0.0996889...
    assert linear_cka(x, y) == pytest.approx(expected, abs=1e-12)
    assert linear_cka(y, x) == pytest.approx(expected, abs=1e-12)
    assert linear_cka(torch.tensor(x), torch.tensor(y)) == pytest.approx(expected, abs=1e-12)


def test_cka_matches_hsic_kernel_form(rng):
    x, y = rng.normal(size=(20, 5)), rng.normal(size=(20, 3))
    h = np.eye(20) - 1 / 20
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    hsic = lambda a, b: np.trace(a @ b)  # noqa: E731
    assert linear_cka(x, y) == pytest.approx(hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_)), rel=1e-10)


def test_cka_self_is_one_and_invariances(rng):
    x = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16))  # correlated channels
    y = np.tanh(x @ rng.normal(size=(16, 8))) + 0.5 * rng.normal(size=(200, 8))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    transformed = 3.7 * x @ q + 5.0  # orthogonal transform, isotropic scaling and a shift
    assert linear_cka(x, transformed) == pytest.approx(1.0, abs=1e-10)
    base = linear_cka(x, y)
    assert 0.05 < base < 0.95
    assert linear_cka(transformed, y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(transformed, 0.01 * y) == pytest.approx(base, abs=1e-10)
    # a non-isotropic scaling changes CKA: it is not invariant to arbitrary invertible linear maps
    stretched = x * np.linspace(0.1, 10.0, 16)
    assert linear_cka(x, stretched) < 0.9
    assert abs(linear_cka(stretched, y) - base) > 0.01


def test_cka_matrix_and_errors(rng):
    reps = [rng.normal(size=(4, 10, 6)), rng.normal(size=(4, 10, 3)), rng.normal(size=(4, 10, 6))]
    m = cka_matrix(reps)
    assert m.shape == (3, 3) and np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)
    assert m[0, 1] == pytest.approx(linear_cka(reps[0], reps[1]), abs=1e-12)
    rect = cka_matrix(reps[:2], reps[1:])
    assert rect.shape == (2, 2) and rect[0, 1] == pytest.approx(linear_cka(reps[0], reps[2]), abs=1e-12)
    assert rect[1, 0] == pytest.approx(1.0)
    assert np.isnan(linear_cka(np.ones((5, 2)), rng.normal(size=(5, 2))))
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(rng.normal(size=(5, 2)), rng.normal(size=(6, 2)))


# --- Pearson -----------------------------------------------------------------------------------------------------


def test_pearson_against_numpy(rng):
    x = rng.normal(size=(50, 8)) * np.linspace(0.5, 4, 8) + np.linspace(-2, 2, 8)
    y = 0.6 * x + rng.normal(size=(50, 8))
    assert pearson(x, y, "none") == pytest.approx(np.corrcoef(x.ravel(), y.ravel())[0, 1], abs=1e-12)
    zx = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    zy = (y - y.mean(1, keepdims=True)) / y.std(1, keepdims=True)
    token = pearson(x, y, "token")
    assert token == pytest.approx(np.corrcoef(zx.ravel(), zy.ravel())[0, 1], abs=1e-12)
    # per-token z-scoring makes it the mean over tokens of the per-token correlation across channels
    assert token == pytest.approx(np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(x, y)]), abs=1e-12)
    channel = pearson(x, y, "channel")
    assert channel == pytest.approx(np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(x.T, y.T)]), abs=1e-12)
    # leading axes are samples: [B, N, D] gives the same as [B·N, D]
    assert pearson(x.reshape(5, 10, 8), torch.tensor(y.reshape(5, 10, 8)), "none") == pytest.approx(
        pearson(x, y, "none"), abs=1e-12)


def test_pearson_matrix(rng):
    reps = {f"l{i}": rng.normal(size=(30, 6)) for i in range(3)}
    reps["l2"] = reps["l0"] + 0.3 * reps["l2"]
    for mode in ("token", "channel", "none"):
        m = pearson_matrix(reps, normalize=mode)
        assert np.allclose(np.diag(m), 1.0) and np.allclose(m, m.T)
        for i, a in enumerate(reps.values()):
            for j, b in enumerate(reps.values()):
                assert m[i, j] == pytest.approx(pearson(a, b, mode), abs=1e-12)
    assert pearson_matrix(reps)[0, 2] > 0.9
    rect = pearson_matrix(list(reps.values())[:1], "none", list(reps.values()))
    assert rect.shape == (1, 3) and rect[0, 2] == pytest.approx(pearson(reps["l0"], reps["l2"], "none"), abs=1e-12)
    with pytest.raises(ValueError, match="equally shaped"):
        pearson_matrix([rng.normal(size=(30, 6)), rng.normal(size=(30, 4))])
    with pytest.raises(ValueError, match="normalize"):
        pearson(reps["l0"], reps["l1"], "layer")


# --- spatial autocorrelation -------------------------------------------------------------------------------------


def smooth_field(n: int, size: int, d: int, sigma: float, rng) -> np.ndarray:
    """Gaussian-smoothed white noise `[n, size, size, d]` (correlation ~ exp(-r²/4σ²))."""
    pad = int(4 * sigma)
    noise = rng.normal(size=(n, size + 2 * pad, size + 2 * pad, d))
    t = np.arange(-pad, pad + 1)
    kernel = np.exp(-t**2 / (2 * sigma**2))
    kernel /= kernel.sum()
    rows = sum(kernel[i] * noise[:, i:i + size] for i in range(2 * pad + 1))
    return sum(kernel[j] * rows[:, :, j:j + size] for j in range(2 * pad + 1))


def test_spatial_autocorrelation_smooth_field_decreases(rng):
    field = smooth_field(48, 10, 16, 1.5, rng)
    sa = spatial_autocorrelation(field, max_distance=5)
    assert sa.distances[0] == 0 and sa.similarity[0] == pytest.approx(1.0, abs=1e-12)
    assert sa.distances.max() <= 5 and np.all(np.diff(sa.distances) > 0)
    integer = [sa.similarity[np.isclose(sa.distances, r)][0] for r in range(6)]
    assert np.all(np.diff(integer) < 0), integer
    assert integer[1] > 0.7 and integer[5] < 0.2
    # centring removes a component shared by every token; without it that component dominates every pair
    shifted = field + 3.0 * rng.normal(size=16)
    np.testing.assert_allclose(spatial_autocorrelation(shifted, max_distance=5).similarity, sa.similarity, atol=1e-9)
    assert spatial_autocorrelation(shifted, max_distance=5, center=False).similarity[-1] > 0.9
    # white noise has no spatial structure: ~0 beyond distance 0
    white = spatial_autocorrelation(rng.normal(size=(48, 10, 10, 16)), max_distance=5)
    assert np.all(np.abs(white.similarity[1:]) < 0.05)


def test_spatial_autocorrelation_small_exact_case():
    a, b = np.array([1.0, 0.0, 1.0]), np.array([1.0, 1.0, 0.0])
    tokens = np.stack([a, b])[None, None]  # one image, a 1×2 grid
    sa = spatial_autocorrelation(tokens, max_distance=1, center=False)
    assert sa.distances.tolist() == [0.0, 1.0] and sa.pairs.tolist() == [2, 2]
    assert sa.similarity[1] == pytest.approx(0.5)  # cos(a, b) = 1 / (√2·√2)
    full = spatial_autocorrelation(np.random.default_rng(1).normal(size=(2, 3, 4, 5)), max_distance=100)
    assert full.pairs.sum() == 12 * 12
    assert grid_distances(3, 4)[0, 11] == pytest.approx(np.hypot(2, 3))
    with pytest.raises(ValueError, match="grid_h"):
        spatial_autocorrelation(np.zeros((2, 12, 5)))


# --- model-level: collect_representations, analyze, CLI ----------------------------------------------------------


def test_collect_representations_matches_hidden_states():
    torch.manual_seed(0)
    model = BootlegModel(tiny_config()).eval()
    pixels = torch.randn(5, 3, 32, 32)
    reps = collect_representations(model, pixels, batch_size=2, precision="fp32")
    assert list(reps) == ["embed", "1.out", "2.out", "final"]
    with torch.no_grad():
        out = model(pixels, output_hidden_states=True)
    p = model.config.num_prefix_tokens
    for k, name in enumerate(["embed", "1.out", "2.out"]):
        assert reps[name].shape == (5, 16, 32)
        torch.testing.assert_close(reps[name], out.hidden_states[k][:, p:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reps["final"], out.last_hidden_state[:, p:], atol=1e-5, rtol=1e-5)
    # bf16 autocast (the default where it is fast): the same features to bf16 rounding, not equal to float32
    half = collect_representations(model, pixels, batch_size=2, precision="bf16")
    assert half["final"].dtype == torch.float32 and not torch.equal(half["final"], reps["final"])
    torch.testing.assert_close(half["final"], reps["final"], atol=0.1, rtol=0.05)
    pix = collect_representations(model, pixels, "pixels,1.mid")
    assert list(pix) == ["pixels", "1.mid"] and pix["pixels"].shape == (5, 16, 8 * 8 * 3)
    # a pretraining model is analysed through its teacher
    pre = BootlegForPretraining(tiny_config())
    with torch.no_grad():
        pre.student.blocks[0].mlp.fc2.bias.add_(1.0)
    torch.testing.assert_close(collect_representations(pre, pixels, [(1, "out")])["1.out"],
                               collect_representations(pre.teacher, pixels, [(1, "out")])["1.out"])


def synthetic_images(n: int, size: int = 40) -> list[Image.Image]:
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        f = g.uniform(1, 5, size=(3, 2))
        img = np.stack([np.sin(6.28 * (fx * xx + fy * yy)) for fx, fy in f], -1)
        out.append(Image.fromarray(((img + 1) * 127.5).astype(np.uint8)))
    return out


def test_analyze_smoke(tmp_path):
    torch.manual_seed(0)
    model = BootlegModel(tiny_config(targets="1,2.mid,pixels"))
    ds = datasets.Dataset.from_dict({"image": synthetic_images(6)}, features=datasets.Features({"image": datasets.Image()}))
    result = analyze(model, ds, num_images=6, out_dir=tmp_path)
    for name in ("pearson.png", "cka.png", "targets.png", "spatial.png", "analysis.json"):
        assert (tmp_path / name).stat().st_size > 1000, name
    saved = json.loads((tmp_path / "analysis.json").read_text())
    for key in ("layers", "pearson", "cka", "consecutive", "targets", "spatial_autocorrelation", "num_images"):
        assert key in saved, key
    assert saved["num_images"] == 6 and saved["layers"] == ["embed", "1.out", "2.out", "final"]
    assert np.allclose(np.diag(np.array(saved["cka"])), 1.0) and np.allclose(np.diag(np.array(saved["pearson"])), 1.0)
    tg = saved["targets"]
    assert tg["terms"] == ["1.out", "2.mid", "pixels", "merged (concat)"]
    assert tg["cka"][1][0] == pytest.approx(1.0)  # block 1 against its own (z-scored) target
    assert tg["pearson"][1][0] == pytest.approx(1.0)
    assert tg["pearson"][0][2] is None and tg["pearson"][0][3] is None  # widths differ: no Pearson
    assert all(v is not None for row in tg["cka"] for v in row)
    curves = saved["spatial_autocorrelation"]
    assert curves["distances"][0] == 0 and len(curves["layers"]) == 4
    assert all(v[0] == pytest.approx(1.0) for v in curves["layers"].values())
    assert result["cka"] == saved["cka"]
    # without the position-fixed part of each token the layers' spatial structure changes
    content = analyze(model, ds, num_images=6, out_dir=tmp_path / "content", remove_position_mean=True, plots=False)
    assert content["remove_position_mean"] and not (tmp_path / "content" / "cka.png").exists()
    assert content["spatial_autocorrelation"]["layers"]["embed"] != curves["layers"]["embed"]


def test_cli_loads_teacher_or_student_and_rejects_foreign_folders(tmp_path):
    torch.manual_seed(0)
    pre = BootlegForPretraining(tiny_config())
    with torch.no_grad():
        pre.student.blocks[0].attn.proj.bias.add_(0.5)
    pre.save_pretrained(tmp_path / "ckpt")
    teacher = load_encoder(str(tmp_path / "ckpt"))
    student = load_encoder(str(tmp_path / "ckpt"), "student")
    torch.testing.assert_close(teacher.blocks[0].attn.proj.bias, pre.teacher.blocks[0].attn.proj.bias)
    torch.testing.assert_close(student.blocks[0].attn.proj.bias, pre.student.blocks[0].attn.proj.bias)
    # a folder whose weights are not a Bootleg encoder's must not silently give a random model
    BootlegModel(tiny_config()).save_pretrained(tmp_path / "foreign")
    weights = load_file(tmp_path / "foreign" / "model.safetensors")
    save_file({f"other.{k}": v for k, v in weights.items()}, tmp_path / "foreign" / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks"):
        load_encoder(str(tmp_path / "foreign"))
    with pytest.raises(ValueError, match="random:<preset>"):
        load_encoder("random:")
    a, b = load_encoder("random:vit-micro:3"), load_encoder("random:vit-micro:3")
    torch.testing.assert_close(a.blocks[0].mlp.fc1.weight, b.blocks[0].mlp.fc1.weight)

    ds = datasets.Dataset.from_dict({"image": synthetic_images(4), "label": [0, 1, 0, 1]})
    folder = write_image_folder(ds, tmp_path / "images")
    assert analyze_main(["--model", str(tmp_path / "ckpt"), "--dataset", str(folder), "--split", "train",
                         "--num-images", "4", "--out", str(tmp_path / "out"), "--max-distance", "2"]) == 0
    result = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert result["num_images"] == 4 and max(result["spatial_autocorrelation"]["distances"]) <= 2
    assert json.loads((tmp_path / "out" / "analysis.json").read_text())["model"] == str(tmp_path / "ckpt")
