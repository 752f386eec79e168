"""Hub publishing (docs/design.md §8): a Hub-ready folder from an encoder / classification / segmentation folder, and
its upload.

The folder holds `config.json` with an `auto_map` for every Auto class (so `trust_remote_code=True` users load it
without installing bootleg-hf), the module files `auto_map` needs, safetensors weights only, the image processor
config (a built-in MobileNetV2 processor: no remote code) and a `README.md` model card rendered from the template shipped in
the package (`bootleg_hf/model_cards/`) with `huggingface_hub.ModelCard`, its YAML carrying the measured probe
results in `model-index`.

Also defined here, as what the cards read: the results format that `bootleg-probe` and `bootleg-segment` write
(`bootleg-results/1`, see `read_results`) and the training facts of a pretraining run (`training_facts`).
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
from .image_processing_bootleg import default_image_processor
from .modeling_bootleg_heads import BootlegHeadModel

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATE = PACKAGE_DIR / "model_cards" / "bootleg.md"
# Auto class → "<module>.<class>" inside the published folder (transformers' remote-code convention): every
# inference class, whichever of them the folder holds.
AUTO_MAP = dict(BootlegHeadModel.remote_auto_map)
KINDS = {"BootlegModel": "encoder", "BootlegForImageClassification": "classification",
         "BootlegForSemanticSegmentation": "segmentation"}
PIPELINE_TAGS = {"encoder": "image-feature-extraction", "classification": "image-classification",
                 "segmentation": "image-segmentation"}
TAGS = ["bootleg", "jepa", "self-supervised", "vision", "vit"]
# names that bootleg-hf's data loaders accept (lower case) → (display name, Hub id) for the card's model-index; the
# mosaic segmentation task is built from Fashion-MNIST, so that is the Hub data set it names
DATASET_ALIASES = {"fashion-mnist": ("Fashion-MNIST", FASHION_MNIST_HUB_ID),
                   "fashion_mnist": ("Fashion-MNIST", FASHION_MNIST_HUB_ID),
                   FASHION_MNIST_HUB_ID: ("Fashion-MNIST", FASHION_MNIST_HUB_ID),
                   "mosaic": ("Fashion-MNIST 2×2 mosaics", FASHION_MNIST_HUB_ID),
                   "ilsvrc/imagenet-1k": ("ImageNet-1k", "ILSVRC/imagenet-1k"),
                   "imagenet-1k": ("ImageNet-1k", "ILSVRC/imagenet-1k")}
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
    "linear": "Linear: the final-norm CLS token (mean patch token without CLS) → linear",
}
SEGMENTATION_PROBES = {
    "knn": "kNN: standardised patch features, per-pixel vote of the nearest training patches",
    "lin": "Lin: Segmenter mask transformer with 0 blocks (cosine patch-class masks) → bilinear upsampling",
    "blk": "Blk: Segmenter mask transformer with 1 block → bilinear upsampling",
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


# --------------------------------------------------------------------------------------------- results
RESULTS_FORMAT = "bootleg-results/1"
# section of a results document → (score key of each probe's best point, model-index task type and metric type)
RESULT_SECTIONS = {"classification": ("top1", "image-classification", "accuracy"),
                   "segmentation": ("miou", "image-segmentation", "mean_iou")}


class ResultsError(ValueError):
    """A results document or file cannot be read; the message names it and what is wrong."""


def dataset_fields(dataset: str | Mapping[str, Any], split: str | None = None) -> dict[str, str | None]:
    """`{"name", "type", "split"}` of a data set given by name (`DATASET_ALIASES`, else the name is its Hub id) or as
    such a mapping (either of name and type stands in for the other)."""
    if isinstance(dataset, str):
        name, hub_id = DATASET_ALIASES.get(dataset.lower(), (dataset, dataset))
        return {"name": name, "type": hub_id, "split": split}
    return {"name": dataset.get("name") or dataset["type"], "type": dataset.get("type") or dataset["name"],
            "split": dataset.get("split", split)}


def check_results(document: Mapping[str, Any], source: str = "results") -> dict[str, Any]:
    """`document` as a dict if it is a valid `bootleg-results/1` document (see `read_results`), else `ResultsError`
    naming `source` and the first problem."""
    def fail(problem: str) -> ResultsError:
        return ResultsError(f"{source}: {problem}")

    if document.get("format") != RESULTS_FORMAT:
        raise fail(f"unknown results format {document.get('format')!r} (expected {RESULTS_FORMAT!r})")
    if not any(document.get(name) for name in RESULT_SECTIONS):
        raise fail(f"no results: it needs a {' or '.join(repr(n) for n in RESULT_SECTIONS)} section")
    for name, (key, _, _) in RESULT_SECTIONS.items():
        section = document.get(name)
        if section is None:
            continue
        dataset = section.get("dataset") if isinstance(section, Mapping) else None
        if not (isinstance(dataset, str) or (isinstance(dataset, Mapping) and (dataset.get("name") or
                                                                                dataset.get("type")))):
            raise fail(f"{name}.dataset must be a name or {{'name', 'type', 'split'}}, got {dataset!r}")
        probes = section.get("probes")
        if not isinstance(probes, Mapping) or not probes:
            raise fail(f"{name}.probes must map each probe to its results, got {probes!r}")
        for probe, result in probes.items():
            best = result.get("best") if isinstance(result, Mapping) else None
            value = best.get(key) if isinstance(best, Mapping) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise fail(f"{name}.probes.{probe}.best.{key} must be a finite number (in %), got {value!r}")
    return dict(document)


def results_document(*, classification: Mapping[str, Any] | None = None,
                     segmentation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `bootleg-results/1` document of what `run_probes` (`classification`) and/or `run_segmentation`
    (`segmentation`) returned for one encoder: their `model` / `weights` become the document's `encoder` / `weights`,
    the rest its section, with the data set as `{"name", "type", "split"}`. Results of two encoders are refused."""
    runs = {name: r for name, r in (("classification", classification), ("segmentation", segmentation)) if r}
    encoders = {(str(r.get("model")), r.get("weights") or "teacher") for r in runs.values()}
    if len(encoders) > 1:
        raise ResultsError(f"these results come from different encoders {sorted(encoders)}; one document holds "
                           "one encoder's results")
    encoder, weights = encoders.pop() if encoders else (None, "teacher")
    document: dict[str, Any] = {"format": RESULTS_FORMAT, "encoder": encoder, "weights": weights}
    for name, r in runs.items():
        section = {k: v for k, v in r.items() if k not in ("model", "weights", "split")}
        document[name] = {**section, "dataset": dataset_fields(r.get("dataset", "custom"), r.get("split"))}
    return check_results(document)


