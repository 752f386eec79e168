"""Model folders: loading an encoder from any Bootleg folder, saving inference folders, exporting checkpoints.

A `BootlegForPretraining` folder (the Trainer's output or one of its `checkpoint-N`) holds the teacher (`bootleg.*`),
the student (`student.*`), the predictor and, in checkpoints, optimizer/RNG pickles. `export_pretrained` writes only
what inference needs: `config.json` (architectures = the exported class), `model.safetensors` and the image
processor config — an encoder (`BootlegModel`), or with a trained probe / segmentation head attached a
`BootlegForImageClassification` / `BootlegForSemanticSegmentation`. Weights are read from safetensors only.

Nothing is lost on the way (docs/design.md §11): folders are written atomically (`replacing_folder`), a non-empty one
is replaced only on request, never an input of the same command, and non-finite weights are never written.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import BaseImageProcessor, PreTrainedModel

from .configuration_bootleg import BootlegConfig
from .conversion import KeyMismatchError, check_keys
from .image_processing_bootleg import default_image_processor
from .modeling_bootleg import BootlegModel
from .modeling_bootleg_heads import (
    BootlegForImageClassification,
    BootlegForSemanticSegmentation,
    upgrade_segmentation_keys,
)
from .modeling_bootleg_pretraining import BootlegForPretraining

ENCODER_PREFIXES = {"teacher": "bootleg.", "student": "student."}


def read_safetensors_folder(folder: str | os.PathLike, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a `save_pretrained` folder (single file or sharded index) whose names start with `prefix`,
    with the prefix removed."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" (found {pickles}; re-save with save_pretrained(safe_serialization=True))" if pickles else ""
        raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {folder}{hint}")
    out = {}
    for name in files:
        with safe_open(folder / name, framework="pt") as f:
            out.update({k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
    return out


def random_init(config: BootlegConfig, seed: int = 0) -> BootlegModel:
    """A freshly initialised `BootlegModel` of `config`'s architecture (a copy of it), seeded with `seed` (through
    torch's global generator, as every model init)."""
    torch.manual_seed(seed)
    return BootlegModel(copy.deepcopy(config))


