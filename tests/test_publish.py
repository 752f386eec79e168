"""Hub publishing (docs/design.md §8) against the in-process fake Hub: folder layout, model card, uploads, errors,
remote code."""

import json
import os
import re
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_fmnist, tiny_config
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
    TrainerState,
    pipeline,
)

import bootleg_hf
from bootleg_hf import BootlegForImageClassification, BootlegForSemanticSegmentation, BootlegModel
from bootleg_hf.checkpoints import save_model_folder
from bootleg_hf.cli import convert_ijepa_main
from bootleg_hf.cli import publish_main as publish_cli
from bootleg_hf.evaluation.classification import ProbeSettings, run_probes
from bootleg_hf.evaluation.segmentation import SegmentationSettings, run_segmentation
from bootleg_hf.publishing import (
    AUTO_MAP,
    RESULTS_FORMAT,
    PublishError,
    RemoteCodeError,
    build_hub_folder,
    check_repo_id,
    probe_rows,
    remote_code_files,
    render_card,
    training_facts,
    upload,
)

try:  # tests/ is importable under pytest's default "prepend" import mode; tests.fake_hub if tests/ is a package
    from fake_hub import HubError, fake_hub, hub_env  # noqa: F401  (fake_hub is a fixture)
except ImportError:  # pragma: no cover
    from tests.fake_hub import HubError, fake_hub, hub_env  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
CODE_FILES = ["configuration_bootleg.py", "modeling_bootleg.py", "modeling_bootleg_heads.py", "targets.py"]
HUB_FILES = sorted(["README.md", "config.json", "model.safetensors", "preprocessor_config.json", *CODE_FILES])
LABELS = ["shirt", "shoe", "bag"]
PROBE_RESULTS = {  # bootleg-probe's probe_results.json before bootleg-results/1 (abridged): still read
    "model": "runs/tiny/encoder", "weights": "teacher", "dataset": "fashion-mnist",
    "probes": {"patch": {"best": {"top1": 81.234, "lr": 1e-3}}, "xblk": {"best": {"top1": 85.5, "lr": 2e-3}}}}
SEGMENTATION_RESULTS = {  # a hand-written bootleg-results/1 document: the format, a section, its data, best scores
    "format": RESULTS_FORMAT, "encoder": "runs/tiny/encoder", "weights": "teacher",
    "segmentation": {"dataset": {"name": "Fashion-MNIST mosaics", "type": "bootleg/fmnist-mosaics", "split": "test"},
                     "probes": {"knn": {"best": {"miou": 40.5}}, "lin": {"best": {"miou": 44.25, "lr": 0.01}}}}}


def publish_main(argv: list) -> int:
    return publish_cli([str(a) for a in argv])


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random non-trivial weights (heads included), so outputs and scores differ clearly between classes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def encoder() -> BootlegModel:
    return perturbed(BootlegModel(tiny_config()), 0)


def task_folder(tmp_path: Path, kind: str) -> Path:
    """A saved encoder / classification / segmentation folder (what export_pretrained writes)."""
    if kind == "encoder":
        model = encoder()
    elif kind == "classification":
        model = perturbed(BootlegForImageClassification.from_encoder(encoder(), id2label=LABELS, probe_type="xblk"), 1)
    else:
        model = perturbed(BootlegForSemanticSegmentation.from_encoder(encoder(), id2label=["background", "item"],
                                                                      segmentation_head="blk"), 2)
    return save_model_folder(model, tmp_path / kind)


