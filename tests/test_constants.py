"""The paper's constants, pinned to the numbers the documentation states (docs/design.md §3–§7, the README and the
shipped recipes), read from what the code actually builds: the probe grid and warm-up inside a real `run_probes`,
the transforms that `build_trainer` and `run_probes` attach to their data, the masking defaults, the recipes' training
arguments and the default target blocks.

Each value is written out here as a literal from the documents, never read back from the module under test."""

import math

import datasets
import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from bootleg_hf import BootlegConfig, BootlegModel, BootlegTrainingArguments, MaskGenerator
from bootleg_hf import data as D
from bootleg_hf.configuration_bootleg import default_targets
from bootleg_hf.evaluation import classification
from bootleg_hf.evaluation.classification import PROBE_GRID, ProbeSettings, ProbeSweep, run_probes
from bootleg_hf.pretraining import PretrainSettings, build_trainer
from bootleg_hf.recipes import build_config, build_training_args, load_recipe
from bootleg_hf.targets import PIXEL_EPS, TARGET_EPS, TargetSpec

# docs/design.md §7 and the README: "a 5×5 grid of lr × wd ({0.5, 1, 2, 4, 8}e-3)"
PAPER_GRID = [0.0005, 0.001, 0.002, 0.004, 0.008]
IMAGENET_TRAIN_IMAGES = 1_281_167


class Stop(Exception):
    """Raised by a patched step to end a run once what the test inspects has been built."""


def transform_ops(transform) -> list:
    """The torchvision ops of one of bootleg_hf.data's transforms (held in a `Compose`)."""
    compose = getattr(transform, "ops", None) or transform.pipeline  # (`pipeline` in earlier versions)
    return list(compose.transforms)


def op(transform, name: str):
    found = [o for o in transform_ops(transform) if type(o).__name__ == name]
    assert len(found) == 1, (name, [type(o).__name__ for o in transform_ops(transform)])
    return found[0]


def flat(pairs) -> list[float]:
    return [float(x) for pair in pairs for x in pair]


def in_memory_classification(n_train: int = 8, n_test: int = 4, size: int = 40) -> datasets.DatasetDict:
    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})

    def split(n):
        return datasets.Dataset.from_dict(
            {"image": [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)],
             "label": [i % 2 for i in range(n)]}, features=features)

    return datasets.DatasetDict(train=split(n_train), test=split(n_test))


# ---- probes ----------------------------------------------------------------------------------------------------------


def test_probe_grid_is_the_papers_5x5_lr_wd_grid_value_by_value():
    """Constant: the probes' lr × wd grid {0.5, 1, 2, 4, 8}e-3 (docs/design.md §7), both axes, 25 heads, lr-major."""
    assert len(PROBE_GRID) == 5
    for got, want in zip(PROBE_GRID, PAPER_GRID, strict=True):
        assert got == pytest.approx(want, rel=1e-12, abs=0)
    settings = ProbeSettings()
    assert [float(x) for x in settings.lrs] == pytest.approx(PAPER_GRID, rel=1e-12)
    assert [float(x) for x in settings.wds] == pytest.approx(PAPER_GRID, rel=1e-12)
    sweep = ProbeSweep("patch", tiny_config(), 3)
    assert len(sweep.heads) == 25
    assert flat(sweep.grid) == pytest.approx(flat((lr, wd) for lr in PAPER_GRID for wd in PAPER_GRID), rel=1e-12)
    # each head's parameter groups carry its own lr and (decayed group only) its own weight decay
    groups = sweep.optimizer.param_groups
    for k, (lr, wd) in enumerate(sweep.grid):
        decay, no_decay = groups[2 * k], groups[2 * k + 1]
        assert decay["weight_decay"] == wd and no_decay["weight_decay"] == 0.0
        assert decay["initial_lr"] == no_decay["initial_lr"] == lr


@pytest.mark.parametrize("epochs,warmup", [(1, 0), (2, 1), (3, 1), (4, 2), (8, 4), (9, 4), (10, 5), (11, 5),
                                           (20, 5), (100, 5)])
