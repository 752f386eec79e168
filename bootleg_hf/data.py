"""Data: the embedded Fashion-MNIST set, a derived segmentation task, image loading and transforms.

Everything here works offline. Image datasets are plain `datasets.Dataset` objects with an ``image``
column (and ``label`` when the data has classes); transforms are callables for
``Dataset.set_transform`` that turn a batch (dict of lists) into ``pixel_values`` tensors.

Unreadable images (docs/design.md §11) raise :class:`CorruptImageError`, whose message names the file; the
transforms either raise it (``on_error="raise"``) or replace the example and count it
(``on_error="skip"``, see :class:`PretrainTransform`).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import os
import random
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch
from PIL import Image, ImageOps
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def _transforms_v2() -> Any:
    """torchvision's transforms, imported on first use: the rest of the package (and its PIL image processor) works
    without torchvision."""
    from torchvision.transforms import v2

    return v2

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FASHION_MNIST_CLASSES: list[str] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MOSAIC_LABELS: list[str] = ["background", *FASHION_MNIST_CLASSES]
# A mosaic pixel belongs to its item when its gray value exceeds this; Fashion-MNIST backgrounds are
# 0 with faint anti-aliasing halos, and 20/255 keeps the halos out without eating dark garments.
MOSAIC_THRESHOLD = 20

IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)

_APT_HINT = "install it with `sudo apt-get install dataset-fashion-mnist`"
_SPLIT_FILES = {"train": "train", "test": "t10k"}


class CorruptImageError(ValueError):
    """An image could not be read or decoded. ``path`` is the file (or a description of the value)."""

    def __init__(self, path: str, reason: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}" + (f": {reason}" if reason else ""))


# --------------------------------------------------------------------------------------------------
# IDX / Fashion-MNIST
# --------------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into an array of shape ``dims`` from its header.

    Header: two zero bytes, a type code (0x08 = uint8, …), the number of dimensions, then one
    big-endian uint32 per dimension. Raises ``ValueError`` naming ``path`` on a bad magic number,
    a truncated/oversized payload or a broken gzip stream.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: corrupt or truncated IDX file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX payload has {len(raw) - header} bytes but the header {dims} needs {expected}"
            " (truncated or corrupt file)"
        )
    # Native byte order so torch/PIL consumers never see big-endian arrays (a no-op for uint8).
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _hub_offline() -> bool:
    truthy = {"1", "on", "yes", "true"}
    if any(os.environ.get(k, "").strip().lower() in truthy for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return True
    # The libraries read the variables at import time; respect that too.
    return bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))


@lru_cache(maxsize=4)
def _fashion_mnist_arrays(split: str, root: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) for one split, from ``root`` or the Hub."""
    if split not in _SPLIT_FILES:
        raise ValueError(f"Fashion-MNIST split must be one of {sorted(_SPLIT_FILES)}, got {split!r}")
    stem = _SPLIT_FILES[split]
    files = [Path(root, f"{stem}-{kind}-ubyte.gz") for kind in ("images-idx3", "labels-idx1")]
    if all(f.is_file() for f in files):
        images, labels = read_idx(files[0]), read_idx(files[1])
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
            raise ValueError(f"{root}: unexpected Fashion-MNIST shapes {images.shape} / {labels.shape}")
        if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
            raise ValueError(f"{files[1]}: label {labels.max()} out of range 0..9")
        labels = labels.astype(np.int64)
        images.flags.writeable = labels.flags.writeable = False  # cached: callers must not mutate
        return images, labels

    missing = ", ".join(str(f) for f in files if not f.is_file())
    message = f"Fashion-MNIST files not found ({missing}); {_APT_HINT}"
    if _hub_offline():
        raise FileNotFoundError(message + " (the Hub fallback is disabled because HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set).")
    logger.warning("%s. Falling back to downloading %r from the Hugging Face Hub.", message, FASHION_MNIST_HUB_ID)
    try:
        hub = datasets.load_dataset(FASHION_MNIST_HUB_ID, split=split)
        images = np.stack([np.asarray(im.convert("L"), dtype=np.uint8) for im in hub["image"]])
        labels = np.array(hub["label"], dtype=np.int64)
        images.flags.writeable = labels.flags.writeable = False
    except Exception as exc:  # any Hub/network failure ends in the same actionable message
        raise FileNotFoundError(f"{message} (the Hub fallback failed: {exc}).") from exc
    return images, labels


