"""The paper's evaluation data sets in their official layouts, as `datasets.Dataset` objects the probe tools take.

- **ADE20K** (SceneParsing, the `ADEChallengeData2016` folder): `images/{training,validation}/ADE_*.jpg` with
  `annotations/{training,validation}/ADE_*.png`, uint8 label maps with 0 = other/unlabelled and 1..150 the classes.
  The standard reduce-zero-label makes them 150 classes 0..149 (`ADE20K_CLASSES`) and ignore 255 (0 → 255,
  k → k − 1). The same data from `datasets` (a Hub name or a `DatasetDict` with `image` + `annotation` columns, the
  Hub's scene_parse_150 layout) is reduced the same way.
- **Cityscapes**: `leftImg8bit/{train,val,test}/<city>/<name>_leftImg8bit.png` with
  `gtFine/{train,val,test}/<city>/<name>_gtFine_labelIds.png`, whose 34 official label ids map to the 19 train ids
  (`CITYSCAPES_TRAIN_IDS`, names `CITYSCAPES_CLASSES`; every other value → ignore 255). A split whose `gtFine` folder
  holds `<name>_gtFine_labelTrainIds.png` files (cityscapesScripts' `createTrainIdLabelImgs`) uses those as they are.
- **iNat21-style classification folders**: `<root>/{train,train_mini,val}/<class>/*.jpg`, class folders named
  `00000_Animalia_..._species`; the labels number the class folders of all split folders together in sorted order
  (the numeric prefix for the complete data set), so every split gives a class the same label even when it lacks
  some classes.

The tools name them `ade20k:<folder or Hub name>`, `cityscapes:<folder>` (segmentation: `load_segmentation_split`,
`run_segmentation`, `bootleg-segment`) and `inat21:<folder>` (classification: `load_image_dataset`, `run_probes`,
`bootleg-probe`). Our split names map to each data set's own (`SPLITS`): `train` and `test` (what the probe tools
ask for) are ADE20K's `training` and `validation` and Cityscapes' and iNat21's `train` and `val`, whose labels are
public (the data sets' test labels are not).

Segmentation rows have `image` and `mask` columns (`Image(decode=False)`: files are read when a row is). The stored
mask column is the data set's own label maps; they are relabelled each time a row is read (a `with_transform`),
never stored relabelled, so the reduction happens exactly once whichever way the rows are read, and listing a split
decodes no mask.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import datasets
import numpy as np
from PIL import Image

from ..data import decode_mask

IGNORE_INDEX = 255

# ADE20K SceneParsing's 150 classes in label order (objectInfo150's first name of each class): reduced label i is
# annotation value i + 1.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation", "terrain",
    "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# official label id → train id (cityscapesScripts' labels.py); the other ids, -1 (stored as 255) included, are ignored
CITYSCAPES_TRAIN_IDS: dict[int, int] = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                                        24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

# Our split name (and each data set's own) → the data set's split folder; `ade20k-datasets` is ADE20K from `datasets`.
SPLITS: dict[str, dict[str, str]] = {
    "ade20k": {"train": "training", "training": "training", "test": "validation", "validation": "validation",
               "val": "validation"},
    "ade20k-datasets": {"train": "train", "training": "train", "test": "validation", "validation": "validation",
                        "val": "validation"},
    "cityscapes": {"train": "train", "test": "val", "validation": "val", "val": "val"},
    "inat21": {"train": "train", "train_mini": "train_mini", "test": "val", "validation": "val", "val": "val"},
}
INAT21_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def data_set_split(data_set: str, split: str) -> str:
    """The split folder of `data_set` (a key of `SPLITS`) that our `split` name means, or a ValueError."""
    if split not in SPLITS[data_set]:
        raise ValueError(f"{data_set} has no split {split!r}; choose from {sorted(SPLITS[data_set])}")
    return SPLITS[data_set][split]


# --------------------------------------------------------------------------------------------------------------------
# Relabelling segmentation masks
# --------------------------------------------------------------------------------------------------------------------

INVALID = -1  # a table entry for a value the data set never uses: reading it is an error


def label_table(mapping: Mapping[int, int], others: int = INVALID) -> np.ndarray:
    """A lookup table `[256]` (int16) from 8-bit mask values to labels: `mapping`, every other value → `others`."""
    table = np.full(256, others, dtype=np.int16)
    table[list(mapping)] = list(mapping.values())
    return table


ADE20K_TABLE = label_table({0: IGNORE_INDEX, **{k: k - 1 for k in range(1, len(ADE20K_CLASSES) + 1)}})
CITYSCAPES_LABEL_ID_TABLE = label_table(CITYSCAPES_TRAIN_IDS, others=IGNORE_INDEX)
CITYSCAPES_TRAIN_ID_TABLE = label_table({k: k for k in [*range(len(CITYSCAPES_CLASSES)), IGNORE_INDEX]})


def _mask_name(value: Any) -> str:
    """Where a mask value comes from, for error messages."""
    if isinstance(value, Mapping):
        return value.get("path") or "<in-memory mask>"
    if isinstance(value, Image.Image):
        return getattr(value, "filename", "") or "<in-memory mask>"
    return os.fspath(value)


class RelabelMasks:
    """A `Dataset.with_transform` transform: each `mask` value of a batch (anything `decode_mask` reads) → a PIL "L"
    image of `table[value]` per pixel. A value the table marks `INVALID` (or one outside 0..255) raises a ValueError
    naming the file, the values and `valid` (what the data set's masks hold). Other columns pass unchanged."""

    def __init__(self, table: np.ndarray, valid: str) -> None:
        self.table = table
        self.valid = valid

    def relabel(self, value: Any) -> Image.Image:
        values = np.asarray(decode_mask(value), dtype=np.int64)
        labels = np.where((values >= 0) & (values <= 255), self.table[np.clip(values, 0, 255)], INVALID)
        if (labels == INVALID).any():
            bad = np.unique(values[labels == INVALID]).tolist()
            raise ValueError(f"{_mask_name(value)}: mask values {bad[:10]} are not {self.valid}")
        return Image.fromarray(labels.astype(np.uint8))  # mode L

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if "mask" in batch:  # reading one column passes only that column
            batch["mask"] = [self.relabel(value) for value in batch["mask"]]
        return batch


def relabelled(ds: datasets.Dataset, table: np.ndarray, valid: str) -> datasets.Dataset:
    """`ds` (`image` and `mask` columns: paths or images) with both read lazily (`Image(decode=False)`) and the masks
    relabelled through `table` whenever a row is read (`RelabelMasks`)."""
    for column in ("image", "mask"):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds.with_transform(RelabelMasks(table, valid))


def pair_files(image_dir: Path, image_suffix: str, mask_dir: Path, mask_suffix: str) -> list[tuple[str, str]]:
    """`(image, mask)` paths matched by name: `image_dir/<key><image_suffix>` with `mask_dir/<key><mask_suffix>`,
    `<key>` a path below the folder (e.g. `<city>/<name>`), sorted by key. A file without its partner is a
    FileNotFoundError naming it and the partner's expected path."""
    def by_key(folder: Path, suffix: str) -> dict[str, Path]:
        return {p.relative_to(folder).as_posix()[:-len(suffix)]: p for p in folder.rglob(f"*{suffix}") if p.is_file()}

    images, masks = by_key(image_dir, image_suffix), by_key(mask_dir, mask_suffix)
    if not images:
        raise FileNotFoundError(f"{image_dir}: no images *{image_suffix}")
    unpaired = sorted(images.keys() ^ masks.keys())
    if unpaired:
        key = unpaired[0]
        found, expected = ((images[key], mask_dir / f"{key}{mask_suffix}") if key in images
                           else (masks[key], image_dir / f"{key}{image_suffix}"))
        more = f" ({len(unpaired) - 1} more unpaired files)" if len(unpaired) > 1 else ""
        raise FileNotFoundError(f"{found} has no partner: {expected} does not exist{more}")
    return [(str(images[key]), str(masks[key])) for key in sorted(images)]


def relabelled_files(pairs: list[tuple[str, str]], table: np.ndarray, valid: str) -> datasets.Dataset:
    """`relabelled` rows of `(image, mask)` file paths (`pair_files`)."""
    images, masks = zip(*pairs)
    return relabelled(datasets.Dataset.from_dict({"image": list(images), "mask": list(masks)}), table, valid)


def _require_folders(root: Path, folders: list[str], what: str, layout: str) -> None:
    for folder in folders:
        if not (root / folder).is_dir():
            raise FileNotFoundError(f"{root}: not {what} folder: {folder} is missing (expected {layout})")


# --------------------------------------------------------------------------------------------------------------------
# The data sets
# --------------------------------------------------------------------------------------------------------------------

ADE20K_VALID = "ADE20K labels (0 = other, 1..150)"


def load_ade20k(source: str | os.PathLike | datasets.DatasetDict, split: str = "train") -> datasets.Dataset:
    """ADE20K's `split` (see `SPLITS`) with `image` and `mask` columns, the masks reduced (0 → 255, k → k − 1: 150
    classes 0..149, ignore 255) when read. `source`: the `ADEChallengeData2016` folder, or a Hub dataset name or a
    `DatasetDict` with `image` + `annotation` columns (splits `train` / `validation`)."""
    if isinstance(source, datasets.DatasetDict):
        return _ade20k_from_datasets(source, split, "DatasetDict")
    name = os.fspath(source)
    if not os.path.isdir(name):
        if name.startswith(("/", "./", "../", "~")) or os.path.exists(name):
            raise FileNotFoundError(f"{name}: not an ADEChallengeData2016 folder (not a directory)")
        return _ade20k_from_datasets(datasets.load_dataset(name, split=data_set_split("ade20k-datasets", split)),
                                     split, name)
    root, folder = Path(name), data_set_split("ade20k", split)
    _require_folders(root, [f"images/{folder}", f"annotations/{folder}"], "an ADEChallengeData2016",
                     "images/{training,validation}/ADE_*.jpg and annotations/{training,validation}/ADE_*.png")
    pairs = pair_files(root / "images" / folder, ".jpg", root / "annotations" / folder, ".png")
    return relabelled_files(pairs, ADE20K_TABLE, ADE20K_VALID)


def _ade20k_from_datasets(ds: datasets.Dataset | datasets.DatasetDict, split: str, name: str) -> datasets.Dataset:
    """ADE20K's `split` from `datasets` (`image` + `annotation` columns), as `load_ade20k` returns it."""
    if isinstance(ds, datasets.DatasetDict):
        key = data_set_split("ade20k-datasets", split)
        if key not in ds:
            raise ValueError(f"{name}: no split {key!r} (our {split!r}); splits: {sorted(ds)}")
        ds = ds[key]
    missing = {"image", "annotation"} - set(ds.column_names)
    if missing:
        raise ValueError(f"{name}: ADE20K from `datasets` needs image and annotation columns; {sorted(missing)} "
                         f"missing (columns: {ds.column_names})")
    ds = ds.select_columns(["image", "annotation"]).rename_column("annotation", "mask")
    return relabelled(ds, ADE20K_TABLE, ADE20K_VALID)


CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
CITYSCAPES_TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"


def load_cityscapes(root: str | os.PathLike, split: str = "train") -> datasets.Dataset:
    """Cityscapes' `split` (see `SPLITS`) from its folder with `image` and `mask` columns, the masks as the 19 train
    ids (ignore 255) when read: `*_gtFine_labelIds.png` mapped by `CITYSCAPES_TRAIN_IDS`, or, when the split's
    `gtFine` folder holds `*_gtFine_labelTrainIds.png` files, those as they are (then every image needs one)."""
    root, folder = Path(root), data_set_split("cityscapes", split)
    image_dir, mask_dir = root / "leftImg8bit" / folder, root / "gtFine" / folder
    _require_folders(root, [f"leftImg8bit/{folder}", f"gtFine/{folder}"], "a Cityscapes",
                     f"leftImg8bit/{{train,val}}/<city>/*{CITYSCAPES_IMAGE_SUFFIX} and "
                     f"gtFine/{{train,val}}/<city>/*{CITYSCAPES_LABEL_IDS_SUFFIX}")
    if next(mask_dir.rglob(f"*{CITYSCAPES_TRAIN_IDS_SUFFIX}"), None) is not None:
        suffix, table = CITYSCAPES_TRAIN_IDS_SUFFIX, CITYSCAPES_TRAIN_ID_TABLE
        valid = "Cityscapes train ids (0..18, 255)"
    else:
        suffix, table, valid = CITYSCAPES_LABEL_IDS_SUFFIX, CITYSCAPES_LABEL_ID_TABLE, "Cityscapes label ids (8-bit)"
    return relabelled_files(pair_files(image_dir, CITYSCAPES_IMAGE_SUFFIX, mask_dir, suffix), table, valid)


def inat21_classes(root: str | os.PathLike) -> list[str]:
    """The class folder names of all of `root`'s split folders (train, train_mini, val), sorted: label i is the i-th."""
    root = Path(root)
    folders = [root / split for split in sorted(set(SPLITS["inat21"].values())) if (root / split).is_dir()]
    if not folders:
        raise FileNotFoundError(f"{root}: not an iNat21 folder: none of train/, train_mini/, val/ exists (expected "
                                "<root>/{train,train_mini,val}/<class>/*.jpg)")
    return sorted({d.name for folder in folders for d in folder.iterdir() if d.is_dir()})


def load_inat21(root: str | os.PathLike, split: str = "train") -> datasets.Dataset:
    """An iNat21-style folder's `split` (`train`, `train_mini` or `val`; see `SPLITS`) with `image`
    (`Image(decode=False)`) and `label` (`ClassLabel` over `inat21_classes(root)`, the same for every split) columns,
    the rows in class, then file name order."""
    root, folder = Path(root), data_set_split("inat21", split)
    names = inat21_classes(root)
    if not (root / folder).is_dir():
        raise FileNotFoundError(f"{root}: no {folder}/ split folder (our split {split!r})")
    label = {name: i for i, name in enumerate(names)}
    rows = [(str(path), label[class_dir.name]) for class_dir in sorted((root / folder).iterdir()) if class_dir.is_dir()
            for path in sorted(class_dir.iterdir()) if path.suffix.lower() in INAT21_IMAGE_SUFFIXES]
    if not rows:
        raise FileNotFoundError(f"{root / folder}: no images ({', '.join(INAT21_IMAGE_SUFFIXES)}) in class folders")
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=names)})
    images, labels = zip(*rows)
    return datasets.Dataset.from_dict({"image": list(images), "label": list(labels)}, features=features)