def example_image(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_hub_folder_layout_auto_map_and_model_card(tmp_path, capsys):
    source = task_folder(tmp_path, "encoder")
    for pickle_file in ("pytorch_model.bin", "training_args.bin"):  # must never reach the Hub folder
        torch.save({"x": torch.zeros(1)}, source / pickle_file)
    (tmp_path / "results.json").write_text(json.dumps(PROBE_RESULTS))
    (tmp_path / "seg.json").write_text(json.dumps(SEGMENTATION_RESULTS))
    out = tmp_path / "hub"
    rc = publish_main([source, "--repo-id", "user/tiny", "--out", out, "--dry-run", "--license", "cc-by-nc-4.0",
                       "--dataset", "zalando-datasets/fashion_mnist", "--base-model", "facebook/ijepa_vith14_1k",
                       "--probe-results", tmp_path / "results.json", "--probe-results", tmp_path / "seg.json",
                       "--recipe", "vit-micro"])
    assert rc == 0 and "nothing uploaded" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == HUB_FILES

    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP and set(AUTO_MAP) == {"AutoConfig", "AutoModel", "AutoBackbone",
                                                                "AutoModelForImageClassification",
                                                                "AutoModelForSemanticSegmentation"}
    assert all((out / f"{ref.split('.')[0]}.py").is_file() for ref in AUTO_MAP.values())
    assert config["architectures"] == ["BootlegModel"]
    assert (out / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()

    card = ModelCard.load(out / "README.md")
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license) == ("transformers", "image-feature-extraction",
                                                                    "cc-by-nc-4.0")
    assert data.tags == ["bootleg", "jepa", "self-supervised", "vision", "vit"]
    assert data.datasets == ["zalando-datasets/fashion_mnist"] and data.base_model == "facebook/ijepa_vith14_1k"
    meta = metadata_load(out / "README.md")
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "tiny"
    found = {(r.task_type, r.dataset_type, r.metric_name.split("(")[1].split()[0]): r.metric_value for r in results}
    assert found == {("image-classification", "zalando-datasets/fashion_mnist", "patch"): 81.23,
                     ("image-classification", "zalando-datasets/fashion_mnist", "xblk"): 85.5,
                     ("image-segmentation", "bootleg/fmnist-mosaics", "knn"): 40.5,
                     ("image-segmentation", "bootleg/fmnist-mosaics", "lin"): 44.25}
    assert "| image-classification | Fashion-MNIST | xblk | accuracy | 85.5 |" in card.text
    assert "preset: vit-micro" in card.text and "`1:1:2`" in card.text  # recipe and targets from the config

    assert publish_main([source, "--repo-id", "user/tiny", "--out", out, "--dry-run"]) == 1  # never overwrites
    assert "not empty" in capsys.readouterr().err


def model_index(card: Path) -> dict[tuple[str, str, str], float]:
    """`{(task, dataset type, probe): value}` of a card's model-index."""
    _, results = model_index_to_eval_results(metadata_load(card)["model-index"])
    return {(r.task_type, r.dataset_type, r.metric_name.split("(")[1].split()[0]): r.metric_value for r in results}


@needs_fmnist
def test_probe_and_segment_results_are_one_format_that_publish_reads(tmp_path):
    """bootleg-probe's and bootleg-segment's files, published alone and together: the card's model-index carries
    each probe's best score."""
    source = task_folder(tmp_path, "encoder")
    run_probes(source, "fashion-mnist", ProbeSettings(probes=("patch", "xblk"), epochs=1, batch_size=32,
                                                      limit_train=64, limit_test=32, lrs=[1e-3], wds=[1e-3],
                                                      num_workers=0), out=tmp_path / "probe")
    run_segmentation(source, "mosaic", SegmentationSettings(probes=("knn", "lin"), limit_train=16, limit_test=8,
                                                            epochs=1, lrs=[1e-2], ks=(1, 3)), out=tmp_path / "seg")
    files = {"probe": tmp_path / "probe" / "probe_results.json", "seg": tmp_path / "seg" / "segment_results.json"}
    documents = {name: json.loads(path.read_text()) for name, path in files.items()}
    assert set(documents["probe"]) == {"format", "encoder", "weights", "classification"}
    assert set(documents["seg"]) == {"format", "encoder", "weights", "segmentation"}
    assert {d["format"] for d in documents.values()} == {RESULTS_FORMAT}
    assert {d["encoder"] for d in documents.values()} == {str(source)}
    classification, segmentation = documents["probe"]["classification"], documents["seg"]["segmentation"]
    assert classification["dataset"] == {"name": "Fashion-MNIST", "type": "zalando-datasets/fashion_mnist",
                                         "split": "test"}
    assert segmentation["dataset"]["name"] == "Fashion-MNIST 2×2 mosaics"
    assert len(classification["probes"]["xblk"]["grid"]) == 1 and len(segmentation["probes"]["knn"]["grid"]) == 4
    want = {**{("image-classification", "zalando-datasets/fashion_mnist", k): round(r["best"]["top1"], 2)
               for k, r in classification["probes"].items()},
            **{("image-segmentation", "zalando-datasets/fashion_mnist", k): round(r["best"]["miou"], 2)
               for k, r in segmentation["probes"].items()}}
    assert len(want) == 4
    tasks = {"probe": "image-classification", "seg": "image-segmentation"}
    for name, chosen in (("probe", ["probe"]), ("seg", ["seg"]), ("both", ["probe", "seg"])):
        out = tmp_path / f"hub-{name}"
        args = [arg for key in chosen for arg in ("--probe-results", files[key])]
        assert publish_main([source, "--repo-id", "user/tiny", "--out", out, "--dry-run", *args]) == 0
        assert model_index(out / "README.md") == {k: v for k, v in want.items() if k[0] in {tasks[c] for c in chosen}}


def test_results_of_earlier_versions_are_still_read():
    """probe_results.json / segment_results.json as earlier versions wrote them (segmentation results used to crash
    publishing with KeyError: 'top1')."""
    old_segmentation = {"model": "runs/tiny/encoder", "weights": "student", "dataset": "mosaic", "num_labels": 11,
                        "probes": {"knn": {"best": {"setting": "cosine/k=10", "miou": 40.504}, "settings": {}},
                                   "lin": {"best": {"lr": 0.01, "miou": 44.25}, "by_lr": {}}}, "saved_head": "lin"}
    rows = probe_rows([PROBE_RESULTS, old_segmentation])
    assert [(r["task"], r["dataset"], r["probe"], r["metric"], r["value"]) for r in rows] == [
        ("image-classification", "Fashion-MNIST", "patch", "accuracy", 81.23),
        ("image-classification", "Fashion-MNIST", "xblk", "accuracy", 85.5),
        ("image-segmentation", "Fashion-MNIST 2×2 mosaics", "knn", "mean_iou", 40.5),
        ("image-segmentation", "Fashion-MNIST 2×2 mosaics", "lin", "mean_iou", 44.25)]
    assert {r["protocol"] for r in rows} == {"not stated"}  # earlier versions did not record it


def test_the_card_names_the_protocol_of_each_score(tmp_path):
    """Model cards say which protocol produced each score (the probes' label, a segmentation protocol's name, a
    fine-tuning run's) instead of claiming the paper's for all."""
    from bootleg_hf.publishing import section_protocol

    assert section_protocol({"protocol_label": "quick protocol (epochs 3 instead of 10)", "protocol": "quick"}) == \
        "quick protocol (epochs 3 instead of 10)"
    assert section_protocol({"protocol": {"name": "paper", "epochs": 128}}) == "paper protocol"
    assert section_protocol({"protocol_label": "fine-tuning, lora protocol"}) == "fine-tuning, lora protocol"
    documents = [{**PROBE_RESULTS, "protocol_label": "quick protocol (epochs 3 instead of 10)"},
                 {**SEGMENTATION_RESULTS, "segmentation": {**SEGMENTATION_RESULTS["segmentation"],
                                                           "protocol": {"name": "paper"}}}]
    rows = probe_rows(documents)
    assert [r["protocol"] for r in rows] == ["quick protocol (epochs 3 instead of 10)"] * 2 + ["paper protocol"] * 2


BAD_RESULTS = {
    "not JSON": ("{not json", "cannot read the results file"),
    "no results": (json.dumps({"hidden_size": 32}), "holds no probe results"),
    "unknown format": (json.dumps({**SEGMENTATION_RESULTS, "format": "bootleg-results/9"}), "unknown results format"),
    "no section": (json.dumps({"format": RESULTS_FORMAT, "encoder": "x"}), "no results: it needs"),
    "bad score": (json.dumps({"format": RESULTS_FORMAT, "classification": {
        "dataset": "fashion-mnist", "probes": {"patch": {"best": {"top1": "high"}}}}}),
        "classification.probes.patch.best.top1 must be a finite number"),
    "no dataset": (json.dumps({"format": RESULTS_FORMAT, "segmentation": {"probes": {"knn": {"best": {"miou": 1}}}}}),
                   "segmentation.dataset must be"),
}


@pytest.mark.parametrize("case", BAD_RESULTS)
def test_unreadable_results_are_refused_before_anything_is_written(tmp_path, capsys, case):
    content, message = BAD_RESULTS[case]
    source = task_folder(tmp_path, "encoder")
    (tmp_path / "bad.json").write_text(content)
    out = tmp_path / "hub"
    assert publish_main([source, "--repo-id", "user/tiny", "--out", out, "--dry-run",
                         "--probe-results", tmp_path / "bad.json"]) == 1
    err = capsys.readouterr().err
    assert message in err and str(tmp_path / "bad.json") in err
    assert not out.exists() and not list(tmp_path.glob(".hub*"))  # no folder, no temporary build folder
    if case != "not JSON":
        with pytest.raises(PublishError, match=re.escape(message)):  # the library refuses it the same way
            build_hub_folder(source, out, "user/tiny", probe_results=[SEGMENTATION_RESULTS, json.loads(content)])
        assert not out.exists() and not list(tmp_path.glob(".hub*"))


LOSSES = [(10, 0.9), (20, 0.7), (30, 0.5)]


def fake_run(folder: Path) -> Path:
    """A pretraining run folder as run_pretraining leaves it: the trainer state in its newest checkpoint."""
    for step in (20, 30):
        checkpoint = folder / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "model.safetensors").write_bytes(b"")
        logs = [{"loss": loss, "step": s, "learning_rate": 1e-3} for s, loss in LOSSES if s <= step]
        (checkpoint / "trainer_state.json").write_text(json.dumps(
            {"global_step": step, "epoch": step / 24, "train_batch_size": 32, "log_history": logs}))
    return folder


