"""README guarantees checked as a stranger would, on the real code paths, and the guards behind them: offline use
with the network blocked, the Fashion-MNIST Hub fallback, `bootleg-probe --weights student`, timm parity with every
weight random, the saved image processor equal to the probes' view, no pickle in any Hub folder written or uploaded,
non-finite weights and losses refused, every folder-writing function refusing a non-empty output and the conversion
commands their own input. Each test's docstring names the guarantee it checks (README, "Guarantees and their
tests")."""

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
import timm
import torch
from conftest import tiny_config
from PIL import Image
from safetensors.torch import load_file

import bootleg_hf
from bootleg_hf import (
    BootlegForPretraining,
    BootlegModel,
    BootlegTrainer,
    BootlegTrainingArguments,
    NonFiniteLossError,
)
from bootleg_hf import data as D
from bootleg_hf import publishing
from bootleg_hf.checkpoints import check_finite, export_pretrained, save_model_folder
from bootleg_hf.evaluation import classification

FEATURES = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})


class Stop(Exception):
    """Raised by a patched step to end a run once what the test inspects has been built."""


def classification_data(n_train: int = 8, n_test: int = 4, size: int = 40, seed: int = 0) -> datasets.DatasetDict:
    rng = np.random.default_rng(seed)

    def split(n):
        return datasets.Dataset.from_dict(
            {"image": [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)],
             "label": [i % 2 for i in range(n)]}, features=FEATURES)

    return datasets.DatasetDict(train=split(n_train), test=split(n_test))


def image_folder(root: Path, n: int = 8, size: int = 40) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def randomized(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (LayerNorm weights around 1, biases and tokens around 0): nothing left at an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            norm_weight = name.split(".")[-2:] in (["norm1", "weight"], ["norm2", "weight"], ["norm", "weight"])
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if norm_weight else 0.0))
    return module.eval()


# ---- offline use -----------------------------------------------------------------------------------------------------


OFFLINE_CHILD = textwrap.dedent("""
    import json, socket, sys
    from pathlib import Path

    attempts = []
    INET = (socket.AF_INET, socket.AF_INET6)

    def guarded(real, what):
        def connect(self, address):
            if self.family in INET:
                attempts.append(f"{what} {address!r}")
                raise OSError(f"network access blocked by the test: {what} {address!r}")
            return real(self, address)
        return connect

    def refuse(what):
        def call(*args, **kwargs):
            attempts.append(f"{what} {args[:1]!r}")
            raise OSError(f"network access blocked by the test: {what} {args[:1]!r}")
        return call

    socket.socket.connect = guarded(socket.socket.connect, "connect")
    socket.socket.connect_ex = guarded(socket.socket.connect_ex, "connect_ex")
    socket.create_connection = refuse("create_connection")
    socket.getaddrinfo = refuse("getaddrinfo")

    out = Path(sys.argv[1])
    import bootleg_hf  # the import itself
    import datasets, numpy as np, torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, pipeline
    from bootleg_hf import BootlegConfig, BootlegForPretraining, BootlegTrainer, BootlegTrainingArguments
    from bootleg_hf.checkpoints import export_pretrained
    from bootleg_hf.evaluation.classification import ProbeSettings, run_probes

    config = BootlegConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
                           predictor_hidden_size=16, predictor_num_hidden_layers=1, predictor_num_attention_heads=2,
                           targets="1:1:2")
    model = BootlegForPretraining(config)
    args = BootlegTrainingArguments(output_dir=str(out / "run"), max_steps=1, per_device_train_batch_size=4,
                                    save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True)
    images = [{"pixel_values": torch.randn(3, 32, 32)} for _ in range(4)]
    BootlegTrainer(model=model, args=args, train_dataset=images).train()  # a pretraining step
    model.save_pretrained(out / "pretraining")
    BootlegForPretraining.from_pretrained(out / "pretraining")
    AutoModel.from_pretrained(out / "pretraining")  # the teacher
    export_pretrained(out / "pretraining", out / "encoder")
    AutoImageProcessor.from_pretrained(out / "encoder")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    pipeline("image-feature-extraction", model=str(out / "encoder"))(image)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    data = datasets.DatasetDict({split: datasets.Dataset.from_dict(
        {"image": [image] * 8, "label": [0, 1] * 4}, features=features) for split in ("train", "test")})
    run_probes(str(out / "encoder"), data, ProbeSettings(probes=["patch"], epochs=1, batch_size=4, num_workers=0),
               out=out / "probes")  # a probe run, results and classifier folder written
    print("ATTEMPTS " + json.dumps(attempts))
""")


