"""The standard quick metrics (bootleg_hf.evaluation.quick_metrics: weighted kNN, converged linear classifier) against
straightforward computations, the probe protocols (paper / quick, the LR rule, warm-up from 0) as `run_probes` and
`bootleg-probe` build them, and the reference lines in the probe report."""

import json
import math

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from PIL import Image

from bootleg_hf import BootlegModel
from bootleg_hf.cli import probe_main
from bootleg_hf.data import EvalTransform
from bootleg_hf.evaluation import classification
from bootleg_hf.evaluation.classification import PROBE_GRID, ProbeSettings, run_probes
from bootleg_hf.evaluation.quick_metrics import (
    fit_logistic,
    knn_predict,
    linear_probe,
    logistic_objective,
    pixel_features,
    standardize,
)

pytestmark = pytest.mark.usefixtures("single_thread")


class Stop(Exception):
    """Raised by a patched function once what the test inspects has been built."""


def naive_knn(train: torch.Tensor, train_labels: torch.Tensor, query: torch.Tensor, num_classes: int, k: int,
              temperature: float) -> int:
    """DINO's weighted kNN for one query, written out with Python loops."""
    def cosine(a, b):
        dot = sum(float(x) * float(y) for x, y in zip(a, b))
        return dot / math.sqrt(sum(float(x) ** 2 for x in a) * sum(float(y) ** 2 for y in b))

    ranked = sorted(((cosine(query, row), int(label)) for row, label in zip(train, train_labels)), reverse=True)
    votes = [0.0] * num_classes
    for similarity, label in ranked[:k]:
        votes[label] += math.exp(similarity / temperature)
    return votes.index(max(votes))


@pytest.mark.parametrize("k,temperature", [(20, 0.07), (5, 0.07), (3, 1.0), (100, 0.07)])
def test_knn_equals_a_naive_loop(k, temperature):
    g = torch.Generator().manual_seed(k)
    train, test = torch.randn(60, 8, generator=g), torch.randn(17, 8, generator=g)
    train_labels = torch.randint(0, 4, (60,), generator=g)
    want = [naive_knn(train, train_labels, q, 4, k, temperature) for q in test]
    assert knn_predict(train, train_labels, test, 4, k, temperature).tolist() == want
    # chunks of 2 queries (a 120-value similarity matrix) give the same answer as one chunk
    assert knn_predict(train, train_labels, test, 4, k, temperature, max_elements=120).tolist() == want