def test_training_facts_of_a_run_folder_a_state_file_and_a_trainer_state(tmp_path):
    run = fake_run(tmp_path / "run")
    want = {"recipe": "vit-micro", "dataset": "Fashion-MNIST", "steps": 30, "epochs": 1.25, "global_batch_size": 32,
            "images_seen": 960, "loss_first": 0.9, "loss_first_step": 10, "loss_last": 0.5, "loss_last_step": 30}
    assert training_facts(run, "vit-micro", dataset="fashion-mnist", global_batch_size=32) == want  # newest checkpoint
    assert training_facts(run / "checkpoint-30" / "trainer_state.json", "vit-micro", dataset="fashion-mnist",
                          global_batch_size=32) == want
    state = TrainerState(global_step=30, epoch=1.25, log_history=[{"loss": v, "step": s} for s, v in LOSSES])
    assert training_facts(state, "vit-micro", dataset="fashion-mnist", global_batch_size=32) == want
    # without the batch size: the checkpoint's per-device batch × its processes (RNG-state files), else the recipe's
    assert training_facts(run, "vit-micro")["global_batch_size"] == 32
    for rank in (0, 1):
        (run / "checkpoint-30" / f"rng_state_{rank}.pth").write_bytes(b"")
    facts = training_facts(run, "vit-micro")
    assert (facts["global_batch_size"], facts["images_seen"], facts["dataset"]) == (64, 1920, None)
    assert training_facts({"global_step": 30}, "vit-micro")["global_batch_size"] == 128  # vit-micro's
    facts = training_facts({"global_step": 3, "log_history": []})
    assert facts["recipe"] is facts["images_seen"] is facts["loss_first"] is None and facts["steps"] == 3
    with pytest.raises(FileNotFoundError, match="no trainer_state.json"):
        training_facts(tmp_path / "not-a-run")