def test_offline_use_makes_no_network_connection(tmp_path):
    """Guarantee: importing the package makes no network call and the offline workflow needs none (docs/design.md
    §11). With every IPv4/IPv6 connection and DNS lookup refused and the Hub *not* marked offline, a process imports
    bootleg_hf, trains a pretraining step, saves and reloads the model (also through the Auto classes), exports the
    encoder, runs the feature-extraction pipeline and a probe run — and nothing tried to connect."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                               "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", OFFLINE_CHILD, str(tmp_path)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("ATTEMPTS "))
    assert json.loads(line[len("ATTEMPTS "):]) == []
    assert (tmp_path / "probes" / "probe_results.json").is_file()  # the whole path ran


def test_the_socket_guard_sees_a_connection_attempt(tmp_path):
    """The guard of the offline test is live: the same child, asked to reach the Hub, records the attempt."""
    probe = OFFLINE_CHILD.split("out = Path")[0] + textwrap.dedent("""
        try:
            import urllib.request
            urllib.request.urlopen("https://huggingface.co", timeout=5)
        except OSError:
            pass
        print("ATTEMPTS " + json.dumps(attempts))
    """)
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.split("ATTEMPTS ", 1)[1]) != []


# ---- Fashion-MNIST: Debian's copy, else the Hub ----------------------------------------------------------------------


class HubCalls(list):
    """The calls of the fake `datasets.load_dataset`; `fail` makes the next ones raise; `pixels` what it serves."""

    fail: Exception | None = None
    pixels = np.stack([np.full((28, 28), 40 * i, np.uint8) for i in range(3)])


@pytest.fixture
def fake_hub_dataset(monkeypatch) -> HubCalls:
    """`datasets.load_dataset` replaced by a fake Hub copy of Fashion-MNIST (3 images); records its calls."""
    calls = HubCalls()

    def load_dataset(name, *args, split=None, **kwargs):
        calls.append((name, split))
        if calls.fail is not None:
            raise calls.fail
        return datasets.Dataset.from_dict(
            {"image": [Image.fromarray(p) for p in calls.pixels], "label": [0, 5, 9]},
            features=datasets.Features({"image": datasets.Image(),
                                        "label": datasets.ClassLabel(names=D.FASHION_MNIST_CLASSES)}))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def go_online(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)


def test_fashion_mnist_without_debians_package_uses_the_hub_copy_only_when_online(tmp_path, monkeypatch, caplog,
                                                                                    fake_hub_dataset):
    """Guarantee: "without [Debian's dataset-fashion-mnist] the Hub copy is used when online" (README, Set-up). With
    the Debian folder pointed elsewhere: offline, the loader raises with the apt-get hint and never calls the Hub;
    online, `load_image_dataset("fashion-mnist")` (what every command uses) loads zalando-datasets/fashion_mnist with a
    warning; a failing Hub is an error naming both ways out."""
    monkeypatch.setattr(D, "FASHION_MNIST_DIR", str(tmp_path / "no-debian-package"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*HF_HUB_OFFLINE"):
        D.load_image_dataset("fashion-mnist", split="train")
    assert fake_hub_dataset == []  # offline: the Hub was not asked

    go_online(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="bootleg_hf.data"):
        ds = D.load_image_dataset("fashion-mnist", split="test")
    assert fake_hub_dataset == [(D.FASHION_MNIST_HUB_ID, "test")]
    assert "Falling back to downloading 'zalando-datasets/fashion_mnist'" in caplog.text
    assert len(ds) == 3 and ds["label"] == [0, 5, 9] and ds.features["label"].names == D.FASHION_MNIST_CLASSES
    np.testing.assert_array_equal(np.asarray(ds[1]["image"]), fake_hub_dataset.pixels[1])

    fake_hub_dataset.fail = ConnectionError("no route to host")
    with pytest.raises(FileNotFoundError, match="apt-get install.*Hub fallback failed: no route to host"):
        D.load_fashion_mnist("train", root=str(tmp_path / "also-missing"))


def test_demo_says_when_it_uses_the_hub_copy(tmp_path, monkeypatch, capsys):
    """Guarantee: "Without Debian's package the demo says so and uses the Hub copy of Fashion-MNIST" (README)."""
    from bootleg_hf import demo

    monkeypatch.setattr(demo, "FASHION_MNIST_DIR", str(tmp_path / "no-debian-package"))

    def stop(settings):
        assert settings.dataset == "fashion-mnist"  # the demo goes on with the same data set name: the Hub copy
        raise Stop

    monkeypatch.setattr(demo, "run_pretraining", stop)
    with pytest.raises(Stop):
        demo.run_demo(demo.DemoSettings.smoke(out=tmp_path / "demo"))
    assert "dataset-fashion-mnist is not installed); using the Hub copy of Fashion-MNIST" in capsys.readouterr().out


# ---- bootleg-probe --weights student ---------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["student", "teacher"])
def test_probe_weights_student_probes_the_student(tmp_path, monkeypatch, weights):
    """Guarantee: `bootleg-probe --model <pretraining folder> --weights student` probes the student (the default, the
    EMA teacher). Student and teacher of the folder hold different weights; the encoder the probes are trained on
    gives the features of `BootlegForPretraining.student` (resp. `.teacher`) and not the other's."""
    from bootleg_hf.cli import probe_main

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    torch.manual_seed(0)
    model = BootlegForPretraining(tiny_config())
    randomized(model.student, 1)
    randomized(model.teacher, 2)
    model.save_pretrained(tmp_path / "pretraining")
    seen = {}

    def stop(encoder, sweeps, loader, epochs, *args, **kwargs):
        seen["encoder"] = encoder
        raise Stop

    monkeypatch.setattr(classification, "train_sweeps", stop)
    argv = ["--model", str(tmp_path / "pretraining"), "--dataset", str(image_folder(tmp_path / "images")),
            "--test-split", "train", "--probes", "patch", "--epochs", "1", "--batch-size", "4", "--num-workers", "0",
            "--precision", "fp32"]
    with pytest.raises(Stop):
        probe_main(argv + (["--weights", "student"] if weights == "student" else []))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        probed = seen["encoder"](x).last_hidden_state
        student, teacher = model.student(x).last_hidden_state, model.teacher(x).last_hidden_state
    assert (student - teacher).abs().max() > 0.1  # the two encoders really differ
    torch.testing.assert_close(probed, student if weights == "student" else teacher, atol=1e-5, rtol=0)
    assert (probed - (teacher if weights == "student" else student)).abs().max() > 0.1


