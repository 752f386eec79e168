"""Frozen probes (docs/design.md §7): the four heads, the parallel lr × wd sweep, the schedule, and the probe
command."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_fmnist, tiny_config
from safetensors import safe_open
from transformers import get_cosine_schedule_with_warmup

from bootleg_hf import BootlegForImageClassification
from bootleg_hf.checkpoints import export_pretrained
from bootleg_hf.evaluation.classification import PROBE_GRID, ProbeSweep
from bootleg_hf.modeling_bootleg_heads import AttentiveProbe, build_probe
from bootleg_hf.optim import param_groups

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("patch", "cls", "xattn", "xblk")


pytestmark = pytest.mark.usefixtures("single_thread")


def tokens_for(config, batch: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.num_prefix_tokens + config.num_patches, config.hidden_size, generator=g)


def reference_attentive(probe: AttentiveProbe, tokens: torch.Tensor) -> torch.Tensor:
    """V-JEPA's attentive classifier written out directly: project every token, SDPA, residual, (MLP), Linear."""
    b, t, d = tokens.shape
    h = probe.num_heads
    q = probe.q_proj(probe.query).reshape(1, 1, h, d // h).transpose(1, 2).expand(b, -1, -1, -1)
    k, v = probe.kv(probe.norm(tokens)).reshape(b, t, 2, h, d // h).permute(2, 0, 3, 1, 4)
    x = probe.query.reshape(1, d) + F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, d)
    if probe.mlp is not None:
        x = x + probe.mlp(probe.mlp_norm(x))
    return probe.classifier(x)


@pytest.mark.parametrize("kind", KINDS)
def test_probe_shapes_and_gradients(kind):
    config = tiny_config()
    probe = build_probe(kind, config, num_labels=5)
    logits = probe(tokens_for(config))
    assert logits.shape == (6, 5)
    F.cross_entropy(logits, torch.arange(6) % 5).backward()
    for name, p in probe.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_probe_inputs_are_the_documented_tokens():
    config = tiny_config()
    tokens = tokens_for(config)
    patch, cls = build_probe("patch", config, 3).eval(), build_probe("cls", config, 3)
    shift = 5.0 * torch.randn(config.hidden_size)  # not constant over channels: a LayerNorm would remove that
    changed = tokens.clone()
    changed[:, 1:config.num_prefix_tokens] += shift  # registers: neither the patch nor the CLS probe reads them
    assert torch.allclose(patch(tokens), patch(changed)) and torch.allclose(cls(tokens), cls(changed))
    changed[:, 0] += shift  # the CLS token matters to the CLS probe only
    assert torch.allclose(patch(tokens), patch(changed)) and not torch.allclose(cls(tokens), cls(changed))
    xattn = build_probe("xattn", config, 3)
    with torch.no_grad():
        xattn.query.normal_()  # make the attention non-uniform
    changed = tokens.clone()
    changed[:, 1] += shift  # the attentive probes see every token, registers included
    assert not torch.allclose(xattn(tokens), xattn(changed))


@pytest.mark.parametrize("block", [False, True])
def test_attentive_probe_equals_direct_cross_attention(block):
    config = tiny_config()
    probe = AttentiveProbe(config, 4, block=block)
    with torch.no_grad():  # non-trivial LayerNorm affine and biases exercise every folded term
        for p in (probe.query, probe.norm.weight, probe.norm.bias, probe.kv.bias, probe.q_proj.bias):
            p.normal_()
    tokens = tokens_for(config) * 3 + 1
    assert torch.allclose(probe(tokens), reference_attentive(probe, tokens), atol=1e-5)
    assert (probe.mlp is not None) == block


def test_build_probe_errors():
    with pytest.raises(ValueError, match="unknown probe type"):
        build_probe("mlp", tiny_config(), 3)
    with pytest.raises(ValueError, match="CLS token"):
        build_probe("cls", tiny_config(use_cls_token=False), 3)


def test_param_groups_skip_biases_norms_and_query():
    groups = param_groups(build_probe("xblk", tiny_config(), 3), weight_decay=0.1, lr=1e-3)
    decayed = {id(p) for p in groups[0]["params"]}
    probe_params = dict(build_probe("xblk", tiny_config(), 3).named_parameters())
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert len(groups[0]["params"]) == sum(p.ndim >= 2 and n != "query" for n, p in probe_params.items())
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and len(decayed) == len(groups[0]["params"])


def test_warmup_cosine():
    """The sweep's schedule: linear warm-up from 0 (the paper's protocol), then cosine to 0."""
    sweep = ProbeSweep("patch", tiny_config(), 3, lrs=[1.0], wds=[0.0], total_steps=12, warmup_steps=4)
    values = []
    for _ in range(13):
        values.append(sweep.optimizer.param_groups[0]["lr"])
        sweep.optimizer.step()  # no gradients: only the order the scheduler expects
        sweep.scheduler.step()
    assert values[:4] == [0.0, 0.25, 0.5, 0.75] and values[4] == 1.0
    assert values[8] == pytest.approx(0.5) and values[12] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(values[4:], values[5:]))