def test_probe_warmup_is_5_epochs_or_half_a_shorter_run(epochs, warmup):
    """Constant: the probes warm up linearly from 0 for 5 epochs, or half of a shorter run (README: "linear warm-up
    from 0 (5 epochs, or half of a shorter run)")."""
    assert ProbeSettings(epochs=epochs).warmup_epochs == warmup
    assert ProbeSettings(epochs=epochs, warmup_epochs=1).warmup_epochs == 1  # an explicit value is kept


def test_run_probes_builds_the_papers_transforms_grid_and_warmup(monkeypatch):
    """Constants as `run_probes` really uses them: RandomResizedCrop(0.3–1, bicubic) + flip 0.5 + colour jitter 0.4 for
    training, an 87.5 % centre crop (bicubic resize of the shorter side to size / 0.875) for evaluation, the 5×5 grid
    (learning rates × batch / 1024), and a warm-up of min(5, epochs // 2) epochs from 0 followed by a cosine to 0."""
    attached = {}
    set_transform = datasets.Dataset.set_transform

    def record(self, transform, *args, **kwargs):
        attached[type(transform).__name__] = transform
        return set_transform(self, transform, *args, **kwargs)

    captured = {}

    def stop(encoder, sweeps, loader, epochs, *args, **kwargs):
        captured.update(sweeps=sweeps, batches=len(loader), epochs=epochs)
        raise Stop

    monkeypatch.setattr(datasets.Dataset, "set_transform", record)
    monkeypatch.setattr(classification, "train_sweeps", stop)
    with pytest.raises(Stop):
        run_probes(BootlegModel(tiny_config()), in_memory_classification(),
                   ProbeSettings(probes=["patch"], epochs=4, batch_size=4, num_workers=0))
    train, test = attached["ProbeTrainTransform"], attached["EvalTransform"]
    crop = op(train, "RandomResizedCrop")
    assert crop.size == (32, 32) and crop.scale == (0.3, 1.0)
    assert crop.ratio == pytest.approx((3 / 4, 4 / 3))
    assert crop.interpolation.value == "bicubic" and crop.antialias is True
    assert op(train, "RandomHorizontalFlip").p == 0.5
    jitter = op(train, "ColorJitter")
    for name in ("brightness", "contrast", "saturation"):
        assert getattr(jitter, name) == pytest.approx((0.6, 1.4)), name  # jitter 0.4: factors in [1 - 0.4, 1 + 0.4]
    assert jitter.hue is None
    resize = op(test, "Resize")
    assert list(resize.size) == [round(32 / 0.875)] and resize.interpolation.value == "bicubic" and resize.antialias
    assert op(test, "CenterCrop").size == 32

    sweep = captured["sweeps"]["patch"]
    assert flat(sweep.grid) == pytest.approx(flat((lr, wd) for lr in PAPER_GRID for wd in PAPER_GRID), rel=1e-12)
    batches, epochs = captured["batches"], captured["epochs"]
    assert (batches, epochs) == (2, 4)  # 8 images, batch 4, the last partial batch dropped
    warmup, total = 2 * batches, epochs * batches  # min(5, 4 // 2) = 2 warm-up epochs
    lrs = []
    for _ in range(total + 1):  # the LR rule (README): grid lr × batch / 1024, here batch 4
        lrs.append(sweep.optimizer.param_groups[0]["lr"] / (PAPER_GRID[0] * 4 / 1024))
        sweep.optimizer.step()  # no gradients: only the order the scheduler expects
        sweep.scheduler.step()
    assert lrs[:warmup + 1] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert lrs[warmup + (total - warmup) // 2] == pytest.approx(0.5)  # half-way down the cosine
    assert lrs[total] == pytest.approx(0.0, abs=1e-12)


# ---- the pretraining transform ---------------------------------------------------------------------------------------


def test_pretraining_run_builds_the_papers_augmentation(tmp_path, monkeypatch):
    """Constant: pretraining augments with RandomResizedCrop(scale 0.35–1, bicubic, antialiased) + horizontal flip
    (p = 0.5) at the recipe's image size (docs/design.md §6), as `build_trainer` attaches it to the data."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # not the user's cache
    folder = tmp_path / "images" / "a"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (20, 20), (10 * i, 0, 0)).save(folder / f"{i}.png")
    trainer, transform = build_trainer(PretrainSettings(
        recipe="vit-micro", dataset=tmp_path / "images", batch_size=2, max_steps=1, output_dir=tmp_path / "run",
        overrides=["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
                   "model.predictor_hidden_size=16", "model.predictor_num_hidden_layers=1",
                   "model.predictor_num_attention_heads=2"]))
    crop = op(transform, "RandomResizedCrop")
    assert tuple(crop.size) == (32, 32) and crop.scale == (0.35, 1.0)
    assert crop.ratio == pytest.approx((3 / 4, 4 / 3))
    assert crop.interpolation.value == "bicubic" and crop.antialias is True
    assert op(transform, "RandomHorizontalFlip").p == 0.5
    assert not [o for o in transform_ops(transform) if type(o).__name__ == "ColorJitter"]  # no jitter in pretraining
    assert op(D.PretrainTransform(16), "RandomResizedCrop").scale == (0.35, 1.0)  # the class default too
    for name in ("vit-micro", "vit-small", "vit-base", "vit-large"):
        assert load_recipe(name)["data"]["crop_scale"] == [0.35, 1.0], name
    del trainer


# ---- masking ---------------------------------------------------------------------------------------------------------


def test_masking_defaults_are_the_documented_ones():
    """Constants of docs/design.md §5: 4 target rectangles with scale in [0.16, 0.183] and aspect in [2/3, 3/2], a
    background of scale [0.85, 1], at least 10 context tokens; `random` masks 75 % (MAE); `ijepa` keeps I-JEPA's
    published (0.15, 0.2) scale and (0.75, 1.5) aspect."""
    for gen in (MaskGenerator(14), MaskGenerator.from_config(BootlegConfig())):
        assert gen.mode == "bootleg" and gen.grid == (14, 14)
        assert gen.num_targets == 4
        assert gen.target_scale == pytest.approx((0.16, 0.183), abs=1e-12)
        assert gen.target_aspect == pytest.approx((2 / 3, 3 / 2), abs=1e-12)
        assert gen.context_scale == pytest.approx((0.85, 1.0), abs=1e-12)
        assert gen.min_context == 10
        assert gen.mask_ratio == pytest.approx(0.75, abs=1e-12)
    legacy = MaskGenerator(14, "ijepa")
    assert legacy.target_scale == pytest.approx((0.15, 0.2)) and legacy.target_aspect == pytest.approx((0.75, 1.5))
    assert legacy.context_scale == pytest.approx((0.85, 1.0))
    random = MaskGenerator(14, "random").generate(8)
    assert random.context_indices.shape[1] == int(196 * 0.25)  # 75 % hidden
    # the drawn rectangles: one size per batch, rectangles 2 and 4 transposed, about 16–18 % of the grid each
    areas = []
    for batch in range(40):
        target = MaskGenerator(14).generate(4, batch_index=batch).target_indices
        areas.append(target.shape[2] / 196)
    assert 0.14 <= min(areas) and max(areas) <= 0.21 and 0.16 <= float(np.mean(areas)) <= 0.185


# ---- recipes ---------------------------------------------------------------------------------------------------------
def test_the_56px_recipe_is_vit_micro_at_the_papers_14x14_grid():
    """`vit-micro-56` differs from `vit-micro` only in the image size: 56 px at patch 4 is the paper's 14×14 grid
    (224 / 16), where the masker draws the paper's rectangles (n = int(196·s) tokens, s in [0.16, 0.183])."""
    micro, grid14 = load_recipe("vit-micro"), load_recipe("vit-micro-56")
    assert grid14["data"].pop("image_size") == 56 and micro["data"].pop("image_size") == 32
    assert grid14 == micro
    config = build_config(load_recipe("vit-micro-56"))
    assert config.grid_size == (14, 14) and config.patch_size == 4
    gen = MaskGenerator.from_config(config)
    sizes = {MaskGenerator.from_config(config).generate(4, batch_index=i).target_indices.shape[2] for i in range(60)}
    assert gen.grid == (14, 14) and sizes <= set(range(int(196 * 0.16) - 2, int(196 * 0.183) + 3)) and len(sizes) > 1



# recipe → (lr_init, lr_max, lr_final) as the shipped YAML files state them
RECIPE_LRS = {"vit-small": (1e-4, 3e-3, 1e-4), "vit-base": (3e-5, 3e-3, 3e-5), "vit-large": (3e-5, 3e-3, 3e-5)}
RECIPE_SHAPES = {"vit-small": (384, 12, 6), "vit-base": (768, 12, 12), "vit-large": (1024, 24, 16)}


@pytest.mark.parametrize("name", sorted(RECIPE_LRS))
def test_paper_recipes_batch_epochs_warmup_ema_and_lrs(name):
    """Constants of the paper's recipes (README, docs/design.md §6): global batch 2048, 600 epochs, 105 warm-up epochs,
    EMA 0.9985 from start to end, LR warm-up to 3e-3 (scaled by batch / 2048 = 1 at the paper's batch), weight decay
    0.05, AdamW betas (0.9, 0.95), 224 px images with 16 px patches."""
    recipe = load_recipe(name)
    config = build_config(recipe)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == RECIPE_SHAPES[name]
    assert config.image_hw == (224, 224) and config.patch_size == 16
    assert config.ema_start == 0.9985 and config.ema_end == 0.9985
    args = build_training_args(recipe, "unused", num_images=IMAGENET_TRAIN_IMAGES, use_cpu=True)
    assert recipe["training"]["global_batch_size"] == 2048 and args.global_batch_size == 2048
    assert args.num_train_epochs == 600 and recipe["training"]["warmup_epochs"] == 105
    assert args.warmup_steps == 105 * (IMAGENET_TRAIN_IMAGES // 2048)
    lr_init, lr_max, lr_final = RECIPE_LRS[name]
    assert (args.lr_init, args.lr_max, args.lr_final) == (lr_init, lr_max, lr_final)
    assert args.scale_lr_by_batch is True and args.lr_scale == 1.0
    assert (args.wd_init, args.wd_final) == (0.05, 0.05)
    assert (args.adam_beta1, args.adam_beta2) == (0.9, 0.95)


@pytest.mark.parametrize("name", [*sorted(RECIPE_LRS), "vit-micro"])
def test_recipes_state_gradient_clipping_and_none_is_applied(name, monkeypatch):
    """Constant: every shipped recipe says `max_grad_norm` explicitly, and it is 0 (no clipping, as the MAE and I-JEPA
    training code the paper builds on); `BootlegTrainingArguments` defaults to 0 too, unlike `TrainingArguments` (1.0)."""
    recipe = load_recipe(name)
    assert recipe["training"]["max_grad_norm"] == 0.0
    assert build_training_args(recipe, "unused", num_images=IMAGENET_TRAIN_IMAGES, use_cpu=True).max_grad_norm == 0.0
    assert BootlegTrainingArguments(output_dir="unused", use_cpu=True).max_grad_norm == 0.0


def test_lr_scaling_example_of_the_readme():
    """Constant: "with scale_lr_by_batch=True all three are multiplied by global batch / 2048, so lr_max=3e-3 becomes
    4.7e-5 at batch 32" (README)."""
    args = BootlegTrainingArguments(output_dir="unused", per_device_train_batch_size=32, use_cpu=True, lr_max=3e-3)
    assert args.scale_lr_by_batch is True
    assert args.lr_max * args.lr_scale == pytest.approx(3e-3 * 32 / 2048)
    assert round(args.lr_max * args.lr_scale, 6) == 4.7e-5
    assert BootlegTrainingArguments(output_dir="unused", per_device_train_batch_size=32, use_cpu=True,
                                    scale_lr_by_batch=False).lr_scale == 1.0


# ---- targets and encoder ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth,spec,blocks", [(12, "1:4:12", [1, 4, 8, 12]), (24, "1:4:24", [1, 4, 8, 12, 16, 20, 24]),
                                               (6, "1:2:6", [1, 2, 4, 6])])