# --------------------------------------------------------------------------------------------------------------------
# Names in the tools
# --------------------------------------------------------------------------------------------------------------------

SEGMENTATION_DATA_SETS = {"ade20k": (load_ade20k, ADE20K_CLASSES), "cityscapes": (load_cityscapes, CITYSCAPES_CLASSES)}
CLASSIFICATION_DATA_SETS = {"inat21": load_inat21}
# `<name>:<location>`; the name has two characters or more (a Windows drive is no prefix) and `//` after the colon is
# a URL, not a prefix
_PREFIXED = re.compile(r"(?P<name>[A-Za-z][\w-]+):(?!//)(?P<location>.+)")


def split_prefix(dataset: str, task: Literal["segmentation", "classification"]) -> tuple[str, str] | None:
    """`"ade20k:/data/ADEChallengeData2016"` → `("ade20k", "/data/ADEChallengeData2016")` for a data set of `task`;
    None for a name without a prefix (a Hub name, an existing path, a URL). A prefix of the other task's data sets
    or an unknown one is a ValueError."""
    match = None if os.path.exists(dataset) else _PREFIXED.fullmatch(dataset)
    if match is None:
        return None
    name = match["name"].lower()
    tasks = {"segmentation": SEGMENTATION_DATA_SETS, "classification": CLASSIFICATION_DATA_SETS}
    if name not in tasks[task]:
        other = next((t for t, data_sets in tasks.items() if name in data_sets), None)
        problem = f"{name} is a {other} data set" if other else f"unknown data-set prefix '{name}:'"
        raise ValueError(f"{dataset}: {problem}; the {task} prefixes are {', '.join(f'{n}:' for n in tasks[task])}")
    return name, match["location"]


