"""DDP (README: "each rank gets different masks, the teachers stay identical"), tested where it is hardest: both ranks
read the same samples, so only the rank can make their masks differ, while gradient averaging and the EMA must keep
every rank's student and teacher identical."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

TESTS = Path(__file__).resolve().parent


def test_ranks_fed_the_same_samples_draw_different_masks_and_stay_identical(tmp_path):
    """Two gloo processes, each fed the same sample indices and pixels at every step: the context and target masks
    differ between the ranks at every step (masks are seeded by rank too), and after the steps the students and
    teachers of both ranks are identical and trained."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(TESTS / "ddp_same_indices_worker.py"), str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=TESTS.parent,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    steps = sorted(int(k.split(".")[1]) for k in ranks[0] if k.startswith("indices."))
    assert steps == [0, 1, 2]
    for step in steps:
        assert ranks[0][f"indices.{step}"].tolist() == ranks[1][f"indices.{step}"].tolist() == \
            list(range(4 * step, 4 * step + 4))  # the same samples on both ranks
        assert torch.equal(ranks[0][f"pixels.{step}"], ranks[1][f"pixels.{step}"])
        differ = [not torch.equal(ranks[0][f"{kind}.{step}"], ranks[1][f"{kind}.{step}"])
                  for kind in ("context", "target")]
        assert all(differ), f"step {step}: both ranks drew the same masks (context, target differ: {differ})"
    weights = [k for k in ranks[0] if k.startswith(("student.", "teacher."))]
    assert any(k.startswith("teacher.") for k in weights) and any(k.startswith("student.") for k in weights)
    for key in weights:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    teacher = [k for k in weights if k.startswith("teacher.")]
    assert not all(torch.equal(ranks[0][f"initial.{k[8:]}"], ranks[0][k]) for k in teacher)  # it trained
    assert not all(torch.equal(ranks[0][f"student.{k[8:]}"], ranks[0][k]) for k in teacher)  # EMA, not a copy