def random_encoder(spec: str) -> BootlegModel:
    """`random:<preset>[:seed]` → a freshly initialised `BootlegModel` (seed 0 unless given): the baseline that every
    trained encoder is compared with."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] != "random" or not parts[1]:
        raise ValueError(f"expected random:<preset>[:seed], got {spec!r}")
    return random_init(BootlegConfig.from_preset(parts[1]), int(parts[2]) if len(parts) == 3 else 0)


def load_encoder(source: str | os.PathLike | BootlegModel, weights: str = "teacher") -> BootlegModel:
    """A Bootleg encoder in eval mode from `source`: a `BootlegModel` (returned as it is), `random:<preset>[:seed]`, or
    a folder / Hub id of any Bootleg model.

    From a `BootlegForPretraining` folder, `weights="teacher"` (default) gives the EMA teacher, the weights the paper
    evaluates, and `"student"` the student; an encoder or task-model folder gives its encoder (`weights="teacher"`
    only). Every encoder weight must come from the folder (`KeyMismatchError` otherwise), so a wrong folder never
    silently yields a random encoder.
    """
    if weights not in ENCODER_PREFIXES:
        raise ValueError(f"weights must be one of {sorted(ENCODER_PREFIXES)}, got {weights!r}")
    if isinstance(source, BootlegModel):
        return source.eval()
    source = os.fspath(source)
    if source.startswith("random:"):
        return random_encoder(source).eval()
    config = BootlegConfig.from_pretrained(source)
    if weights == "student":
        if "BootlegForPretraining" not in (config.architectures or []):
            raise ValueError(f"{source} is not a BootlegForPretraining folder (architectures={config.architectures}): "
                             "only pretraining checkpoints hold a student")
        state = read_safetensors_folder(source, ENCODER_PREFIXES["student"])
        config.architectures = ["BootlegModel"]
        model = BootlegModel(config)
        check_keys(state, model.state_dict(), f"student encoder of {source} → BootlegModel")
        model.load_state_dict(state)
        return model.eval()
    model, info = BootlegModel.from_pretrained(source, output_loading_info=True)
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise KeyMismatchError(f"{source}: the folder lacks {len(missing)} encoder weights (e.g. {missing[:3]}); is it "
                               "a Bootleg encoder, task-model or pretraining folder?")
    return model.eval()


def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], what: str, error: type[Exception] = ValueError) -> None:
    """Raise `error` naming the first floating tensor of `(name, tensor)` pairs that holds a NaN or an infinity:
    no save, export or publish writes such weights."""
    for name, tensor in tensors:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise error(f"{what}: tensor {name!r} holds non-finite values (NaN or inf); refusing to write it")


def check_output(out: str | os.PathLike, overwrite: bool = False, inputs: Iterable[Any] = (),
                 error: type[Exception] = ValueError) -> None:
    """Refuse an output folder whose writing would destroy data: one that is, contains or lies inside a local
    `inputs` path (always), an existing file, or a non-empty folder unless `overwrite`."""
    target = Path(out).resolve()
    for source in inputs:  # Hub ids, `random:…` specs and in-memory models are no local paths
        if isinstance(source, (str, os.PathLike)) and Path(source).exists():
            resolved = Path(source).resolve()
            if target.is_relative_to(resolved) or resolved.is_relative_to(target):
                raise error(f"the output {out} and the input {source} overlap (one is or lies inside the other): "
                            "writing the output would alter or delete the input; choose another output folder")
    if target.exists() and not target.is_dir():
        raise error(f"{out} exists and is not a folder")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise error(f"{out} exists and is not empty (pass overwrite=True / --overwrite to replace it)")


@contextmanager
def replacing_folder(out: str | os.PathLike, overwrite: bool = False,
                     error: type[Exception] = ValueError) -> Iterator[Path]:
    """Write the folder `out` atomically: yields a new empty sibling folder to write into, which takes `out`'s place
    by renames once the block succeeds (a replaced folder is deleted only then) and is deleted if it fails, so a crash
    never leaves a half-written `out`. Refuses what `check_output` refuses."""
    out = Path(out).resolve()  # a real name and parent even for "." or "x/.."
    check_output(out, overwrite, error=error)
    out.parent.mkdir(parents=True, exist_ok=True)
    build = out.parent / f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    old = build.with_suffix(".old")
    build.mkdir()
    try:
        yield build
        if out.exists():
            out.rename(old)
        try:
            build.rename(out)
        except OSError:
            if old.exists():
                old.rename(out)
            raise
    finally:
        shutil.rmtree(build, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def save_model_folder(model: PreTrainedModel, out: str | os.PathLike, processor: BaseImageProcessor | None = None,
                      *, overwrite: bool = False) -> Path:
    """`save_pretrained` (safetensors) plus an image processor config (default: `default_image_processor`), so
    `AutoModel…from_pretrained` and `pipeline(...)` load the folder directly; returns the folder.

    Written atomically (`replacing_folder`): a non-empty `out` is replaced only with `overwrite=True`. A model with a
    non-finite tensor is refused (`ValueError` naming it) before anything is written.
    """
    check_finite(model.state_dict().items(), f"{type(model).__name__} not saved to {out}")
    with replacing_folder(out, overwrite) as build:
        model.save_pretrained(build)
        (processor or default_image_processor(model.config, type(model).__name__)).save_pretrained(build)
    return Path(out)


def read_labels(labels: str | os.PathLike | list[str]) -> list[str]:
    """Class names from a list, a JSON file (list, or `{index: name}` such as `id2label`) or a text file (one per
    line)."""
    if not isinstance(labels, (str, os.PathLike)):
        return [str(x) for x in labels]
    text = Path(labels).read_text()
    if str(labels).endswith(".json"):
        data = json.loads(text)
        return [str(data[k]) for k in sorted(data, key=int)] if isinstance(data, dict) else [str(x) for x in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_head(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A trained head file's state dict and metadata (`bootleg-probe` / `bootleg-segment` record the head's kind,
    class names and, for segmentation, the input size there)."""
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def export_pretrained(checkpoint: str | os.PathLike, out: str | os.PathLike, student: bool = False,
                      probe_head: str | os.PathLike | None = None, probe_type: str | None = None,
                      segmentation_head: str | os.PathLike | None = None, segmentation_type: str | None = None,
                      labels: str | os.PathLike | list[str] | None = None, overwrite: bool = False) -> Path:
    """Pretraining (or encoder) folder → inference folder: the encoder (teacher weights unless `student`), or with a
    trained head (a safetensors state dict of the head module, as `bootleg-probe` and `bootleg-segment` write them
    under `heads/`) a classification (`probe_head`) or segmentation (`segmentation_head`) model.

    The head's type (`probe_type` / `segmentation_type`) and class names (`labels`) default to what the head file's
    metadata records, else the config's type; a segmentation head also takes its input size and ignored label from
    there, so the exported model computes the logits the head was evaluated with (its processor resizes to that size).
    Segmentation heads saved by earlier versions are read in today's layout (`upgrade_segmentation_keys`).

    `out` may not overlap any input; a non-empty `out` is replaced only with `overwrite=True` (`check_output`).
    """
    if probe_head is not None and segmentation_head is not None:
        raise ValueError("attach a probe head or a segmentation head, not both (one model per folder)")
    check_output(out, overwrite, [checkpoint, probe_head, segmentation_head, labels])
    head = probe_head if probe_head is not None else segmentation_head
    head_state, metadata = read_head(head) if head is not None else ({}, {})
    if head is not None and labels is None and "labels" not in metadata:
        raise ValueError(f"{head} records no class names: pass labels (a list, a JSON or a text file)")
    encoder = load_encoder(checkpoint, "student" if student else "teacher")
    if head is None:
        return save_model_folder(encoder, out, overwrite=overwrite)
    id2label = read_labels(labels) if labels is not None else json.loads(metadata["labels"])
    if probe_head is not None:
        model = BootlegForImageClassification.from_encoder(
            encoder, id2label=id2label,
            probe_type=probe_type or metadata.get("probe_type") or encoder.config.probe_type)
    else:
        kind = segmentation_type or metadata.get("segmentation_head") or encoder.config.segmentation_head
        kind, renames = upgrade_segmentation_keys(kind, head_state)  # head files of earlier versions
        head_state = {renames.get(k, k): v for k, v in head_state.items()}
        updates = {"segmentation_head": kind}
        if "image_size" in metadata:  # the size the head was trained and scored at
            updates["image_size"] = int(metadata["image_size"])
        if json.loads(metadata.get("ignore_index", "[]")):
            updates["semantic_loss_ignore_index"] = json.loads(metadata["ignore_index"])[0]
        model = BootlegForSemanticSegmentation.from_encoder(encoder, id2label=id2label, **updates)
    target = getattr(model, model.head_name)
    check_keys(head_state, target.state_dict(), f"head {head} → {type(model).__name__}.{model.head_name}")
    target.load_state_dict(head_state)
    return save_model_folder(model.eval(), out, overwrite=overwrite)


def encoder_copy(model: BootlegForPretraining, weights: str = "teacher") -> BootlegModel:
    """A standalone `BootlegModel` holding a copy of the teacher's (default) or the student's weights, with its own
    config (saving it does not touch the pretraining model's config)."""
    if weights not in ENCODER_PREFIXES:
        raise ValueError(f"weights must be one of {sorted(ENCODER_PREFIXES)}, got {weights!r}")
    config = copy.deepcopy(model.config)
    config.architectures = ["BootlegModel"]
    encoder = BootlegModel(config)
    encoder.load_state_dict((model.student if weights == "student" else model.teacher).state_dict())
    return encoder.eval()
