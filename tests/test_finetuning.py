"""Fine-tuning (docs/finetuning.md): stochastic depth against timm, layer-wise LR decay against timm's groups, the
low-shot split, LoRA through peft, the recipes, and a short end-to-end run of every protocol that lowers the test
loss and leaves a folder the pipelines load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from conftest import tiny_config
from PIL import Image
from timm.optim import param_groups_layer_decay
from transformers import pipeline

import bootleg_hf
from bootleg_hf import BootlegForImageClassification, BootlegModel
from bootleg_hf.finetuning import (
    FinetuneSettings, apply_lora, available_finetune_recipes, default_out_indices, load_finetune_recipe,
    low_shot_split, merge_lora, parse_finetune_recipe, read_low_shot_split, run_finetune, training_args,
    write_low_shot_split,
)
from bootleg_hf.modeling_bootleg import drop_path_rates
from bootleg_hf.optim import layer_decay_groups
from bootleg_hf.recipes import RecipeError


def timm_vit(config, **kwargs) -> torch.nn.Module:
    return timm.models.vision_transformer.VisionTransformer(
        img_size=config.image_hw, patch_size=config.patch_size, embed_dim=config.hidden_size,
        depth=config.num_hidden_layers, num_heads=config.num_attention_heads,
        mlp_ratio=config.intermediate_size / config.hidden_size, qkv_bias=True, class_token=True,
        reg_tokens=config.num_register_tokens, no_embed_class=True, **kwargs)


# ------------------------------------------------------------------------------------------ stochastic depth
def test_drop_path_matches_timm_in_training_and_is_off_at_inference():
    """Guarantee: stochastic depth is timm's `drop_path_rate` — the same per-block rates (linear from 0), the same
    per-sample draws from the RNG (identical outputs in training for the same seed), and none at inference."""
    config = tiny_config(num_hidden_layers=4, targets="1:1:4", drop_path_rate=0.3)
    model = BootlegModel(config)
    ref = timm_vit(config, num_classes=0, drop_path_rate=0.3)
    ref.load_state_dict(bootleg_hf.bootleg_to_timm(model.state_dict(), config))
    assert [b.drop_path for b in model.blocks] == pytest.approx([getattr(b.drop_path1, "drop_prob", 0.0)
                                                                 for b in ref.blocks])
    assert drop_path_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    x = torch.randn(8, 3, 32, 32)
    model.train(), ref.train()
    torch.manual_seed(5)
    ours = model(x).last_hidden_state
    torch.manual_seed(5)
    theirs = ref.forward_features(x)
    assert torch.equal(ours, theirs)
    torch.manual_seed(6)
    assert not torch.allclose(model(x).last_hidden_state, ours)  # training really drops paths
    model.eval(), ref.eval()
    first, second = model(x).last_hidden_state, model(x).last_hidden_state
    assert torch.equal(first, second)
    assert (first - ref.forward_features(x)).abs().max() < 1e-5
    plain = BootlegModel(tiny_config(num_hidden_layers=4, targets="1:1:4"))
    plain.load_state_dict(model.state_dict())
    assert torch.equal(plain.eval()(x).last_hidden_state, first)  # at inference the rate changes nothing


def test_drop_path_rate_is_checked_and_saved(tmp_path):
    with pytest.raises(ValueError, match="drop_path_rate"):
        tiny_config(drop_path_rate=1.0)
    model = BootlegModel(tiny_config(drop_path_rate=0.2))
    model.save_pretrained(tmp_path)
    assert BootlegModel.from_pretrained(tmp_path).blocks[-1].drop_path == pytest.approx(0.2)


# ------------------------------------------------------------------------------------------ layer decay
def test_layer_decay_groups_match_timm():
    """Guarantee: the LR of every parameter under layer-wise decay is timm's `param_groups_layer_decay` one
    (embeddings decay^(L+1), block k decay^(L−k), head 1), except the final norm, which trains at the full LR as in
    MAE's fine-tuning code (timm groups it with the last block); no weight decay on norms, biases and tokens."""
    config = tiny_config(num_hidden_layers=3, targets="1:1:3", probe_type="linear", num_labels=5)
    model = BootlegForImageClassification(config)
    groups = layer_decay_groups(model, weight_decay=0.05, lr=2.0, layer_decay=0.7)
    ours = {id(p): g for g in groups for p in g["params"]}
    ref = timm_vit(config, num_classes=5)
    ref_group = {name: g for g in param_groups_layer_decay(ref, weight_decay=0.05, layer_decay=0.7)
                 for name, p in ref.named_parameters() for q in g["params"] if q is p}
    for name, p in model.named_parameters():
        g = ours[id(p)]
        assert g["lr"] == pytest.approx(2.0 * g["lr_scale"])
        timm_name = name.removeprefix("bootleg.").removeprefix("embeddings.").replace("classifier.classifier", "head")
        if name.startswith("bootleg.norm"):
            assert g["lr_scale"] == 1.0 and ref_group[timm_name]["lr_scale"] == pytest.approx(0.7)
        else:
            assert g["lr_scale"] == pytest.approx(ref_group[timm_name]["lr_scale"]), name
        decayed = p.ndim >= 2 and not name.endswith(("cls_token", "reg_token", "pos_embed"))
        assert g["weight_decay"] == (0.05 if decayed else 0.0), name
    assert {g["layer"] for g in groups} == {0, 1, 2, 3, 4}


