"""The other systems' recipes (`bootleg_hf/recipes/<system>-*.yaml`, also `training/recipes/`): each builds the
model it describes, and the CPU-sized ones train through `bootleg-pretrain` into folders the probes load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bootleg_hf import BootlegForPretraining, BootlegModel
from bootleg_hf.cli import pretrain_main
from bootleg_hf.recipes import build_config, load_recipe

REPO = Path(__file__).resolve().parents[1]
# recipe → what the model must be
EDITIONS = {
    "mae-vit-small": dict(mask_mode="random", targets="pixels", predictor_type="joint", ema_end=0.0),
    "crossmae-vit-small": dict(mask_mode="random", targets="pixels", predictor_type="crossmae",
                               predictor_feature_maps=True, predictor_hidden_size=256,
                               predictor_num_hidden_layers=12, predictor_num_attention_heads=8,
                               mask_prediction_ratio=None),
    "ijepa-vit-small": dict(mask_mode="ijepa", targets="final", loss_type="smooth_l1", ema_end=1.0),
    "data2vec2-vit-base": dict(mask_mode="inverse_block", mask_ratio=0.8, mask_repeats=16, targets="3:1:12",
                               target_merge="average", target_norm="instance", ema_anneal_steps=100000,
                               predictor_type="conv"),
    "mae-micro": dict(mask_mode="random", targets="pixels", predictor_type="joint"),
    "mae-bootleg-micro": dict(mask_mode="bootleg", targets="1:2:6", predictor_type="joint"),
    "crossmae-micro": dict(mask_mode="random", targets="pixels", predictor_type="crossmae"),
    "crossmae-bootleg-micro": dict(mask_mode="bootleg", targets="1:2:6", predictor_type="crossmae"),
}

CLIPPING = {"data2vec2-vit-base": 4.0}  # gradient-norm clipping where the system's own code clips; none elsewhere


@pytest.mark.parametrize("name", sorted(EDITIONS))
def test_each_edition_recipe_builds_its_model(name):
    recipe = load_recipe(name)
    assert recipe["training"]["max_grad_norm"] == CLIPPING.get(name, 0.0)
    config = build_config(recipe)
    for key, value in EDITIONS[name].items():
        assert getattr(config, key) == value, key
    if name.endswith("micro"):
        assert type(BootlegForPretraining(config).predictor).__name__ == (
            "CrossMAEPredictor" if config.predictor_type == "crossmae" else "BootlegPredictor")


@pytest.mark.parametrize("name", ["mae-micro", "crossmae-bootleg-micro"])
def test_cpu_editions_train_and_their_encoders_load(name, tmp_path):
    out = tmp_path / name
    assert pretrain_main(["--recipe", str(REPO / "training" / "recipes" / f"{name}.yaml"), "--dataset", "fashion-mnist", "--limit", "64",
                          "--batch-size", "16", "--max-steps", "4", "--output-dir", str(out)]) == 0
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    encoder = BootlegModel.from_pretrained(out / "encoder")
    assert encoder.config.predictor_type == EDITIONS[name]["predictor_type"]


def test_pretraining_continues_an_encoder_with_the_recipes_objective(tmp_path):
    """`bootleg-pretrain --init-from` (the paper's Table 4: continue e.g. a converted I-JEPA checkpoint as Bootleg):
    student and teacher start as the encoder, keep its architecture, and take the recipe's predictor and EMA."""
    import torch
    from conftest import tiny_config

    from bootleg_hf import BootlegForPretraining

    torch.manual_seed(3)
    encoder = BootlegModel(tiny_config(num_hidden_layers=3, targets="1:1:3", predictor_hidden_size=8))
    encoder.save_pretrained(tmp_path / "encoder")
    still = ["--set", "training.lr_init=0", "--set", "training.lr_max=1e-12", "--set", "training.lr_final=0",
             "--set", "training.wd_init=0", "--set", "training.wd_final=0", "--set", "training.warmup_epochs=0"]
    assert pretrain_main(["--recipe", "vit-micro", "--init-from", str(tmp_path / "encoder"), "--dataset",
                          "fashion-mnist", "--limit", "32", "--batch-size", "16", "--max-steps", "2", *still,
                          "--output-dir", str(tmp_path / "run")]) == 0
    model = BootlegForPretraining.from_pretrained(tmp_path / "run")
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.targets) == (32, 3, "1:1:3")
    assert (model.config.predictor_hidden_size, model.config.ema_start) == (48, 0.996)  # vit-micro's objective
    for name, value in encoder.state_dict().items():
        assert torch.allclose(model.student.state_dict()[name], value, atol=1e-6), name
        assert torch.allclose(model.teacher.state_dict()[name], value, atol=1e-6), name


# Table 3's ladders: what each row changes, as BootlegConfig fields (before → after)
LADDER_STEPS = {
    "+ EMA teacher": {"targets", "ema_start", "ema_end"},
    "+ the paper's masking": {"mask_mode"},
    "+ a ViT predictor per mask region": {"predictor_type", "predictor_feature_maps"},
    "+ concatenated hidden-layer targets": {"targets", "target_merge", "target_norm"},
}


def test_table3_ladders_change_one_thing_per_row_and_end_as_bootleg(capsys):
    import shlex

    from bootleg_hf.cli import ladders_main
    from bootleg_hf.recipes import ladder_rows

    ladders = ladder_rows()
    assert set(ladders) == {"mae", "crossmae", "data2vec2", "ijepa"}
    assert ladders_main(["--dataset", "/data/in1k/train"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("bootleg-pretrain")]
    assert len(commands) == sum(len(rows) for rows in ladders.values())
    for system, rows in ladders.items():
        configs = [build_config(load_recipe(recipe, overrides)).to_dict() for _, recipe, overrides in rows]
        assert configs[0] == build_config(load_recipe(rows[0][1], rows[0][2])).to_dict()
        assert configs[0]["hidden_size"] == 384  # every ladder at ViT-S
        assert load_recipe(rows[0][1], rows[0][2])["training"]["num_train_epochs"] == 300
        for (name, _, _), before, after in zip(rows[1:], configs, configs[1:]):
            changed = {k for k in after if before.get(k) != after[k]}
            assert changed and changed <= LADDER_STEPS[name], (system, name, changed)
        last = configs[-1]
        assert (last["targets"], last["target_merge"], last["target_norm"], last["mask_mode"],
                last["predictor_type"]) == ("1:4:12", "concat", "token", "bootleg", "bootleg")
        assert last["ema_end"] > 0 and not last["predictor_feature_maps"]
        # the printed command of each row gives that row's recipe
        for i, (name, recipe, overrides) in enumerate(rows):
            argv = shlex.split(next(c for c in commands if c.endswith(f"runs/table3-{system}-{i}")))
            sets = [argv[j + 1] for j, arg in enumerate(argv) if arg == "--set"]
            assert argv[argv.index("--recipe") + 1] == recipe and sets == overrides
            assert argv[argv.index("--dataset") + 1] == "/data/in1k/train"