def _pgm_bytes(images: np.ndarray) -> list[bytes]:
    # Binary PGM (Netpbm P5) is lossless, PIL-readable and costs only a header per image, so
    # 60k items become an `Image()` column in ~0.3 s instead of several seconds of PNG encoding.
    h, w = images.shape[1:]
    header = f"P5\n{w} {h}\n255\n".encode()
    return [header + im.tobytes() for im in np.ascontiguousarray(images, dtype=np.uint8)]


def _image_column(images: np.ndarray) -> list[dict[str, Any]]:
    return [{"bytes": b, "path": None} for b in _pgm_bytes(images)]


def load_fashion_mnist(split: str = "train", root: str | None = None, limit: int | None = None) -> datasets.Dataset:
    """Fashion-MNIST as a ``datasets.Dataset`` with ``image`` (PIL "L", 28×28) and ``label`` (ClassLabel).

    Reads Debian's ``dataset-fashion-mnist`` files from ``root`` (default :data:`FASHION_MNIST_DIR`);
    when they are missing and the Hub is reachable (no ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``),
    falls back to ``zalando-datasets/fashion_mnist`` with a logged warning; otherwise raises
    ``FileNotFoundError`` with the apt-get hint. ``limit`` keeps the first ``limit`` rows. The images
    are stored as in-memory PGM bytes and decoded lazily on access.
    """
    images, labels = _fashion_mnist_arrays(split, os.path.abspath(root or FASHION_MNIST_DIR))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    features = datasets.Features(
        {"image": datasets.Image(mode="L"), "label": datasets.ClassLabel(names=FASHION_MNIST_CLASSES)}
    )
    return datasets.Dataset.from_dict({"image": _image_column(images), "label": labels}, features=features)


def make_mosaic_segmentation(
    split: str = "train", num_images: int = 1000, seed: int = 0, root: str | None = None
) -> datasets.Dataset:
    """Derived segmentation task: 2×2 mosaics of random Fashion-MNIST items (docs/design.md §9).

    Each row has ``image`` (PIL "L", 56×56: items in raster order top-left, top-right, bottom-left,
    bottom-right), ``mask`` (PIL "L", 56×56, uint8: 0 = background, ``1 + class`` where the item's
    pixel value > :data:`MOSAIC_THRESHOLD`; names in :data:`MOSAIC_LABELS`) and ``source_indices``
    (the four item indices into the Fashion-MNIST ``split``). Items are drawn uniformly with
    replacement by ``numpy.random.default_rng(seed)``: the same arguments give the same dataset.
    """
    images, labels = _fashion_mnist_arrays(split, os.path.abspath(root or FASHION_MNIST_DIR))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(images), size=(num_images, 4))
    # [M, 4, 28, 28] -> [M, 2 (row), 28, 2 (col), 28] -> [M, 56, 56]
    tiles = images[idx].reshape(num_images, 2, 2, 28, 28)
    mosaic = tiles.transpose(0, 1, 3, 2, 4).reshape(num_images, 56, 56)
    tile_class = np.broadcast_to((labels[idx] + 1).reshape(num_images, 2, 2, 1, 1), tiles.shape)
    class_map = tile_class.transpose(0, 1, 3, 2, 4).reshape(num_images, 56, 56)
    mask = np.where(mosaic > MOSAIC_THRESHOLD, class_map, 0).astype(np.uint8)
    features = datasets.Features(
        {
            "image": datasets.Image(mode="L"),
            "mask": datasets.Image(mode="L"),
            "source_indices": datasets.List(datasets.Value("int64")),
        }
    )
    return datasets.Dataset.from_dict(
        {"image": _image_column(mosaic), "mask": _image_column(mask), "source_indices": idx.tolist()},
        features=features,
    )


# --------------------------------------------------------------------------------------------------
# Decoding and mode conversion
# --------------------------------------------------------------------------------------------------