def test_default_targets_are_the_documented_blocks(depth, spec, blocks):
    """Constant: the default target blocks — 1:4:12 = {1, 4, 8, 12} for ViT-S/B, 1:4:24 for ViT-L, 1:2:6 for a
    6-block model (docs/design.md §4.2) — as a config of that depth gets them."""
    assert default_targets(depth) == spec
    config = tiny_config(num_hidden_layers=depth, targets=None)
    assert config.targets == spec
    assert [t.block for t in config.target_spec.terms] == blocks
    assert all(t.kind == "out" for t in config.target_spec.terms) and config.target_spec.merge == "concat"


def test_presets_carry_the_default_targets_and_the_encoder_constants():
    """Constants: ViT-S/B targets blocks 1, 4, 8, 12 (3072-d for ViT-B), ViT-L 1:4:24, the CPU preset 1:2:6; LayerNorm
    eps 1e-6, MLP ratio 4, qkv bias, CLS + 4 registers (docs/design.md §3); targets z-scored with eps 1e-5, pixels
    with MAE's 1e-6 (§4.2)."""
    assert {name: BootlegConfig.from_preset(name).targets for name in ("vit-small", "vit-base", "vit-large",
                                                                       "vit-micro")} == \
        {"vit-small": "1:4:12", "vit-base": "1:4:12", "vit-large": "1:4:24", "vit-micro": "1:2:6"}
    base = BootlegConfig()
    assert TargetSpec.parse(base.targets, 12).target_dim(768, 16, 3) == 4 * 768
    assert base.layer_norm_eps == 1e-6 and base.intermediate_size == 4 * base.hidden_size and base.qkv_bias
    assert base.use_cls_token and base.num_register_tokens == 4 and base.num_prefix_tokens == 5
    assert TARGET_EPS == 1e-5 and PIXEL_EPS == 1e-6
    x = torch.randn(3, 16) * 0.01 + 2  # variance ~1e-4: the eps changes the result by ~5 %
    expected = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    from bootleg_hf.targets import zscore

    torch.testing.assert_close(zscore(x), expected, atol=1e-4, rtol=1e-4)
    assert math.isclose(float(base.ema_start), 0.9985) and math.isclose(float(base.ema_end), 0.9985)