@dataclass(frozen=True)
class PaperSegmentation:
    """A paper segmentation data set that the segmentation tools take as they take `"<name>:<source>"`: `name`
    (`ade20k` or `cityscapes`) and `source` (what `load_ade20k` / `load_cityscapes` take: a folder, or for ADE20K a
    Hub name or a `DatasetDict`). `load(split)` gives a split's `image` + `mask` rows with the masks relabelled;
    `label_names` and `ignore_index` say what the labels mean."""

    name: str
    source: str | os.PathLike | datasets.DatasetDict
    ignore_index: ClassVar[int] = IGNORE_INDEX

    def __post_init__(self) -> None:
        if self.name not in SEGMENTATION_DATA_SETS:
            raise ValueError(f"unknown segmentation data set {self.name!r}; choose from {list(SEGMENTATION_DATA_SETS)}")

    @property
    def label_names(self) -> list[str]:
        return list(SEGMENTATION_DATA_SETS[self.name][1])

    def load(self, split: str) -> datasets.Dataset:
        return SEGMENTATION_DATA_SETS[self.name][0](self.source, split)

    def __str__(self) -> str:
        source = os.fspath(self.source) if isinstance(self.source, (str, os.PathLike)) else "custom"
        return f"{self.name}:{source}"


def paper_segmentation(dataset: Any) -> PaperSegmentation | None:
    """`dataset` as a paper segmentation data set: a `PaperSegmentation` as it is, `"ade20k:…"` / `"cityscapes:…"`
    parsed (`split_prefix`), None for anything else."""
    if isinstance(dataset, PaperSegmentation):
        return dataset
    prefixed = split_prefix(dataset, "segmentation") if isinstance(dataset, str) else None
    return PaperSegmentation(*prefixed) if prefixed else None


def load_paper_classification(name: str, split: str) -> datasets.Dataset | None:
    """The split of `"inat21:<folder>"` (`load_inat21`); None for a name without a prefix (`split_prefix`)."""
    prefixed = split_prefix(name, "classification")
    return CLASSIFICATION_DATA_SETS[prefixed[0]](prefixed[1], split) if prefixed else None


__all__ = ["IGNORE_INDEX", "ADE20K_CLASSES", "CITYSCAPES_CLASSES", "CITYSCAPES_TRAIN_IDS", "SPLITS", "data_set_split",
           "label_table", "RelabelMasks", "relabelled", "pair_files", "relabelled_files", "load_ade20k",
           "load_cityscapes", "inat21_classes", "load_inat21", "split_prefix", "PaperSegmentation",
           "paper_segmentation", "load_paper_classification"]