def _to_uint8(a: np.ndarray, kind: Literal["I;16", "I", "F"]) -> np.ndarray:
    """Map a 2-D high-depth array to uint8 keeping its meaning (see :func:`to_rgb`)."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if kind == "I;16" or (kind == "I" and lo >= 0 and 255 < hi <= 65535):
        a = a / 257.0  # full 16-bit range 0..65535 -> 0..255 exactly
    elif kind == "F" and lo >= 0 and hi <= 1.0:
        a = a * 255.0  # float images in [0, 1]
    elif lo < 0 or hi > 255:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)  # unknown range: stretch
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB.

    * Alpha (RGBA, LA, PA, P with transparency, …) is composited over ``background`` (black by
      default) rather than dropped: fully transparent pixels often hold arbitrary colours.
    * 16-bit integer images (``I;16*``) are scaled by 1/257 so 0..65535 maps to 0..255; 32-bit ``I``
      images are treated as 8-bit if their values fit 0..255, as 16-bit if they fit 0..65535, and
      min-max stretched otherwise; ``F`` images in [0, 1] are scaled by 255, in 0..255 kept, else
      min-max stretched (NaN/Inf become 0).
    * CMYK, YCbCr, 1, L, … use PIL's own conversion.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _to_uint8(np.asarray(img), "I;16" if mode.startswith("I;16") else mode)  # type: ignore[arg-type]
        return Image.fromarray(gray).convert("RGB")
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:  # e.g. LAB/HSV, which PIL cannot convert directly
        raise ValueError(f"cannot convert image mode {mode!r} to RGB: {exc}") from exc


def _open_image(value: Any) -> Image.Image:
    """Fully decode ``value`` (see :func:`decode_image`) into a PIL image of its own mode."""
    if isinstance(value, Image.Image):
        where = getattr(value, "filename", "") or f"<PIL image {value.mode} {value.size}>"
        try:
            value.load()  # lazily opened images fail here, not at open time
        except Exception as exc:
            raise CorruptImageError(where, str(exc)) from exc
        return value
    if isinstance(value, np.ndarray):
        return _array_to_image(value)
    if isinstance(value, Mapping):
        path, data = value.get("path"), value.get("bytes")
        where = path or "<in-memory image bytes>"
        source: Any = io.BytesIO(data) if data is not None else path
        if source is None:
            raise CorruptImageError(where, "neither 'bytes' nor 'path' is set")
    elif isinstance(value, (str, os.PathLike)):
        where, source = os.fspath(value), os.fspath(value)
    elif isinstance(value, (bytes, bytearray)):
        where, source = "<in-memory image bytes>", io.BytesIO(value)
    else:
        raise TypeError(f"cannot decode an image from {type(value).__name__}")
    try:
        img = Image.open(source)
        img.load()
        # Camera photos store their rotation in EXIF; apply it so crops see the upright image.
        ImageOps.exif_transpose(img, in_place=True)
        return img
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise CorruptImageError(where, f"{type(exc).__name__}: {exc}") from exc


def _array_to_image(a: np.ndarray) -> Image.Image:
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    # PIL infers the mode from the dtype/shape: uint8 -> L/RGB/RGBA, uint16 -> I;16, float32 -> F.
    if a.ndim == 2:
        if a.dtype not in (np.uint8, np.uint16):
            a = a.astype(np.float32)  # to_rgb scales F images
        return Image.fromarray(np.ascontiguousarray(a))
    if a.ndim == 3 and a.shape[-1] in (3, 4) and a.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(a))
    raise TypeError(f"expected an HW array or an HWC uint8 array with 1/3/4 channels, got {a.dtype} {a.shape}")


def decode_image(value: Any) -> Image.Image:
    """Decode one image into an RGB PIL image.

    ``value``: a PIL image, a ``{"path", "bytes"}`` dict (``datasets.Image(decode=False)`` rows), a
    path, raw encoded bytes, or a numpy array (HW of any numeric dtype, or HWC uint8 with 1/3/4
    channels). Unreadable files raise :class:`CorruptImageError` naming the path.
    """
    img = _open_image(value)
    try:
        return to_rgb(img)
    except Exception as exc:
        raise CorruptImageError(getattr(img, "filename", "") or "<image>", str(exc)) from exc


def decode_mask(value: Any) -> Image.Image:
    """A segmentation label map (PIL image, path or ``{"bytes", "path"}`` dict) as a single-channel image (mode L, P,
    I or I;16) whose pixel values are the labels."""
    if isinstance(value, dict):
        value = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
    img = value if isinstance(value, Image.Image) else Image.open(value)
    if img.mode not in ("L", "P", "I", "I;16"):
        raise ValueError(f"segmentation masks must be single-channel label images, got mode {img.mode}")
    return img


# --------------------------------------------------------------------------------------------------
# Generic image datasets
# --------------------------------------------------------------------------------------------------


def _normalise_columns(ds: datasets.Dataset, image_column: str | None, label_column: str | None, name: str) -> datasets.Dataset:
    feats = ds.features
    if image_column is None:
        image_column = next((c for c, f in feats.items() if isinstance(f, datasets.Image)), None)
        if image_column is None:
            raise ValueError(
                f"{name}: no image column found (features: {dict(feats)}); pass image_column=<name>"
            )
    elif image_column not in feats:
        raise ValueError(f"{name}: image_column {image_column!r} not in columns {list(feats)}")
    if label_column is None:
        label_column = next((c for c, f in feats.items() if isinstance(f, datasets.ClassLabel)), None)
    elif label_column not in feats:
        raise ValueError(f"{name}: label_column {label_column!r} not in columns {list(feats)}")
    renames = {c: t for c, t in ((image_column, "image"), (label_column, "label")) if c is not None and c != t}
    for src, target in renames.items():
        if target in feats and target not in renames:
            raise ValueError(f"{name}: cannot rename {src!r} to {target!r}: a {target!r} column already exists")
    return ds.rename_columns(renames) if renames else ds


SPLIT_NAMES = ("train", "training", "test", "testing", "validation", "valid", "val", "dev", "eval")


def check_image_folder(root: str | os.PathLike) -> None:
    """Raise a `ValueError` for a folder whose labels would be read wrongly: images nested below the class folders
    (`class/sub/x.png` would be labelled `sub`). Layouts: `root/<class>/*` or `root/<split>/<class>/*`."""
    root = Path(root)
    for top in (p for p in root.iterdir() if p.is_dir()):
        classes = [p for p in top.iterdir() if p.is_dir()] if top.name.lower() in SPLIT_NAMES else [top]
        for folder in classes:
            nested = next((p for p in folder.iterdir() if p.is_dir()), None)
            if nested is not None:
                raise ValueError(f"{root}: class folder {folder.relative_to(root)} contains the folder {nested.name}; "
                                 "images must sit directly in root/<class>/ or root/<split>/<class>/ (their labels "
                                 "are the folder names)")


def load_image_dataset(
    name_or_path: str | os.PathLike | datasets.Dataset | datasets.DatasetDict,
    split: str = "train",
    image_column: str | None = None,
    label_column: str | None = None,
    **load_kwargs: Any,
) -> datasets.Dataset:
    """Load any image dataset with an ``image`` column (and ``label`` when a class column exists).

    ``name_or_path``: ``"fashion-mnist"`` (embedded, offline), an existing local directory
    (``imagefolder``: ``dir/<class>/*.png`` or ``dir/<split>/<class>/*.png``), ``"inat21:<dir>"`` (an
    iNat21-style folder, ``dir/{train,train_mini,val}/<class>/*.jpg``, ``split`` ``test`` meaning ``val``; see
    :func:`bootleg_hf.evaluation.datasets_paper.load_inat21`), a ``datasets`` object, or a Hub dataset name
    (``datasets.load_dataset``; ``load_kwargs`` are passed on).
    The image/label columns are detected as the first ``Image`` / ``ClassLabel`` feature unless
    given, and renamed. For folders and Hub data the image column is cast to
    ``Image(decode=False)`` so decoding, and the reporting of corrupt files, happens in the
    transforms (rows hold ``{"path", "bytes"}`` dicts; see :func:`decode_image`).
    """
    if isinstance(name_or_path, datasets.DatasetDict):
        return _normalise_columns(name_or_path[split], image_column, label_column, f"DatasetDict[{split!r}]")
    if isinstance(name_or_path, datasets.Dataset):
        return _normalise_columns(name_or_path, image_column, label_column, "dataset")
    name = os.fspath(name_or_path)
    if name.lower() in ("fashion-mnist", "fashion_mnist"):
        return load_fashion_mnist(split)
    # imported here: the paper's data sets build on this module
    from .evaluation.datasets_paper import load_paper_classification

    paper = load_paper_classification(name, split)
    if paper is not None:
        return paper
    if os.path.isdir(name):
        check_image_folder(name)
        ds = datasets.load_dataset("imagefolder", data_dir=name, split=split, **load_kwargs)
    elif name.startswith(("/", "./", "../", "~")) or os.path.exists(name):
        raise FileNotFoundError(f"{name}: not a directory of images")
    else:
        ds = datasets.load_dataset(name, split=split, **load_kwargs)
    ds = _normalise_columns(ds, image_column, label_column, name)
    if isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image(decode=False))
    return ds


def write_image_folder(dataset: Any, root: str | os.PathLike, n: int | None = None) -> Path:
    """Write the first ``n`` rows of ``dataset`` (``image`` + optional ``label``) as PNG files.

    Layout: ``root/<label name>/<i>.png`` (``/`` in class names becomes ``_``, e.g.
    ``T-shirt_top``); ``root/<i>.png`` when there is no label. Integer labels use the ClassLabel
    names when the dataset has them. Images keep their mode when PNG supports it. Returns ``root``.
    """
    root = Path(root)
    n = len(dataset) if n is None else min(n, len(dataset))
    features = getattr(dataset, "features", None) or {}
    label_feature = features.get("label")
    width = len(str(max(n - 1, 0)))
    for i in range(n):
        row = dataset[i]
        img = _open_image(row["image"])
        if img.mode not in ("1", "L", "LA", "I;16", "P", "RGB", "RGBA"):
            img = to_rgb(img)
        folder = root
        if row.get("label") is not None:
            label = row["label"]
            if isinstance(label_feature, datasets.ClassLabel) and isinstance(label, (int, np.integer)):
                label = label_feature.int2str(int(label))
            name = str(label).replace("/", "_").replace(os.sep, "_")
            if name in ("", ".", ".."):
                raise ValueError(f"label {label!r} of row {i} cannot be a folder name under {root}")
            folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:0{width}d}.png")
    return root


class IndexedDataset(torch.utils.data.Dataset):
    """Wrap a map-style dataset whose items are dicts: add ``"sample_index": i`` to each item and make random
    augmentations reproducible.

    Every fetch (one item, or a batch through ``__getitems__``, which ``DataLoader`` uses and which hands a
    ``datasets`` transform whole batches) runs with torch's, numpy's and Python's RNGs seeded from ``(seed, epoch,
    the sample indices)`` and restored afterwards: a run resumed at any step, with any number of workers, augments
    the data exactly as the uninterrupted run did. ``set_epoch`` must be called before each epoch's iterator (and its
    workers, which copy this object) is created, as for ``BootlegDataCollator``.
    """

    def __init__(self, dataset: Any, index_key: str = "sample_index", seed: int = 0) -> None:
        self.dataset = dataset
        self.index_key = index_key
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def _tag(self, item: Any, index: int) -> dict[str, Any]:
        if not isinstance(item, Mapping):
            raise TypeError(f"IndexedDataset needs dict items, got {type(item).__name__}")
        return {**item, self.index_key: index}

    @contextlib.contextmanager
    def _seeded(self, indices: Sequence[int]):
        words = np.random.SeedSequence([self.seed, self.epoch, *indices]).generate_state(2)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(int(words[0]) << 32 | int(words[1]))  # CPU only
            random.seed(int(words[0]))
            np.random.seed(int(words[1]))
            try:
                yield
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with self._seeded([int(index)]):
            return self._tag(self.dataset[index], int(index))

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        indices = [int(i) for i in indices]
        getitems = getattr(self.dataset, "__getitems__", None)
        with self._seeded(indices):
            items = getitems(indices) if getitems is not None else [self.dataset[i] for i in indices]
        if len(items) != len(indices):
            raise RuntimeError(f"wrapped dataset returned {len(items)} items for {len(indices)} indices")
        return [self._tag(item, i) for item, i in zip(items, indices)]


# --------------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------------


def _uint8_chw(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 tensor [3, H, W] that is a view of the HWC array (channels-last memory): the
    layout torch's uint8 antialiased resize kernels work in, so the crop-and-resize needs no repacking."""
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


class _BatchImageTransform:
    """Shared batch handling and corrupt-image policy for the transforms below.

    Options every transform takes (``**options`` of the subclasses): ``mean``, ``std`` (normalisation, ImageNet's by
    default), ``on_error``, ``image_column``, ``max_skipped``, ``backend``.

    One image goes through three steps, public so that ``bench/bench_input.py`` can time them:
    :func:`decode_image` (PIL, any mode → RGB), :meth:`augment` (the transform's ops → uint8 ``[3, S, S]``) and
    :meth:`normalize` (→ float32, normalised). ``backend="tensor"`` runs the ops on a uint8 tensor (torch's
    antialiased uint8 resize kernels: about 4× faster than PIL's resize, the same random draws, pixels within
    resampling differences of PIL's); ``backend="pil"`` runs them on the PIL image (what the PIL image processors
    saved with model folders do, hence :class:`EvalTransform`'s default).

    ``__call__(batch)`` takes a dict of equal-length lists (what ``Dataset.set_transform`` passes)
    and returns ``pixel_values`` (list of float32 tensors [3, S, S], normalised) plus every other
    column except the image column (``label`` included), row-aligned.

    ``on_error="raise"``: the first unreadable image raises :class:`CorruptImageError` (path in
    the message). ``on_error="skip"``: the unreadable example is *replaced* so the batch keeps its
    size (``datasets`` row access needs exactly one output row per input row): first by the next
    readable example of the same batch (cyclically, so deterministic), else by the last readable
    example this transform decoded in this process (row access passes batches of one); if neither
    exists, :class:`CorruptImageError` is raised. A replacement gets a fresh random augmentation
    and keeps its own label. Every skip increments :attr:`num_skipped` — a counter in shared memory,
    so increments made in ``DataLoader`` worker processes are visible in the parent — and logs a
    warning with the path (once per path per process). ``max_skipped`` turns a flood of bad files
    (e.g. a wrong directory) into an error instead of a quietly degraded run.
    """

    def __init__(
        self,
        ops: list[Any],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        on_error: Literal["skip", "raise"] = "skip",
        image_column: str = "image",
        max_skipped: int | None = None,
        backend: Literal["tensor", "pil"] = "tensor",
    ) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if backend not in ("tensor", "pil"):
            raise ValueError(f"backend must be 'tensor' or 'pil', got {backend!r}")
        self.ops = _transforms_v2().Compose(ops)
        self.backend = backend
        # (x / 255 - mean) / std folded into one scale and one shift of the 0..255 values (computed in float64)
        std64 = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
        self._scale = (1 / (255 * std64)).float()
        self._shift = (torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1) / std64).float()
        self.on_error = on_error
        self.image_column = image_column
        self.max_skipped = max_skipped
        self._skipped = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._warned: set[str] = set()
        self._last_good: tuple[Image.Image, dict[str, Any]] | None = None

    @property
    def num_skipped(self) -> int:
        """Unreadable examples replaced so far (all processes sharing this transform)."""
        return int(self._skipped.item())

    def augment(self, img: Image.Image) -> torch.Tensor:
        """The transform's ops on one decoded RGB image → uint8 tensor [3, S, S] (random ops draw from torch's RNG)."""
        if self.backend == "tensor":
            return self.ops(_uint8_chw(img))
        return _uint8_chw(self.ops(img))

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [3, H, W] of any memory layout → contiguous float32, normalised with ``mean`` / ``std``."""
        out = torch.empty(image.shape, dtype=torch.float32)
        out.copy_(image)  # the conversion and the repacking to the standard layout in one pass
        return out.mul_(self._scale).sub_(self._shift)

    def apply_image(self, value: Any) -> torch.Tensor:
        """Decode and transform one image → float32 tensor [3, S, S]."""
        return self.normalize(self.augment(decode_image(value)))

    def _record_skip(self, err: CorruptImageError) -> None:
        self._skipped += 1  # tensor add in shared memory: visible to the parent process
        total = self.num_skipped
        if err.path not in self._warned:
            self._warned.add(err.path)
            logger.warning("Skipping unreadable image %s (%s); %d skipped so far.", err.path, err.reason, total)
        if self.max_skipped is not None and total > self.max_skipped:
            raise CorruptImageError(err.path, f"{err.reason} — more than max_skipped={self.max_skipped} unreadable images")

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        values = batch[self.image_column]
        others = {k: list(v) for k, v in batch.items() if k != self.image_column}
        decoded: list[Image.Image | None] = []
        errors: list[CorruptImageError | None] = []
        for value in values:
            try:
                decoded.append(decode_image(value))
                errors.append(None)
            except CorruptImageError as err:
                if self.on_error == "raise":
                    raise
                decoded.append(None)
                errors.append(err)
        n = len(decoded)
        good = [i for i, img in enumerate(decoded) if img is not None]
        if good:
            self._last_good = (decoded[good[-1]], {k: v[good[-1]] for k, v in others.items()})
        for i, err in enumerate(errors):
            if err is None:
                continue
            self._record_skip(err)
            donor = next((j for j in ((i + k) % n for k in range(1, n)) if errors[j] is None), None)
            if donor is not None:
                decoded[i] = decoded[donor]
                for k in others:
                    others[k][i] = others[k][donor]
            elif self._last_good is not None:
                decoded[i] = self._last_good[0]
                for k in others:
                    others[k][i] = self._last_good[1].get(k, others[k][i])
            else:
                raise CorruptImageError(err.path, f"{err.reason} (no readable example available to replace it)")
        return self.transform_batch(decoded, others)

    def transform_batch(self, images: list[Image.Image], others: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Decoded RGB images (unreadable ones already replaced) and the other columns → the output batch."""
        return {"pixel_values": [self.normalize(self.augment(img)) for img in images], **others}


class PretrainTransform(_BatchImageTransform):
    """Pretraining augmentation: RandomResizedCrop(image_size, scale; bicubic, antialias) + optional
    horizontal flip + normalise → ``pixel_values`` float32 [3, H, W] (``image_size``: a side or ``(H, W)``).

    Corrupt-image policy (``on_error``, ``max_skipped``, :attr:`num_skipped`): see the base class
    docstring — skipped examples are replaced by another readable example, counted and logged.
    """

    def __init__(self, image_size: int | Sequence[int], scale: tuple[float, float] = (0.35, 1.0), hflip: bool = True,
                 **options: Any) -> None:
        v2 = _transforms_v2()
        size = [int(image_size)] * 2 if isinstance(image_size, (int, np.integer)) else [int(v) for v in image_size]
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop scale must be (low, high) with 0 < low <= high <= 1, got {tuple(scale)}")
        crop = v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        super().__init__([crop] + [v2.RandomHorizontalFlip()] * hflip, **options)


class CenterCrop:
    """Centre crop of a PIL image or a ``[..., H, W]`` tensor to ``size × size`` with the offsets rounded down, as
    transformers' image processors crop (torchvision's ``CenterCrop`` rounds them half-up: one pixel apart for odd
    margins)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        pil = isinstance(img, Image.Image)
        height, width = (img.height, img.width) if pil else img.shape[-2:]
        top, left = (height - self.size) // 2, (width - self.size) // 2
        if pil:
            return img.crop((left, top, left + self.size, top + self.size))
        return img[..., top:top + self.size, left:left + self.size]


class EvalTransform(_BatchImageTransform):
    """Probe evaluation protocol: resize the shorter side to ``round(image_size / crop_fraction)``
    (bicubic, antialias), center-crop ``image_size``, normalise → float32 [3, S, S]; the same pixels as the image
    processor saved with encoder and classifier folders (`bootleg_hf.image_processing_bootleg.make_image_processor`),
    which is why it resizes with PIL by default (``backend="pil"``; ``"tensor"`` is faster and differs by resampling
    rounding)."""

    def __init__(self, image_size: int, crop_fraction: float = 0.875, **options: Any) -> None:
        if not 0 < crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
        options.setdefault("backend", "pil")
        v2 = _transforms_v2()
        resize = max(image_size, round(image_size / crop_fraction))
        super().__init__([v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                          CenterCrop(image_size)], **options)


class ProbeTrainTransform(_BatchImageTransform):
    """Probe training augmentation: RandomResizedCrop(scale, bicubic) + horizontal flip +
    ColorJitter(brightness=contrast=saturation=jitter) + normalise → float32 [3, S, S]."""

    def __init__(self, image_size: int, scale: tuple[float, float] = (0.3, 1.0), jitter: float = 0.4,
                 **options: Any) -> None:
        v2 = _transforms_v2()
        crop = v2.RandomResizedCrop(image_size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        ops = [crop, v2.RandomHorizontalFlip()]
        if jitter > 0:
            ops.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
        super().__init__(ops, **options)


def _resize_labels(labels: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-neighbour resize of a label map `[H, W]` (any integer dtype) to `size × size`, sampling at pixel
    centres (PIL's NEAREST), so labels stay aligned with an antialiased resize of their image."""
    rows, cols = ((torch.arange(size) + 0.5) * (n / size) for n in labels.shape)
    return labels[rows.long().clamp(max=labels.shape[0] - 1)][:, cols.long().clamp(max=labels.shape[1] - 1)]


def _uniform(low: float, high: float) -> float:
    """A draw from U(low, high) by torch's RNG (which ``DataLoader`` seeds per worker)."""
    return float(torch.empty(()).uniform_(low, high))


class SegmentationTrainTransform(_BatchImageTransform):
    """Segmentation-probe training augmentation, joint on each image and its label map (`mask_column`) →
    ``pixel_values`` float32 [3, S, S] and ``labels`` int64 [S, S] (the mask column is consumed).

    1. RandScale: image and label map resized to s·S × s·S, s uniform in ``scale`` (the evaluation's S×S resize,
       scaled; image bicubic, labels nearest neighbour).
    2. Horizontal flip of both with probability 0.5.
    3. Crop: a uniformly placed S×S window of both where the scaled side exceeds S.
    4. Colour jitter of the image only (brightness, contrast and saturation by ``jitter``), then normalisation.
    5. Pad to S×S at the bottom and right where the scaled side is below S: image 0 (the mean colour, as mmseg pads
       normalised images), labels ``ignore_index``.
    6. Cutout: with probability ``cutout`` one rectangle of the image, each side uniform in ``cutout_size`` × S and
       placed uniformly, is set to 0 (the mean colour); its labels are kept (mmseg's ``RandomCutOut`` default), so
       the head learns to label what it has to infer from the context.

    Random draws come from torch's RNG (seeded per ``DataLoader`` worker). Options as the other transforms
    (``mean``, ``std``, ``on_error``, ``image_column``, ``max_skipped``); the backend is always ``tensor``.
    """

    def __init__(self, image_size: int, scale: tuple[float, float], jitter: float, cutout: float,
                 cutout_size: tuple[float, float], ignore_index: int = 255, mask_column: str = "mask",
                 **options: Any) -> None:
        v2 = _transforms_v2()
        super().__init__([v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter)],  # 0: no change
                         **{**options, "backend": "tensor"})
        self.image_size, self.scale, self.cutout, self.cutout_size = image_size, scale, cutout, cutout_size
        self.ignore_index, self.mask_column = ignore_index, mask_column
        self._resize = v2.functional.resize
        self._bicubic = v2.InterpolationMode.BICUBIC

    def augment_pair(self, img: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoded RGB image and its label map → (float32 [3, S, S] normalised, int64 [S, S])."""
        size = self.image_size
        side = max(1, round(_uniform(*self.scale) * size))
        image = self._resize(_uint8_chw(img), [side, side], interpolation=self._bicubic, antialias=True)
        labels = _resize_labels(torch.from_numpy(np.asarray(mask, dtype=np.int64)), side)
        if torch.rand(()) < 0.5:
            image, labels = image.flip(-1), labels.flip(-1)
        if side > size:
            top, left = (int(torch.randint(side - size + 1, ())) for _ in range(2))
            image, labels = image[:, top:top + size, left:left + size], labels[top:top + size, left:left + size]
        image = self.normalize(self.ops(image))
        if side < size:
            image = torch.nn.functional.pad(image, (0, size - side, 0, size - side))
            labels = torch.nn.functional.pad(labels, (0, size - side, 0, size - side), value=self.ignore_index)
        if torch.rand(()) < self.cutout:
            h, w = (round(_uniform(*self.cutout_size) * size) for _ in range(2))
            top, left = int(torch.randint(size - h + 1, ())), int(torch.randint(size - w + 1, ()))
            image[:, top:top + h, left:left + w] = 0
        return image, labels

    def transform_batch(self, images: list[Image.Image], others: dict[str, list[Any]]) -> dict[str, list[Any]]:
        masks = others.pop(self.mask_column)
        pixels, labels = zip(*(self.augment_pair(img, decode_mask(m)) for img, m in zip(images, masks)))
        return {"pixel_values": list(pixels), "labels": list(labels), **others}


__all__ = [
    "FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "MOSAIC_LABELS", "MOSAIC_THRESHOLD",
    "IMAGENET_MEAN", "IMAGENET_STD", "CorruptImageError", "read_idx", "load_fashion_mnist",
    "make_mosaic_segmentation", "to_rgb", "decode_image", "decode_mask", "load_image_dataset", "write_image_folder",
    "IndexedDataset", "PretrainTransform", "EvalTransform", "ProbeTrainTransform", "SegmentationTrainTransform",
]
