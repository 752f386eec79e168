"""A release (`bootleg-release`): pretrain from a recipe (or resume the run), measure the teacher with the
classification and segmentation probes, export the encoder, the best classifier and the best segmenter, build their
Hub folders with model cards carrying the measured numbers and the run's training facts, and publish them. Nothing is
uploaded unless `push` is set: the default is a dry run that builds everything and says what would go where.

Every step is the library's own: `run_pretraining`, `run_probes`, `run_segmentation`, `export_pretrained`,
`build_hub_folder`, `upload`. The release folder `out` holds

    pretrain/                              the pretraining run (resumable)
    probes/, segmentation/                 the probes' results, heads and task folders
    models/encoder, classifier, segmenter  the exported inference folders
    hub/encoder, classifier, segmenter     the Hub folders (what is uploaded)
    results.json                           both probes' results in one `bootleg-results/1` document
    release.json                           repo id, folder, files and commit of each Hub folder; the training facts

A non-empty `out` is refused unless `overwrite` (which replaces what a release writes there) or `resume` (which
continues the run in `pretrain/`; the other folders must then be empty, or `overwrite` replaces them too).

Repository ids: the encoder goes to `repo_id` (`org/name`), the classifier to `org/name-<probe data>-cls` and the
segmenter to `org/name-<segmentation data>-seg`, where `<data>` is the data set's short name in lower case
(`fashion-mnist`, `imagenet-1k`, `mosaic`, a folder's name); `classifier_repo_id` / `segmenter_repo_id` choose others.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .checkpoints import check_output, export_pretrained
from .evaluation.classification import ProbeSettings, run_probes
from .evaluation.segmentation import SegmentationSettings, run_segmentation
from .pretraining import PretrainSettings, run_pretraining
from .publishing import (
    REPO_ID,
    build_hub_folder,
    check_repo_id,
    dataset_fields,
    hub_token,
    results_document,
    training_facts,
    upload,
)
from .recipes import recipe_path
from .reports import write_json

RELEASE_FILE = "release.json"
RESULTS_FILE = "results.json"
DERIVED = ("probes", "segmentation", "models", "hub")  # what a release writes besides pretrain/ and the JSON files
KINDS = ("encoder", "classifier", "segmenter")


class ReleaseError(ValueError):
    """The release cannot run as asked (an output folder in the way, a bad repo id, no token to push with)."""


@dataclass
class ReleaseSettings:
    """What `run_release` does. `pretrain`: the run (recipe, overrides, data, budget, seed; its `output_dir`,
    `resume` and `overwrite` are the release's). `probes` / `segmentation`: the probes' settings (`segmentation=None`
    skips segmentation and the segmenter) on `probe_dataset` (default: the pretraining data) / `segmentation_dataset`.
    `weights`: which encoder of the run is measured and released (`teacher`, as in the paper, or `student`). Hub:
    `repo_id` and the optional classifier / segmenter ids, licence, and with `push` the upload (`token`, `private`,
    `revision`)."""

    repo_id: str
    out: str | os.PathLike = "release"
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    probes: ProbeSettings = field(default_factory=ProbeSettings)
    probe_dataset: str | None = None
    segmentation: SegmentationSettings | None = field(default_factory=SegmentationSettings)
    segmentation_dataset: str = "mosaic"
    weights: str = "teacher"
    classifier_repo_id: str | None = None
    segmenter_repo_id: str | None = None
    license: str = "apache-2.0"
    resume: bool = False
    overwrite: bool = False
    push: bool = False
    token: str | None = None
    private: bool = False
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.weights not in ("teacher", "student"):
            raise ReleaseError(f"weights must be 'teacher' or 'student', got {self.weights!r}")


def step(number: int, title: str) -> None:
    """Announce step `number` of the release's five."""
    print(f"\n=== {number}/5 {title} ===", flush=True)


def dataset_slug(dataset: Any) -> str:
    """A data set's short name for repo ids: the last part of a Hub id or path, lower case, runs of other characters
    than letters, digits and dots as `-` (`ILSVRC/imagenet-1k` → `imagenet-1k`); `custom` for in-memory data."""
    if not isinstance(dataset, (str, os.PathLike)):
        return "custom"
    name = Path(os.fspath(dataset).rstrip("/")).name.lower()
    return re.sub(r"[^a-z0-9.]+", "-", name).strip("-.") or "data"


def repo_ids(s: ReleaseSettings) -> dict[str, str]:
    """The checked repo id of each Hub folder of the release (see the module docstring)."""
    probe_data = dataset_slug(s.probe_dataset or s.pretrain.dataset)
    ids = {"encoder": s.repo_id, "classifier": s.classifier_repo_id or f"{s.repo_id}-{probe_data}-cls"}
    if s.segmentation is not None:
        ids["segmenter"] = s.segmenter_repo_id or f"{s.repo_id}-{dataset_slug(s.segmentation_dataset)}-seg"
    for repo_id in ids.values():
        check_repo_id(repo_id)
    if len(set(ids.values())) < len(ids):
        raise ReleaseError(f"the Hub folders need distinct repo ids, got {ids}")
    return ids


def check_release_folder(s: ReleaseSettings) -> None:
    """Refuse, before any work, a release that would overwrite a user's folder (see the module docstring)."""
    out = Path(s.out)
    inputs = [s.pretrain.dataset, s.probe_dataset, s.segmentation_dataset]  # local data folders are never written
    if not s.resume:
        check_output(out, s.overwrite, inputs, ReleaseError)
        return
    for name in DERIVED:
        try:
            check_output(out / name, s.overwrite, inputs, ReleaseError)
        except ReleaseError as err:
            raise ReleaseError(f"{err}; --resume continues the run in {out / 'pretrain'}, the outputs of an earlier "
                               "release are replaced only with --overwrite") from None


def hub_datasets(*datasets: Any) -> list[str]:
    """Hub ids of the data sets (short names resolved, local folders and in-memory data left out), each once."""
    ids = []
    for dataset in datasets:
        if isinstance(dataset, str) and not Path(dataset).exists():
            hub_id = dataset_fields(dataset)["type"]
            if REPO_ID.fullmatch(hub_id) and hub_id not in ids:
                ids.append(hub_id)
    return ids


def recipe_text(recipe: Any) -> str:
    """The recipe as the card quotes it: the YAML file of a name or path, or a loaded recipe dumped as YAML."""
    if isinstance(recipe, dict):
        return yaml.safe_dump(recipe, sort_keys=False)
    return recipe_path(recipe).read_text()


def run_release(s: ReleaseSettings) -> dict[str, Any]:
    """Run the release (see the module docstring) and return its record, also written to `out/release.json`. In a
    multi-process run (torchrun), every process pretrains; the first then measures, exports and publishes alone and
    the others return an empty dict."""
    out = Path(s.out)
    repos = repo_ids(s)
    probe_dataset = s.probe_dataset or s.pretrain.dataset
    primary = int(os.environ.get("RANK", 0)) == 0  # the process that guards and writes the release folder
    if primary:
        check_release_folder(s)
        if s.push:
            hub_token(s.token)  # no token: refused now, not after days of training

    step(1, f"pretraining ({'resumed' if s.resume else 'from scratch'}) into {out / 'pretrain'}")
    run_dir = out / "pretrain"
    trainer = run_pretraining(dataclasses.replace(s.pretrain, output_dir=run_dir, resume="auto" if s.resume else None,
                                                  overwrite=s.overwrite and not s.resume))
    if not primary:
        return {}
    data = s.pretrain.dataset
    facts = training_facts(trainer.state, s.pretrain.recipe, global_batch_size=trainer.args.global_batch_size,
                           dataset=os.fspath(data) if isinstance(data, (str, os.PathLike)) else None)
    facts["overrides"] = list(s.pretrain.overrides)

    step(2, f"probes of the {s.weights} encoder")
    classification = run_probes(str(run_dir), probe_dataset, dataclasses.replace(s.probes, weights=s.weights),
                                out=out / "probes", overwrite=s.overwrite)
    segmentation = None
    if s.segmentation is not None:
        segmentation = run_segmentation(str(run_dir), s.segmentation_dataset,
                                        dataclasses.replace(s.segmentation, weights=s.weights),
                                        out=out / "segmentation", overwrite=s.overwrite)
    document = results_document(classification=classification, segmentation=segmentation)
    write_json(out / RESULTS_FILE, document)

    step(3, "export: encoder, best classifier, best segmenter")
    student = s.weights == "student"
    models = {"encoder": export_pretrained(run_dir, out / "models" / "encoder", student=student,
                                           overwrite=s.overwrite),
              "classifier": export_pretrained(
                  run_dir, out / "models" / "classifier", student=student, overwrite=s.overwrite,
                  probe_head=out / "probes" / classification["heads"][classification["best_probe"]])}
    if segmentation is not None and segmentation.get("best_head"):
        models["segmenter"] = export_pretrained(
            run_dir, out / "models" / "segmenter", student=student, overwrite=s.overwrite,
            segmentation_head=out / "segmentation" / segmentation["heads"][segmentation["best_head"]])

    step(4, "Hub folders with model cards")
    card_results = {"encoder": document,  # each task model's card: its own task's numbers
                    "classifier": {k: v for k, v in document.items() if k != "segmentation"},
                    "segmenter": {k: v for k, v in document.items() if k != "classification"}}
    card_datasets = {"encoder": hub_datasets(s.pretrain.dataset),
                     "classifier": hub_datasets(s.pretrain.dataset, probe_dataset),
                     "segmenter": hub_datasets(s.pretrain.dataset, s.segmentation_dataset)}
    text = recipe_text(s.pretrain.recipe)
    hub = {kind: build_hub_folder(folder, out / "hub" / kind, repos[kind], overwrite=s.overwrite, license=s.license,
                                  datasets=card_datasets[kind], probe_results=card_results[kind], recipe_text=text,
                                  training=facts)
           for kind, folder in models.items()}

    record = {"training": facts, "results": RESULTS_FILE, "pushed": False,
              "repos": {kind: {"repo_id": repos[kind], "folder": str(folder.relative_to(out)),
                               "files": sorted(p.name for p in folder.iterdir()), "commit": None}
                        for kind, folder in hub.items()}}
    write_json(out / RELEASE_FILE, record)
    step(5, "publish" if s.push else "publish (dry run: nothing is uploaded without --push)")
    return upload_release(out, token=s.token, private=s.private, revision=s.revision) if s.push \
        else print_plan(out, record)


def print_plan(out: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Say what would be uploaded where; returns `record`."""
    for kind, repo in record["repos"].items():
        folder = out / repo["folder"]
        size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        print(f"would upload {folder} ({len(repo['files'])} files, {size:.1f} MiB) to "
              f"https://huggingface.co/{repo['repo_id']}: {', '.join(repo['files'])}")
    print(f"dry run: nothing uploaded. Check the folders under {out / 'hub'}, then upload them with "
          f"`bootleg-release --out {out} --upload-only`.")
    return record


def upload_release(out: str | os.PathLike, *, token: str | None = None, private: bool = False,
                   revision: str | None = None) -> dict[str, Any]:
    """Upload the Hub folders that a release (e.g. a dry run) recorded in `out/release.json`, each to its repo (one
    commit per repo, `upload`), and record the commits there; returns the record. A failure raises `PublishError`
    and the commits made before it stay recorded."""
    out = Path(out)
    path = out / RELEASE_FILE
    if not path.is_file():
        raise ReleaseError(f"{out} holds no {RELEASE_FILE}: run the release (without --upload-only) first")
    record = json.loads(path.read_text())
    hub_token(token)
    try:
        for kind, repo in record["repos"].items():
            commit = upload(out / repo["folder"], repo["repo_id"], token=token, private=private, revision=revision,
                            commit_message=f"Bootleg release: {kind}")
            repo["commit"] = commit.oid
            print(f"published {repo['repo_id']} at {commit.oid} ({commit.commit_url})", flush=True)
    finally:
        record["pushed"] = all(repo["commit"] for repo in record["repos"].values())
        write_json(path, record)
    return record


__all__ = ["ReleaseError", "ReleaseSettings", "run_release", "upload_release", "repo_ids", "dataset_slug"]