# ---- timm parity -----------------------------------------------------------------------------------------------------


def sincos_table(dim: int, rows: int, cols: int) -> np.ndarray:
    """MAE's 2-D sin-cos table, written out: the first half of the channels encodes the column, the second the row,
    each as [sin(p·ω_i), cos(p·ω_i)] with ω_i = 10000^(−i / (dim / 4))."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter) / quarter)
    r, c = np.divmod(np.arange(rows * cols), cols)
    return np.concatenate([np.sin(np.outer(c, omega)), np.cos(np.outer(c, omega)),
                           np.sin(np.outer(r, omega)), np.cos(np.outer(r, omega))], axis=1)


def test_timm_vit_with_the_same_random_weights_computes_the_same_hidden_states():
    """Guarantee: "a timm model built with class_token=True, reg_tokens=4, no_embed_class=True and the same weights
    gives identical hidden states (tested at fp32 to 1e-5)" (README). Every weight random, LayerNorms included, so a
    swapped or dropped parameter shows; timm gets the weights by their names and the position table from the formula
    written out above, not from bootleg_hf."""
    config = tiny_config(image_size=32, patch_size=8)
    model = randomized(BootlegModel(config), 3)
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=4.0, qkv_bias=True,
        class_token=True, reg_tokens=4, no_embed_class=True, num_classes=0).eval()
    state = {k.removeprefix("embeddings."): v for k, v in model.state_dict().items()}
    state["pos_embed"] = torch.from_numpy(sincos_table(32, 4, 4)).float()[None]
    assert set(state) == set(ref.state_dict())  # timm's names, after the embeddings prefix
    ref.load_state_dict(state)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = model(x, output_hidden_states=True)
        final, blocks = ref.forward_intermediates(x, indices=[0, 1], norm=False, output_fmt="NLC",
                                                  return_prefix_tokens=True)
    assert (ours.last_hidden_state - final).abs().max() <= 1e-5
    for k, (patches, prefix) in enumerate(blocks):
        assert (ours.hidden_states[k + 1] - torch.cat([prefix, patches], 1)).abs().max() <= 1e-5
    assert ours.last_hidden_state.std() > 0.1  # not a degenerate output


# ---- the saved image processor is the probes' evaluation view --------------------------------------------------------


@pytest.mark.parametrize("height,width", [(28, 28), (50, 70), (300, 224), (33, 200)])
def test_saved_processor_equals_the_probe_view_within_1e_6(tmp_path, height, width):
    """Guarantee: the image processor saved with encoder folders (loaded back with `AutoImageProcessor`) gives the
    probes' evaluation view "within 1e-6 with the PIL backend" (README, Feature extraction), at the paper's 224 px and
    at a small size, for any aspect ratio of a textured photo-like image."""
    from transformers import AutoImageProcessor

    rng = np.random.default_rng(height * width)
    image = Image.fromarray(rng.integers(0, 256, (height // 3 + 1, width // 3 + 1, 3), dtype=np.uint8)).resize(
        (width, height), Image.BICUBIC)
    for size, patch in ((224, 16), (32, 8)):
        folder = save_model_folder(BootlegModel(tiny_config(image_size=size, patch_size=patch)), tmp_path / str(size))
        processor = AutoImageProcessor.from_pretrained(folder, use_fast=False)
        got = processor(image, return_tensors="pt")["pixel_values"][0]
        want = D.EvalTransform(size)({"image": [image]})["pixel_values"][0]
        assert got.shape == want.shape == (3, size, size)
        assert (got - want).abs().max() <= 1e-6


# ---- no pickle in a Hub folder ---------------------------------------------------------------------------------------


@pytest.fixture
def encoder_folder(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_model_folder(BootlegModel(tiny_config()), tmp_path / "encoder")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "training_args.BIN", "optimizer.pt", "w.pth", "x.ckpt",
                                  "y.pkl", "z.pickle", "archive.tar", "a.npy", "b.npz", "sub/dir/model.bin"])
def test_check_no_pickles_refuses_every_pickle_suffix(tmp_path, name):
    """Guard: a Hub folder holds safetensors only — any file a loader could unpickle, at any depth and in any letter
    case, is refused by name; safetensors, JSON, code and the card pass."""
    for ok in ("model.safetensors", "config.json", "modeling_bootleg.py", "README.md"):
        (tmp_path / ok).write_text("{}")
    publishing.check_no_pickles(tmp_path)
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b"\x80\x04N.")  # a pickle of None
    with pytest.raises(publishing.PublishError, match=f"pickle-based files \\['{name}'\\]"):
        publishing.check_no_pickles(tmp_path)


def test_build_hub_folder_leaves_pickles_behind(encoder_folder, tmp_path):
    """Guarantee: the Hub folder holds safetensors only: `pytorch_model.bin` / `training_args.bin` next to the weights
    are not copied."""
    torch.save({"x": torch.zeros(1)}, encoder_folder / "pytorch_model.bin")
    torch.save({"lr": 1.0}, encoder_folder / "training_args.bin")
    hub = publishing.build_hub_folder(encoder_folder, tmp_path / "hub", "user/tiny")
    names = sorted(p.name for p in hub.iterdir())
    assert "model.safetensors" in names and not [n for n in names if Path(n).suffix in publishing.PICKLE_SUFFIXES]


@pytest.mark.parametrize("where", ["weights", "code"])
def test_build_hub_folder_refuses_a_pickle_that_would_be_copied(encoder_folder, tmp_path, monkeypatch, where):
    """Guard: the pickle check runs on what `build_hub_folder` actually copies. A pickle that would be copied — a
    `*.bin` weight file if the weight patterns included it, or a module file of the remote code — stops the build with
    `PublishError` and leaves no folder."""
    if where == "weights":
        torch.save({"x": torch.zeros(1)}, encoder_folder / "pytorch_model.bin")
        monkeypatch.setattr(publishing, "WEIGHT_FILES", (*publishing.WEIGHT_FILES, "*.bin"))
        planted = "pytorch_model.bin"
    else:
        package = tmp_path / "package"
        package.mkdir()
        for path in publishing.PACKAGE_DIR.glob("*.py"):
            (package / path.name).write_bytes(path.read_bytes())
        torch.save({"x": torch.zeros(1)}, package / "helper.pt")
        code_files = publishing.remote_code_files
        monkeypatch.setattr(publishing, "PACKAGE_DIR", package)
        monkeypatch.setattr(publishing, "remote_code_files", lambda modules: [*code_files(modules), "helper.pt"])
        planted = "helper.pt"
    with pytest.raises(publishing.PublishError, match=f"pickle-based files \\['{planted}'\\]"):
        publishing.build_hub_folder(encoder_folder, tmp_path / "hub", "user/tiny")
    assert not (tmp_path / "hub").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hub.")]  # no half-built folder left


class NoHub:
    """Stands in for `huggingface_hub.HfApi`: any use means something was sent."""

    def __init__(self, *args, **kwargs):
        raise AssertionError("the Hub was contacted")


def test_upload_refuses_a_folder_holding_a_pickle(encoder_folder, tmp_path, monkeypatch):
    """Guard: `upload` (bootleg-publish, `BootlegTrainer.push_to_hub`) and `bootleg-release --upload-only` refuse a
    folder holding a pickle before contacting the Hub."""
    from bootleg_hf.release import upload_release

    monkeypatch.setattr(publishing, "HfApi", NoHub)
    hub = publishing.build_hub_folder(encoder_folder, tmp_path / "release" / "hub" / "encoder", "user/tiny")
    torch.save({"x": torch.zeros(1)}, hub / "extra.pt")
    with pytest.raises(publishing.PublishError, match="pickle-based files \\['extra.pt'\\]"):
        publishing.upload(hub, "user/tiny", token="hf_test")
    (tmp_path / "release" / "release.json").write_text(json.dumps(
        {"repos": {"encoder": {"repo_id": "user/tiny", "folder": "hub/encoder", "files": [], "commit": None}}}))
    with pytest.raises(publishing.PublishError, match="pickle-based files"):
        upload_release(tmp_path / "release", token="hf_test")
    assert json.loads((tmp_path / "release" / "release.json").read_text())["pushed"] is False


# ---- non-finite values -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_one_non_finite_value_among_finite_ones_is_refused(tmp_path, bad):
    """Guarantee: "no save, export or publish writes non-finite weights" — ONE NaN or infinity among thousands of finite
    values is enough: `check_finite`, `save_model_folder` and `BootlegTrainer.save_model` all refuse, and write
    nothing."""
    tensors = [(f"t{i}", torch.randn(100)) for i in range(5)] + [("ints", torch.arange(3))]
    check_finite(tensors, "ok")  # finite floats and integer tensors pass
    tensors[3][1][57] = bad
    with pytest.raises(ValueError, match="tensor 't3' holds non-finite values"):
        check_finite(tensors, "model")

    torch.manual_seed(0)
    encoder = BootlegModel(tiny_config())
    with torch.no_grad():
        encoder.blocks[1].mlp.fc1.weight[7, 3] = bad
    with pytest.raises(ValueError, match="'blocks.1.mlp.fc1.weight' holds non-finite values"):
        save_model_folder(encoder, tmp_path / "encoder")
    assert not (tmp_path / "encoder").exists()

    model = BootlegForPretraining(tiny_config())
    args = BootlegTrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True)
    trainer = BootlegTrainer(model=model, args=args)
    with torch.no_grad():  # huge but finite weights (their L2 norm overflows float32) are still written
        model.predictor.blocks[0].attn.qkv.weight[:2] = 1e20
    trainer.save_model(str(tmp_path / "good"))
    assert (tmp_path / "good" / "model.safetensors").is_file()
    with torch.no_grad():
        model.predictor.blocks[0].attn.qkv.weight[2, 5] = bad
    with pytest.raises(NonFiniteLossError, match="non-finite weights"):
        trainer.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final" / "model.safetensors").exists()


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int = 32):
        self.images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"pixel_values": self.images[i]}


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])
def test_a_nan_on_a_step_without_a_loss_value_stops_training(tmp_path, max_grad_norm):
    """Guarantee: "A non-finite loss or gradient norm stops the run at that step, before the optimizer step" — also on
    the steps whose loss value is not computed (`loss_log_interval`: only logging steps compute it) and without
    gradient clipping. The student produces a NaN on the 3rd of 8 steps; only step 8 logs."""
    torch.manual_seed(0)
    model = BootlegForPretraining(tiny_config())
    args = BootlegTrainingArguments(output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=4,
                                    logging_steps=8, save_strategy="no", report_to="none", use_cpu=True,
                                    disable_tqdm=True, max_grad_norm=max_grad_norm, scale_lr_by_batch=False)
    trainer = BootlegTrainer(model=model, args=args, train_dataset=Images(32))
    forwards, due = [], []
    loss_value_due = trainer._loss_value_due
    trainer._loss_value_due = lambda: due.append(loss_value_due()) or due[-1]

    def poison(module, args, output):
        forwards.append(1)
        if len(forwards) == 3:
            output.last_hidden_state = output.last_hidden_state * float("nan")
        return output

    model.student.register_forward_hook(poison)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="non-finite gradient norm .* at step 2"):
        trainer.train()
    assert due == [False, False, False]  # the NaN step computed no loss value
    assert trainer.state.global_step == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())  # stopped before the optimizer step
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # steps 1–2 did train


# ---- every folder-writing function refuses a non-empty output --------------------------------------------------------


def ijepa_folder(root: Path) -> Path:
    from transformers import IJepaConfig, IJepaModel

    torch.manual_seed(0)
    IJepaModel(IJepaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=32, patch_size=8)).save_pretrained(root / "ijepa")
    return root / "ijepa"


def writers(tmp_path: Path, encoder: Path) -> dict:
    """Each library function (and the CLI that has no library twin) that writes a folder, called on `out`."""
    from bootleg_hf import demo, mask_statistics
    from bootleg_hf.cli import convert_ijepa_main
    from bootleg_hf.evaluation.analysis import analyze
    from bootleg_hf.evaluation.segmentation import SegmentationSettings, run_segmentation
    from bootleg_hf.pretraining import PretrainSettings
    from bootleg_hf.release import ReleaseSettings, run_release

    pretraining = tmp_path / "pretraining"
    BootlegForPretraining(tiny_config()).save_pretrained(pretraining)

    def convert_ijepa(out):
        if convert_ijepa_main(["--checkpoint", str(ijepa_folder(tmp_path)), "--out", str(out)]) != 0:
            raise ValueError("convert-ijepa failed")

    return {
        "save_model_folder": lambda out: save_model_folder(BootlegModel(tiny_config()), out),
        "export_pretrained": lambda out: export_pretrained(pretraining, out),
        "build_hub_folder": lambda out: publishing.build_hub_folder(encoder, out, "user/tiny"),
        "run_probes": lambda out: classification.run_probes(encoder, classification_data(),
                                                            classification.ProbeSettings(num_workers=0), out=out),
        "run_segmentation": lambda out: run_segmentation(encoder, "mosaic", SegmentationSettings(), out=out),
        "analyze": lambda out: analyze(str(encoder), torch.randn(4, 3, 32, 32), 4, out, plots=False),
        "write_mask_report": lambda out: mask_statistics.write_mask_report(
            {"bootleg": bootleg_hf.MaskGenerator(8)}, 4, 2, 2, out),
        "run_demo": lambda out: demo.run_demo(demo.DemoSettings.smoke(out=out)),
        "run_release": lambda out: run_release(ReleaseSettings(
            repo_id="user/tiny", out=out, pretrain=PretrainSettings(dataset=str(tmp_path / "none")))),
        "convert_ijepa": convert_ijepa,
    }


WRITERS = ["save_model_folder", "export_pretrained", "build_hub_folder", "run_probes", "run_segmentation", "analyze",
           "write_mask_report", "run_demo", "run_release", "convert_ijepa"]


@pytest.mark.parametrize("name", WRITERS)
def test_every_folder_writing_function_refuses_a_non_empty_output(tmp_path, capsys, name):
    """Guarantee: every command that writes a folder "refuses a non-empty --out" and nothing of it is overwritten —
    here at the level of the library functions the commands call (and `bootleg-convert-ijepa`): the output folder with
    a user's file is refused before any work and left exactly as it was."""
    encoder = save_model_folder(BootlegModel(tiny_config()), tmp_path / "encoder")
    taken = tmp_path / "taken"
    (taken / "sub").mkdir(parents=True)
    (taken / "mine.txt").write_text("keep")
    (taken / "sub" / "notes.md").write_text("mine too")
    before = {p.relative_to(taken): p.read_bytes() for p in taken.rglob("*") if p.is_file()}
    with pytest.raises((ValueError, RuntimeError)) as err:
        writers(tmp_path, encoder)[name](taken)
    message = str(err.value) + capsys.readouterr().err
    assert "exists and is not empty" in message, message
    assert {p.relative_to(taken): p.read_bytes() for p in taken.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".taken")) == []  # no temporary folder left


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_conversion_commands_never_write_into_their_input(tmp_path):
    """Guarantee: `bootleg-convert-timm` and `bootleg-convert-ijepa` "never write into their own input" — not with
    `--overwrite` either: an `--out` that is, holds or lies inside the checkpoint, or (for `--reverse`) lies inside the
    Bootleg folder, is refused and the input left as it was; `--reverse` replaces an existing output file only with
    `--overwrite`."""
    from bootleg_hf.cli import convert_ijepa_main, convert_timm_main

    ijepa = ijepa_folder(tmp_path)
    before = snapshot(ijepa)
    for out, flags in ((ijepa, ["--overwrite"]), (ijepa / "converted", []), (ijepa / "converted", ["--overwrite"])):
        with pytest.raises(ValueError, match="overlap"):
            convert_ijepa_main(["--checkpoint", str(ijepa), "--out", str(out), *flags])
        assert snapshot(ijepa) == before

    weights = tmp_path / "timm" / "w.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"timm weights")
    with pytest.raises(ValueError, match="overlap"):
        convert_timm_main(["--checkpoint", str(weights), "--out", str(weights.parent), "--overwrite"])
    assert weights.read_bytes() == b"timm weights"

    encoder = save_model_folder(BootlegModel(tiny_config()), tmp_path / "encoder")
    before = snapshot(encoder)
    for flags in ([], ["--overwrite"]):
        with pytest.raises(ValueError, match="overlap"):
            convert_timm_main(["--reverse", "--bootleg", str(encoder), "--out", str(encoder / "model.safetensors"),
                               *flags])
    assert snapshot(encoder) == before
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(b"a user's file")
    with pytest.raises(ValueError, match="exists and is not empty"):
        convert_timm_main(["--reverse", "--bootleg", str(encoder), "--out", str(mine)])
    assert mine.read_bytes() == b"a user's file"
    assert convert_timm_main(["--reverse", "--bootleg", str(encoder), "--out", str(mine), "--overwrite"]) == 0
    assert "cls_token" in load_file(mine)  # replaced when asked: timm's names
