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