def test_layer_decay_finds_the_encoder_inside_upernet_and_not_a_heads_blocks():
    """The segmenter head's own transformer block trains at the full LR; UperNet's backbone blocks decay."""
    from bootleg_hf import BootlegForSemanticSegmentation

    config = tiny_config(num_hidden_layers=2, segmentation_head="blk", num_labels=3)
    segmenter = BootlegForSemanticSegmentation(config)
    scale = {id(p): g["lr_scale"] for g in layer_decay_groups(segmenter, 0.0, 1.0, 0.5) for p in g["params"]}
    assert all(scale[id(p)] == 1.0 for p in segmenter.decode_head.parameters())
    assert all(scale[id(p)] == 0.5 for p in segmenter.bootleg.blocks[1].parameters())
    assert all(scale[id(p)] == 0.25 for p in segmenter.bootleg.blocks[0].parameters())
    from bootleg_hf.finetuning import build_segmenter

    recipe = load_finetune_recipe("vit-micro-upernet", ["model.decoder_hidden_size=16", "model.out_indices=[0, 1, 2]"])
    upernet = build_segmenter(BootlegModel(config), recipe, ["a", "b", "c"], 255)
    scale = {id(p): g["lr_scale"] for g in layer_decay_groups(upernet, 0.0, 1.0, 0.5) for p in g["params"]}
    assert all(scale[id(p)] == 0.125 for p in upernet.backbone.embeddings.parameters())
    assert all(scale[id(p)] == 1.0 for p in upernet.decode_head.parameters())
    with pytest.raises(ValueError, match="layer_decay"):
        layer_decay_groups(segmenter, 0.0, 1.0, 0.0)


# ------------------------------------------------------------------------------------------ low-shot split
def test_low_shot_split_is_deterministic_class_balanced_and_reusable(tmp_path):
    labels = np.repeat(np.arange(4), [100, 200, 50, 7])
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    split = low_shot_split(labels, 0.1, seed=3)
    assert split == low_shot_split(labels, 0.1, seed=3)
    assert split["indices"] != low_shot_split(labels, 0.1, seed=4)["indices"]
    assert split["per_class"] == {0: 10, 1: 20, 2: 5, 3: 1}  # round(0.1 · n), at least one image per class
    chosen = labels[split["indices"]]
    assert {c: int((chosen == c).sum()) for c in range(4)} == split["per_class"]
    assert len(set(split["indices"])) == len(split["indices"]) == 36
    write_low_shot_split(split, tmp_path / "split.json")
    assert read_low_shot_split(tmp_path / "split.json", len(labels)) == json.loads(json.dumps(split))
    with pytest.raises(ValueError, match="357 images; this training set has 10"):
        read_low_shot_split(tmp_path / "split.json", 10)
    with pytest.raises(ValueError, match="fraction"):
        low_shot_split(labels, 0.0, 0)


# ------------------------------------------------------------------------------------------ LoRA
def test_lora_adapters_and_merge_equivalence():
    """LoRA wraps exactly qkv, proj, fc1 and fc2 of every encoder block (not the X-Blk head's own MLP), trains only
    the adapters and the head, and the merged model computes what the adapter model computes (to 1e-6)."""
    from peft.tuners.lora import LoraLayer

    config = tiny_config(num_hidden_layers=2, probe_type="xblk", num_labels=4)
    model = BootlegForImageClassification(config).eval()
    peft_model = apply_lora(model, rank=8, alpha=16, dropout=0.0)
    adapted = [name for name, m in peft_model.named_modules() if isinstance(m, LoraLayer)]
    assert len(adapted) == 4 * config.num_hidden_layers
    assert all(".bootleg.blocks." in name for name in adapted)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or ".classifier." in n for n in trainable)
    assert any(".classifier." in n for n in trainable) and not any("bootleg.blocks.0.attn.qkv.base_layer" in n
                                                                     for n in trainable)
    with torch.no_grad():  # LoRA's B starts at zero: give the adapters an effect to merge
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        adapter_logits = peft_model(pixel_values=x).logits
        merged = merge_lora(peft_model)
        merged_logits = merged(pixel_values=x).logits
    assert isinstance(merged, BootlegForImageClassification)
    assert not any("lora" in k for k in merged.state_dict())
    assert (adapter_logits - merged_logits).abs().max() < 1e-6
    assert (merged_logits - BootlegForImageClassification(config).eval()(pixel_values=x).logits).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------ recipes
