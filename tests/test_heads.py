"""Task models (docs/design.md §7): BootlegForImageClassification / BootlegForSemanticSegmentation, Auto classes,
pipelines, gradient accumulation, and attaching trained heads to an encoder."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from PIL import Image
from transformers import (
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
    Trainer,
    TrainingArguments,
    pipeline,
)

import bootleg_hf
from bootleg_hf import (
    BootlegForImageClassification,
    BootlegForPretraining,
    BootlegForSemanticSegmentation,
    BootlegModel,
)
from bootleg_hf.checkpoints import export_pretrained
from bootleg_hf.modeling_bootleg_heads import (
    LinearSegmentationHead,
    MaskTransformerHead,
    build_segmentation_head,
    upgrade_segmentation_keys,
)

PROBES = ("patch", "cls", "xattn", "xblk")


pytestmark = pytest.mark.usefixtures("single_thread")


def classifier(probe: str = "cls", **overrides) -> BootlegForImageClassification:
    torch.manual_seed(0)
    return BootlegForImageClassification(tiny_config(**{"probe_type": probe, "num_labels": 3, **overrides}))


def segmenter(head: str = "lin", **overrides) -> BootlegForSemanticSegmentation:
    torch.manual_seed(0)
    return BootlegForSemanticSegmentation(tiny_config(**{"segmentation_head": head, "num_labels": 3, **overrides}))


def assert_head_only_gradients(model, head):
    for name, p in model.bootleg.named_parameters():
        assert p.grad is None, name
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("probe", PROBES)
def test_classification_shapes_and_frozen_gradients(probe):
    model = classifier(probe).freeze_encoder()
    out = model(torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 0]))
    assert out.logits.shape == (4, 3) and out.loss.ndim == 0
    out.loss.backward()
    assert_head_only_gradients(model, model.classifier)


@pytest.mark.parametrize("head", ["lin", "blk", "linear"])
def test_segmentation_shapes_and_frozen_gradients(head):
    model = segmenter(head).freeze_encoder()
    labels = torch.randint(0, 3, (2, 40, 40))
    labels[:, :5] = 255  # ignored rows
    out = model(torch.randn(2, 3, 32, 32), labels=labels)
    assert out.logits.shape == (2, 3, 4, 4)
    upsampled = torch.nn.functional.interpolate(out.logits, size=(40, 40), mode="bilinear", align_corners=False)
    expected = torch.nn.functional.cross_entropy(upsampled, labels, ignore_index=255)
    assert torch.allclose(out.loss, expected)
    out.loss.backward()
    assert_head_only_gradients(model, model.decode_head)
    expected = {"lin": MaskTransformerHead, "blk": MaskTransformerHead, "linear": LinearSegmentationHead}[head]
    assert isinstance(model.decode_head, expected)


def test_unfrozen_encoder_gets_gradients_and_other_sizes_interpolate():
    model = segmenter("blk")
    out = model(torch.randn(1, 3, 48, 32), labels=torch.zeros(1, 48, 32, dtype=torch.long),
                interpolate_pos_encoding=True)
    assert out.logits.shape == (1, 3, 6, 4)
    out.loss.backward()
    assert model.bootleg.embeddings.patch_embed.proj.weight.grad is not None


def test_blk_head_structure():
    head = segmenter("blk").decode_head
    assert len(head.blocks) == 1 and len(segmenter("lin").decode_head.blocks) == 0
    assert head.class_embed.shape == (1, 3, 32) and head.proj_patch.shape == (32, 32)
    # Segmenter's projections start as d^-0.5 · randn, not the Linear init
    assert float(head.proj_patch.detach().std()) == pytest.approx(32**-0.5, rel=0.2)
    assert head.mask_norm.normalized_shape == (3,)  # LayerNorm over the class axis


def segmenter_decoder(state: dict, tokens: torch.Tensor, num_prefix: int, n_layers: int, num_heads: int,
                      grid: tuple[int, int], eps: float) -> torch.Tensor:
    """Segmenter's `MaskTransformer.forward` written out from its parameters (docs/design.md §7, the reference notes'
    Segmenter facts): patch tokens → Linear; [patches, classes]; pre-LN blocks; LN; the two projections, each
    L2-normalised; cosine masks → LayerNorm over the classes → `b (h w) n -> b n h w`."""
    x = tokens[:, num_prefix:] @ state["proj_in.weight"].T + state["proj_in.bias"]
    b, n, d = x.shape
    x = torch.cat([x, state["class_embed"].expand(b, -1, -1)], dim=1)
    for i in range(n_layers):
        w = {k[len(f"blocks.{i}."):]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(x, (d,), w["norm1.weight"], w["norm1.bias"], eps)
        q, k, v = (t.reshape(b, -1, num_heads, d // num_heads).transpose(1, 2)
                   for t in (h @ w["attn.qkv.weight"].T + w["attn.qkv.bias"]).chunk(3, dim=-1))
        attn = ((q @ k.transpose(-1, -2)) * (d // num_heads) ** -0.5).softmax(-1) @ v
        x = x + attn.transpose(1, 2).reshape(b, -1, d) @ w["attn.proj.weight"].T + w["attn.proj.bias"]
        h = F.layer_norm(x, (d,), w["norm2.weight"], w["norm2.bias"], eps)
        x = x + F.gelu(h @ w["mlp.fc1.weight"].T + w["mlp.fc1.bias"]) @ w["mlp.fc2.weight"].T + w["mlp.fc2.bias"]
    x = F.layer_norm(x, (d,), state["norm.weight"], state["norm.bias"], eps)
    patches, classes = x[:, :n] @ state["proj_patch"], x[:, n:] @ state["proj_classes"]
    patches = patches / patches.norm(dim=-1, keepdim=True)
    classes = classes / classes.norm(dim=-1, keepdim=True)
    masks = patches @ classes.transpose(1, 2)  # [B, N, C]
    masks = F.layer_norm(masks, masks.shape[-1:], state["mask_norm.weight"], state["mask_norm.bias"])
    return masks.transpose(1, 2).reshape(b, -1, *grid)


@pytest.mark.parametrize("kind, n_layers", [("lin", 0), ("blk", 1)])
def test_mask_transformer_heads_compute_segmenters_decoder(kind, n_layers):
    config = tiny_config()  # width 32, 4 heads, CLS + 4 registers, a 4×4 grid
    torch.manual_seed(0)
    head = build_segmentation_head(kind, config, 5).eval()
    assert isinstance(head, MaskTransformerHead) and len(head.blocks) == n_layers
    with torch.no_grad():  # no parameter keeps its (structured) initial value
        for p in head.parameters():
            p.normal_(0, 0.3)
    tokens = torch.randn(2, 5 + 16, 32)
    cosines = []
    head.mask_norm.register_forward_hook(lambda module, args, out: cosines.append(args[0]))
    with torch.no_grad():
        logits = head(tokens, (4, 4))
        expected = segmenter_decoder(head.state_dict(), tokens, 5, n_layers, 4, (4, 4), config.layer_norm_eps)
    assert logits.shape == (2, 5, 4, 4)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert cosines[0].shape == (2, 16, 5) and cosines[0].abs().max() <= 1 + 1e-6  # cosine similarities
    with torch.no_grad():  # the prefix tokens (CLS, registers) are dropped
        assert torch.equal(head(torch.cat([torch.randn(2, 5, 32), tokens[:, 5:]], 1), (4, 4)), logits)
    if n_layers == 0:  # without blocks each patch only feeds its own position: patch 6 is row 1, column 2
        moved = tokens.clone()
        moved[:, 5 + 6] += 1
        with torch.no_grad():
            changed = (head(moved, (4, 4)) != logits).any(dim=(0, 1))
        assert changed.nonzero().tolist() == [[1, 2]]


def test_segmentation_folders_of_earlier_versions_load(tmp_path):
    """Earlier versions saved Lin as one Linear per patch under the name `lin` (today's `linear`) and Blk's block as
    `block.*`: such folders load with the same logits, through the Auto class and the pipeline, and save again in
    today's layout; their head files export the same way."""
    from safetensors.torch import load_file, save_file

    x = torch.randn(2, 3, 32, 32)
    old_lin = segmenter("linear").eval()
    old_lin.save_pretrained(tmp_path / "lin")
    config = json.loads((tmp_path / "lin" / "config.json").read_text())
    (tmp_path / "lin" / "config.json").write_text(json.dumps({**config, "segmentation_head": "lin"}))
    old_blk = segmenter("blk").eval()
    old_blk.save_pretrained(tmp_path / "blk")
    weights = {k.replace("decode_head.blocks.0.", "decode_head.block."): v
               for k, v in load_file(tmp_path / "blk" / "model.safetensors").items()}
    save_file(weights, tmp_path / "blk" / "model.safetensors", metadata={"format": "pt"})
    for name, old in (("lin", old_lin), ("blk", old_blk)):
        loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / name).eval()
        assert type(loaded.decode_head) is type(old.decode_head)
        assert loaded.config.segmentation_head == {"lin": "linear", "blk": "blk"}[name]
        with torch.no_grad():
            torch.testing.assert_close(loaded(x).logits, old(x).logits, atol=1e-6, rtol=0)
        loaded.save_pretrained(tmp_path / f"{name}-again")
        assert set(load_file(tmp_path / f"{name}-again" / "model.safetensors")) == set(old.state_dict())
    bootleg_hf.make_image_processor(old_lin.config).save_pretrained(tmp_path / "lin")
    assert pipeline("image-segmentation", model=str(tmp_path / "lin"))(Image.new("RGB", (32, 32)))

    # head files (bootleg-segment's heads/<kind>.safetensors) of earlier versions
    encoder = old_lin.bootleg
    encoder.save_pretrained(tmp_path / "encoder")
    save_file(old_lin.decode_head.state_dict(), tmp_path / "lin.safetensors",
              metadata={"segmentation_head": "lin", "labels": json.dumps(["a", "b", "c"])})
    model = BootlegForSemanticSegmentation.from_pretrained(
        export_pretrained(tmp_path / "encoder", tmp_path / "exported", segmentation_head=tmp_path / "lin.safetensors"))
    assert model.config.segmentation_head == "linear"
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x).logits, old_lin(x).logits, atol=1e-6, rtol=0)
    assert upgrade_segmentation_keys("blk", ["block.norm1.weight", "class_embed"]) == (
        "blk", {"block.norm1.weight": "blocks.0.norm1.weight"})
    assert upgrade_segmentation_keys("lin", list(segmenter("lin").decode_head.state_dict())) == ("lin", {})