def test_training_facts_render_in_the_model_card(tmp_path):
    source, run = task_folder(tmp_path, "encoder"), fake_run(tmp_path / "run")
    assert publish_main([source, "--repo-id", "user/tiny", "--out", tmp_path / "hub", "--dry-run", "--training-run",
                         run, "--recipe", "vit-micro", "--dataset", "zalando-datasets/fashion_mnist"]) == 0
    text = (tmp_path / "hub" / "README.md").read_text()
    assert "| Recipe | `vit-micro` |\n| Data | Fashion-MNIST |\n" in text
    assert "| Steps | 30 × 32 images (960 images seen, 1.25 epochs) |" in text
    assert "| Loss (MSE) | 0.9000 at step 10 → 0.5000 at step 30 |" in text
    config = bootleg_hf.BootlegConfig.from_pretrained(source)
    facts = {**training_facts(run, "vit-micro", global_batch_size=256), "overrides": ["training.lr_max=1e-3"]}
    card = render_card(source, config, "encoder", "user/tiny", training=facts)
    assert "| Recipe | `vit-micro` with `training.lr_max=1e-3` |" in card.text and "| Data |" not in card.text
    assert "| Steps | 30 × 256 images (7,680 images seen, 1.25 epochs) |" in card.text
    assert "This checkpoint's run" not in render_card(source, config, "encoder", "user/tiny").text


