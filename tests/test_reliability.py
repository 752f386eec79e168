"""No silent wrong result, no lost run (issue 14): guarded output folders and a run lock, complete-or-absent
checkpoints under a real kill, bit-exact resume mid-epoch with the real pretraining transform, explicit schedule
changes on resume, strict recipes, non-finite stops on any step, data-folder guards and clear write errors."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_fmnist, tiny_config
from PIL import Image
from safetensors.torch import load_file

from bootleg_hf import BootlegModel
from bootleg_hf.cli import pretrain_main
from bootleg_hf.data import check_image_folder, write_image_folder
from bootleg_hf.pretraining import LOCK_FILE, OutputDirError, PretrainSettings, build_trainer, run_pretraining
from bootleg_hf.recipes import RecipeError, build_config, build_training_args, load_recipe
from bootleg_hf.trainer import SCHEDULE_FILE, STAGING_DIR, CheckpointWriteError, NonFiniteLossError, Schedule

# A 2-block, width-32 encoder on 16 px images (vit-micro recipe, 4×4 grid): a step takes a few milliseconds.
TINY = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
        "model.predictor_hidden_size=16", "model.predictor_num_hidden_layers=1", "model.predictor_num_attention_heads=2",
        "data.image_size=16", "model.mask_min_context=4", "training.logging_steps=1", "training.save_steps=1000"]

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """32 random 20×20 RGB images in two class folders."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("images")
    for i in range(32):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def settings(images: Path, out: Path, **kw) -> PretrainSettings:
    return PretrainSettings(**{"recipe": "vit-micro", "overrides": TINY, "dataset": images, "batch_size": 8,
                               "max_steps": 2, "output_dir": out, **kw})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


# ---- output folders -------------------------------------------------------------------------------------------------


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(images, tmp_path):
    """Guarantee: an --output-dir that holds a run is refused, nothing of it deleted or overwritten; --overwrite
    replaces the run's files only."""
    out = tmp_path / "run"
    run_pretraining(settings(images, out))
    before = weights(out)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(OutputDirError, match="already holds a pretraining run.*--resume.*--overwrite"):
        run_pretraining(settings(images, out, seed=1))
    with pytest.raises(OutputDirError):  # the command line goes the same way
        pretrain_main(["--recipe", "vit-micro", "--dataset", str(images), "--output-dir", str(out), "--batch-size", "8",
                       "--max-steps", "2", *sum((["--set", o] for o in TINY), [])])
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # nothing was touched
    (out / "notes.txt").write_text("mine")
    run_pretraining(settings(images, out, seed=1, overwrite=True))
    assert any(not torch.equal(v, weights(out)[k]) for k, v in before.items())  # replaced by the new run
    assert (out / "notes.txt").read_text() == "mine"  # what is not part of a run stays
    assert not (out / LOCK_FILE).exists()  # released


def test_resume_needs_a_checkpoint(images, tmp_path):
    """Guarantee: --resume on a folder without a (complete) checkpoint is an error."""
    for folder in (tmp_path / "missing", tmp_path):  # a missing and an empty folder
        with pytest.raises(FileNotFoundError, match="nothing to resume"):
            run_pretraining(settings(images, folder, resume="auto"))
    with pytest.raises(FileNotFoundError, match="not a complete Trainer checkpoint"):
        run_pretraining(settings(images, tmp_path / "x", resume=str(tmp_path / "missing" / "checkpoint-3")))


def test_two_processes_cannot_share_an_output_folder(images, tmp_path):
    """Guarantee: two processes cannot write into one --output-dir (a lock file with the pid; a lock left by a killed
    process is taken over)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text(f"{os.getpid()} {os.uname().nodename}")  # a live process holds it
    with pytest.raises(OutputDirError, match=f"another process \\({os.getpid()}"):
        run_pretraining(settings(images, out))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_FILE).write_text(f"{dead.stdout.strip()} {os.uname().nodename}")  # left by a killed process
    run_pretraining(settings(images, out))
    assert (out / "encoder" / "config.json").is_file() and not (out / LOCK_FILE).exists()


def test_torchrun_on_cpu_is_one_distributed_run_with_one_writer(images, tmp_path):
    """`torchrun --nproc_per_node 2` of the pretraining command: one DDP run over gloo (a checkpoint holds one RNG
    state per rank), not two independent runs racing for the output folder."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve().parents[1] / "training" / "pretrain.py"), "--recipe", "vit-micro", "--dataset",
           str(images), "--batch-size", "8", "--max-steps", "2", "--output-dir", str(tmp_path / "run"),
           *sum((["--set", o] for o in TINY[:-1] + ["training.save_steps=1"]), [])]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2


