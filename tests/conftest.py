import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network (the fake-Hub tests patch this)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

import bootleg_hf

torch.set_num_threads(2)


def tiny_config(**overrides) -> bootleg_hf.BootlegConfig:
    """A CPU-sized config: width 32, 2 blocks, 32 px images, patch 8 (4×4 grid)."""
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
                predictor_hidden_size=16, predictor_num_hidden_layers=1, predictor_num_attention_heads=2,
                targets="1:1:2")
    return bootleg_hf.BootlegConfig(**{**base, **overrides})


@pytest.fixture
def config() -> bootleg_hf.BootlegConfig:
    return tiny_config()
