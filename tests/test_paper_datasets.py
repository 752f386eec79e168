"""The paper's evaluation data sets (`bootleg_hf.evaluation.datasets_paper`): tiny synthetic copies written in the
official layouts of ADE20K, Cityscapes and iNat21 check the label reduction / mapping value by value, the pairing of
images and masks, the split names, the classes, ignore handling and errors, and that the segmentation and probe tools
take them by name."""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from bootleg_hf import BootlegModel
from bootleg_hf.cli import probe_main, segment_main
from bootleg_hf.data import load_image_dataset
from bootleg_hf.evaluation.datasets_paper import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    PaperSegmentation,
    load_ade20k,
    load_cityscapes,
    load_inat21,
)
from bootleg_hf.evaluation.segmentation import SegmentationSettings, load_segmentation_split, run_segmentation

pytestmark = pytest.mark.usefixtures("single_thread")

SIZE = 32
# Cityscapes' label id → train id table as cityscapesScripts' labels.py lists it, written out here independently of
# the module's constant; every other id is ignored (255).
TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
            27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_labels(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint8)).save(path)  # an 8-bit (mode L) PNG, as both data sets ship them


def halves(left: int, right: int) -> np.ndarray:
    """A label map: the left half `left`, the right half `right` (each half a whole number of patches wide)."""
    labels = np.full((SIZE, SIZE), right, dtype=np.uint8)
    labels[:, :SIZE // 2] = left
    return labels


def every_value(values) -> np.ndarray:
    """A SIZE × SIZE label map holding each of `values` (repeated in raster order)."""
    return np.resize(np.asarray(values, dtype=np.uint8), (SIZE, SIZE))


def make_ade20k(root: Path, masks: dict[str, list[np.ndarray]]) -> Path:
    """`ADEChallengeData2016/{images,annotations}/<folder>/ADE_<train|val>_<n>.{jpg,png}` for `masks[folder]`."""
    root = root / "ADEChallengeData2016"
    for folder, labels in masks.items():
        stem = "train" if folder == "training" else "val"
        for i, mask in enumerate(labels, start=1):
            write_image(root / "images" / folder / f"ADE_{stem}_{i:08d}.jpg", seed=i)
            write_labels(root / "annotations" / folder / f"ADE_{stem}_{i:08d}.png", mask)
    return root


def make_cityscapes(root: Path, masks: dict[str, dict[str, np.ndarray]], kind: str = "labelIds") -> Path:
    """`leftImg8bit/<split>/<city>/<name>_leftImg8bit.png` and `gtFine/<split>/<city>/<name>_gtFine_<kind>.png` for
    `masks[split]["<city>/<name>"]`."""
    for split, by_name in masks.items():
        for i, (name, mask) in enumerate(by_name.items()):
            write_image(root / "leftImg8bit" / split / f"{name}_leftImg8bit.png", seed=i)
            write_labels(root / "gtFine" / split / f"{name}_gtFine_{kind}.png", mask)
    return root


def mask_array(ds: datasets.Dataset, i: int) -> np.ndarray:
    return np.asarray(ds[i]["mask"])


def stored_paths(ds: datasets.Dataset, column: str) -> list[str]:
    """The files behind a column, read without the relabelling transform."""
    return [value["path"] for value in ds.with_format(None)[column]]


# --- ADE20K -----------------------------------------------------------------------------------------------------------


def test_ade20k_classes():
    assert len(ADE20K_CLASSES) == 150 and len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[:5] == ("wall", "building", "sky", "floor", "tree") and ADE20K_CLASSES[-1] == "flag"
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[-1] == "bicycle"


def test_ade20k_reduce_zero_label_value_by_value(tmp_path):
    raw = every_value(range(151))  # 0 = other, 1..150 the classes
    root = make_ade20k(tmp_path, {"training": [raw], "validation": [halves(0, 1)]})
    expected = np.where(raw == 0, 255, raw.astype(np.int64) - 1)  # reduce-zero-label, written out independently
    by_name = load_segmentation_split(f"ade20k:{root}", "train", None, 0, "image", "mask")
    for ds in (load_ade20k(root, "train"), by_name):
        assert ds.column_names == ["image", "mask"] and len(ds) == 1
        np.testing.assert_array_equal(mask_array(ds, 0), expected)
    validation = load_ade20k(root, "validation")
    np.testing.assert_array_equal(mask_array(validation, 0), halves(255, 0))  # 0 → 255 (ignored), 1 → 0 (wall)
    # read again, row by row or by column: still reduced once (the stored masks are the official ones)
    np.testing.assert_array_equal(np.asarray(validation["mask"][0]), halves(255, 0))
    assert np.asarray(Image.open(stored_paths(validation, "mask")[0])).max() == 1


def test_ade20k_splits_and_pairing(tmp_path):
    root = make_ade20k(tmp_path, {"training": [halves(0, 1)] * 3, "validation": [halves(0, 2)] * 2})
    for split, folder, n in (("train", "training", 3), ("training", "training", 3), ("test", "validation", 2),
                             ("validation", "validation", 2)):
        ds = load_ade20k(root, split)
        images, masks = stored_paths(ds, "image"), stored_paths(ds, "mask")
        assert len(ds) == n and all(f"/images/{folder}/" in p for p in images)
        assert [Path(p).stem for p in images] == [Path(p).stem for p in masks] == sorted(Path(p).stem for p in images)
    with pytest.raises(ValueError, match="no split 'train_mini'"):
        load_ade20k(root, "train_mini")


def test_ade20k_errors_name_the_problem(tmp_path):
    root = make_ade20k(tmp_path, {"training": [halves(0, 150)], "validation": [halves(0, 151)]})
    with pytest.raises(ValueError, match=r"ADE_val_00000001\.png: mask values \[151\] are not ADE20K labels"):
        mask_array(load_ade20k(root, "validation"), 0)
    (root / "annotations" / "training" / "ADE_train_00000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"ADE_train_00000001\.jpg has no partner: .*annotations/training/"
                                                r"ADE_train_00000001\.png does not exist"):
        load_ade20k(root, "train")
    write_labels(root / "annotations" / "training" / "ADE_train_00000001.png", halves(0, 1))
    write_labels(root / "annotations" / "training" / "ADE_train_00000002.png", halves(0, 1))
    with pytest.raises(FileNotFoundError, match=r"ADE_train_00000002\.png has no partner: .*images/training/"
                                                r"ADE_train_00000002\.jpg"):
        load_ade20k(root, "train")
    with pytest.raises(FileNotFoundError, match=r"not an ADEChallengeData2016 folder: images/training is missing"):
        load_ade20k(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_segmentation_split(f"ade20k:{tmp_path / 'nowhere'}", "train", None, 0, "image", "mask")


def test_ade20k_from_datasets_columns(monkeypatch):
    """The Hub layout (image + annotation columns, splits train / validation): a DatasetDict object or a Hub
    name."""
    def split(masks):
        rows = {"image": [Image.new("RGB", (SIZE, SIZE)) for _ in masks],
                "annotation": [Image.fromarray(m) for m in masks]}
        features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
        return datasets.Dataset.from_dict(rows, features=features)

    hub = datasets.DatasetDict(train=split([halves(0, 3)]), validation=split([halves(1, 150), halves(0, 0)]))
    paper = PaperSegmentation("ade20k", hub)
    test = load_segmentation_split(paper, "test", None, 0, "image", "mask")
    assert len(test) == 2 and str(paper) == "ade20k:custom"
    np.testing.assert_array_equal(mask_array(test, 0), halves(0, 149))
    np.testing.assert_array_equal(mask_array(test, 1), halves(255, 255))
    np.testing.assert_array_equal(mask_array(load_ade20k(hub, "train"), 0), halves(255, 2))
    with pytest.raises(ValueError, match=r"needs image and annotation columns; \['annotation'\] missing"):
        load_ade20k(datasets.DatasetDict(train=hub["train"].rename_column("annotation", "mask")), "train")

    # a Hub name: `datasets.load_dataset` with the Hub's split name
    requested = []

    def load_dataset(name, split):
        requested.append((name, split))
        return hub[split]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    test = load_segmentation_split("ade20k:org/ade20k-parquet", "test", None, 0, "image", "mask")
    assert requested == [("org/ade20k-parquet", "validation")]
    np.testing.assert_array_equal(mask_array(test, 0), halves(0, 149))


# --- Cityscapes -------------------------------------------------------------------------------------------------------


def test_cityscapes_label_ids_to_train_ids_and_pairing(tmp_path):
    raw = every_value([*range(34), 250, 255])  # the 34 official ids, an unused value and -1 (stored as 255)
    masks = {"aachen/aachen_000000_000019": raw, "bonn/bonn_000001_000019": halves(26, 7),
             "aachen/aachen_000001_000019": halves(24, 33)}
    root = make_cityscapes(tmp_path, {"train": masks, "val": {"lindau/lindau_000000_000019": halves(0, 26)}})
    ds = load_cityscapes(root, "train")
    names = ["aachen/aachen_000000_000019", "aachen/aachen_000001_000019", "bonn/bonn_000001_000019"]
    assert [p.split("/leftImg8bit/train/")[1] for p in stored_paths(ds, "image")] == [
        f"{n}_leftImg8bit.png" for n in names]
    assert [p.split("/gtFine/train/")[1] for p in stored_paths(ds, "mask")] == [f"{n}_gtFine_labelIds.png"
                                                                               for n in names]
    for i, name in enumerate(names):
        expected = np.vectorize(lambda v: TRAIN_ID.get(int(v), 255))(masks[name])
        np.testing.assert_array_equal(mask_array(ds, i), expected)
    np.testing.assert_array_equal(mask_array(ds, 1), halves(11, 18))  # person, bicycle
    for split in ("test", "validation", "val"):
        val = load_segmentation_split(f"cityscapes:{root}", split, None, 0, "image", "mask")
        assert len(val) == 1 and "/leftImg8bit/val/lindau/" in stored_paths(val, "image")[0]
        np.testing.assert_array_equal(mask_array(val, 0), halves(255, 13))  # unlabelled → ignored, car → 13


def test_cityscapes_train_id_files_are_used_as_they_are(tmp_path):
    name = "aachen/aachen_000000_000019"
    root = make_cityscapes(tmp_path, {"val": {name: halves(26, 26)}})  # label ids: all car
    write_labels(root / "gtFine" / "val" / f"{name}_gtFine_labelTrainIds.png", halves(255, 18))
    ds = load_cityscapes(root, "test")
    assert stored_paths(ds, "mask")[0].endswith("_gtFine_labelTrainIds.png")
    np.testing.assert_array_equal(mask_array(ds, 0), halves(255, 18))
    write_labels(root / "gtFine" / "val" / f"{name}_gtFine_labelTrainIds.png", halves(19, 0))
    with pytest.raises(ValueError, match=r"labelTrainIds\.png: mask values \[19\] are not Cityscapes train ids"):
        mask_array(load_cityscapes(root, "val"), 0)


def test_cityscapes_errors_name_the_problem(tmp_path):
    root = make_cityscapes(tmp_path, {"train": {"aachen/aachen_000000_000019": halves(7, 8)}})
    write_image(root / "leftImg8bit" / "train" / "bonn" / "bonn_000000_000019_leftImg8bit.png", seed=5)
    with pytest.raises(FileNotFoundError, match=r"bonn_000000_000019_leftImg8bit\.png has no partner: .*gtFine/train/"
                                                r"bonn/bonn_000000_000019_gtFine_labelIds\.png does not exist"):
        load_cityscapes(root, "train")
    with pytest.raises(FileNotFoundError, match=r"not a Cityscapes folder: leftImg8bit/val is missing"):
        load_cityscapes(root, "test")
    with pytest.raises(ValueError, match=r"cityscapes has no split 'training'"):
        load_cityscapes(root, "training")


# --- iNat21 -----------------------------------------------------------------------------------------------------------

INAT_CLASSES = ["00000_Animalia_Annelida_Clitellata_Crassiclitellata_Lumbricidae_Lumbricus_terrestris",
                "00001_Animalia_Arthropoda_Arachnida_Araneae_Araneidae_Araneus_diadematus",
                "00002_Plantae_Tracheophyta_Magnoliopsida_Rosales_Rosaceae_Rosa_canina"]


def make_inat21(root: Path, classes_per_split: dict[str, list[int]]) -> Path:
    """`<root>/<split>/<class>/<n>.jpg`, two images per class."""
    for split, classes in classes_per_split.items():
        for c in classes:
            for n in range(2):
                write_image(root / split / INAT_CLASSES[c] / f"{c}_{n}.jpg", seed=10 * c + n)
    return root


def test_inat21_labels_are_the_same_in_every_split(tmp_path):
    root = make_inat21(tmp_path / "inat", {"train": [0, 1, 2], "train_mini": [0, 2], "val": [2, 0]})
    train = load_inat21(root, "train")
    assert train.features["label"].names == INAT_CLASSES and train["label"] == [0, 0, 1, 1, 2, 2]
    for split in ("val", "test", "validation", "train_mini"):
        ds = load_image_dataset(f"inat21:{root}", split)
        assert ds.features["label"].names == INAT_CLASSES
        # class 2 keeps label 2 although this split has no class 1
        paths = [value["path"] for value in ds["image"]]
        assert [Path(p).parent.name for p in paths] == [INAT_CLASSES[label] for label in ds["label"]]
        assert ds["label"] == [0, 0, 2, 2]
    # a class only val has: the labels number the classes of all splits together, so train's class 2 keeps label 2
    (root / "train" / INAT_CLASSES[1]).rename(root / "val" / INAT_CLASSES[1])
    assert load_inat21(root, "train")["label"] == [0, 0, 2, 2]
    assert load_inat21(root, "val")["label"] == [0, 0, 1, 1, 2, 2]


def test_inat21_errors_name_the_problem(tmp_path):
    root = make_inat21(tmp_path / "inat", {"train": [0]})
    with pytest.raises(FileNotFoundError, match=r"no val/ split folder \(our split 'test'\)"):
        load_inat21(root, "test")
    with pytest.raises(FileNotFoundError, match="not an iNat21 folder: none of train/, train_mini/, val/ exists"):
        load_image_dataset(f"inat21:{root / 'train'}", "train")
    with pytest.raises(ValueError, match="inat21 has no split 'training'"):
        load_inat21(root, "training")


# --- names in the tools -----------------------------------------------------------------------------------------------


def test_prefix_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data-set prefix 'ade2k:'; the segmentation prefixes are ade20k:, "
                                         r"cityscapes:"):
        load_segmentation_split("ade2k:/data", "train", None, 0, "image", "mask")
    with pytest.raises(ValueError, match="inat21 is a classification data set; the segmentation prefixes"):
        run_segmentation(BootlegModel(tiny_config()), f"inat21:{tmp_path}")
    with pytest.raises(ValueError, match="ade20k is a segmentation data set; the classification prefixes are inat21:"):
        load_image_dataset(f"ade20k:{tmp_path}")


@pytest.mark.parametrize("data_set", ["ade20k", "cityscapes"])
def test_run_segmentation_scores_the_paper_classes_without_ignored_pixels(tmp_path, data_set):
    """Train and test images have their left half unlabelled and their right half one class (ADE20K value 1 = wall,
    class 0; Cityscapes label id 26 = car, train id 13): the kNN probe keeps only the labelled train patches, so it
    predicts that class everywhere, and 100 % pixel accuracy with that class alone scored means the unlabelled half
    is ignored and the labels are relabelled exactly once (twice, ADE20K's 1 would become ignored and its 0 an error;
    not at all, the unlabelled half would be a scored class)."""
    if data_set == "ade20k":
        root = make_ade20k(tmp_path, {"training": [halves(0, 1)] * 3, "validation": [halves(0, 1)] * 2})
        classes, label = ADE20K_CLASSES, 0
    else:
        masks = {f"zurich/zurich_{i:06d}_000019": halves(0, 26) for i in range(3)}
        root = make_cityscapes(tmp_path, {"train": masks, "val": dict(list(masks.items())[:2])})
        classes, label = CITYSCAPES_CLASSES, 13
    settings = SegmentationSettings(probes=("knn",), ks=(1,), metrics=("cosine",), limit_train=None, limit_test=None,
                                    ignore_index=(254,))  # the data set's 255 is added
    results = run_segmentation(BootlegModel(tiny_config()), f"{data_set}:{root}", settings)
    assert results["dataset"] == f"{data_set}:{root}" and (results["num_train"], results["num_test"]) == (3, 2)
    assert results["num_labels"] == len(classes) and results["labels"] == list(classes)
    assert results["ignore_index"] == [254, 255]
    best = results["probes"]["knn"]["best"]
    assert best["per_class_iou"] == {label: 1.0} and best["pixel_accuracy"] == 100.0


def test_cli_takes_the_paper_data_sets(tmp_path, capsys):
    for main, form in ((segment_main, "ade20k:<ADEChallengeData2016 folder or Hub name>"),
                       (segment_main, "cityscapes:<folder>"), (probe_main, "inat21:<folder>")):
        with pytest.raises(SystemExit):
            main(["--help"])
        assert form in " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    root = make_ade20k(tmp_path, {"training": [halves(0, 5)] * 2, "validation": [halves(0, 5)]})
    segment_main(["--model", "random:vit-micro", "--dataset", f"ade20k:{root}", "--probes", "knn", "--ks", "1",
                  "--metrics", "cosine", "--threads", "1", "--out", str(tmp_path / "seg")])
    results = json.loads((tmp_path / "seg" / "segment_results.json").read_text())["segmentation"]
    assert results["num_labels"] == 150 and results["labels"][4] == "tree" and results["num_test"] == 1
    inat = make_inat21(tmp_path / "inat", {"train": [0, 1, 2], "val": [0, 2]})
    probe_main(["--model", "random:vit-micro", "--dataset", f"inat21:{inat}", "--probes", "patch", "--epochs", "1",
                "--batch-size", "4", "--lrs", "1e-3", "--wds", "1e-3", "--num-workers", "0", "--threads", "1",
                "--out", str(tmp_path / "probe")])
    results = json.loads((tmp_path / "probe" / "probe_results.json").read_text())["classification"]
    assert results["labels"] == INAT_CLASSES and (results["num_train"], results["num_test"]) == (6, 4)