def read_results(results: Mapping[str, Any], source: str = "results") -> dict[str, Any]:
    """A `bootleg-results/1` document from `results`, what `bootleg-probe` (`probe_results.json`) and `bootleg-segment`
    (`segment_results.json`) write and `bootleg-publish --probe-results` and the model cards read::

        {"format": "bootleg-results/1",
         "encoder": "runs/micro",               # what was probed: a folder, Hub id or random:<preset>[:seed]
         "weights": "teacher",                  # or "student"
         "classification": {                    # absent when no classification probe ran
             "dataset": {"name": "Fashion-MNIST", "type": "zalando-datasets/fashion_mnist", "split": "test"},
             "probes": {"xblk": {"best": {"top1": 85.5, "lr": 0.002, "weight_decay": 0.001, ...},
                                 "grid": [{"lr": ..., "weight_decay": ..., "top1": ..., "train_loss": ...}, ...]}},
             "best_probe": "xblk", "heads": {"xblk": "heads/xblk.safetensors"}, ...},
         "segmentation": {                      # absent when no segmentation probe ran
             "dataset": {...},
             "probes": {"knn": {"best": {"miou": 40.5, "pixel_accuracy": ..., "metric": "cosine", "k": 10},
                                "grid": [...]},
                        "lin": {"best": {"miou": 44.2, "lr": 0.01, ...}, "grid": [...]}},
             "best_head": "lin", "heads": {"lin": "heads/lin.safetensors"}, ...}}

    Scores are in %; `best` is each probe's best grid point (its score key `top1` or `miou` is required, everything
    else is informative). A hand-written document needs only `format`, one section with its `dataset` (a name such
    as `fashion-mnist`, or the mapping) and each probe's best score. Also accepted: `run_probes` /
    `run_segmentation` return values and the result files of earlier versions (`probes` at the top level), converted
    with `results_document`. Anything else is a `ResultsError` naming `source`.
    """
    if not isinstance(results, Mapping):
        raise ResultsError(f"{source}: expected a JSON object, got {type(results).__name__}")
    if "format" in results:
        return check_results(results, source)
    probes = results.get("probes")
    bests = [p.get("best") for p in probes.values() if isinstance(p, Mapping)] if isinstance(probes, Mapping) else []
    for name, (key, _, _) in RESULT_SECTIONS.items():
        if bests and all(isinstance(best, Mapping) and key in best for best in bests):
            try:
                return results_document(**{name: results})
            except ResultsError as err:
                raise ResultsError(f"{source}: {err}") from None
    raise ResultsError(f"{source} holds no probe results: expected a {RESULTS_FORMAT!r} document as bootleg-probe and "
                       "bootleg-segment write it (see bootleg_hf.publishing.read_results)")


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """The results document in the JSON file `path` (`read_results`); `ResultsError` naming the file otherwise."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultsError(f"cannot read the results file {path}: {err}") from None
    return read_results(data, str(path))


def _documents(probe_results: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    if probe_results is None:
        return []
    return [read_results(r) for r in ([probe_results] if isinstance(probe_results, Mapping) else probe_results)]


# --------------------------------------------------------------------------------------------- training facts
TRAINER_STATE = "trainer_state.json"


def _trainer_state_file(run: Path) -> Path:
    """`run` itself (a trainer_state.json), the run folder's own trainer_state.json, or that of its newest complete
    checkpoint (`run_pretraining` leaves the final state in the last `checkpoint-N`)."""
    from .pretraining import last_complete_checkpoint  # the training stack, only when a run folder is read

    if run.is_file():
        return run
    if (run / TRAINER_STATE).is_file():
        return run / TRAINER_STATE
    checkpoint = last_complete_checkpoint(run) if run.is_dir() else None
    if checkpoint is None:
        raise FileNotFoundError(f"{run} holds no {TRAINER_STATE}, neither itself nor in a checkpoint-N folder: is it a "
                                "pretraining run (bootleg-pretrain --output-dir)?")
    return checkpoint / TRAINER_STATE


def training_facts(run: str | os.PathLike | Mapping[str, Any] | Any,
                   recipe: str | os.PathLike | Mapping[str, Any] | None = None, *, dataset: str | None = None,
                   global_batch_size: int | None = None) -> dict[str, Any]:
    """What a pretraining run did, for `render_card(..., training=...)`.

    `run`: a pretraining run folder (its `trainer_state.json`, else its newest checkpoint's), a `trainer_state.json`
    file, a `transformers.TrainerState` (e.g. `trainer.state`) or its dict. `recipe`: the recipe's name or YAML path
    (its name is reported) or the loaded recipe. `dataset`: what the run trained on (a trainer state does not say).
    `global_batch_size`: images per optimizer step over all processes (`trainer.args.global_batch_size`). Without it,
    a checkpoint's state gives it as per-device batch × processes (one RNG-state file each) × the recipe's gradient
    accumulation steps; failing that, the recipe's `training.global_batch_size` is taken (which `--batch-size`
    overrides may have changed).

    Returns `{"recipe", "dataset", "steps", "epochs", "global_batch_size", "images_seen", "loss_first",
    "loss_first_step", "loss_last", "loss_last_step"}` (the first and last logged loss: the loss curve's end points);
    what cannot be known is None.
    """
    path = _trainer_state_file(Path(run)) if isinstance(run, (str, os.PathLike)) else None
    if path is not None:
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the trainer state {path}: {err}") from None
    else:
        state = run if isinstance(run, Mapping) else vars(run)  # TrainerState is a dataclass
    if isinstance(recipe, Mapping):
        name, recipe_dict = (recipe.get("model") or {}).get("preset"), recipe
    elif recipe is not None:
        from .recipes import load_recipe, recipe_path

        name, recipe_dict = recipe_path(recipe).stem, load_recipe(recipe)
    else:
        name, recipe_dict = None, {}
    training = recipe_dict.get("training") or {}
    batch = global_batch_size
    if batch is None and path is not None and path.parent.name.startswith("checkpoint-") and \
            state.get("train_batch_size"):
        processes = len(list(path.parent.glob("rng_state_*.pth"))) or 1  # a multi-process run saves one per rank
        batch = state["train_batch_size"] * processes * training.get("gradient_accumulation_steps", 1)
    batch = batch or training.get("global_batch_size")
    steps = int(state.get("global_step") or 0)
    losses = [(h["step"], float(h["loss"])) for h in state.get("log_history") or () if "loss" in h and "step" in h]
    return {"recipe": name, "dataset": dataset_fields(dataset)["name"] if dataset else None, "steps": steps,
            "epochs": state.get("epoch"), "global_batch_size": batch, "images_seen": steps * batch if batch else None,
            "loss_first": losses[0][1] if losses else None, "loss_first_step": losses[0][0] if losses else None,
            "loss_last": losses[-1][1] if losses else None, "loss_last_step": losses[-1][0] if losses else None}


# --------------------------------------------------------------------------------------------- model card
def probe_rows(probe_results: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Flat result rows (task, dataset, dataset_type, split, probe, metric, value in % rounded to 0.01, protocol) of
    one or several results documents (`read_results`: a document, or what `run_probes` / `run_segmentation` return),
    one row per probe and section. `protocol` is what the section says it ran (`section_protocol`). Raises
    `ResultsError` for anything that is not such results."""
    rows = []
    for document in _documents(probe_results):
        for name, (key, task, metric) in RESULT_SECTIONS.items():
            section = document.get(name)
            if not section:
                continue
            data = dataset_fields(section["dataset"])
            rows += [dict(task=task, dataset=data["name"], dataset_type=data["type"], split=data["split"],
                          probe=probe, metric=metric, value=round(float(result["best"][key]), 2),
                          protocol=section_protocol(section))
                     for probe, result in section["probes"].items()]
    return rows


def section_protocol(section: Mapping[str, Any]) -> str:
    """How a results section's scores were obtained, as its writer labelled it: the probes' `protocol_label` (e.g.
    "quick protocol (epochs 3 instead of 10)"), a segmentation protocol's name, a fine-tuning run's label, else
    "not stated" (hand-written documents and those of earlier versions)."""
    protocol = section.get("protocol_label") or section.get("protocol")
    if isinstance(protocol, Mapping):
        protocol = protocol.get("name") and f"{protocol['name']} protocol"
    return str(protocol) if protocol else "not stated"


def encoder_weights(probe_results: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> str:
    """Which encoder weights the probes ran on (`teacher` unless the results say otherwise)."""
    documents = _documents(probe_results)
    return documents[0]["weights"] if documents else "teacher"


def eval_results(rows: Iterable[Mapping[str, Any]]) -> list[EvalResult]:
    """`EvalResult`s (→ the card's `model-index`) of `probe_rows`; rows of fine-tuning results (`finetune-*`, from
    `bootleg-finetune`) are named as such, the others as frozen-encoder probes."""
    results = []
    for r in rows:
        task, score = r["task"].split("-")[1], "top-1 accuracy" if r["metric"] == "accuracy" else "mIoU"
        tuned = r["probe"].startswith("finetune-")
        results.append(EvalResult(
            task_type=r["task"], task_name=f"Fine-tuned {task}" if tuned else f"Frozen-encoder {task} probe",
            dataset_type=r["dataset_type"], dataset_name=r["dataset"], dataset_split=r["split"],
            metric_type=r["metric"], metric_value=r["value"],
            metric_name=f"{score} ({r['probe']}, fine-tuned)" if tuned else f"{score} ({r['probe']} probe, frozen)"))
    return results


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
                model_name: str | None = None, training: Mapping[str, Any] | None = None,
                template: Path = TEMPLATE) -> ModelCard:
    """The model card of a built folder (weights and config already there), from the Jinja template.

    `probe_results`: results documents (`read_results`), whose scores go to the card's table and `model-index`.
    `training`: what the pretraining run did (`training_facts`), rendered in the card's "Training" section.
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
        recipe_text=recipe_text, training=dict(training) if training else None,
        finetuning=getattr(config, "finetuning", None) if kind != "encoder" else None,
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
    non-finite weights, `probe_results` that are no results documents (`read_results`).
    """
    source, out = Path(source), Path(out)
    check_repo_id(repo_id)
    check_output(out, overwrite, [source], PublishError)  # before anything is read or written
    try:
        probe_rows(card_kwargs.get("probe_results"))
    except ResultsError as err:
        raise PublishError(f"{err}; nothing was written to {out}") from None
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
            default_image_processor(config, arch).save_pretrained(build)
        render_card(build, config, KINDS[arch], repo_id, **card_kwargs).save(build / "README.md")
        check_no_pickles(build)
    return out


# --------------------------------------------------------------------------------------------- upload
def hub_token(token: str | None = None) -> str:
    """`token`, else `HF_TOKEN` or the stored login (`hf auth login`); `PublishError` when there is none."""
    token = token or get_token()
    if not token:
        raise PublishError("no Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login`")
    return token


def upload(folder: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool = False,
           revision: str | None = None, commit_message: str | None = None) -> CommitInfo:
    """Upload a built folder in one commit (`create_repo(exist_ok=True)`, the branch if missing, `upload_folder`),
    then check that the commit holds every local file. Any failure raises `PublishError`.

    The model card's metadata is validated by the Hub first, as `push_to_hub` does, so a bad card uploads nothing.
    """
    folder = Path(folder)
    check_repo_id(repo_id)
    check_no_pickles(folder)
    api = HfApi(token=hub_token(token))
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
