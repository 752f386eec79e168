"""Hub-native behaviour (docs/design.md §8): every standard way of saving gives a folder that loads where bootleg-hf
is not installed, the stock Trainer trains the EMA teacher (or refuses to), image processors keep label maps exact
and match the probes' evaluation view, pipelines run without spurious warnings, AutoBackbone / UperNet calls."""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import needs_fmnist, tiny_config
from remote_code import outputs_without_package
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoBackbone,
    AutoImageProcessor,
    AutoModel,
    Trainer,
    TrainingArguments,
    UperNetConfig,
    UperNetForSemanticSegmentation,
    pipeline,
)

import bootleg_hf
from bootleg_hf import (
    BootlegBackbone,
    BootlegConfig,
    BootlegForImageClassification,
    BootlegForPretraining,
    BootlegForSemanticSegmentation,
    BootlegModel,
)
from bootleg_hf.data import EvalTransform
from bootleg_hf.image_processing_bootleg import make_image_processor, make_segmentation_image_processor

try:  # tests/ is importable under pytest's default "prepend" import mode; tests.fake_hub if tests/ is a package
    from fake_hub import fake_hub, hub_env  # noqa: F401  (fake_hub is a fixture)
except ImportError:  # pragma: no cover
    from tests.fake_hub import fake_hub, hub_env  # noqa: F401

CODE = {"configuration_bootleg.py", "modeling_bootleg.py", "targets.py"}
# class → (Auto class a user loads it with, the code files its folder must hold)
SAVED = {
    BootlegModel: ("AutoModel", CODE),
    BootlegBackbone: ("AutoBackbone", CODE),
    BootlegForImageClassification: ("AutoModelForImageClassification", CODE | {"modeling_bootleg_heads.py"}),
    BootlegForSemanticSegmentation: ("AutoModelForSemanticSegmentation", CODE | {"modeling_bootleg_heads.py"}),
    BootlegForPretraining: ("AutoModelForPreTraining", CODE | {"modeling_bootleg_pretraining.py", "losses.py"}),
}


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random non-trivial weights everywhere (zero-initialised heads included), so outputs tell classes apart."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def model_output(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The tensor a user reads from each class: features, feature maps, logits, or the pretraining teacher's tokens."""
    with torch.no_grad():
        if isinstance(model, BootlegForPretraining):
            return model.teacher(pixels).last_hidden_state
        out = model(pixels)
    if hasattr(out, "feature_maps"):
        return torch.cat([f.flatten() for f in out.feature_maps])
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def test_save_pretrained_and_push_to_hub_load_without_the_package(fake_hub, tmp_path):
    """`save_pretrained` of every class writes its code and an `auto_map`; `push_to_hub` uploads them; both load with
    `trust_remote_code=True` in a process without bootleg-hf and give the same outputs."""
    pixels = torch.randn(2, 3, 32, 32)
    jobs, want = {}, {}
    for i, (cls, (auto, files)) in enumerate(SAVED.items()):
        config = tiny_config(num_labels=3, out_indices=[1, 2])
        model = perturbed(cls(config), i)
        folder = tmp_path / cls.__name__
        model.save_pretrained(folder)
        saved = json.loads((folder / "config.json").read_text())
        assert saved["auto_map"][auto].endswith(f".{cls.__name__}")
        assert {"AutoConfig", "AutoModel", "AutoBackbone"} <= set(saved["auto_map"])
        assert files <= {p.name for p in folder.glob("*.py")}
        assert getattr(model.config, "auto_map", None) is None  # the in-memory config is left as it was
        # AutoBackbone.from_pretrained takes Hub ids only in transformers 5.x (a local path fails its repo check)
        source = str(folder) if cls is not BootlegBackbone else model.push_to_hub("user/backbone") and "user/backbone"
        jobs[cls.__name__] = (auto, source)
        want[cls.__name__] = model_output(model, pixels)
    hub_model = perturbed(BootlegForImageClassification(tiny_config(num_labels=3)), 7)
    hub_model.push_to_hub("user/pushed-classifier")
    jobs["pushed"] = ("AutoModelForImageClassification", "user/pushed-classifier")
    want["pushed"] = model_output(hub_model, pixels)
    got = outputs_without_package(jobs, pixels, tmp_path, hub_env(fake_hub.url, tmp_path / "child_home"))
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=0, msg=name)


def test_with_the_package_installed_the_auto_classes_use_it(tmp_path):
    """A folder with an `auto_map` still loads the installed classes when bootleg-hf is imported (no remote code, no
    trust_remote_code needed)."""
    model = perturbed(BootlegModel(tiny_config()))
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is BootlegModel
    torch.testing.assert_close(model_output(loaded, torch.ones(1, 3, 32, 32)),
                               model_output(model, torch.ones(1, 3, 32, 32)))