# ---- checkpoints under a real kill, and exact resume ------------------------------------------------------------------


KILLED_CHILD = """
import sys, time, torch
from bootleg_hf.pretraining import PretrainSettings, run_pretraining
images, out, marker = sys.argv[1:4]
save = torch.save
def slow_save(obj, path, *args, **kwargs):  # the 4th checkpoint hangs half-written, until the test kills us
    if str(path).endswith("optimizer.pt") and "checkpoint-4" in str(path):
        open(marker, "w").close()
        time.sleep(120)
    return save(obj, path, *args, **kwargs)
torch.save = slow_save
run_pretraining(PretrainSettings(recipe="vit-micro", overrides={overrides!r}, dataset=images, batch_size=8, max_steps=6,
                                 output_dir=out))
"""


def test_kill_during_a_checkpoint_write_resumes_from_the_last_complete_one(images, tmp_path):
    """Guarantee: checkpoints are complete or absent — after a real kill -9 during a checkpoint write, --resume takes
    the newest complete one and ends where the uninterrupted run ends."""
    overrides = TINY[:-1] + ["training.save_steps=1"]
    reference = run_pretraining(settings(images, tmp_path / "straight", max_steps=6, overrides=overrides))
    out, marker = tmp_path / "killed", tmp_path / "saving"
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD.format(overrides=overrides), str(images), str(out),
                              str(marker)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})  # one thread, as this process: same sums
    deadline = time.monotonic() + 120
    while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), child.stderr.read().decode()[-2000:]
    os.kill(child.pid, signal.SIGKILL)  # kill -9 while checkpoint-4 is being written
    child.wait()
    assert (out / STAGING_DIR / "checkpoint-4" / "model.safetensors").is_file()  # the half-written one
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]  # limit 2
    resumed = run_pretraining(settings(images, out, max_steps=6, overrides=overrides, resume="auto"))
    assert resumed.state.global_step == 6
    assert not (out / STAGING_DIR).exists()
    for name, tensor in weights(tmp_path / "straight").items():
        assert torch.equal(tensor, weights(out)[name]), name  # as if never interrupted
    assert reference.state.log_history[-2]["loss"] == resumed.state.log_history[-2]["loss"]


@needs_fmnist
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_is_bit_exact_with_the_real_transform(tmp_path, workers):
    """Fashion-MNIST through the real pretraining transform (random crops and flips), 8 steps per epoch, resumed at
    step 3: the augmented pixels, masks, weights, teacher and optimizer match the uninterrupted run."""
    common = dict(recipe="vit-micro", overrides=TINY[:-1] + ["training.save_steps=3"], dataset="fashion-mnist",
                  limit=64, batch_size=8, max_steps=6, num_workers=workers)
    seen = {}

    def record(name):
        def hook(module, args, kwargs):
            seen.setdefault(name, []).append(kwargs["pixel_values"].clone())
        return hook

    straight, _ = build_trainer(PretrainSettings(output_dir=tmp_path / "a", **common), disable_tqdm=True)
    straight.model.register_forward_pre_hook(record("straight"), with_kwargs=True)
    straight.train()
    resumed, _ = build_trainer(PretrainSettings(output_dir=tmp_path / "b", **common), disable_tqdm=True)
    resumed.model.register_forward_pre_hook(record("resumed"), with_kwargs=True)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    assert len(seen["resumed"]) == 3
    for a, b in zip(seen["straight"][3:], seen["resumed"]):
        assert torch.equal(a, b)  # the same augmented images
    assert not torch.equal(seen["straight"][3], seen["straight"][4])  # (and they are random)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_a[k]["exp_avg_sq"], opt_b[k]["exp_avg_sq"]) for k in opt_a)


def test_resume_with_a_changed_schedule_continues_or_switches_explicitly(images, tmp_path, caplog):
    """Guarantee: a resumed checkpoint keeps its own LR / weight-decay / EMA schedule (with a warning naming the
    differences) unless --new-schedule switches to the recipe's."""
    overrides = TINY[:-1] + ["training.save_steps=2", "training.warmup_epochs=0"]
    first = run_pretraining(settings(images, tmp_path / "a", max_steps=4, overrides=overrides))
    checkpoint = tmp_path / "a" / "checkpoint-2"
    saved = Schedule(**json.loads((checkpoint / SCHEDULE_FILE).read_text()))
    assert saved.lr_max == 3e-3 and saved.total_steps == 4
    # the LRs of steps 3 and 4 (a resumed trainer's history starts with the checkpoint's)
    lrs = lambda trainer: [h["learning_rate"] for h in trainer.state.log_history if "loss" in h][2:]  # noqa: E731
    changed = overrides + ["training.lr_max=1e-3"]
    with caplog.at_level(logging.WARNING):
        kept = run_pretraining(settings(images, tmp_path / "b", max_steps=4, overrides=changed,
                                        resume=str(checkpoint)))
    assert "resuming with the checkpoint's schedule" in caplog.text and "lr_max" in caplog.text
    assert lrs(kept) == pytest.approx(lrs(first), rel=1e-12)  # the saved schedule goes on
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        switched = run_pretraining(settings(images, tmp_path / "c", max_steps=4, overrides=changed,
                                            resume=str(checkpoint)), schedule_on_resume="new")
    assert "switching to the requested schedule at step 2" in caplog.text
    new = Schedule(**{**saved.__dict__, "lr_max": 1e-3})
    assert lrs(switched) == pytest.approx([new.lr(2), new.lr(3)], rel=1e-12)
    assert max(lrs(switched)) <= 1e-3