def test_remote_code_closure_and_import_checks(tmp_path):
    modules = {ref.split(".")[0] for ref in AUTO_MAP.values()}
    assert remote_code_files(modules) == CODE_FILES
    (tmp_path / "a.py").write_text("from __future__ import annotations\nimport torch\nfrom .b import B\n")
    (tmp_path / "b.py").write_text("def f():\n    from bootleg_hf.data import load_image_dataset\n")
    with pytest.raises(RemoteCodeError, match=r"b\.py imports \['bootleg_hf'\]"):
        remote_code_files(["a"], tmp_path)
    (tmp_path / "b.py").write_text("import datasets\nfrom .c import C\n")
    with pytest.raises(RemoteCodeError, match=r"\['datasets'\]"):
        remote_code_files(["a"], tmp_path)
    (tmp_path / "b.py").write_text("from .c import C\n")
    with pytest.raises(RemoteCodeError, match="c.py, which does not exist"):
        remote_code_files(["a"], tmp_path)
    (tmp_path / "b.py").write_text("from .. import x\n")
    with pytest.raises(RemoteCodeError, match="cannot be followed"):
        remote_code_files(["a"], tmp_path)


def test_refuses_pretraining_and_pickle_only_folders(tmp_path, capsys):
    bootleg_hf.BootlegForPretraining(tiny_config()).save_pretrained(tmp_path / "pre")
    assert publish_main([tmp_path / "pre", "--repo-id", "user/x", "--dry-run"]) == 1
    assert "export_pretrained.py first" in capsys.readouterr().err
    folder = task_folder(tmp_path, "encoder")
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    assert publish_main([folder, "--repo-id", "user/x", "--dry-run"]) == 1
    assert "no safetensors weights" in capsys.readouterr().err


def run_card_snippets(card: Path) -> list[dict]:
    """Execute every Python block of a model card as written (the working directory holds example.jpg); return
    each block's namespace."""
    spaces = []
    for code in re.findall(r"```python\n(.*?)```", card.read_text(), flags=re.S):
        spaces.append({})
        exec(compile(code, str(card), "exec"), spaces[-1])
    return spaces


