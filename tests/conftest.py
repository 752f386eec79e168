import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network (the fake-Hub tests patch this)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch

import bootleg_hf
from bootleg_hf.data import FASHION_MNIST_DIR

torch.set_num_threads(2)

# Under `make mutation` the package is mutmut's copy in mutants/, whose modules import mutmut (installed wherever it
# runs): remote code built from that copy may import it too.
UNDER_MUTMUT = Path(bootleg_hf.__file__).parents[1].name == "mutants"
if UNDER_MUTMUT:
    from bootleg_hf import publishing

    publishing.REMOTE_CODE_PACKAGES.add("mutmut")


def pytest_collection_modifyitems(session, config, items):
    """Under `make mutation`, fastest tests first (mutmut's recorded durations): a mutant is killed by its first
    failing test, so the slow ones only run for mutants the fast ones miss."""
    stats = Path("mutmut-stats.json")
    if UNDER_MUTMUT and stats.is_file():
        durations = json.loads(stats.read_text())["duration_by_test"]
        items.sort(key=lambda item: durations.get(item.nodeid, math.inf))


def tiny_config(**overrides) -> bootleg_hf.BootlegConfig:
    """A CPU-sized config: width 32, 2 blocks, 32 px images, patch 8 (4×4 grid)."""
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
                predictor_hidden_size=16, predictor_num_hidden_layers=1, predictor_num_attention_heads=2,
                targets="1:1:2")
    return bootleg_hf.BootlegConfig(**{**base, **overrides})


def check_seeded_partition(generator: bootleg_hf.MaskGenerator, batch_size: int):
    """A hidden-target mode's masks: the same seed gives the same masks and another seed others; every image keeps the
    same int(N · (1 − ratio)) visible tokens in raster order, and context and target partition the grid. Returns the
    masks for the mode's own checks."""
    m = generator.generate(batch_size, seed=3, epoch=1)
    again = generator.generate(batch_size, seed=3, epoch=1)
    assert torch.equal(m.context_indices, again.context_indices) and torch.equal(m.target_indices, again.target_indices)
    assert not torch.equal(m.context_indices, generator.generate(batch_size, seed=4, epoch=1).context_indices)
    n = generator.num_patches
    k = int(n * (1 - generator.mask_ratio))
    assert m.context_indices.shape == (batch_size, k) and m.target_indices.shape == (batch_size, 1, n - k)
    for ctx, tgt, union in zip(m.context_indices, m.target_indices[:, 0], m.target_mask):
        assert torch.equal(torch.sort(torch.cat([ctx, tgt])).values, torch.arange(n))
        assert bool((ctx.diff() > 0).all()) and not union[ctx].any() and union[tgt].all()
    return m


def check_hidden_target_mode(config: bootleg_hf.BootlegConfig, tmp_path: Path) -> dict:
    """For a mask mode whose targets are every hidden token: one pretraining step on its masks gives a finite loss and
    gradients reach the mask token; `bootleg-masks` at 14×14 (ratio 0.75) reports a fixed 25 % seen, 75 % predicted
    and no rectangle shapes. Returns the mode's statistics."""
    from bootleg_hf.cli import masks_main

    masks = bootleg_hf.MaskGenerator.from_config(config).generate(4, seed=0)
    model = bootleg_hf.BootlegForPretraining(config)
    loss = model(torch.randn(4, 3, 32, 32), masks.context_indices, masks.target_indices).loss
    loss.backward()
    assert torch.isfinite(loss) and model.predictor.mask_token.grad is not None
    mode = config.mask_mode
    assert masks_main(["--grid", "14", "14", "--batch-size", "64", "--batches", "3", "--modes", mode,
                       "--out", str(tmp_path / "masks")]) == 0
    stats = json.loads((tmp_path / "masks" / "mask_stats.json").read_text())[mode]
    assert stats["seen_mean"] == pytest.approx(int(196 * 0.25) / 196) and stats["seen_std"] == 0.0
    assert stats["target_mean"] == pytest.approx(0.75)
    assert stats["shapes"] == {}  # its target is every hidden token, not a rectangle
    return stats


@pytest.fixture
def config() -> bootleg_hf.BootlegConfig:
    return tiny_config()


# `make test` installs Debian's dataset-fashion-mnist; elsewhere the tests that read it are skipped, with the reason.
needs_fmnist = pytest.mark.skipif(not Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file(),
                                  reason="apt-get install dataset-fashion-mnist")


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These tensors are tiny: one thread avoids OpenMP synchronisation costs (10× on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
