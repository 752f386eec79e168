"""Hub publishing (docs/design.md §8): a Hub-ready folder from an encoder / classification / segmentation folder, and
its upload.

The folder holds `config.json` with an `auto_map` for every Auto class (so `trust_remote_code=True` users load it
without installing bootleg-hf), the module files `auto_map` needs, safetensors weights only, the image processor
config (a built-in BEiT processor: no remote code) and a `README.md` model card rendered from the template shipped in
the package (`bootleg_hf/model_cards/`) with `huggingface_hub.ModelCard`, its YAML carrying the measured probe
results in `model-index`.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import CommitInfo, EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import safe_open

from .checkpoints import check_finite, check_output, replacing_folder
from .configuration_bootleg import BootlegConfig
from .data import FASHION_MNIST_HUB_ID
from .image_processing_bootleg import make_image_processor

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATE = PACKAGE_DIR / "model_cards" / "bootleg.md"
# Auto class → "<module>.<class>" inside the published folder (transformers' remote-code convention).
AUTO_MAP = {
    "AutoConfig": "configuration_bootleg.BootlegConfig",
    "AutoModel": "modeling_bootleg.BootlegModel",
    "AutoBackbone": "modeling_bootleg.BootlegBackbone",
    "AutoModelForImageClassification": "modeling_bootleg_heads.BootlegForImageClassification",
    "AutoModelForSemanticSegmentation": "modeling_bootleg_heads.BootlegForSemanticSegmentation",
}
KINDS = {"BootlegModel": "encoder", "BootlegForImageClassification": "classification",
         "BootlegForSemanticSegmentation": "segmentation"}
PIPELINE_TAGS = {"encoder": "image-feature-extraction", "classification": "image-classification",
                 "segmentation": "image-segmentation"}
TAGS = ["bootleg", "jepa", "self-supervised", "vision", "vit"]
# short names that bootleg-hf's data loaders accept → (display name, Hub id) for the card's model-index
DATASET_ALIASES = {"fashion-mnist": ("Fashion-MNIST", FASHION_MNIST_HUB_ID),
                   "fashion_mnist": ("Fashion-MNIST", FASHION_MNIST_HUB_ID)}
# What remote code may import besides the standard library: what loading a transformers model needs anyway.
REMOTE_CODE_PACKAGES = {"torch", "transformers", "huggingface_hub", "safetensors", "numpy", "PIL"}
REPO_ID_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"  # the Hub's rule for a user, org or repo name
REPO_ID = re.compile(rf"{REPO_ID_PART}/{REPO_ID_PART}")
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".tar", ".npy", ".npz"}
WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json")
CLASSIFICATION_PROBES = {
    "patch": "Patch: mean patch token → BatchNorm (no affine) → linear",
    "cls": "CLS: CLS token → LayerNorm (no affine) → linear",
    "xattn": "X-Attn: one learned query cross-attending over all output tokens → linear",
    "xblk": "X-Blk: X-Attn + residual MLP block → linear",
}
SEGMENTATION_PROBES = {
    "knn": "kNN: standardised patch features, per-pixel vote of the nearest training patches",
    "lin": "Lin: linear per patch → bilinear upsampling",
    "blk": "Blk: one-block Segmenter mask transformer",
}


class RemoteCodeError(RuntimeError):
    """A module file needed by `auto_map` cannot run on a machine without bootleg-hf."""


class PublishError(RuntimeError):
    """Building or uploading the Hub folder failed; nothing may be reported as published."""


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a valid Hub model id `namespace/name`, else `PublishError` saying why: each part 1–96
    ASCII letters, digits, `.`, `_` or `-`, neither starting nor ending with `.` or `-`, without `--` or `..`, the
    name not ending in `.git` (`huggingface_hub.utils.validate_repo_id`, which also accepts a bare name and
    non-ASCII letters, plus those two rules)."""
    try:
        validate_repo_id(repo_id)
        if not REPO_ID.fullmatch(repo_id):
            raise HFValidationError("expected namespace/name, each part of ASCII letters, digits, '.', '_' or '-'")
    except HFValidationError as err:
        raise PublishError(f"invalid Hub repo id {repo_id!r}: {err}") from None
    return repo_id