def test_publish_encoder_round_trip_and_card_snippets(fake_hub, tmp_path, monkeypatch, capsys):
    source = task_folder(tmp_path, "encoder")
    assert publish_main([source, "--repo-id", "user/tiny"]) == 0
    printed = capsys.readouterr().out
    repo = fake_hub.repos["user/tiny"]
    assert f"published user/tiny at {repo.branches['main']}" in printed
    hub_folder = Path(str(source) + "-hub")
    assert sorted(repo.files()) == sorted([".gitattributes", *HUB_FILES])
    assert all(repo.files()[p.name] == p.read_bytes() for p in hub_folder.iterdir())

    local, remote = BootlegModel.from_pretrained(source).eval(), AutoModel.from_pretrained("user/tiny").eval()
    with torch.no_grad():
        a, b = local(pixels()), remote(pixels())
    assert torch.equal(a.last_hidden_state, b.last_hidden_state) and torch.equal(a.pooler_output, b.pooler_output)
    assert ModelCard.load("user/tiny").data.pipeline_tag == "image-feature-extraction"
    assert ("POST", "/api/validate-yaml") in fake_hub.requests  # the card was validated before the commit

    monkeypatch.chdir(tmp_path)
    example_image(tmp_path / "example.jpg")
    spaces = run_card_snippets(hub_folder / "README.md")
    assert len(spaces) == 3
    assert spaces[0]["pooled"].shape == (1, 32) and spaces[0]["patch_tokens"].shape == (1, 16, 32)
    assert spaces[1]["features"].shape == (1, 21, 32)
    assert [tuple(f.shape) for f in spaces[2]["feature_maps"]] == [(1, 32, 4, 4)] * 2


def test_publish_task_models_pipelines_and_card_snippets(fake_hub, tmp_path, monkeypatch):
    classification, segmentation = task_folder(tmp_path, "classification"), task_folder(tmp_path, "segmentation")
    assert publish_main([classification, "--repo-id", "user/tiny-cls", "--private"]) == 0
    assert publish_main([segmentation, "--repo-id", "user/tiny-seg"]) == 0
    assert fake_hub.repos["user/tiny-cls"].private
    cards = {kind: Path(f"{folder}-hub") / "README.md" for kind, folder in (("cls", classification),
                                                                          ("seg", segmentation))}
    assert [ModelCard.load(c).data.pipeline_tag for c in cards.values()] == ["image-classification",
                                                                             "image-segmentation"]

    image = example_image(tmp_path / "example.jpg")
    local = pipeline("image-classification", model=str(classification))(str(image), top_k=3)
    remote = pipeline("image-classification", model="user/tiny-cls")(str(image), top_k=3)
    assert remote == local and sorted(r["label"] for r in local) == sorted(LABELS)
    assert len({round(r["score"], 3) for r in local}) == 3  # distinct scores: the head is really there

    local = pipeline("image-segmentation", model=str(segmentation))(str(image))
    remote = pipeline("image-segmentation", model="user/tiny-seg")(str(image))
    assert [r["label"] for r in remote] == [r["label"] for r in local]
    assert all(np.array_equal(np.asarray(r["mask"]), np.asarray(l["mask"])) for r, l in zip(remote, local))

    monkeypatch.chdir(tmp_path)
    cls_spaces, seg_spaces = run_card_snippets(cards["cls"]), run_card_snippets(cards["seg"])
    assert cls_spaces[0]["label"] in LABELS and cls_spaces[0]["logits"].shape == (1, 3)
    assert seg_spaces[0]["outputs"].logits.shape == (1, 2, 4, 4) and seg_spaces[0]["label_map"].shape == (40, 48)


def test_publish_to_a_branch(fake_hub, tmp_path):
    assert publish_main([task_folder(tmp_path, "encoder"), "--repo-id", "user/tiny", "--revision", "v1"]) == 0
    repo = fake_hub.repos["user/tiny"]
    assert "config.json" in repo.files("v1") and "config.json" not in repo.files("main")
    assert isinstance(AutoModel.from_pretrained("user/tiny", revision="v1"), BootlegModel)


def test_publishing_again_adds_a_commit_with_the_given_token_and_message(fake_hub, tmp_path, monkeypatch):
    """A second upload to an existing repo and branch adds a commit (the repo and branch are not re-created); the
    commit title is the given message, else one naming the folder; an explicit token works without HF_TOKEN."""
    hub = build_hub_folder(task_folder(tmp_path, "encoder"), tmp_path / "hub", "user/again")
    token = os.environ["HF_TOKEN"]
    monkeypatch.delenv("HF_TOKEN")
    first = upload(hub, "user/again", token=token, revision="v1")
    (hub / "CHANGES.md").write_text("second version\n")  # an identical folder would be no new commit
    second = upload(hub, "user/again", token=token, revision="v1", commit_message="second version")
    repo = fake_hub.repos["user/again"]
    assert repo.commits[first.oid].title == "Upload Bootleg model (hub)"
    assert repo.commits[second.oid].title == "second version" and repo.branches["v1"] == second.oid
    assert repo.commits[second.oid].parent == first.oid
    with pytest.raises(PublishError, match="token"):
        upload(hub, "user/again")