# ----------------------------------------------------------------------------------------------- the EMA teacher
def mask_collator(config: BootlegConfig) -> bootleg_hf.BootlegDataCollator:
    return bootleg_hf.BootlegDataCollator(bootleg_hf.MaskGenerator.from_config(config), seed=0)


def stock_trainer(tmp_path, model, callbacks=(), **args) -> Trainer:
    images = [{"pixel_values": torch.randn(3, 32, 32)} for _ in range(16)]
    args = TrainingArguments(output_dir=str(tmp_path / "stock"), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-3, remove_unused_columns=False, report_to="none", save_strategy="no",
                             use_cpu=True, **args)
    return Trainer(model=model, args=args, train_dataset=images, data_collator=mask_collator(model.config),
                   callbacks=list(callbacks))


def test_stock_trainer_without_the_ema_callback_is_refused(tmp_path):
    model = BootlegForPretraining(tiny_config())
    with pytest.raises(RuntimeError, match="BootlegEMACallback"):
        stock_trainer(tmp_path, model).train()
    # with gradient accumulation several forwards share one step: still refused at the first forward after a step
    model = BootlegForPretraining(tiny_config())
    with pytest.raises(RuntimeError, match="EMA teacher was not"):
        stock_trainer(tmp_path, model, gradient_accumulation_steps=2).train()


@pytest.mark.parametrize("accumulation", [1, 2])
def test_stock_trainer_with_the_ema_callback_updates_the_teacher_after_each_step(tmp_path, accumulation):
    """Momentum 0 makes the EMA teacher a copy of the student: equal after training only if the update ran after
    the optimizer's last step. Momentum 1 keeps the teacher at its initial weights."""
    model = BootlegForPretraining(tiny_config(ema_start=0.0, ema_end=0.0))
    before = {k: v.clone() for k, v in model.student.state_dict().items()}
    stock_trainer(tmp_path, model, [bootleg_hf.BootlegEMACallback()], gradient_accumulation_steps=accumulation).train()
    student, teacher = model.student.state_dict(), model.teacher.state_dict()
    assert any(not torch.equal(student[k], before[k]) for k in before)  # the student trained
    for k in student:
        torch.testing.assert_close(teacher[k], student[k], atol=0, rtol=0, msg=k)
    frozen = BootlegForPretraining(tiny_config(ema_start=1.0, ema_end=1.0))
    initial = {k: v.clone() for k, v in frozen.teacher.state_dict().items()}
    stock_trainer(tmp_path, frozen, [bootleg_hf.BootlegEMACallback()]).train()
    assert all(torch.equal(frozen.teacher.state_dict()[k], v) for k, v in initial.items())


def test_own_training_loop_with_update_teacher_passes(config):
    model = BootlegForPretraining(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)  # fused: no version-counter bumps
    batch = mask_collator(config)([{"pixel_values": torch.randn(3, 32, 32)} for _ in range(4)])
    for _ in range(3):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.update_teacher(0.99)
    model(**batch).loss.backward()
    optimizer.step()  # now without the update: the next training forward refuses
    with pytest.raises(RuntimeError, match="update_teacher"):
        model(**batch)
    with torch.no_grad():
        model(**batch)  # evaluation forwards are never refused