@pytest.mark.parametrize("auto, make", [(AutoModelForImageClassification, lambda: classifier("patch")),
                                        (AutoModelForSemanticSegmentation, lambda: segmenter("blk"))])
def test_save_and_load_with_auto_classes(tmp_path, auto, make):
    model = make()
    model.train()
    model(torch.randn(4, 3, 32, 32))  # moves BatchNorm running statistics away from their initial values
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    model.save_pretrained(tmp_path)
    loaded = auto.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-6)


def test_heads_load_from_an_encoder_folder_and_a_pretraining_checkpoint(tmp_path):
    torch.manual_seed(0)
    encoder = BootlegModel(tiny_config())
    encoder.save_pretrained(tmp_path / "encoder")
    loaded = BootlegForImageClassification.from_pretrained(tmp_path / "encoder", num_labels=3, probe_type="xblk")
    assert torch.equal(loaded.bootleg.embeddings.cls_token, encoder.embeddings.cls_token)

    pretraining = BootlegForPretraining(tiny_config())
    with torch.no_grad():
        pretraining.teacher.embeddings.cls_token.add_(1.0)  # teacher ≠ student
    pretraining.save_pretrained(tmp_path / "pretraining")
    seg = BootlegForSemanticSegmentation.from_pretrained(tmp_path / "pretraining", num_labels=3)
    assert torch.equal(seg.bootleg.embeddings.cls_token, pretraining.teacher.embeddings.cls_token)