def test_converted_ijepa_checkpoint_publishes_and_loads(fake_hub, tmp_path, monkeypatch):
    """I-JEPA `.pth.tar` → convert_ijepa_to_bootleg → publish (converted, CC-BY-NC) → AutoModel from the Hub."""
    config = tiny_config(use_cls_token=False, num_register_tokens=0)
    original = perturbed(BootlegModel(config), 5)
    ijepa_layout = {f"module.{k}": v for k, v in bootleg_hf.bootleg_to_timm(original.state_dict(), config).items()}
    torch.save({"encoder": ijepa_layout, "target_encoder": ijepa_layout, "epoch": 300}, tmp_path / "ijepa.pth.tar")
    convert_ijepa_main(["--checkpoint", str(tmp_path / "ijepa.pth.tar"), "--out", str(tmp_path / "ijepa"),
                        "--num-heads", "4"])
    assert publish_main([tmp_path / "ijepa", "--repo-id", "user/ijepa", "--license", "cc-by-nc-4.0", "--converted",
                         "--base-model", "facebook/ijepa_vith14_1k"]) == 0

    remote = AutoModel.from_pretrained("user/ijepa").eval()
    with torch.no_grad():
        a, b = original(pixels()), remote(pixels())
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert torch.equal(b.pooler_output, b.last_hidden_state.mean(1))  # no CLS: mean patch token
    card = ModelCard.load(tmp_path / "ijepa-hub" / "README.md")
    assert (card.data.license, card.data.base_model) == ("cc-by-nc-4.0", "facebook/ijepa_vith14_1k")
    assert "converted to the Bootleg model classes" in card.text and "pretrained with **Bootleg**" not in card.text
    assert "`[patches]`" in card.text
    monkeypatch.chdir(tmp_path)
    example_image(tmp_path / "example.jpg")
    assert run_card_snippets(tmp_path / "ijepa-hub" / "README.md")[0]["patch_tokens"].shape == (1, 16, 32)


CHILD = """
import sys
try:
    import bootleg_hf
except ImportError:
    pass
else:
    raise SystemExit(f"bootleg_hf is importable in the child: {{bootleg_hf.__file__}}")
import json
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForImageClassification, AutoModelForSemanticSegmentation, pipeline

x = load_file(sys.argv[1])["pixels"]
out = {{}}
with torch.no_grad():
    for name, auto in (("tiny", AutoModel), ("tiny-cls", AutoModelForImageClassification),
                       ("tiny-seg", AutoModelForSemanticSegmentation)):
        model = auto.from_pretrained("user/" + name, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        result = model(x)
        out[name] = (result.logits if name != "tiny" else result.last_hidden_state).contiguous()
save_file(out, sys.argv[2])
classifier = pipeline("image-classification", model="user/tiny-cls", trust_remote_code=True)
print(json.dumps(classifier(sys.argv[3], top_k=3)))
"""