# ----------------------------------------------------------------------------------------------- image processors
def photo(height: int, width: int, seed: int = 0) -> Image.Image:
    """A smooth colour image (gradients plus a few blobs): resampling differences stay at interpolation size."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    rng = np.random.default_rng(seed)
    channels = [np.sin(6 * x * rng.uniform(0.5, 2) + rng.uniform(0, 3)) * np.cos(5 * y * rng.uniform(0.5, 2))
                for _ in range(3)]
    return Image.fromarray((127.5 * (1 + np.stack(channels, -1))).astype(np.uint8))


@pytest.mark.parametrize("size", [(28, 28), (50, 70), (90, 40), (33, 200)])
def test_encoder_processor_is_the_probe_evaluation_view(config, size):
    """Saved with encoder and classifier folders: shorter side to size/0.875, centre crop, equal to the probes'
    `EvalTransform` (which the cards' numbers were measured with) for any aspect ratio."""
    image = photo(*size)
    got = make_image_processor(config)(image, return_tensors="pt")["pixel_values"][0]
    want = EvalTransform(32)({"image": [image]})["pixel_values"][0]
    assert got.shape == (3, 32, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["L", "P", "I", "I;16", "uint8", "int64"])
def test_segmentation_processor_keeps_label_maps_exact(config, mode):
    """Label maps are resized with nearest neighbour (BEiT's processor invented labels 1, 3, 5, 8 between 0, 4, 6,
    10): the labels that come out are the labels that went in, at the positions nearest-neighbour picks."""
    labels = np.zeros((50, 70), dtype=np.uint8)
    labels[:, 20:40], labels[:, 40:60], labels[:, 60:], labels[:6] = 4, 6, 10, 255
    given = {"uint8": labels, "int64": labels.astype(np.int64)}.get(mode)
    if given is None:
        given = Image.fromarray(labels.astype(np.int32 if mode == "I" else np.uint16 if mode == "I;16" else np.uint8))
        given = given.convert("P") if mode == "P" else given
    out = make_segmentation_image_processor(config)(photo(50, 70), segmentation_maps=given, return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 32, 32) and out["labels"].dtype == torch.int64
    want = np.asarray(Image.fromarray(labels).resize((32, 32), Image.NEAREST))
    assert torch.equal(out["labels"][0], torch.from_numpy(want.astype(np.int64)))
    assert set(out["labels"].unique().tolist()) == {0, 4, 6, 10, 255}


# ----------------------------------------------------------------------------------------------- pipelines
@pytest.fixture
def transformers_log():
    """Records what transformers logs (its loggers do not propagate to pytest's caplog)."""
    from transformers.utils import logging as hf_logging

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    hf_logging.get_logger().addHandler(handler)
    yield records
    hf_logging.get_logger().removeHandler(handler)


def test_pipelines_run_without_unsupported_model_warnings(tmp_path, transformers_log):
    for cls, task in ((BootlegForImageClassification, "image-classification"),
                      (BootlegForSemanticSegmentation, "image-segmentation"),
                      (BootlegModel, "image-feature-extraction")):
        folder = tmp_path / task
        bootleg_hf.save_model_folder(perturbed(cls(tiny_config(num_labels=3))), folder)
        result = pipeline(task, model=str(folder))(photo(40, 60))
        assert result  # something came out
    assert not [m for m in transformers_log if "not supported" in m], transformers_log


def test_pipeline_on_a_pretraining_run_folder(tmp_path):
    """A run folder (and each checkpoint) holds the processor, so pipelines take it directly (its teacher)."""
    from datasets import Dataset

    config = tiny_config()
    images = Dataset.from_dict({"pixel_values": [torch.randn(3, 32, 32).numpy() for _ in range(8)]})
    images.set_format("torch")
    args = bootleg_hf.BootlegTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2,
                                               per_device_train_batch_size=4, save_steps=2, report_to="none",
                                               use_cpu=True)
    trainer = bootleg_hf.BootlegTrainer(model=BootlegForPretraining(config), args=args, train_dataset=images)
    trainer.train()
    trainer.save_model()
    for folder in (tmp_path / "run", tmp_path / "run" / "checkpoint-2"):
        assert (folder / "preprocessor_config.json").is_file()
        features = pipeline("image-feature-extraction", model=str(folder))(photo(40, 60), return_tensors=True)
        teacher = trainer.unwrapped_model.teacher.eval()
        pixels = AutoImageProcessor.from_pretrained(folder)(photo(40, 60), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            torch.testing.assert_close(features, teacher(pixels).last_hidden_state, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------- backbones
def test_backbone_from_a_saved_folder_and_upernet(tmp_path):
    """The documented calls: `BootlegBackbone.from_pretrained(folder, out_indices=...)` (transformers 5's
    `AutoBackbone.from_pretrained` takes Hub ids only) and UperNet on it with the encoder's weights."""
    encoder = perturbed(BootlegModel(tiny_config()))
    encoder.save_pretrained(tmp_path / "encoder")
    backbone = BootlegBackbone.from_pretrained(tmp_path / "encoder", out_indices=[0, 1, 2])  # stem, blocks 1, 2
    assert backbone.out_indices == [0, 1, 2]
    with pytest.raises(Exception, match="Repo id"):  # the transformers limitation the README documents
        AutoBackbone.from_pretrained(str(tmp_path / "encoder"))
    upernet = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone.config, num_labels=5,
                                                           hidden_size=16, auxiliary_in_channels=32))
    upernet.backbone.load_state_dict(backbone.state_dict())
    for name, value in encoder.state_dict().items():
        assert torch.equal(upernet.backbone.state_dict()[name], value), name
    pixels, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    out = upernet(pixel_values=pixels, labels=labels)
    assert out.logits.shape == (2, 5, 32, 32) and torch.isfinite(out.loss)
    out.loss.backward()
    assert upernet.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


