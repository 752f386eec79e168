"""Segmentation probes (docs/design.md §7): mIoU, label blocks, the kNN probe, head training, `run_segmentation` and
the segment command."""

import json
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import needs_fmnist, tiny_config
from safetensors import safe_open
from safetensors.torch import load_file

from bootleg_hf import BootlegForSemanticSegmentation
from bootleg_hf.checkpoints import export_pretrained, load_encoder
from bootleg_hf.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationTrainTransform,
    decode_image,
    make_mosaic_segmentation,
)
from bootleg_hf.evaluation.segmentation import (
    SEGMENTATION_PROTOCOLS,
    KnnSegmenter,
    SegmentationSettings,
    blocks_to_maps,
    encode,
    knn_segmentation,
    load_segmentation_split,
    miou,
    patch_label_blocks,
    pixel_knn_segmentation,
    pixel_tokens,
    predict_segmentation,
    prepare,
    run_segmentation,
    train_segmentation_head,
)
from bootleg_hf.image_processing_bootleg import make_segmentation_image_processor
from bootleg_hf.modeling_bootleg_heads import build_segmentation_head

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("single_thread")


# --- metric -----------------------------------------------------------------------------------------------------------


def test_miou_hand_computed_with_ignore_label():
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 0]])
    # scored pixels (255 dropped): target 0 0 1 1 2 vs pred 0 1 1 1 2
    # IoU: class 0 = 1 / (1 + 0 + 1) = 1/2; class 1 = 2 / (2 + 1 + 0) = 2/3; class 2 = 1/1
    scores = miou(pred, target, num_classes=5, ignore_index=255)  # classes 3, 4 absent from both: not averaged
    assert scores["per_class_iou"] == pytest.approx({0: 0.5, 1: 2 / 3, 2: 1.0})
    assert scores["miou"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(4 / 5)


def test_miou_counts_classes_only_predicted_and_ignores_several_labels():
    target = torch.tensor([1, 1, 0, 255, 2])
    pred = torch.tensor([1, 3, 1, 3, 7])
    # ignore {0, 255}: scored pixels target 1 1 2 vs pred 1 3 7. class 1 = 1/2; class 3 (only predicted) = 0/1;
    # class 2 = 0/1; the out-of-range prediction 7 is an error, not a class.
    scores = miou(pred, target, num_classes=4, ignore_index=(0, 255))
    assert scores["per_class_iou"] == pytest.approx({1: 0.5, 2: 0.0, 3: 0.0})
    assert scores["pixel_accuracy"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="target labels"):
        miou(pred, torch.tensor([1, 1, 9, 1, 1]), num_classes=4, ignore_index=255)


def test_label_blocks_layout_and_round_trip():
    labels = torch.arange(2 * 4 * 6).reshape(2, 4, 6)
    blocks = patch_label_blocks(labels, 2)
    assert blocks.shape == (2 * 2 * 3, 4)
    assert blocks[0].tolist() == [0, 1, 6, 7] and blocks[1].tolist() == [2, 3, 8, 9]  # raster order of patches
    assert blocks[3].tolist() == [12, 13, 18, 19]
    assert torch.equal(blocks_to_maps(blocks, 2, (2, 3), 2), labels)


def test_pixel_tokens_are_each_patchs_pixels_in_raster_order():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    tokens = pixel_tokens(x, 2)
    assert tokens.shape == (2, 2 * 3, 3 * 4)
    # token 4 of image 1 is patch row 1, column 1: pixels [2:4, 2:4] of each channel, channel-major
    assert torch.equal(tokens[1, 4], x[1, :, 2:4, 2:4].reshape(-1))
    assert torch.equal(tokens[0, 2], x[0, :, 0:2, 4:6].reshape(-1))


@needs_fmnist
def test_pixel_knn_segmentation_is_the_knn_probe_on_patch_pixels():
    config = tiny_config(image_size=16, patch_size=4)
    data = datasets.DatasetDict(train=make_mosaic_segmentation("train", 10, seed=0),
                                test=make_mosaic_segmentation("test", 4, seed=1))
    settings = SegmentationSettings(probes=("knn",), limit_train=None, limit_test=None, ks=(1, 3))
    result = pixel_knn_segmentation(data, config, settings)
    train_pixels, train_labels = prepare(data["train"], config, 16, "image", "mask")
    test_pixels, test_labels = prepare(data["test"], config, 16, "image", "mask")
    # the patches by hand: [N, 3, 16, 16] → [N, 4·4 patches, 3·4·4 pixels]
    by_hand = [p.reshape(len(p), 3, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(len(p), 16, 48)
               for p in (train_pixels, test_pixels)]
    knn = knn_segmentation(by_hand[0], train_labels, by_hand[1], test_labels, 11, 4, 0, (1, 3), ("cosine", "l2"))
    best = max(knn, key=lambda k: knn[k]["miou"])
    assert result["best"]["setting"] == best
    assert result["best"]["miou"] == pytest.approx(100 * knn[best]["miou"])
    assert len(result["grid"]) == 4 and all(0 <= g["miou"] <= 100 for g in result["grid"])


# --- kNN --------------------------------------------------------------------------------------------------------------


def one_hot_problem(num_images: int, seed: int, prefix: int = 2, grid: int = 4, patch: int = 2, classes: int = 4):
    """Tokens whose patch features are the one-hot label of their (uniformly labelled) patch."""
    g = torch.Generator().manual_seed(seed)
    patch_labels = torch.randint(0, classes, (num_images, grid, grid), generator=g)
    tokens = torch.cat([torch.randn(num_images, prefix, classes, generator=g),
                        torch.nn.functional.one_hot(patch_labels.flatten(1), classes).float()], dim=1)
    labels = patch_labels.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return tokens, labels


def test_knn_is_perfect_when_features_identify_labels():
    train_tokens, train_labels = one_hot_problem(30, seed=0)
    test_tokens, test_labels = one_hot_problem(5, seed=1)
    results = knn_segmentation(train_tokens, train_labels, test_tokens, test_labels, num_classes=4, patch_size=2,
                               num_prefix_tokens=2)
    assert set(results) == {f"{m}/k={k}" for m in ("cosine", "l2") for k in (1, 3, 10, 30)}
    for name, r in results.items():
        assert r["miou"] == 1.0 and r["pixel_accuracy"] == 1.0, name


def test_knn_hand_built_neighbours():
    # three train patches on a line (P = 2, so 4 pixels each); the second one is mostly ignore and is dropped
    features = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    blocks = torch.tensor([[1, 1, 2, 2], [255, 255, 255, 1], [1, 2, 2, 2], [3, 3, 3, 1]])
    knn = KnnSegmenter(ignore_index=255).fit(features, blocks)
    assert len(knn.features) == 3
    queries = torch.tensor([[0.9], [1.6], [9.0]])
    pred = knn.predict(queries, ks=(1, 3), metric="l2")
    # k = 1: 0.9 is nearest to 0 (1 is dropped), 1.6 to 2, 9 to 10
    assert pred[1].tolist() == [[1, 1, 2, 2], [1, 2, 2, 2], [3, 3, 3, 1]]
    # k = 3: every query sees all three blocks; per-pixel majority, ties (pixel 1: 1, 2, 3) go to the nearest
    assert pred[3].tolist() == [[1, 1, 2, 2], [1, 2, 2, 2], [1, 3, 2, 2]]


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_knn_chunked_search_is_exact(metric):
    g = torch.Generator().manual_seed(0)
    train, queries = torch.randn(200, 8, generator=g), torch.randn(30, 8, generator=g)
    knn = KnnSegmenter(ignore_index=None, chunk_size=7).fit(train, torch.zeros(200, 1, dtype=torch.long))
    found = knn.neighbours(knn.standardise(queries), 10, metric)
    a, b = knn.standardise(queries), knn.features
    if metric == "cosine":
        distance = 1 - torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T
    else:
        distance = torch.cdist(a, b)
    assert torch.equal(found, distance.topk(10, dim=1, largest=False).indices)


# --- Lin / Blk on cached features -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lin", "blk"])
def test_segmentation_heads_learn_on_cached_features(kind):
    config = tiny_config(hidden_size=32, num_register_tokens=1, num_attention_heads=4)
    train_tokens, train_labels = one_hot_problem(32, seed=0, prefix=2, grid=4, patch=8)
    test_tokens, test_labels = one_hot_problem(8, seed=1, prefix=2, grid=4, patch=8)
    pad = lambda t: torch.nn.functional.pad(t, (0, 28))  # noqa: E731  (one-hot labels in the first 4 of 32 channels)
    torch.manual_seed(0)
    head = build_segmentation_head(kind, config, 4)
    history = train_segmentation_head(head, pad(train_tokens), train_labels, (4, 4), epochs=15, batch_size=8,
                                      lr=1e-2, warmup_epochs=1)
    assert history[-1] < history[0]
    # scored at patch resolution: bilinear upsampling blurs the random per-patch labels of this toy at their borders
    pred = predict_segmentation(head, pad(test_tokens), (4, 4), (4, 4))
    assert miou(pred, test_labels[:, ::8, ::8], 4)["pixel_accuracy"] > 0.95


def test_protocols_hold_the_papers_numbers():
    """The appendix: 128 epochs at batch 64, 5 warm-up epochs, LR grids spanning [2.5e-4, 7.5e-3] (Lin) and
    [2.5e-5, 7.5e-4] (Blk), weight decay 1e-4 (Lin) and 0.05 (Blk), RandScale(0.5, 2) + flip + cutout + jitter."""
    paper = SEGMENTATION_PROTOCOLS["paper"]
    assert (paper.epochs, paper.batch_size, paper.warmup_epochs) == (128, 64, 5)
    assert paper.lrs == {"lin": (2.5e-4, 5e-4, 7.5e-4, 2.5e-3, 5e-3, 7.5e-3),
                         "blk": (2.5e-5, 5e-5, 7.5e-5, 2.5e-4, 5e-4, 7.5e-4)}
    assert paper.weight_decay == {"lin": 1e-4, "blk": 0.05}
    assert paper.augmentation["scale"] == (0.5, 2.0) and paper.augmentation["cutout"] > 0
    assert paper.augmentation["jitter"] > 0
    quick = SEGMENTATION_PROTOCOLS["quick"]
    assert quick.augmentation is None and quick.weight_decay == paper.weight_decay
    assert (quick.epochs, quick.batch_size, quick.warmup_epochs) == (40, 64, 1)
    # what a run records: the protocol's values, or the explicit ones; warm-up at most half the epochs
    assert SegmentationSettings(protocol="paper").head_training() == {
        "name": "paper", "description": paper.description, "epochs": 128, "batch_size": 64, "warmup_epochs": 5,
        "lrs": {k: list(v) for k, v in paper.lrs.items()}, "weight_decay": {"lin": 1e-4, "blk": 0.05},
        "augmentation": dict(paper.augmentation)}
    training = SegmentationSettings(protocol="paper", probes=("knn", "blk"), epochs=4, batch_size=8, lrs=[1e-3],
                                    weight_decay=0.0).head_training()
    assert {k: training[k] for k in ("epochs", "batch_size", "warmup_epochs", "lrs", "weight_decay")} == {
        "epochs": 4, "batch_size": 8, "warmup_epochs": 2, "lrs": {"blk": [1e-3]}, "weight_decay": {"blk": 0.0}}
    with pytest.raises(ValueError, match="segmentation protocol"):
        SegmentationSettings(protocol="appendix")


# --- the paper protocol's joint augmentation --------------------------------------------------------------------------


def label_image(size: int = 64, block: int = 16):
    """A grey image whose pixel values encode their labels (value 40 + 12·label), labels 0..15 in 16×16 blocks."""
    from PIL import Image

    labels = (np.arange(size)[:, None] // block * (size // block) + np.arange(size)[None, :] // block)
    return Image.fromarray((40 + 12 * labels).astype(np.uint8)).convert("RGB"), Image.fromarray(labels.astype(np.uint8))


def decoded_labels(pixel_values: torch.Tensor) -> torch.Tensor:
    """`label_image`'s labels read back from normalised pixels `[3, H, W]` (first channel)."""
    value = (pixel_values[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
    return ((value - 40) / 12).round().long()


def augment(seed: int, **options):
    kwargs = {"scale": (0.5, 2.0), "jitter": 0.0, "cutout": 0.0, "cutout_size": (0.5, 0.5), **options}
    image, mask = label_image()
    torch.manual_seed(seed)
    out = SegmentationTrainTransform(32, **kwargs)({"image": [image], "mask": [mask]})
    return out["pixel_values"][0], out["labels"][0]


def test_segmentation_augmentation_keeps_image_and_labels_aligned():
    sides, checked = [], 0
    for seed in range(12):
        pixels, labels = augment(seed)
        assert pixels.shape == (3, 32, 32) and labels.shape == (32, 32) and labels.dtype == torch.int64
        # the image's values say the label wherever resampling does not blur: 2 px or more from a label border
        # and from the crop's edges (beyond which the image went on)
        grid = F.pad(labels[None, None].float(), (2, 2, 2, 2), value=-1)
        interior = (F.max_pool2d(grid, 5, 1) == -F.max_pool2d(-grid, 5, 1))[0, 0] & (labels != 255)
        assert torch.equal(decoded_labels(pixels)[interior], labels[interior])
        checked += int(interior.sum())
        sides.append(int((labels != 255).any(0).sum()))
    assert checked > 12 * 32 * 32 // 4
    assert min(sides) < 32 and max(sides) == 32  # some draws were scaled below the crop, some above

    pixels, labels = augment(0, scale=(0.5, 0.5))  # 64 px → 16 px: padded at the bottom and right
    assert (labels[16:] == 255).all() and (labels[:, 16:] == 255).all() and (labels[:16, :16] != 255).all()
    assert (pixels[:, 16:] == 0).all() and (pixels[:, :, 16:] == 0).all()  # 0 = the mean colour
    assert set(labels[:16, :16].unique().tolist()) == set(range(16))  # the whole image, scaled down

    flips = set()
    reference = torch.arange(4).repeat_interleave(8)  # the first row of the 32 px label map
    for seed in range(12):  # scale 1: the evaluation's 32 px image, maybe flipped
        pixels, labels = augment(seed, scale=(1.0, 1.0))
        flips.add(bool(torch.equal(labels[0], reference.flip(0))))
        assert torch.equal(labels[0], reference.flip(0)) or torch.equal(labels[0], reference)
    assert flips == {True, False}


def test_segmentation_augmentation_jitter_and_cutout_touch_the_image_only():
    # the same seed draws the same geometry: jitter and cutout come after it
    plain_pixels, plain_labels = augment(3, scale=(1.0, 1.0))
    jittered_pixels, jittered_labels = augment(3, scale=(1.0, 1.0), jitter=0.4)
    assert torch.equal(jittered_labels, plain_labels) and not torch.equal(jittered_pixels, plain_pixels)
    cut_pixels, cut_labels = augment(3, scale=(1.0, 1.0), cutout=1.0)  # a 16×16 rectangle of mean colour
    assert torch.equal(cut_labels, plain_labels)  # its labels are kept
    changed = (cut_pixels != plain_pixels).any(0)
    rows, cols = changed.nonzero().T
    assert changed.sum() == 16 * 16 and int(rows.max() - rows.min()) == int(cols.max() - cols.min()) == 15
    assert (cut_pixels[:, changed] == 0).all()


@needs_fmnist
def test_run_segmentation_with_the_paper_protocol(tmp_path):
    """The paper protocol end to end on a few mosaics: the heads train on augmented images, one encoder forward per
    batch for every Lin and Blk head; the results, report and head files say so."""
    encoder = load_encoder("random:vit-micro")
    batch_sizes = []
    encoder.register_forward_hook(lambda module, args, out: batch_sizes.append(len(args[0])))
    settings = SegmentationSettings(probes=("lin", "blk"), protocol="paper", limit_train=8, limit_test=4, epochs=2,
                                    batch_size=4, num_workers=0)
    results = run_segmentation(encoder, "mosaic", settings, out=tmp_path / "seg")
    # the test split once (4 images), then 2 epochs × 2 batches of 4 augmented train images
    assert batch_sizes == [4] + [4] * 4
    assert results["protocol"]["name"] == "paper" and results["protocol"]["augmentation"]["scale"] == (0.5, 2.0)
    assert (results["protocol"]["epochs"], results["protocol"]["warmup_epochs"]) == (2, 1)
    for kind in ("lin", "blk"):
        r = results["probes"][kind]
        assert [g["lr"] for g in r["grid"]] == list(SEGMENTATION_PROTOCOLS["paper"].lrs[kind])
        assert r["weight_decay"] == {"lin": 1e-4, "blk": 0.05}[kind] and len(r["best"]["train_loss"]) == 2
        with safe_open(tmp_path / "seg" / results["heads"][kind], framework="pt") as f:
            assert f.metadata()["protocol"] == "paper"
    document = json.loads((tmp_path / "seg" / "segment_results.json").read_text())
    assert document["segmentation"]["protocol"]["name"] == "paper"
    assert "Lin/Blk: paper protocol (the appendix's" in (tmp_path / "seg" / "segment_results.md").read_text()
    assert (tmp_path / "seg" / "segmenter" / "config.json").is_file()


@needs_fmnist
def test_segment_cli_smoke(tmp_path):
    out = tmp_path / "seg"
    cmd = [sys.executable, str(ROOT / "training" / "segment.py"), "--model", "random:vit-micro", "--limit-train",
           "40", "--limit-test", "10", "--epochs", "1", "--threads", "1", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    document = json.loads((out / "segment_results.json").read_text())
    assert (document["format"], document["encoder"], document["weights"]) == ("bootleg-results/1", "random:vit-micro",
                                                                             "teacher")
    assert "classification" not in document
    results = document["segmentation"]
    assert results["dataset"] == {"name": "Fashion-MNIST 2×2 mosaics", "type": "zalando-datasets/fashion_mnist",
                                  "split": "test"}
    assert set(results["probes"]) == {"knn", "lin", "blk"} and results["num_labels"] == 11
    assert len(results["probes"]["knn"]["grid"]) == 8
    assert len(results["probes"]["blk"]["grid"]) == len(SEGMENTATION_PROTOCOLS["quick"].lrs["blk"])
    assert results["protocol"]["name"] == "quick" and results["protocol"]["epochs"] == 1  # --epochs overrides
    assert results["protocol"]["weight_decay"] == {"lin": 1e-4, "blk": 0.05} and results["protocol"]["batch_size"] == 64
    for r in results["probes"].values():
        assert 0 <= r["best"]["miou"] <= 100 and 0 <= r["best"]["pixel_accuracy"] <= 100
        assert r["best"]["miou"] == max(g["miou"] for g in r["grid"])
    assert results["heads"] == {"lin": "heads/lin.safetensors", "blk": "heads/blk.safetensors"}
    config = json.loads((out / "segmenter" / "config.json").read_text())
    assert config["segmentation_head"] == results["best_head"] and config["id2label"]["0"] == "background"
    assert results["probes"][results["best_head"]]["best"]["miou"] == max(
        results["probes"][k]["best"]["miou"] for k in ("lin", "blk"))
    report = (out / "segment_results.md").read_text()
    assert "| knn |" in report and "Lin/Blk: quick protocol (CPU-sized" in report


@needs_fmnist
def test_exported_segmentation_heads_give_the_logits_they_were_scored_with(tmp_path):
    """Each saved Lin / Blk head, attached by export_pretrained to the encoder, is a segmentation folder that
    reproduces the evaluation: its processor gives the evaluated pixels (here at 48 px, not the encoder's 32), its
    logits are the head's on the evaluated features, and its predictions score the recorded mIoU."""
    settings = SegmentationSettings(probes=("lin", "blk"), limit_train=24, limit_test=8, image_size=48, epochs=2,
                                    lrs=[3e-3])
    results = run_segmentation("random:vit-micro", "mosaic", settings, out=tmp_path / "seg")
    encoder = load_encoder("random:vit-micro")
    test = load_segmentation_split("mosaic", "test", 8, settings.seed + 1, "image", "mask")
    pixels, labels = prepare(test, encoder.config, 48, "image", "mask")
    tokens = encode(encoder, pixels, precision="fp32")  # as the test split is scored (and the folder runs)
    for kind in ("lin", "blk"):
        head_file = tmp_path / "seg" / results["heads"][kind]
        with safe_open(head_file, framework="pt") as f:
            assert {k: f.metadata()[k] for k in ("segmentation_head", "num_labels", "image_size")} == {
                "segmentation_head": kind, "num_labels": "11", "image_size": "48"}
        folder = export_pretrained("random:vit-micro", tmp_path / kind, segmentation_head=head_file)
        model = BootlegForSemanticSegmentation.from_pretrained(folder).eval()
        assert (model.config.segmentation_head, model.config.image_size, model.config.id2label[0]) == (kind, 48,
                                                                                                      "background")
        processor = type(make_segmentation_image_processor(encoder.config)).from_pretrained(folder)  # PIL backend
        processed = processor(images=[decode_image(v) for v in test["image"]], return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(processed, pixels, atol=1e-6, rtol=0)
        head = build_segmentation_head(kind, encoder.config, 11).eval()
        head.load_state_dict(load_file(head_file))
        with torch.no_grad():
            logits = model(pixels).logits
            torch.testing.assert_close(logits, head(tokens, (12, 12)), atol=1e-5, rtol=0)
        pred = F.interpolate(logits, size=(48, 48), mode="bilinear", align_corners=False).argmax(1)
        assert 100 * miou(pred, labels, 11)["miou"] == pytest.approx(results["probes"][kind]["best"]["miou"], abs=1e-9)


@needs_fmnist
def test_run_segmentation_on_a_dataset_folder_with_image_and_mask_columns(tmp_path):
    """Any dataset with image + mask columns: a `save_to_disk` folder with renamed columns and two ignore labels."""
    from bootleg_hf.data import MOSAIC_LABELS

    splits = {split: make_mosaic_segmentation(split, 12, seed).rename_columns({"image": "img", "mask": "seg"})
              for split, seed in (("train", 0), ("test", 1))}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "data"))
    results = run_segmentation("random:vit-micro", str(tmp_path / "data"), SegmentationSettings(
        probes=("knn",), limit_train=None, limit_test=8, image_column="img", mask_column="seg", ignore_index=(0, 255)))
    assert results["num_train"] == 12 and results["num_test"] == 8 and results["ignore_index"] == [0, 255]
    assert results["num_labels"] == 11  # inferred: largest train label + 1
    assert 0 not in results["probes"]["knn"]["best"]["per_class_iou"]  # background is ignored: not a class here
    # a DatasetDict object works too, and class names can be given (the saved segmenter carries them)
    results = run_segmentation("random:vit-micro", datasets.DatasetDict(splits), SegmentationSettings(
        probes=("lin",), limit_train=None, limit_test=None, epochs=1, lrs=[1e-2], image_column="img",
        mask_column="seg", label_names=MOSAIC_LABELS), out=tmp_path / "out")
    config = json.loads((tmp_path / "out" / "segmenter" / "config.json").read_text())
    assert config["id2label"]["3"] == MOSAIC_LABELS[3] and results["num_labels"] == 11