def test_remote_code_loads_without_the_package(fake_hub, tmp_path):
    folders = {name: task_folder(tmp_path, kind) for name, kind in
               (("tiny", "encoder"), ("tiny-cls", "classification"), ("tiny-seg", "segmentation"))}
    for name, folder in folders.items():
        assert publish_main([folder, "--repo-id", f"user/{name}"]) == 0
    save_file({"pixels": pixels()}, tmp_path / "in.safetensors")
    code = CHILD.format()
    image = example_image(tmp_path / "example.jpg")
    # -S: site-packages come from PYTHONPATH without .pth processing, so the editable install of bootleg_hf stays out;
    # one thread as in this process (tests run single-threaded), so the reduction order and the outputs are the same
    env = {**hub_env(fake_hub.url, tmp_path / "child_home"), "PYTHONPATH": os.pathsep.join(site.getsitepackages()),
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-S", "-c", code, str(tmp_path / "in.safetensors"),
                          str(tmp_path / "out.safetensors"), str(image)],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    got = load_file(tmp_path / "out.safetensors")
    with torch.no_grad():
        want = {"tiny": BootlegModel.from_pretrained(folders["tiny"]).eval()(pixels()).last_hidden_state}
        for name, auto in (("tiny-cls", AutoModelForImageClassification), ("tiny-seg", AutoModelForSemanticSegmentation)):
            want[name] = auto.from_pretrained(folders[name]).eval()(pixels()).logits
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=0)
    local = pipeline("image-classification", model=str(folders["tiny-cls"]))(str(image), top_k=3)
    remote = json.loads(run.stdout.strip().splitlines()[-1])
    assert [r["label"] for r in remote] == [r["label"] for r in local]
    assert np.allclose([r["score"] for r in remote], [r["score"] for r in local], atol=1e-6)


def test_missing_token_is_a_clear_error(fake_hub, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    assert publish_main([task_folder(tmp_path, "encoder"), "--repo-id", "user/tiny"]) == 1
    out, err = capsys.readouterr()
    assert "no Hugging Face token" in err and "published" not in out
    assert fake_hub.repos == {}


def test_failed_upload_is_an_error_not_a_success(fake_hub, tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise HubError(500, "storage backend unavailable")

    monkeypatch.setattr(fake_hub, "_commit", refuse)
    assert publish_main([task_folder(tmp_path, "encoder"), "--repo-id", "user/tiny"]) == 1
    out, err = capsys.readouterr()
    assert "upload of" in err and "failed" in err and "published" not in out
    assert set(fake_hub.repos["user/tiny"].files()) == {".gitattributes"}  # the repo exists, holds nothing of ours
    assert publish_main([task_folder(tmp_path / "2", "encoder"), "--repo-id", "user/tiny", "--token", "bad"]) == 1
    assert "failed" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_hub_folder_never_overlaps_its_source(tmp_path, capsys, where):
    source = task_folder(tmp_path / "models", "encoder")
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    out = {"same": source, "inside": source / "hub", "parent": source.parent}[where]
    with pytest.raises(PublishError, match="overlap") as err:
        build_hub_folder(source, out, "user/tiny", overwrite=True)
    assert str(source) in str(err.value) and str(out) in str(err.value)
    assert publish_main([source, "--repo-id", "user/tiny", "--out", out, "--overwrite", "--dry-run"]) == 1
    assert "overlap" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before


def test_non_finite_weights_are_never_published(tmp_path, capsys):
    source = task_folder(tmp_path, "encoder")
    state = load_file(source / "model.safetensors")
    state["blocks.0.norm1.weight"][3] = float("inf")
    save_file(state, source / "model.safetensors")
    assert publish_main([source, "--repo-id", "user/tiny", "--out", tmp_path / "hub", "--dry-run"]) == 1
    assert "'model.safetensors:blocks.0.norm1.weight' holds non-finite values" in capsys.readouterr().err
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize("repo_id", ["../../x", "x", "user/", "/x", "a/b/c", "user/.x", "user/x-", "-user/x",
                                     "user/a..b", "user/a--b", "user/x.git", "user/" + "a" * 97, "usér/x", "user/x y"])
def test_invalid_repo_ids_are_refused_before_anything_is_built(fake_hub, tmp_path, capsys, repo_id):
    source = task_folder(tmp_path, "encoder")
    assert publish_main([source, f"--repo-id={repo_id}", "--out", tmp_path / "hub"]) == 1
    assert f"invalid Hub repo id {repo_id!r}" in capsys.readouterr().err
    assert not (tmp_path / "hub").exists() and fake_hub.repos == {}
    with pytest.raises(PublishError, match="invalid Hub repo id"):
        upload(source, repo_id, token="token")
    assert fake_hub.repos == {}


def test_valid_repo_ids_pass_unchanged():
    for repo_id in ("user/tiny", "Org_1/bootleg-vit.s_16", "a/b", "u/" + "a" * 96):
        assert check_repo_id(repo_id) == repo_id