def test_patch_and_cls_probes_normalise_without_learned_parameters():
    """Constant (docs/design.md §7): the Patch probe's BatchNorm and the CLS probe's LayerNorm have no affine
    parameters — the Linear layer is the probe's only trained part."""
    from bootleg_hf.modeling_bootleg_heads import build_probe

    config = tiny_config()
    for kind in ("patch", "cls"):
        probe = build_probe(kind, config, 10)
        assert [name for name, _ in probe.named_parameters()] == ["classifier.weight", "classifier.bias"], kind


def test_attentive_probe_layout_and_init_are_v_jepas():
    """Constant (docs/design.md §7): X-Attn / X-Blk hold one learned query `[1, 1, D]` (truncated normal, std =
    initializer_range), a fused key/value Linear, and X-Blk an MLP of ratio 4 — the layout saved head files have."""
    from bootleg_hf.modeling_bootleg_heads import build_probe

    config = tiny_config(hidden_size=64, initializer_range=0.05)
    torch.manual_seed(0)
    probe = build_probe("xblk", config, 10)
    shapes = {name: tuple(p.shape) for name, p in probe.named_parameters()}
    assert shapes["query"] == (1, 1, 64) and shapes["kv.weight"] == (128, 64) and shapes["q_proj.weight"] == (64, 64)
    assert shapes["mlp.fc1.weight"] == (256, 64) and shapes["mlp.fc2.weight"] == (64, 256)
    assert shapes["classifier.weight"] == (10, 64) and "mlp.fc1.weight" not in dict(build_probe("xattn", config, 10)
                                                                                     .named_parameters())
    queries = torch.cat([build_probe("xattn", config, 10).query.detach().flatten() for _ in range(50)])
    assert 0.045 < float(queries.std()) < 0.055