def test_knn_votes_are_weighted_by_similarity():
    """One very close neighbour of class 0 outvotes two distant ones of class 1 (a plain majority would not)."""
    train = torch.tensor([[1.0, 0.0], [0.2, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 1, 1])
    assert knn_predict(train, labels, torch.tensor([[1.0, 0.05]]), 2, k=3).tolist() == [0]
    assert knn_predict(train, labels, torch.tensor([[1.0, 0.05]]), 2, k=3, temperature=100.0).tolist() == [1]


def separable(n: int, seed: int, dim: int = 12, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Classes separated by a margin along fixed directions, in correlated (badly conditioned) coordinates."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    mix = torch.randn(dim, dim, generator=torch.Generator().manual_seed(99)) * torch.logspace(0, 2, dim)
    x = torch.randn(n, dim, generator=g)
    x[:, :classes] += 8.0 * F.one_hot(labels, classes)
    return x @ mix, labels


def test_linear_classifier_reaches_100_percent_on_a_separable_problem():
    train, train_labels = separable(300, 0)
    test, test_labels = separable(150, 1)
    x = standardize(train)[0]
    fit = fit_logistic(x, train_labels, 3, l2=1e-4)
    assert fit.converged and (fit.predict(x) == train_labels).all()
    result = linear_probe(train, train_labels, test, test_labels, 3)
    assert result["top1"] >= 99 and result["converged"] and all(p["converged"] for p in result["path"])


def test_linear_classifier_converges_to_the_unique_minimum():
    """The preconditioned L-BFGS solution is the minimum itself: the objective's gradient (computed here, in the
    original parametrisation) vanishes, more iterations do not lower the loss, and plain L-BFGS on the weights (no
    change of variables, many iterations) finds the same weights."""
    x, labels = separable(200, 2, dim=6)
    labels[::7] = (labels[::7] + 1) % 3  # label noise: not separable, a finite minimum at any L2
    x = standardize(x)[0]
    fit = fit_logistic(x, labels, 3, l2=1e-2)
    weight, bias = fit.weight.clone().requires_grad_(), fit.bias.clone().requires_grad_()
    loss = logistic_objective(x, labels, weight, bias, 1e-2)
    loss.backward()
    assert max(weight.grad.abs().max(), bias.grad.abs().max()) < 1e-4 and fit.converged
    assert fit.loss == pytest.approx(loss.item(), abs=1e-12)
    again = fit_logistic(x, labels, 3, l2=1e-2, init=fit)  # training on: the loss has stopped decreasing
    assert again.loss >= fit.loss - 1e-9 and again.iterations <= 2

    plain_w = torch.zeros(3, 6, dtype=torch.float64, requires_grad=True)
    plain_b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([plain_w, plain_b], max_iter=5000, tolerance_grad=1e-10, tolerance_change=0,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = logistic_objective(x, labels, plain_w, plain_b, 1e-2)
        value.backward()
        return value

    optimizer.step(closure)
    assert fit.loss == pytest.approx(closure().item(), abs=1e-9)
    torch.testing.assert_close(fit.weight, plain_w.detach(), atol=1e-4, rtol=0)
    torch.testing.assert_close(fit.bias, plain_b.detach(), atol=1e-4, rtol=0)


def test_linear_probe_is_deterministic_and_picks_l2_on_held_out_images():
    train, train_labels = separable(120, 3)
    test, test_labels = separable(60, 4)
    first = linear_probe(train, train_labels, test, test_labels, 3, l2s=[1e-1, 1e-3], seed=5)
    assert first == linear_probe(train, train_labels, test, test_labels, 3, l2s=[1e-1, 1e-3], seed=5)
    assert [p["l2"] for p in first["path"]] == [1e-1, 1e-3]  # strongest first
    best = max(first["path"], key=lambda p: p["val_top1"])
    assert first["l2"] == best["l2"]


def test_pixel_features_are_patch_means():
    pixels = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    features = pixel_features(pixels, (2, 2))
    assert features.shape == (2, 12)
    assert features[1, 4 + 3] == pixels[1, 1, 4:, 4:].mean()  # channel 1, patch (1, 1)


# ---- protocols -------------------------------------------------------------------------------------------------------


def test_protocol_values_and_labels():
    paper = ProbeSettings(protocol="paper")
    assert (paper.epochs, paper.batch_size, paper.warmup_epochs, paper.lr_scale) == (20, 1024, 5, 1.0)
    assert list(paper.lrs) == list(paper.wds) == [0.5e-3, 1e-3, 2e-3, 4e-3, 8e-3]
    assert paper.protocol_label == "paper protocol"
    quick = ProbeSettings()
    assert (quick.protocol, quick.epochs, quick.batch_size, quick.warmup_epochs) == ("quick", 10, 256, 5)
    assert quick.lr_scale == 0.25 and quick.protocol_label == "quick protocol"
    changed = ProbeSettings(protocol="paper", epochs=4, batch_size=64)
    assert changed.lr_scale == 64 / 1024 and changed.warmup_epochs == 2
    assert changed.protocol_label == ("paper protocol (epochs 4 instead of 20, batch size 64 instead of 1024, "
                                      "warmup epochs 2 instead of 5)")
    with pytest.raises(ValueError, match="unknown probe protocol"):
        ProbeSettings(protocol="linear")


def classification_data(n_train: int = 24, n_test: int = 12) -> datasets.DatasetDict:
    """Three classes of 40 px images that differ in brightness (so every metric has something to find)."""
    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})

    def split(n):
        labels = [i % 3 for i in range(n)]
        images = [Image.fromarray(np.clip(rng.normal(60 + 70 * y, 30, (40, 40, 3)), 0, 255).astype(np.uint8))
                  for y in labels]
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    return datasets.DatasetDict(train=split(n_train), test=split(n_test))


def test_paper_protocol_in_run_probes_scales_lr_and_warms_up_from_0(monkeypatch):
    """`run_probes` with the paper protocol at batch 4: 20 epochs, 5 warm-up epochs, each head's learning rate is its
    grid value × 4 / 1024, and the first optimizer step runs at lr 0, so it leaves the heads as they were."""
    captured = {}

    def stop(encoder, sweeps, loader, epochs, *args, **kwargs):
        captured.update(sweep=sweeps["patch"], loader=loader, epochs=epochs)
        raise Stop

    monkeypatch.setattr(classification, "train_sweeps", stop)
    torch.manual_seed(0)
    config = tiny_config()
    encoder = BootlegModel(config).eval()
    with pytest.raises(Stop):
        run_probes(encoder, classification_data(), ProbeSettings(probes=["patch"], protocol="paper", batch_size=4,
                                                                 num_workers=0))
    sweep, batches = captured["sweep"], len(captured["loader"])
    assert captured["epochs"] == 20 and batches == 6
    groups = sweep.optimizer.param_groups
    for i, (lr, wd) in enumerate(sweep.grid):
        assert groups[2 * i]["initial_lr"] == groups[2 * i + 1]["initial_lr"] == pytest.approx(lr * 4 / 1024)
    assert [lr for lr, _ in sweep.grid[::5]] == list(PROBE_GRID)  # the grid itself is the paper's
    assert sweep.scheduler.lr_lambdas[0](5 * batches) == 1.0 and sweep.scheduler.lr_lambdas[0](5 * batches - 1) < 1
    assert all(g["lr"] == 0.0 for g in groups)  # the learning rate of the first step
    before = {k: v.clone() for k, v in sweep.named_parameters()}
    tokens = torch.randn(4, config.num_prefix_tokens + config.num_patches, config.hidden_size)
    sweep.train_step(tokens, torch.tensor([0, 1, 2, 0]))
    assert all(torch.equal(before[k], v) for k, v in sweep.named_parameters())
    assert groups[0]["lr"] == pytest.approx(PROBE_GRID[0] * 4 / 1024 / (5 * batches))  # the second step's


def test_linear_classifier_converges_on_cached_encoder_and_pixel_features():
    """On the features `run_probes` caches (a frozen encoder's CLS token, the pixels averaged per patch), at the weakest
    L2 of the sweep: the gradient vanishes and training on from the fit no longer lowers the loss."""
    torch.manual_seed(0)
    encoder = BootlegModel(tiny_config()).eval()
    data = classification_data(48, 3)
    train = data["train"].with_transform(EvalTransform(32))
    features, labels = classification.cached_features({"encoder": encoder}, train, (4, 4), ProbeSettings(num_workers=0),
                                                      torch.device("cpu"))
    assert set(features) == {"encoder", "raw pixels"} and features["raw pixels"].shape == (48, 48)
    with torch.no_grad():
        cls = encoder(torch.stack([train[i]["pixel_values"] for i in range(48)])).last_hidden_state[:, 0]
    torch.testing.assert_close(features["encoder"], cls)  # the CLS token after the final LayerNorm
    for name, x in features.items():
        x = standardize(x)[0]
        fit = fit_logistic(x, labels, 3, l2=1e-4)
        again = fit_logistic(x, labels, 3, l2=1e-4, init=fit)
        assert fit.converged and again.loss >= fit.loss - 1e-9 * fit.loss, name


def test_probe_cli_protocol_and_overrides(monkeypatch):
    seen = []

    def record(model, dataset, settings, out=None, overwrite=False):
        seen.append(settings)
        raise Stop

    monkeypatch.setattr(classification, "run_probes", record)
    for argv in (["--protocol", "paper"], [], ["--protocol", "paper", "--epochs", "3", "--no-quick-metrics"]):
        with pytest.raises(Stop):
            probe_main(["--model", "random:vit-micro", *argv])
    assert [(s.protocol, s.epochs, s.batch_size, s.lr_scale) for s in seen] == [
        ("paper", 20, 1024, 1.0), ("quick", 10, 256, 0.25), ("paper", 3, 1024, 1.0)]
    assert [s.quick_metrics for s in seen] == [True, True, False]


def test_probe_report_has_quick_metrics_and_reference_lines(tmp_path):
    torch.manual_seed(0)
    encoder = BootlegModel(tiny_config()).eval()
    results = run_probes(encoder, classification_data(),
                         ProbeSettings(probes=["patch"], epochs=2, batch_size=8, lrs=[1e-3], wds=[1e-3],
                                       num_workers=0), out=tmp_path)
    saved = json.loads((tmp_path / "probe_results.json").read_text())["classification"]
    assert saved["protocol_label"] == results["protocol_label"]
    assert results["protocol_label"].startswith("quick protocol (epochs 2 instead of 10, batch size 8 instead of 256")
    assert results["probes"]["patch"]["best"]["lr_applied"] == pytest.approx(1e-3 * 8 / 1024)
    quick = saved["quick_metrics"]
    assert list(quick["rows"]) == ["encoder", "random init", "raw pixels"]
    assert quick["feature"].startswith("CLS token")
    assert quick["rows"]["raw pixels"]["dim"] == 3 * 4 * 4 and quick["rows"]["encoder"]["dim"] == 32
    for name, row in quick["rows"].items():
        assert 0 <= row["knn_top1"] <= 100 and row["linear"]["converged"], name
    assert quick["rows"]["raw pixels"]["linear_top1"] == 100.0  # brightness separates the classes
    md = (tmp_path / "probe_results.md").read_text()
    assert "quick protocol (epochs 2 instead of 10" in md and "lr = grid lr × batch / 1024" in md
    for label, name in (("this encoder", "encoder"), ("random init, same architecture", "random init"),
                        ("raw pixels", "raw pixels")):
        row = quick["rows"][name]
        assert f"| {label} | {row['dim']} | {row['knn_top1']:.2f} | {row['linear_top1']:.2f} |" in md