@pytest.mark.parametrize("kind", KINDS)
def test_sweep_heads_train_exactly_as_alone(kind):
    """The 25 heads trained together from shared features equal, for one (lr, wd), that head trained alone."""
    config = tiny_config()
    steps, warmup = 6, 2
    torch.manual_seed(0)
    sweep = ProbeSweep(kind, config, 4, total_steps=steps, warmup_steps=warmup)
    assert len(sweep.heads) == 25 and sweep.grid[0] == (PROBE_GRID[0], PROBE_GRID[0])
    j = sweep.grid.index((2e-3, 4e-3))
    alone = copy.deepcopy(sweep.heads[j])
    initial = copy.deepcopy(alone.state_dict())
    optimizer = torch.optim.AdamW(param_groups(alone, 4e-3, 2e-3))
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    for step in range(steps):
        tokens = tokens_for(config, 8, seed=step)
        labels = torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(step))
        sweep.train_step(tokens, labels)
        alone.train()
        loss = F.cross_entropy(alone(tokens), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    together = sweep.heads[j].state_dict()
    for name, value in alone.state_dict().items():
        assert torch.allclose(together[name].double(), value.double(), atol=1e-6, rtol=0), name
    moved = max((alone.state_dict()[n].double() - v.double()).abs().max() for n, v in initial.items())
    assert moved > 1e-4  # the comparison is not between two untouched heads
    other = sweep.heads[0].state_dict()  # another (lr, wd): the heads really differ
    assert any(not torch.allclose(other[n], together[n]) for n in together if together[n].is_floating_point())


def test_sweep_learns_a_separable_problem():
    config = tiny_config()
    torch.manual_seed(0)
    sweep = ProbeSweep("xattn", config, 2, lrs=[4e-3], wds=[1e-3, 8e-3], total_steps=40, warmup_steps=4)
    direction = torch.randn(config.hidden_size)
    def batch(seed):
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, 2, (32,), generator=g)
        tokens = tokens_for(config, 32, seed) + 2.0 * (2 * labels.float() - 1)[:, None, None] * direction
        return tokens, labels
    for step in range(40):
        sweep.train_step(*batch(step))
    tokens, labels = batch(1000)
    assert sweep.num_correct(tokens, labels).min() >= 30


@needs_fmnist
def test_probe_cli_smoke(tmp_path):
    out = tmp_path / "probe"
    cmd = [sys.executable, str(ROOT / "training" / "probe.py"), "--model", "random:vit-micro", "--limit-train", "64",
           "--limit-test", "32", "--epochs", "1", "--batch-size", "32", "--num-workers", "0", "--threads", "1",
           "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    document = json.loads((out / "probe_results.json").read_text())
    assert (document["format"], document["encoder"], document["weights"]) == ("bootleg-results/1", "random:vit-micro",
                                                                             "teacher")
    assert "segmentation" not in document
    results = document["classification"]
    assert results["dataset"] == {"name": "Fashion-MNIST", "type": "zalando-datasets/fashion_mnist", "split": "test"}
    assert set(results["probes"]) == set(KINDS) and results["num_train"] == 64 and results["num_test"] == 32
    for kind, r in results["probes"].items():
        assert len(r["grid"]) == 25 and 0 <= r["best"]["top1"] <= 100
        assert r["best"]["top1"] == max(g["top1"] for g in r["grid"])
        assert results["heads"][kind] == f"heads/{kind}.safetensors"
        with safe_open(out / results["heads"][kind], framework="pt") as f:
            metadata = f.metadata()
        assert (metadata["probe_type"], metadata["num_labels"]) == (kind, "10")
        assert json.loads(metadata["labels"]) == results["labels"]
    assert "| probe | top-1 % |" in (out / "probe_results.md").read_text()
    config = json.loads((out / "classifier" / "config.json").read_text())
    assert config["probe_type"] == results["best_probe"] and config["id2label"]["0"] == "T-shirt/top"
    assert (out / "classifier" / "preprocessor_config.json").is_file()

    # the best head file alone (its metadata gives type and labels) exports to the same classifier
    best = results["heads"][results["best_probe"]]
    exported = export_pretrained("random:vit-micro", tmp_path / "exported", probe_head=out / best)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = BootlegForImageClassification.from_pretrained(out / "classifier").eval()(pixels).logits
        got = BootlegForImageClassification.from_pretrained(exported).eval()(pixels)
    assert torch.equal(got.logits, want)
    assert json.loads((exported / "config.json").read_text())["id2label"] == config["id2label"]