# ---- strict recipes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override,message", [
    ("trainng.lr_max=1e-3", "unknown recipe section 'trainng' \\(did you mean 'training'\\?\\)"),
    ("model.hiden_size=32", "unknown recipe key 'model.hiden_size' \\(did you mean 'model.hidden_size'\\?\\)"),
    ("training.lr_max=fast", "training.lr_max must be float, got 'fast'"),
    ("model.hidden_size=32.5", "model.hidden_size must be int"),
    ("data.crop_scale=[1.0, 0.35]", "crop_scale must be \\[low, high\\] with 0 < low <= high <= 1"),
    ("training.bf16=yes", r"training.bf16 must be bool \| None, got 'yes'"),  # YAML 1.2: only true/false are booleans
])
def test_recipe_keys_and_types_are_checked(override, message):
    """Guarantee: recipes and --set are checked before anything runs: unknown sections and keys (with the closest known
    one) and wrong types."""
    with pytest.raises(RecipeError, match=message):
        load_recipe("vit-micro", [override])


@pytest.mark.parametrize("override,message", [
    ("training.lr_final=-1e-4", "lr_final must be a finite number >= 0"),
    ("training.wd_init=-0.05", "wd_init must be a finite number >= 0"),
    ("training.lr_max=0", "lr_max must be > 0"),
    ("model.ema_start=1.5", "ema_start must lie in \\[0, 1\\]"),
    ("model.ema_end=-0.1", "ema_end must lie in \\[0, 1\\]"),
    ("training.global_batch_size=0", "global_batch_size must be >= 1"),
    ("training.warmup_epochs=-1", "warmup_epochs must be >= 0"),
])
def test_recipe_ranges_are_checked_before_training(override, message):
    """Guarantee: recipes and --set are checked before anything runs: bad ranges."""
    recipe = load_recipe("vit-micro", [override])
    with pytest.raises(ValueError, match=message):
        build_config(recipe)
        build_training_args(recipe, "unused", num_images=1000)


def test_values_parse_as_users_mean_them():
    """Guarantee: values are read as YAML 1.2 (`no` stays a string, `1e-3` is a float, `1:2:6` a string)."""
    recipe = load_recipe("vit-micro", ["training.save_strategy=no", "model.targets=6", "training.lr_max=1e-3",
                                       "training.bf16=false"])
    assert recipe["training"]["save_strategy"] == "no" and recipe["training"]["lr_max"] == 1e-3
    assert recipe["training"]["bf16"] is False
    assert build_training_args(recipe, "unused", 1000).save_strategy == "no"
    assert build_config(recipe).targets == "6" and build_config(recipe).target_spec.terms[0].block == 6
    assert build_config(load_recipe("vit-micro", ["model.targets=1:2:6"])).targets == "1:2:6"


def test_budgets_that_train_nothing_are_refused(images, tmp_path):
    with pytest.raises(ValueError, match="no training step would run: 32 images, global batch 64"):
        build_trainer(settings(images, tmp_path, batch_size=64))
    with pytest.raises(ValueError, match="no training step would run"):
        build_trainer(settings(images, tmp_path, max_steps=None, overrides=TINY + ["training.num_train_epochs=0"]))
    for name in ("limit", "batch_size", "max_steps"):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
            settings(images, tmp_path, **{name: 0})
    with pytest.raises(SystemExit):  # argparse: "must be a positive integer"
        pretrain_main(["--batch-size", "0"])


def test_non_square_images_pretrain(images, tmp_path):
    trainer = run_pretraining(settings(images, tmp_path, overrides=TINY + ["data.image_size=[16, 24]"]))
    assert trainer.model.config.grid_size == (4, 6) and trainer.state.global_step == 2


# ---- non-finite values --------------------------------------------------------------------------------------------------


