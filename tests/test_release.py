"""`bootleg-release` end to end at vit-micro size on CPU against the fake Hub: pretrain, probe, export, Hub folders
with cards carrying the measured numbers and the training facts, dry run by default, upload with --push or
--upload-only, never over a user's folder."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import needs_fmnist
from remote_code import outputs_without_package
from huggingface_hub import metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from transformers import AutoModelForImageClassification, AutoModelForSemanticSegmentation

from bootleg_hf import BootlegModel
from bootleg_hf.cli import pretrain_main
from bootleg_hf.cli import release_main as release_cli
from bootleg_hf.publishing import AUTO_MAP, training_facts

try:  # tests/ is importable under pytest's default "prepend" import mode; tests.fake_hub if tests/ is a package
    from fake_hub import fake_hub, hub_env  # noqa: F401  (fake_hub is a fixture)
except ImportError:  # pragma: no cover
    from tests.fake_hub import fake_hub, hub_env  # noqa: F401

pytestmark = [needs_fmnist, pytest.mark.usefixtures("single_thread")]

REPOS = {"encoder": "user/bootleg-micro", "classifier": "user/bootleg-micro-fashion-mnist-cls",
         "segmenter": "user/bootleg-micro-mosaic-seg"}
# a few steps, a few hundred images, 1-point grids: the whole release in seconds
SMALL = ["--recipe", "vit-micro", "--dataset", "fashion-mnist", "--limit", "128", "--batch-size", "32",
         "--max-steps", "3", "--set", "training.logging_steps=1", "--probes", "patch,xblk", "--probe-epochs", "1",
         "--probe-batch-size", "64", "--probe-train", "256", "--probe-test", "128", "--probe-lrs", "1e-3",
         "--probe-wds", "1e-3", "--seg-train", "48", "--seg-test", "16", "--seg-epochs", "1", "--seg-lrs", "1e-2",
         "--seg-ks", "1,3", "--threads", "1"]
HUB_FILES = {"README.md", "config.json", "model.safetensors", "preprocessor_config.json", "configuration_bootleg.py",
             "modeling_bootleg.py", "modeling_bootleg_heads.py", "targets.py"}


def release_main(*args) -> int:
    return release_cli([str(a) for a in args])


def model_index(card: Path) -> dict[tuple[str, str], float]:
    _, results = model_index_to_eval_results(metadata_load(card)["model-index"])
    return {(r.task_type, r.metric_name.split("(")[1].split()[0]): r.metric_value for r in results}


def check_release_folder(out: Path) -> dict:
    """The Hub folders hold what a repo needs, and each card the measured numbers of its model and the run's
    training facts; returns release.json."""
    results = json.loads((out / "results.json").read_text())
    scores = {**{("image-classification", k): round(r["best"]["top1"], 2)
                 for k, r in results["classification"]["probes"].items()},
              **{("image-segmentation", k): round(r["best"]["miou"], 2)
                 for k, r in results["segmentation"]["probes"].items()}}
    assert len(scores) == 5  # patch, xblk; knn, lin, blk
    wanted = {"encoder": scores, "classifier": {k: v for k, v in scores.items() if k[0] == "image-classification"},
              "segmenter": {k: v for k, v in scores.items() if k[0] == "image-segmentation"}}
    record = json.loads((out / "release.json").read_text())
    assert {kind: repo["repo_id"] for kind, repo in record["repos"].items()} == REPOS
    for kind, repo in record["repos"].items():
        folder = out / repo["folder"]
        assert set(repo["files"]) == HUB_FILES == {p.name for p in folder.iterdir()}
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"] == AUTO_MAP
        assert config["architectures"] == [{"encoder": "BootlegModel", "classifier": "BootlegForImageClassification",
                                            "segmenter": "BootlegForSemanticSegmentation"}[kind]]
        assert model_index(folder / "README.md") == wanted[kind], kind
        card = (folder / "README.md").read_text()
        assert "| Recipe | `vit-micro` with `training.logging_steps=1` |" in card
        assert "| Steps | 3 × 32 images (96 images seen, 0.75 epochs) |" in card and "| Loss (MSE) |" in card
    config = json.loads((out / "hub" / "classifier" / "config.json").read_text())
    assert config["probe_type"] == results["classification"]["best_probe"]
    config = json.loads((out / "hub" / "segmenter" / "config.json").read_text())
    assert config["segmentation_head"] == results["segmentation"]["best_head"]
    # the facts read back from the run folder (its newest checkpoint) are those of the trainer state in memory
    facts = training_facts(out / "pretrain", "vit-micro", dataset="fashion-mnist")
    assert record["training"] == {**facts, "overrides": ["training.logging_steps=1"]}
    assert facts["steps"] == 3 and facts["loss_first_step"] == 1 and facts["loss_last_step"] == 3
    return record


def test_dry_run_uploads_nothing_then_upload_only_publishes_it(fake_hub, tmp_path, capsys):
    out = tmp_path / "release"
    assert release_main(*SMALL, "--repo-id", "user/bootleg-micro", "--out", out) == 0
    printed = capsys.readouterr().out
    assert fake_hub.requests == [] and fake_hub.repos == {}  # not a single call to the Hub
    for kind, repo_id in REPOS.items():
        assert f"would upload {out / 'hub' / kind} (8 files" in printed and f"huggingface.co/{repo_id}:" in printed
    assert "dry run: nothing uploaded" in printed
    record = check_release_folder(out)
    assert not record["pushed"] and all(repo["commit"] is None for repo in record["repos"].values())

    # never over a user's folder: the same command, or --resume without --overwrite, is refused and changes nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert release_main(*SMALL, "--repo-id", "user/bootleg-micro", "--out", out) == 1
    assert "not empty (pass overwrite=True / --overwrite" in capsys.readouterr().err
    assert release_main(*SMALL, "--repo-id", "user/bootleg-micro", "--out", out, "--resume") == 1
    assert "the outputs of an earlier release are replaced only with --overwrite" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    # what the dry run built is what gets uploaded
    assert release_main("--out", out, "--upload-only") == 0
    record = json.loads((out / "release.json").read_text())
    assert record["pushed"]
    for kind, repo in record["repos"].items():
        hub_repo = fake_hub.repos[repo["repo_id"]]
        assert hub_repo.branches["main"] == repo["commit"]
        assert {name: data for name, data in hub_repo.files().items() if name != ".gitattributes"} == {
            p.name: p.read_bytes() for p in (out / repo["folder"]).iterdir()}


def test_resume_continues_an_interrupted_run(tmp_path, capsys):
    """A run begun by bootleg-pretrain (and killed after its step-2 checkpoint) is continued by the release."""
    out = tmp_path / "release"
    assert pretrain_main(["--recipe", "vit-micro", "--dataset", "fashion-mnist", "--limit", "128", "--batch-size",
                          "32", "--max-steps", "3", "--set", "training.logging_steps=1", "--set",
                          "training.save_steps=2", "--output-dir", str(out / "pretrain")]) == 0
    for path in (out / "pretrain" / "checkpoint-3", out / "pretrain" / "encoder"):
        shutil.rmtree(path)
    for path in (out / "pretrain").glob("*.*"):
        path.unlink()
    assert release_main(*SMALL, "--repo-id", "user/bootleg-micro", "--out", out) == 1  # not without --resume
    assert "not empty" in capsys.readouterr().err
    assert release_main(*SMALL, "--repo-id", "user/bootleg-micro", "--out", out, "--resume") == 0
    assert f"resuming from {out / 'pretrain' / 'checkpoint-2'}" in capsys.readouterr().out
    check_release_folder(out)  # three steps, the losses of all three in the card


def test_push_publishes_three_repos_that_load_without_the_package(fake_hub, tmp_path):
    out = tmp_path / "release"
    assert release_main(*SMALL, "--repo-id", "user/bootleg-micro", "--out", out, "--push") == 0
    record = check_release_folder(out)
    assert record["pushed"] and set(fake_hub.repos) == set(REPOS.values())
    for kind, repo in record["repos"].items():
        files = fake_hub.repos[repo["repo_id"]].files()
        assert set(files) == HUB_FILES | {".gitattributes"} and fake_hub.repos[repo["repo_id"]].branches["main"] == \
            repo["commit"]
        assert json.loads(files["config.json"])["auto_map"] == AUTO_MAP
        assert files["README.md"] == (out / repo["folder"] / "README.md").read_bytes()

    # trust_remote_code in a process that cannot import bootleg_hf: the encoder (and the task models) load from the
    # Hub repos and compute what the exported folders compute here
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    jobs = {REPOS["encoder"]: ("AutoModel", REPOS["encoder"]),
            REPOS["classifier"]: ("AutoModelForImageClassification", REPOS["classifier"]),
            REPOS["segmenter"]: ("AutoModelForSemanticSegmentation", REPOS["segmenter"])}
    got = outputs_without_package(jobs, pixels, tmp_path, hub_env(fake_hub.url, tmp_path / "child_home"))
    with torch.no_grad():
        want = {REPOS["encoder"]: BootlegModel.from_pretrained(out / "models" / "encoder").eval()(pixels)
                .last_hidden_state,
                REPOS["classifier"]: AutoModelForImageClassification.from_pretrained(out / "models" / "classifier")
                .eval()(pixels).logits,
                REPOS["segmenter"]: AutoModelForSemanticSegmentation.from_pretrained(out / "models" / "segmenter")
                .eval()(pixels).logits}
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=0)


@pytest.mark.parametrize("args, message", [
    (["--repo-id", "user/a..b"], "invalid Hub repo id 'user/a..b'"),
    (["--repo-id", "user/x", "--classifier-repo-id", "user/x"], "distinct repo ids"),
    (["--repo-id", "user/x", "--push"], "no Hugging Face token"),
])
def test_bad_requests_are_refused_before_any_work(fake_hub, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.delenv("HF_TOKEN")
    assert release_main(*SMALL, "--out", tmp_path / "release", *args) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "release").exists() and fake_hub.requests == []


@pytest.mark.parametrize("args, protocol, epochs", [([], "quick", None), (["--seg-protocol", "paper"], "paper", None),
                                                    (["--seg-protocol", "paper", "--seg-epochs", "3"], "paper", 3)])
def test_release_passes_the_segmentation_protocol_on(monkeypatch, tmp_path, args, protocol, epochs):
    """`bootleg-release --seg-protocol` chooses how Lin / Blk train (the protocol's epochs unless --seg-epochs)."""
    import bootleg_hf.release

    seen = {}
    monkeypatch.setattr(bootleg_hf.release, "run_release", lambda s: seen.setdefault("settings", s))
    assert release_cli(["--repo-id", "user/x", "--out", str(tmp_path / "r"), *args]) == 0
    segmentation = seen["settings"].segmentation
    assert segmentation.protocol == protocol and segmentation.epochs == epochs
    assert segmentation.head_training()["epochs"] == (epochs or {"quick": 40, "paper": 128}[protocol])