def test_every_shipped_recipe_parses_and_training_args_follow_it():
    names = available_finetune_recipes()
    assert {"vit-micro-full", "vit-micro-lowshot", "vit-micro-lora", "vit-micro-upernet", "vit-micro-segmenter",
            "vit-small-full", "vit-base-full", "vit-base-lowshot", "vit-base-lora",
            "vit-base-upernet-ade20k"} <= set(names)
    for name in names:
        recipe = load_finetune_recipe(name)
        assert recipe.training["max_grad_norm"] == 0.0
        assert (recipe.protocol == "lora") == (recipe.model.lora_rank > 0)
    recipe = load_finetune_recipe("vit-base-full")
    args = training_args(recipe, "/tmp/unused", num_images=1_281_167)
    assert args.learning_rate == pytest.approx(5e-4 * 1024 / 256)
    assert args.layer_decay == 0.65 and args.per_device_train_batch_size == 1024
    assert args.warmup_steps == 5 * (1_281_167 // 1024)
    assert args.lr_scheduler_kwargs == {"min_lr": 1e-6}
    assert (args.adam_beta1, args.adam_beta2, args.weight_decay) == (0.9, 0.999, 0.05)
    ade = training_args(load_finetune_recipe("vit-base-upernet-ade20k"), "/tmp/unused", num_images=20210)
    assert ade.learning_rate == pytest.approx(1e-4) and ade.num_train_epochs == 127
    assert default_out_indices(12) == [4, 6, 8, 12] and default_out_indices(6) == [2, 3, 4, 6]


@pytest.mark.parametrize("change, message", [
    ({"protocol": "probe"}, "protocol must be one of"),
    ({"model": {"head": "upernet"}}, "model.head must be one of"),
    ({"model": {"lora_rank": 8}}, "lora_rank must be > 0 exactly for protocol 'lora'"),
    ({"data": {"mixup": -1}}, "data.mixup must be >= 0"),
    ({"protocol": "dense", "model": {"head": "upernet", "out_indices": [4, 8]}}, "at least 3 encoder stages"),
    ({"data": {"crop_scale": [0.5, 0.1]}}, "crop_scale"),
    ({"training": {"layer_decayy": 0.7}}, "did you mean 'training.layer_decay'"),
    ({"training": {"base_lr": "fast"}}, "training.base_lr must be float"),
])
def test_bad_recipes_are_refused_with_the_key_named(change, message):
    raw = {"protocol": "full", "model": {}, "data": {}, "training": {}}
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    with pytest.raises(RecipeError, match=message):
        parse_finetune_recipe(raw)


def test_a_training_set_smaller_than_one_batch_is_refused():
    with pytest.raises(RecipeError, match="10 images, fewer than one global batch of 64"):
        training_args(load_finetune_recipe("vit-micro-lowshot"), "/tmp/unused", num_images=10)


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    BootlegModel(tiny_config()).save_pretrained(folder)
    return folder


# learnable in a few steps: no MixUp / RandAugment / erasing, a fixed LR after a short warm-up
QUICK = ["data.mixup=0", "data.cutmix=0", "data.auto_augment=null", "data.random_erasing=0",
         "data.label_smoothing=0", "training.eval_strategy=no", "training.save_strategy=no",
         "training.global_batch_size=32", "training.warmup_epochs=0", "training.min_lr=1e-3", "training.bf16=false"]


@pytest.mark.parametrize("recipe, overrides, limit", [
    ("vit-micro-full", ["training.base_lr=2e-2"], 256),
    ("vit-micro-lowshot", ["training.base_lr=2e-2", "data.low_shot_fraction=0.125"], 256),
    ("vit-micro-lora", ["training.base_lr=5e-2"], 256),
    ("vit-micro-segmenter", ["training.base_lr=3e-2", "training.lr_reference_batch=32", "data.image_size=32"], 64),
    ("vit-micro-upernet", ["training.base_lr=3e-2", "training.lr_reference_batch=32", "data.image_size=32",
                           "model.out_indices=[0, 1, 2]", "model.decoder_hidden_size=16"], 64),
])
def test_each_protocol_fine_tunes_end_to_end(recipe, overrides, limit, encoder_folder, tmp_path):
    """Guarantee: every protocol runs through the Trainer from a saved encoder, lowers the test loss, evaluates every
    test image, writes a results document and a model folder that `pipeline(...)` loads (LoRA merged)."""
    r = load_finetune_recipe(recipe, QUICK + overrides)
    dataset = "mosaic" if r.task == "segmentation" else "fashion-mnist"
    out = tmp_path / "run"
    results = run_finetune(r, FinetuneSettings(model=encoder_folder, output_dir=out, dataset=dataset, limit=limit,
                                               eval_limit=64, max_steps=12))
    best = next(iter(results["probes"].values()))["best"]
    assert best["steps"] == 12
    assert best["loss"] < best["initial_loss"] - 0.05, best
    assert results["num_test"] == 64
    document = json.loads((out / "finetune_results.json").read_text())
    assert document["format"] == "bootleg-results/1" and r.task in document
    folder = out / "model"
    image = Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype("uint8"))
    if r.task == "classification":
        classifier = pipeline("image-classification", model=str(folder))
        assert len(classifier(image, top_k=10)) == 10
        assert classifier.model.config.finetuning["protocol"] == r.protocol
        assert not any("lora" in k for k in classifier.model.state_dict())
    else:
        segments = pipeline("image-segmentation", model=str(folder))(image)
        assert segments and segments[0]["mask"].size == (40, 40)
    if r.protocol == "lowshot":
        split = json.loads((out / "low_shot_split.json").read_text())
        assert results["num_train"] == len(split["indices"]) == sum(split["per_class"].values())
        assert len(split["per_class"]) == 10 and 25 <= results["num_train"] <= 40  # about 1/8 of 256
    if r.protocol == "lora":
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
        merged = BootlegForImageClassification.from_pretrained(folder)
        head = sum(p.numel() for p in merged.classifier.parameters())
        # rank 8 A (8 × in) and B (out × 8) on qkv, proj, fc1, fc2 of 2 blocks at width 32 (MLP 128), plus the head
        lora = 2 * 8 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
        assert results["trainable_parameters"] == head + lora
        assert results["trainable_parameters"] < sum(p.numel() for p in merged.parameters()) / 2


