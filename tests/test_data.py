"""Tests for bootleg_hf.data: IDX parsing, Fashion-MNIST, mosaics, image modes, transforms, corrupt files."""

from __future__ import annotations

import gzip
import logging
import struct
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from bootleg_hf import BootlegForPretraining, BootlegTrainer, BootlegTrainingArguments
from bootleg_hf import data as D

HAVE_FMNIST = Path(D.FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    # No test may touch the network or the user's HF cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _write_idx(path: Path, array: np.ndarray, type_code: int = 0x08, compress: bool = True) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


# ---------------------------------------------------------------------------------------------- IDX


def test_read_idx_roundtrip_and_errors(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "img.gz", images)
    np.testing.assert_array_equal(D.read_idx(tmp_path / "img.gz"), images)
    ints = np.array([-5, 70000, 3], dtype=np.int32)
    _write_idx(tmp_path / "ints.idx", ints, type_code=0x0C, compress=False)
    np.testing.assert_array_equal(D.read_idx(tmp_path / "ints.idx"), ints)

    bad = tmp_path / "bad-magic.gz"
    bad.write_bytes(gzip.compress(b"\x12\x34\x08\x01" + b"\x00" * 8))
    with pytest.raises(ValueError, match="bad-magic.gz.*magic"):
        D.read_idx(bad)
    short = tmp_path / "short.gz"
    _write_idx(short, images)
    raw = gzip.decompress(short.read_bytes())
    short.write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(ValueError, match="short.gz.*truncated"):
        D.read_idx(short)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(raw)[:20])  # truncated gzip stream
    with pytest.raises(ValueError, match="broken.gz"):
        D.read_idx(broken)


# ------------------------------------------------------------------------------------ Fashion-MNIST


