"""Pretraining checkpoint → clean inference folders (SPEC §8).

A `BootlegForPretraining` folder (the Trainer's output or one of its `checkpoint-N`) holds the teacher (`bootleg.*`),
the student (`student.*`), the predictor and, in checkpoints, optimizer/RNG pickles. `export_pretrained` writes only
what inference needs: `config.json` (architectures = the exported class), `model.safetensors` and the image
processor config — an encoder (`BootlegModel`), or with a trained probe / segmentation head attached a
`BootlegForImageClassification` / `BootlegForSemanticSegmentation`. Weights are read from safetensors only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from .configuration_bootleg import BootlegConfig
from .conversion import KeyMismatchError, check_keys
from .image_processing_bootleg import make_image_processor
from .modeling_bootleg import BootlegModel
from .modeling_bootleg_heads import BootlegForImageClassification, BootlegForSemanticSegmentation

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


def load_encoder(checkpoint: str | os.PathLike, student: bool = False) -> BootlegModel:
    """The teacher (default) or student encoder of a `BootlegForPretraining` folder as a `BootlegModel`; an encoder
    folder (`BootlegModel`, e.g. a converted I-JEPA checkpoint) is loaded as it is."""
    config = BootlegConfig.from_pretrained(checkpoint)
    if config.architectures == ["BootlegModel"] and not student:
        return BootlegModel.from_pretrained(checkpoint).eval()
    if "BootlegForPretraining" not in (config.architectures or []):
        raise ValueError(f"{checkpoint} is not a BootlegForPretraining folder (architectures={config.architectures})")
    which = "student" if student else "teacher"
    state = read_safetensors_folder(checkpoint, ENCODER_PREFIXES[which])
    if not state:
        raise KeyMismatchError(f"{checkpoint} holds no '{ENCODER_PREFIXES[which]}*' tensors (the {which} encoder)")
    config.architectures = ["BootlegModel"]
    model = BootlegModel(config)
    check_keys(state, model.state_dict(), f"{which} encoder of {checkpoint} → BootlegModel")
    model.load_state_dict(state)
    return model.eval()


def save_inference_folder(model: torch.nn.Module, out: str | os.PathLike) -> Path:
    """`save_pretrained` (safetensors) + the image processor config; returns the folder."""
    out = Path(out)
    model.save_pretrained(out)
    make_image_processor(model.config).save_pretrained(out)
    return out


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


def export_pretrained(checkpoint: str | os.PathLike, out: str | os.PathLike, student: bool = False,
                      probe_head: str | os.PathLike | None = None, probe_type: str | None = None,
                      segmentation_head: str | os.PathLike | None = None, segmentation_type: str | None = None,
                      labels: str | os.PathLike | list[str] | None = None) -> Path:
    """Pretraining (or encoder) folder → inference folder: the encoder (teacher weights unless `student`), or with a
    trained head (a safetensors state dict of the head module) a classification (`probe_head`, `probe_type`: default
    the head file's `probe_type` metadata, else the config's) or segmentation (`segmentation_head`,
    `segmentation_type`) model with the class names `labels`.
    """
    if probe_head is not None and segmentation_head is not None:
        raise ValueError("attach a probe head or a segmentation head, not both (one model per folder)")
    encoder = load_encoder(checkpoint, student)
    head = probe_head if probe_head is not None else segmentation_head
    if head is None:
        return save_inference_folder(encoder, out)
    if labels is None:
        raise ValueError("a head needs its class names: pass labels (a list, a JSON or a text file)")
    with safe_open(head, framework="pt") as f:
        head_state = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata() or {}
    if probe_head is not None:  # training/probe.py records the type in the head file's metadata
        probe_type = probe_type or metadata.get("probe_type") or encoder.config.probe_type
        model = BootlegForImageClassification.from_encoder(encoder, id2label=read_labels(labels), probe_type=probe_type)
    else:
        segmentation_type = segmentation_type or encoder.config.segmentation_head
        model = BootlegForSemanticSegmentation.from_encoder(encoder, id2label=read_labels(labels),
                                                            segmentation_head=segmentation_type)
    target = getattr(model, model.head_name)
    check_keys(head_state, target.state_dict(), f"head {head} → {type(model).__name__}.{model.head_name}")
    target.load_state_dict(head_state)
    return save_inference_folder(model.eval(), out)