@pytest.mark.parametrize("cls, kind", [(BootlegForImageClassification, {"probe_type": "xattn"}),
                                       (BootlegForSemanticSegmentation, {"segmentation_head": "blk"})])
def test_from_encoder_attaches_a_trained_head(cls, kind):
    torch.manual_seed(0)
    encoder = BootlegModel(tiny_config())
    donor = cls(tiny_config(num_labels=4, **kind))
    head = getattr(donor, cls.head_name)
    model = cls.from_encoder(encoder, head.state_dict(), id2label=["a", "b", "c", "d"], **kind)
    assert model.config.id2label == {0: "a", 1: "b", 2: "c", 3: "d"} and model.config.label2id["c"] == 2
    assert model.config.num_labels == 4 and getattr(model.config, next(iter(kind))) == next(iter(kind.values()))
    for name, value in encoder.state_dict().items():
        assert torch.equal(model.bootleg.state_dict()[name], value), name
    for name, value in head.state_dict().items():
        assert torch.equal(getattr(model, cls.head_name).state_dict()[name], value), name


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """accepts_loss_kwargs=False: with 2 accumulation steps the Trainer averages the micro-batch means, so one SGD
    step equals one step on the full batch (a head that ignored num_items_in_batch would double the update)."""
    torch.manual_seed(0)
    data = [{"pixel_values": torch.randn(3, 32, 32), "labels": i % 3} for i in range(8)]

    def one_step(batch, accumulation):
        model = classifier("cls").freeze_encoder()
        args = TrainingArguments(output_dir=str(tmp_path / f"ga{accumulation}"), per_device_train_batch_size=batch,
                                 gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=1.0,
                                 optim="sgd", weight_decay=0.0, lr_scheduler_type="constant", max_grad_norm=0.0,
                                 report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=data)
        assert trainer.model_accepts_loss_kwargs is False
        before = model.classifier.classifier.weight.detach().clone()
        trainer.train()
        return model.classifier.classifier.weight.detach() - before

    full, accumulated = one_step(8, 1), one_step(4, 2)
    assert full.abs().max() > 1e-4
    assert torch.allclose(full, accumulated, atol=1e-6)
    seg_trainer = Trainer(model=segmenter(), args=TrainingArguments(output_dir=str(tmp_path / "seg"), report_to=[],
                                                                    use_cpu=True))
    assert seg_trainer.model_accepts_loss_kwargs is False