# --------------------------------------------------------------------------------------------- remote code
def module_imports(path: Path) -> tuple[set[str], set[str]]:
    """(absolute top-level packages, sibling modules imported relatively) of a module file, anywhere in the file.

    Raises `RemoteCodeError` for relative imports that transformers' remote-code loader cannot follow (parent
    packages, `from . import x`): it copies only `from .module import …` siblings.
    """
    absolute, relative = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                absolute.add(node.module.split(".")[0])
            elif node.level == 1 and node.module and "." not in node.module:
                relative.add(node.module)
            else:
                raise RemoteCodeError(f"{path.name}: relative import '{'.' * node.level}{node.module or ''}' cannot "
                                      "be followed by transformers' remote code (only 'from .module import …')")
    return absolute, relative


def remote_code_files(modules: Iterable[str], package_dir: Path = PACKAGE_DIR) -> list[str]:
    """File names of `modules` plus everything they import relatively, checked to run without bootleg-hf.

    Raises `RemoteCodeError` naming the file and import when a module imports `bootleg_hf` absolutely, needs a package
    beyond `REMOTE_CODE_PACKAGES` (e.g. datasets, torchvision, timm), or imports a sibling that does not exist.
    """
    todo, seen = list(modules), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = package_dir / f"{name}.py"
        if not path.is_file():
            raise RemoteCodeError(f"remote code needs {path.name}, which does not exist in {package_dir}")
        seen.add(name)
        absolute, relative = module_imports(path)
        extra = sorted(absolute - REMOTE_CODE_PACKAGES - set(sys.stdlib_module_names))
        if extra:
            raise RemoteCodeError(f"{path.name} imports {extra}: Hub users loading with trust_remote_code=True "
                                  f"would need them (allowed: the standard library and {sorted(REMOTE_CODE_PACKAGES)})")
        todo.extend(relative)
    return sorted(f"{name}.py" for name in seen)


# --------------------------------------------------------------------------------------------- model card
def _dataset_fields(dataset: str | Mapping[str, Any], split: str | None = None) -> dict[str, str | None]:
    if isinstance(dataset, str):
        name, hub_id = DATASET_ALIASES.get(dataset.lower(), (dataset, dataset))
        return {"name": name, "type": hub_id, "split": split}
    return {"name": dataset.get("name") or dataset["type"], "type": dataset.get("type") or dataset["name"],
            "split": dataset.get("split", split)}


def _score(value: float | Mapping[str, float], keys: tuple[str, ...]) -> float:
    if isinstance(value, Mapping):
        value = next(value[k] for k in keys if k in value)
    return round(float(value), 2)