def test_a_non_empty_output_folder_is_refused(encoder_folder, tmp_path):
    (tmp_path / "keep.txt").write_text("a user's file")
    with pytest.raises(ValueError, match="not empty"):
        run_finetune(load_finetune_recipe("vit-micro-full", QUICK),
                     FinetuneSettings(model=encoder_folder, output_dir=tmp_path, limit=64, eval_limit=16, max_steps=1))
    assert (tmp_path / "keep.txt").read_text() == "a user's file"


def test_mixup_cutmix_batches_train_on_soft_targets_and_evaluation_on_hard_labels(tmp_path):
    """In training, timm's Mixup mixes each batch and the loss is the soft-target cross-entropy of the mixed batch;
    in evaluation the plain cross-entropy of the hard labels (no smoothing)."""
    import torch.nn.functional as F
    from timm.data import Mixup

    from bootleg_hf.finetuning import FinetuneTrainer, FinetuneTrainingArguments

    torch.manual_seed(0)
    model = BootlegForImageClassification(tiny_config(probe_type="linear", num_labels=4))
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=4)
    trainer = FinetuneTrainer(model=model, args=FinetuneTrainingArguments(str(tmp_path), use_cpu=True, bf16=False),
                              mixup=mixup, label_smoothing=0.1)
    batch = {"pixel_values": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 3])}
    model.train()
    np.random.seed(0)
    loss = trainer.compute_loss(model, dict(batch))
    np.random.seed(0)
    mixed, soft = mixup(batch["pixel_values"].clone(), batch["labels"])
    assert soft.shape == (4, 4) and not torch.equal(mixed, batch["pixel_values"])
    expected = -(soft * F.log_softmax(model(pixel_values=mixed).logits, -1)).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    model.eval()
    hard = trainer.compute_loss(model, dict(batch))
    assert hard.item() == pytest.approx(F.cross_entropy(model(pixel_values=batch["pixel_values"]).logits,
                                                        batch["labels"]).item(), rel=1e-5)