# --- pipelines on a tiny separable problem ----------------------------------------------------------------------------


def save_with_processor(model, path):
    model.save_pretrained(path)
    bootleg_hf.make_image_processor(model.config).save_pretrained(path)


def fit(model, pixel_values, labels, steps=60, lr=2e-2):
    model.freeze_encoder()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = model(pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_image_classification_pipeline_from_folder(tmp_path):
    """Dark vs bright images: a CLS probe trained on the frozen random encoder, saved, and served by the pipeline."""
    rng = np.random.default_rng(0)

    def image(bright: bool) -> Image.Image:
        level = rng.integers(170, 255) if bright else rng.integers(0, 80)
        return Image.fromarray(np.clip(level + rng.normal(0, 10, (40, 40, 3)), 0, 255).astype(np.uint8))

    labels = torch.arange(16) % 2
    train = [image(bool(b)) for b in labels]
    model = classifier("cls", num_labels=2, id2label={0: "dark", 1: "bright"}, label2id={"dark": 0, "bright": 1})
    processor = bootleg_hf.make_image_processor(model.config)
    fit(model, processor(train, return_tensors="pt")["pixel_values"], labels)
    save_with_processor(model, tmp_path)
    classify = pipeline("image-classification", model=str(tmp_path))
    for bright in (False, True, False, True):
        top = classify(image(bright), top_k=1)[0]
        assert top["label"] == ("bright" if bright else "dark")


def test_image_segmentation_pipeline_from_folder(tmp_path):
    """A white square in one quadrant of a black image: a Lin head finds it, the pipeline returns its mask."""

    def sample(quadrant: int, size: int) -> tuple[Image.Image, np.ndarray]:
        mask = np.zeros((size, size), dtype=np.uint8)
        r, c = divmod(quadrant, 2)
        mask[r * size // 2:(r + 1) * size // 2, c * size // 2:(c + 1) * size // 2] = 1
        return Image.fromarray(np.repeat(mask[..., None] * 255, 3, axis=2)), mask

    model = segmenter("lin", num_labels=2, id2label={0: "background", 1: "square"},
                      label2id={"background": 0, "square": 1})
    processor = bootleg_hf.make_image_processor(model.config)
    images, masks = zip(*(sample(q % 4, 32) for q in range(8)))
    fit(model, processor(list(images), return_tensors="pt")["pixel_values"],
        torch.from_numpy(np.stack(masks)).long(), steps=80)
    save_with_processor(model, tmp_path)
    segment = pipeline("image-segmentation", model=str(tmp_path))
    for quadrant in range(4):
        image, truth = sample(quadrant, 48)  # another size: the pipeline resizes and returns masks at 48×48
        found = {r["label"]: np.asarray(r["mask"]) > 0 for r in segment(image)}
        assert set(found) == {"background", "square"}
        assert found["square"].shape == (48, 48)
        assert (found["square"] == truth.astype(bool)).mean() > 0.95