@needs_fmnist
def test_trainer_push_to_hub_publishes_the_teacher_encoder_with_a_card(fake_hub, tmp_path):
    """`BootlegTrainer.push_to_hub` uploads the EMA teacher as an encoder repo (code, processor, card with the run's
    facts), loadable without the package, and nothing of the student or predictor."""
    from datasets import Dataset
    from huggingface_hub import HfApi, ModelCard, snapshot_download

    images = Dataset.from_dict({"pixel_values": [torch.randn(3, 32, 32).numpy() for _ in range(8)]})
    images.set_format("torch")
    args = bootleg_hf.BootlegTrainingArguments(output_dir=str(tmp_path / "my-run"), max_steps=4, logging_steps=1,
                                               per_device_train_batch_size=4, save_strategy="no", report_to="none",
                                               use_cpu=True)
    trainer = bootleg_hf.BootlegTrainer(model=BootlegForPretraining(tiny_config()), args=args, train_dataset=images)
    trainer.train()
    commit = trainer.push_to_hub(dataset="fashion-mnist")
    assert commit.oid
    files = set(HfApi().list_repo_files("user/my-run"))  # the output folder's name under the token's user
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_bootleg.py"} <= files
    local = Path(snapshot_download("user/my-run"))
    assert json.loads((local / "config.json").read_text())["architectures"] == ["BootlegModel"]
    weights = load_file(local / "model.safetensors")
    assert not [k for k in weights if k.startswith(("student.", "predictor."))]
    teacher = trainer.unwrapped_model.teacher.state_dict()
    assert set(weights) == set(teacher) and all(torch.equal(weights[k], teacher[k]) for k in teacher)
    card = ModelCard.load(local / "README.md")
    assert card.data.pipeline_tag == "image-feature-extraction" and "fashion_mnist" in str(card.data.datasets)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert "| Steps | 4 × 4 images (16 images seen" in card.text, card.text
    assert f"| Loss (MSE) | {losses[0]:.4f} at step 1 → {losses[-1]:.4f} at step 4 |" in card.text, card.text
    with pytest.raises(ValueError, match="push_to_hub=True"):
        bootleg_hf.BootlegTrainingArguments(output_dir=str(tmp_path / "x"), push_to_hub=True)


@needs_fmnist
def test_pipeline_on_a_saved_classifier_reproduces_the_probe_accuracy(tmp_path):
    """The `classifier/` folder of `bootleg-probe`, run through `pipeline("image-classification")` on the raw test
    images, scores what the probe reported: exactly with the PIL backend, within one image of 300 with the
    torchvision backend (`AutoImageProcessor`'s default, which resamples slightly differently)."""
    from transformers import MobileNetV2ImageProcessorPil

    from bootleg_hf.data import decode_image, load_image_dataset
    from bootleg_hf.evaluation.classification import ProbeSettings, run_probes
    from bootleg_hf.evaluation.common import select_subset

    torch.manual_seed(0)
    encoder = BootlegModel(BootlegConfig.from_preset("vit-micro"))  # random init: a weak probe, many errors
    settings = ProbeSettings(probes=["patch"], epochs=4, limit_train=512, limit_test=300, lrs=[8e-3], wds=[1e-3],
                             batch_size=128, num_workers=0, device="cpu")
    results = run_probes(encoder, "fashion-mnist", settings, out=tmp_path / "probe")
    reported = results["probes"]["patch"]["best"]["top1"]
    test = select_subset(load_image_dataset("fashion-mnist", "test"), 300, settings.seed)  # the probe's test images
    names = results["labels"]
    images, truth = [decode_image(v) for v in test["image"]], [names[i] for i in test["label"]]
    folder = str(tmp_path / "probe" / "classifier")
    for processor, tolerance in ((MobileNetV2ImageProcessorPil.from_pretrained(folder), 0.0), (None, 100 / 300)):
        classify = pipeline("image-classification", model=folder, image_processor=processor)
        predicted = [top[0]["label"] for top in classify(images, top_k=1, batch_size=64)]
        accuracy = 100 * np.mean([p == t for p, t in zip(predicted, truth)])
        assert abs(accuracy - reported) <= tolerance + 1e-9, (processor, accuracy, reported)


def test_ema_callback_momentum_is_the_configs_linear_schedule_over_the_run():
    """The stock-Trainer callback uses, for the update after optimizer step k (1-based), the momentum
    ema_start + (ema_end − ema_start)·(k − 1)/max_steps — the same value BootlegTrainer's built-in update uses."""
    model = BootlegForPretraining(tiny_config(ema_start=0.9, ema_end=1.0))
    callback = bootleg_hf.BootlegEMACallback()
    for step, expected in [(1, 0.9), (6, 0.95), (10, 0.99)]:
        got = callback.momentum(model, SimpleNamespace(global_step=step, max_steps=10))
        assert got == pytest.approx(expected, abs=1e-12), step