def _section_rows(section: Mapping[str, Any], task: str, metric: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    data = _dataset_fields(section["dataset"], section.get("split"))
    return [dict(task=task, dataset=data["name"], dataset_type=data["type"], split=data["split"], probe=probe,
                 metric=metric, value=_score(value, keys)) for probe, value in section["results"].items()]


def probe_rows(probe_results: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Flat result rows (task, dataset, split, probe, metric, value in %) from one or several probe-results dicts.

    Accepted: `training/probe.py`'s `probe_results.json` (`{"dataset": ..., "weights": ..., "probes": {type:
    {"best": {"top1": ...}}}}`), or this simple format::

        {"dataset": {"name": "ImageNet-1k", "type": "ILSVRC/imagenet-1k", "split": "validation"} | "name",
         "encoder": "teacher",
         "results": {"patch": {"top1": 69.8}, "cls": {"top1": 70.4}, "xblk": 75.3},
         "segmentation": {"dataset": ..., "results": {"knn": {"miou": 23.5}, "lin": {"miou": 26.6}}}}

    A dataset given as a string is looked up in `DATASET_ALIASES` (e.g. `fashion-mnist`), else used as its Hub id.
    """
    if probe_results is None:
        return []
    rows = []
    for results in [probe_results] if isinstance(probe_results, Mapping) else probe_results:
        if "probes" in results:  # training/probe.py
            results = {**results, "results": {k: v["best"]["top1"] for k, v in results["probes"].items()}}
        if results.get("results"):
            rows += _section_rows(results, "image-classification", "accuracy", ("top1", "accuracy"))
        if (results.get("segmentation") or {}).get("results"):
            rows += _section_rows(results["segmentation"], "image-segmentation", "mean_iou", ("miou", "mean_iou"))
    return rows


def encoder_weights(probe_results: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> str:
    """Which encoder the probes ran on (`teacher` unless the results say otherwise)."""
    first = probe_results if isinstance(probe_results, Mapping) else (probe_results or [{}])[0]
    return first.get("encoder") or first.get("weights") or "teacher"


def eval_results(rows: Iterable[Mapping[str, Any]]) -> list[EvalResult]:
    """`EvalResult`s (→ the card's `model-index`) of `probe_rows`."""
    return [EvalResult(
        task_type=r["task"], task_name=f"Frozen-encoder {r['task'].split('-')[1]} probe",
        dataset_type=r["dataset_type"], dataset_name=r["dataset"], dataset_split=r["split"], metric_type=r["metric"], metric_value=r["value"],
        metric_name=f"{'top-1 accuracy' if r['metric'] == 'accuracy' else 'mIoU'} ({r['probe']} probe, frozen)")
        for r in rows]


def backbone_indices(depth: int) -> list[int]:
    """Four evenly spaced blocks ending with the last (all blocks when there are at most four)."""
    return list(range(1, depth + 1)) if depth <= 4 else [depth // 4, depth // 2, 3 * depth // 4, depth]


def _parameter_count(folder: Path) -> int:
    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                total += math.prod(f.get_slice(key).get_shape())
    return total


def render_card(folder: Path, config: BootlegConfig, kind: str, repo_id: str, *, license: str = "apache-2.0",
                datasets: Iterable[str] = (),
                probe_results: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
                recipe_text: str | None = None, base_model: str | None = None, converted: bool = False,
                model_name: str | None = None, template: Path = TEMPLATE) -> ModelCard:
    """The model card of a built folder (weights and config already there), from the Jinja template.

    `converted`: the weights are `base_model`'s converted to Bootleg's classes (e.g. Meta's I-JEPA), so the card
    credits that model instead of describing Bootleg pretraining.
    """
    if converted and not base_model:
        raise PublishError("a converted model needs base_model (the Hub id of the original weights)")
    rows = probe_rows(probe_results)
    results = eval_results(rows)
    model_name = model_name or repo_id.split("/")[-1]
    card_data = ModelCardData(
        library_name="transformers", pipeline_tag=PIPELINE_TAGS[kind], license=license,
        datasets=list(datasets) or None, tags=TAGS, base_model=base_model,
        model_name=model_name if results else None, eval_results=results or None)  # the name titles model-index
    labels = [config.id2label[i] for i in sorted(config.id2label)] if kind == "classification" else []
    prefix = ["CLS"] * config.use_cls_token + [f"REG×{config.num_register_tokens}"] * bool(config.num_register_tokens)
    token_layout = "[" + ", ".join([*prefix, "patches"]) + "]"
    head_description = {"classification": CLASSIFICATION_PROBES.get(config.probe_type, ""),
                        "segmentation": SEGMENTATION_PROBES.get(config.segmentation_head, "")}.get(kind, "")
    return ModelCard.from_template(
        card_data, template_path=str(template), kind=kind, repo_id=repo_id, config=config, model_name=model_name,
        converted=converted, token_layout=token_layout,
        num_parameters=_parameter_count(folder), rows=rows, labels=labels, head_description=head_description,
        recipe_text=recipe_text,
        backbone_indices=backbone_indices(config.num_hidden_layers),
        probe_protocol={p: t for p, t in {**CLASSIFICATION_PROBES, **SEGMENTATION_PROBES}.items()
                        if p in {r["probe"] for r in rows}},
        encoder_weights=encoder_weights(probe_results))


# --------------------------------------------------------------------------------------------- folder
def check_no_pickles(folder: Path) -> None:
    """Refuse any file a loader could unpickle: the Hub folder carries safetensors only."""
    bad = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if bad:
        raise PublishError(f"{folder} contains pickle-based files {bad}; publish safetensors only")


def safetensors_items(paths: Iterable[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """`("file:name", tensor)` for every tensor of the safetensors files `paths`, read one at a time."""
    for path in paths:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                yield f"{path.name}:{key}", f.get_tensor(key)


def build_hub_folder(source: str | os.PathLike, out: str | os.PathLike, repo_id: str, *, overwrite: bool = False,
                     **card_kwargs: Any) -> Path:
    """Write the Hub folder for `source` (a `BootlegModel`, `BootlegForImageClassification` or
    `BootlegForSemanticSegmentation` folder from `save_pretrained`) into `out` and return it.

    Only safetensors weights, `config.json` and the processor config are taken from `source` (pickles such as
    `pytorch_model.bin` or `training_args.bin` are left behind); `card_kwargs` go to `render_card`. Refused with
    `PublishError`: an invalid `repo_id`, an `out` that overlaps `source` or is non-empty without `overwrite`,
    non-finite weights.
    """
    source, out = Path(source), Path(out)
    check_repo_id(repo_id)
    check_output(out, overwrite, [source], PublishError)  # before anything is read or written
    raw = json.loads((source / "config.json").read_text())
    arch = (raw.get("architectures") or ["?"])[0]
    if arch not in KINDS:
        hint = " (run `bootleg-export`, i.e. conversion/export_pretrained.py first)" \
            if arch == "BootlegForPretraining" else ""
        raise PublishError(f"{source} holds a {arch}; publish a folder of one of {sorted(KINDS)}{hint}")
    weights = sorted({p for pattern in WEIGHT_FILES for p in source.glob(pattern)})
    if not any(p.suffix == ".safetensors" for p in weights):
        raise PublishError(f"{source} has no safetensors weights; re-save it with save_pretrained()")
    check_finite(safetensors_items(p for p in weights if p.suffix == ".safetensors"), f"{source} not published",
                 PublishError)
    code_files = remote_code_files({v.split(".")[0] for v in AUTO_MAP.values()})  # before anything is written
    with replacing_folder(out, overwrite, PublishError) as build:  # a failure leaves no partial folder
        for path in weights:
            shutil.copy2(path, build / path.name)
        raw["auto_map"] = dict(AUTO_MAP)
        (build / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
        for name in code_files:
            shutil.copy2(PACKAGE_DIR / name, build / name)
        config = BootlegConfig.from_pretrained(build)
        if (source / "preprocessor_config.json").is_file():
            shutil.copy2(source / "preprocessor_config.json", build / "preprocessor_config.json")
        else:
            make_image_processor(config).save_pretrained(build)
        render_card(build, config, KINDS[arch], repo_id, **card_kwargs).save(build / "README.md")
        check_no_pickles(build)
    return out


# --------------------------------------------------------------------------------------------- upload
def upload(folder: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool = False,
           revision: str | None = None, commit_message: str | None = None) -> CommitInfo:
    """Upload a built folder in one commit (`create_repo(exist_ok=True)`, the branch if missing, `upload_folder`),
    then check that the commit holds every local file. Any failure raises `PublishError`.

    The model card's metadata is validated by the Hub first, as `push_to_hub` does, so a bad card uploads nothing.
    """
    folder = Path(folder)
    check_repo_id(repo_id)
    check_no_pickles(folder)
    token = token or get_token()
    if not token:
        raise PublishError("no Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login`")
    api = HfApi(token=token)
    # Any exception (HTTP error, network, validation) must surface as a failed publish, never a partial success.
    try:
        ModelCard.load(folder / "README.md").validate()
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                   commit_message=commit_message or f"Upload Bootleg model ({folder.name})")
        remote = set(api.list_repo_files(repo_id, revision=commit.oid))
    except Exception as err:
        raise PublishError(f"upload of {folder} to {repo_id} failed: {type(err).__name__}: {err}") from err
    local = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    if not local <= remote:
        raise PublishError(f"the commit {commit.oid} on {repo_id} lacks {sorted(local - remote)}")
    return commit