@needs_fmnist
def test_fashion_mnist_splits_and_classes():
    train, test = D.load_fashion_mnist("train"), D.load_fashion_mnist("test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.features["label"].names == D.FASHION_MNIST_CLASSES
    assert isinstance(train.features["image"], datasets.Image)
    img = train[123]["image"]
    assert img.mode == "L" and img.size == (28, 28)
    assert np.bincount(train["label"], minlength=10).tolist() == [6000] * 10
    # The same pixels as the raw IDX file.
    raw = D.read_idx(Path(D.FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz"))
    np.testing.assert_array_equal(np.asarray(test[9999]["image"]), raw[9999])


@needs_fmnist
def test_fashion_mnist_limit():
    ds = D.load_fashion_mnist("test", limit=37)
    assert len(ds) == 37
    assert ds["label"] == D.load_fashion_mnist("test")["label"][:37]


def test_fashion_mnist_offline_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*HF_HUB_OFFLINE"):
        D.load_fashion_mnist("train", root=str(tmp_path))
    with pytest.raises(ValueError, match="split"):
        D.load_fashion_mnist("validation", root=str(tmp_path))


# -------------------------------------------------------------------------------------------- mosaic


@needs_fmnist
def test_mosaic_segmentation():
    ds = D.make_mosaic_segmentation("test", num_images=20, seed=3)
    labels = np.asarray(D.load_fashion_mnist("test")["label"])
    items = D.read_idx(Path(D.FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz"))
    assert len(ds) == 20 and D.MOSAIC_LABELS[0] == "background" and len(D.MOSAIC_LABELS) == 11
    for row in ds:
        image, mask = np.asarray(row["image"]), np.asarray(row["mask"])
        assert image.shape == mask.shape == (56, 56) and mask.dtype == np.uint8
        assert mask.max() <= 10
        np.testing.assert_array_equal(mask == 0, image <= D.MOSAIC_THRESHOLD)
        for q, src in enumerate(row["source_indices"]):
            r, c = divmod(q, 2)
            quadrant = mask[28 * r : 28 * r + 28, 28 * c : 28 * c + 28]
            np.testing.assert_array_equal(image[28 * r : 28 * r + 28, 28 * c : 28 * c + 28], items[src])
            assert set(np.unique(quadrant[quadrant > 0]).tolist()) == {labels[src] + 1}
    again = D.make_mosaic_segmentation("test", num_images=20, seed=3)
    other = D.make_mosaic_segmentation("test", num_images=20, seed=4)
    assert again["source_indices"] == ds["source_indices"]
    np.testing.assert_array_equal(np.asarray(again[7]["mask"]), np.asarray(ds[7]["mask"]))
    assert other["source_indices"] != ds["source_indices"]


# ----------------------------------------------------------------------------------- image modes


def test_to_rgb_modes():
    gray = Image.fromarray(np.full((4, 5), 77, np.uint8))
    out = D.to_rgb(gray)
    assert out.mode == "RGB" and out.size == (5, 4) and out.getpixel((0, 0)) == (77, 77, 77)

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[0, 0, 3], rgba[0, 1, 3], rgba[1, 0, 3] = 0, 255, 128
    out = np.asarray(D.to_rgb(Image.fromarray(rgba)))
    assert out[0, 0].tolist() == [0, 0, 0]  # fully transparent -> black background
    assert out[0, 1].tolist() == [200, 100, 50]
    assert np.allclose(out[1, 0], [100, 50, 25], atol=1)

    pal = Image.new("P", (3, 3))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((1, 1), 1)
    out = D.to_rgb(pal)
    assert out.getpixel((1, 1)) == (10, 200, 30) and out.getpixel((0, 0)) == (0, 0, 0)

    ramp = np.linspace(0, 65535, 256).astype(np.uint16)[None].repeat(3, axis=0)
    img16 = Image.fromarray(ramp)
    assert img16.mode == "I;16"
    out = np.asarray(D.to_rgb(img16))[..., 0]
    assert out.min() == 0 and out.max() == 255 and np.all(np.diff(out[0].astype(int)) >= 0)
    assert len(np.unique(out)) > 200  # a real gradient, not clipped to a few values

    as_i = np.asarray(D.to_rgb(Image.fromarray(ramp.astype(np.int32))))[..., 0]
    np.testing.assert_array_equal(as_i, out)

    f = Image.fromarray(np.linspace(0, 1, 50, dtype=np.float32)[None])
    assert f.mode == "F"
    out = np.asarray(D.to_rgb(f))
    assert out.shape == (1, 50, 3) and out.min() == 0 and out.max() == 255
    wild = np.asarray(D.to_rgb(Image.fromarray(np.array([[-3.0, np.nan, 1e4]], np.float32))))[..., 0]
    assert wild.tolist() == [[0, 0, 255]]

    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))
    assert D.to_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)


def test_decode_image_inputs_and_corrupt_files(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    png = tmp_path / "ok.png"
    Image.fromarray(arr).save(png)
    for value in (png, str(png), {"path": str(png), "bytes": None}, {"path": None, "bytes": png.read_bytes()},
                  Image.open(png), arr):
        out = D.decode_image(value)
        assert out.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(out), arr)
    assert D.decode_image(arr[..., 0]).mode == "RGB"

    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"definitely not a png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png.read_bytes()[:60])
    for path in (bad, truncated, tmp_path / "missing.png"):
        with pytest.raises(D.CorruptImageError, match=path.name) as info:
            D.decode_image(str(path))
        assert info.value.path == str(path) and isinstance(info.value, ValueError)
        with pytest.raises(D.CorruptImageError, match=path.name):
            D.decode_image({"path": str(path), "bytes": None})
    with pytest.raises(D.CorruptImageError, match="in-memory"):
        D.decode_image({"path": None, "bytes": b"\x89PNG broken"})


# -------------------------------------------------------------------------------- folders, transforms


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """An imagefolder of 12 small RGB images in 3 classes plus one corrupt PNG."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)) for i in range(12)]
    src = datasets.Dataset.from_dict(
        {"image": images, "label": [i % 3 for i in range(12)]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a/b", "c", "d"])}),
    )
    root = D.write_image_folder(src, tmp_path / "folder")
    assert sorted(p.name for p in root.iterdir()) == ["a_b", "c", "d"]
    (root / "c" / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return root


def test_load_image_dataset_local_folder(image_folder, tmp_path):
    ds = D.load_image_dataset(image_folder, cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 13 and set(ds.column_names) == {"image", "label"}
    assert ds.features["image"].decode is False and ds.features["label"].names == ["a_b", "c", "d"]
    # Column detection and renaming on an in-memory dataset with other names.
    other = datasets.Dataset.from_dict(
        {"id": [0, 1], "picture": [np.zeros((4, 4), np.uint8)] * 2, "cls": [0, 1]},
        features=datasets.Features({"id": datasets.Value("int64"), "picture": datasets.Image(),
                                    "cls": datasets.ClassLabel(names=["x", "y"])}),
    )
    renamed = D.load_image_dataset(other)
    assert renamed.column_names == ["id", "image", "label"]
    with pytest.raises(ValueError, match="no image column"):
        D.load_image_dataset(datasets.Dataset.from_dict({"x": [1, 2]}))
    with pytest.raises(FileNotFoundError):
        D.load_image_dataset(str(tmp_path / "nope"))


def test_pretrain_transform_skip_and_raise(image_folder, tmp_path, caplog):
    ds = D.load_image_dataset(image_folder, cache_dir=str(tmp_path / "cache"))
    corrupt = next(i for i, v in enumerate(ds["image"]) if v["path"].endswith("zz_corrupt.png"))
    tf = D.PretrainTransform(16, on_error="skip")
    ds.set_transform(tf)

    batch = ds[:]  # one batched call: the corrupt row is replaced by a readable one
    assert len(batch["pixel_values"]) == len(batch["label"]) == 13
    for t in batch["pixel_values"]:
        assert t.shape == (3, 16, 16) and t.dtype == torch.float32
    assert tf.num_skipped == 1
    assert "zz_corrupt.png" in caplog.text

    with caplog.at_level(logging.WARNING, logger="bootleg_hf.data"):
        caplog.clear()
        row = ds[corrupt]  # a batch of one: replaced by the last readable image seen
    assert row["pixel_values"].shape == (3, 16, 16) and tf.num_skipped == 2
    assert "zz_corrupt.png" not in caplog.text  # warned once per path

    # Batch [corrupt, A, B]: the next readable example of the same batch (A, with its own label)
    # stands in for the corrupt one.
    fresh = D.PretrainTransform(16, on_error="skip")
    ds.set_transform(fresh)
    assert (ds[0]["label"], ds[12]["label"]) == (0, 2)
    assert ds[[corrupt, 0, 12]]["label"] == [0, 0, 2] and fresh.num_skipped == 1

    fresh = D.PretrainTransform(16, on_error="skip")
    ds.set_transform(fresh)
    with pytest.raises(D.CorruptImageError, match="zz_corrupt.png.*no readable example"):
        ds[corrupt]  # nothing readable to substitute: fails loudly
    assert fresh.num_skipped == 1

    strict = D.PretrainTransform(16, on_error="raise")
    ds.set_transform(strict)
    with pytest.raises(D.CorruptImageError, match="zz_corrupt.png"):
        ds[:]

    capped = D.PretrainTransform(16, max_skipped=0)
    ds.set_transform(capped)
    with pytest.raises(D.CorruptImageError, match="max_skipped"):
        ds[:]


def test_skip_count_visible_across_dataloader_workers(image_folder, tmp_path):
    ds = D.IndexedDataset(D.load_image_dataset(image_folder, cache_dir=str(tmp_path / "cache")))
    tf = D.PretrainTransform(8)
    ds.dataset.set_transform(tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=13, num_workers=1, collate_fn=lambda items: items)
    (items,) = list(loader)
    assert sorted(item["sample_index"] for item in items) == list(range(13))
    assert tf.num_skipped == 1  # incremented in the worker process, read in the parent


def test_transform_normalisation_and_eval_probe_transforms():
    value = Image.new("RGB", (40, 30), (255, 128, 0))
    expected = (torch.tensor([255, 128, 0]) / 255 - torch.tensor(D.IMAGENET_MEAN)) / torch.tensor(D.IMAGENET_STD)
    for tf in (D.PretrainTransform(12), D.EvalTransform(12), D.ProbeTrainTransform(12, jitter=0.0)):
        out = tf.apply_image(value)
        assert out.shape == (3, 12, 12) and out.dtype == torch.float32
        torch.testing.assert_close(out[:, 6, 6], expected, atol=2e-2, rtol=0)
    # EvalTransform is deterministic and center-crops the resized image.
    grad = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (32, 1)))
    ev = D.EvalTransform(28, crop_fraction=0.875)
    a, b = ev.apply_image(grad), ev.apply_image(grad)
    assert torch.equal(a, b) and a.shape == (3, 28, 28)
    out = D.ProbeTrainTransform(12)({"image": [value, value], "label": [1, 2]})
    assert out["label"] == [1, 2] and len(out["pixel_values"]) == 2


def test_tensor_backend_draws_the_same_crops_as_pil():
    """The pretraining and probe transforms resize uint8 tensors (backend="tensor"); the same seed gives the same
    crops and flips as on the PIL image, so the pixels differ only by resampling rounding."""
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((80, 60), Image.BICUBIC)
    for cls in (D.PretrainTransform, D.ProbeTrainTransform):
        outs = {}
        for backend in ("tensor", "pil"):
            torch.manual_seed(0)
            outs[backend] = torch.stack(cls(24, backend=backend)({"image": [smooth] * 8})["pixel_values"])
        assert outs["tensor"].is_contiguous() and outs["tensor"].dtype == torch.float32
        step = 1 / 255 / min(D.IMAGENET_STD)  # one grey level after normalisation
        assert (outs["tensor"] - outs["pil"]).abs().mean() < step
        assert (outs["tensor"] - outs["pil"]).abs().amax() < 8 * step
        assert not torch.equal(outs["tensor"][0], outs["tensor"][1])  # (and the draws do differ per image)
    with pytest.raises(ValueError, match="backend"):
        D.PretrainTransform(8, backend="cv2")


@pytest.mark.parametrize("bf16", [False, None])
def test_cpu_training_emits_no_pin_memory_warning(image_folder, tmp_path, bf16):
    """Without an accelerator the Trainer's DataLoader is not asked to pin memory (torch warns "'pin_memory' argument
    is set as true but no accelerator is found" otherwise), whether or not bf16 makes transformers switch to its
    CPU mode (`use_cpu`, which turns pinning off by itself)."""
    ds = D.load_image_dataset(image_folder, cache_dir=str(tmp_path / "cache"))
    config = tiny_config()
    ds.set_transform(D.PretrainTransform(config.image_size))
    args = BootlegTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=4,
                                    save_strategy="no", report_to="none", disable_tqdm=True, bf16=bf16)
    assert args.dataloader_pin_memory == torch.cuda.is_available()
    trainer = BootlegTrainer(model=BootlegForPretraining(config), args=args, train_dataset=ds)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert trainer.state.global_step == 1
    assert not [w for w in caught if "pin_memory" in str(w.message)], [str(w.message) for w in caught]


def test_indexed_dataset():
    base = [{"x": i * 10} for i in range(5)]
    ds = D.IndexedDataset(base)
    assert len(ds) == 5 and ds[3] == {"x": 30, "sample_index": 3}
    assert [it["sample_index"] for it in ds.__getitems__([4, 1])] == [4, 1]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=False)
    assert next(iter(loader))["sample_index"].tolist() == [0, 1]