def test_a_non_finite_gradient_stops_on_a_step_without_loss_logging(images, tmp_path):
    """Guarantee: a non-finite gradient norm stops the run at that step, before the optimizer step, also on a step that
    computes no loss value; no save writes non-finite weights."""
    trainer, _ = build_trainer(settings(images, tmp_path, max_steps=6, overrides=TINY + ["training.logging_steps=100"]),
                               save_strategy="no", disable_tqdm=True)
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 3 else output

    trainer.model.predictor.head.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError, match="non-finite gradient norm .* at step 2"):
        trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # stopped before the optimizer step
    with torch.no_grad():
        trainer.model.student.norm.weight[0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="non-finite weights"):
        trainer.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final" / "model.safetensors").exists()


def test_a_failed_checkpoint_write_is_a_clear_error_and_keeps_the_last_one(images, tmp_path, monkeypatch):
    """Guarantee: checkpoints are complete or absent — a full disk is a clear error and the last complete checkpoint
    stays."""
    trainer, _ = build_trainer(settings(images, tmp_path, max_steps=4, overrides=TINY[:-1] + ["training.save_steps=2"]),
                               disable_tqdm=True)
    save = torch.save

    def full_disk(obj, path, *args, **kwargs):
        if "checkpoint-4" in str(path):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0: basic_ios::clear")
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match="could not write checkpoint-4 into .* GiB free"):
        trainer.train()
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == ["checkpoint-2"]
    assert (tmp_path / "checkpoint-2" / SCHEDULE_FILE).is_file()


# ---- data folders -----------------------------------------------------------------------------------------------------


def test_nested_class_folders_and_unsafe_label_names_are_refused(tmp_path):
    image = Image.new("RGB", (8, 8))
    (tmp_path / "data" / "train" / "cat" / "extra").mkdir(parents=True)
    image.save(tmp_path / "data" / "train" / "cat" / "extra" / "0.png")
    with pytest.raises(ValueError, match="train/cat contains the folder extra"):
        check_image_folder(tmp_path / "data")
    (tmp_path / "flat" / "cat").mkdir(parents=True)
    image.save(tmp_path / "flat" / "cat" / "0.png")
    check_image_folder(tmp_path / "flat")  # the normal layout passes
    import datasets

    rows = datasets.Dataset.from_dict({"image": [image, image], "label": ["ok", ".."]})
    with pytest.raises(ValueError, match="label '..' of row 1 cannot be a folder name"):
        write_image_folder(rows, tmp_path / "out")
    assert not (tmp_path / "0.png").exists() and not any(p.suffix == ".png" for p in tmp_path.glob("*"))


# ---- every command that writes a folder -------------------------------------------------------------------------------


def test_commands_refuse_a_non_empty_out_and_their_own_input(tmp_path):
    """The README's guarantee for the evaluation, mask, conversion and demo commands (export and publish: in
    test_conversion / test_publish): a non-empty --out is refused before any work and left as it was; --overwrite
    replaces it; an --out inside the input model folder is refused even with --overwrite."""
    from bootleg_hf.cli import analyze_main, convert_timm_main, demo_main, masks_main, probe_main, segment_main

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    model = tmp_path / "encoder"
    BootlegModel(tiny_config()).save_pretrained(model)
    saved = sorted(p.name for p in model.iterdir())
    commands = {
        "probe": lambda out, *flag: probe_main(["--model", str(model), "--out", str(out), *flag]),
        "segment": lambda out, *flag: segment_main(["--model", str(model), "--out", str(out), *flag]),
        "analyze": lambda out, *flag: analyze_main(["--model", str(model), "--out", str(out), *flag]),
        "masks": lambda out, *flag: masks_main(["--grid", "8", "8", "--batches", "2", "--batch-size", "4", "--out",
                                                str(out), *flag]),
        "convert-timm": lambda out, *flag: convert_timm_main(["--out", str(out), *flag]),
        "demo": lambda out, *flag: demo_main(["--smoke", "--out", str(out), *flag]),
    }
    for name, command in commands.items():
        with pytest.raises(ValueError, match="exists and is not empty"):
            command(taken)
        assert sorted(p.name for p in taken.iterdir()) == ["mine.txt"], name
    for name in ("probe", "segment", "analyze"):
        with pytest.raises(ValueError, match="overlap"):
            commands[name](model / "results", "--overwrite")
        assert sorted(p.name for p in model.iterdir()) == saved, name
    assert masks_main(["--grid", "8", "8", "--batches", "2", "--batch-size", "4", "--out", str(taken),
                       "--overwrite"]) == 0
    assert (taken / "mask_stats.json").is_file()
