"""Conversion (docs/design.md §8): official I-JEPA checkpoints and transformers' IJepaModel folders → Bootleg;
standard timm ViTs (learned position tables, with or without CLS/registers) → Bootleg; pretraining checkpoints →
clean encoder folders, with trained probe / segmentation heads attached on request."""

import argparse
import pickle
import shutil
from functools import partial
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
import transformers
from conftest import tiny_config
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (AutoImageProcessor, AutoModel, AutoModelForImageClassification,
                          AutoModelForSemanticSegmentation, IJepaConfig, IJepaForImageClassification, IJepaModel)
from transformers.image_utils import PILImageResampling

import bootleg_hf
from bootleg_hf import BootlegForImageClassification, BootlegForPretraining, BootlegModel
from bootleg_hf.conversion import KeyMismatchError, config_from_ijepa, ijepa_to_bootleg, load_ijepa_checkpoint
from bootleg_hf.checkpoints import export_pretrained, save_model_folder
from bootleg_hf.cli import convert_ijepa_main, convert_timm_main, export_main
from bootleg_hf.conversion import bootleg_to_timm, ijepa_predictor_to_bootleg, timm_to_bootleg, timm_vit_to_bootleg
from bootleg_hf.modeling_bootleg_heads import build_segmentation_head

ROOT = Path(__file__).resolve().parents[1]
GEOMETRY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)
PREDICTOR_WIDTH, PREDICTOR_DEPTH = 16, 2

# what an encoder folder holds: weights, config (with auto_map), processor, and the remote-code modules
ENCODER_FOLDER = sorted(["config.json", "model.safetensors", "preprocessor_config.json", "configuration_bootleg.py",
                         "modeling_bootleg.py", "targets.py"])


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial values everywhere (LayerNorms included), except the fixed sin-cos table."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "pos_embed" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if name.endswith("norm1.weight") else 0.0))
    return module.eval()


def timm_ijepa_encoder(seed: int) -> torch.nn.Module:
    """A timm ViT with I-JEPA's layout: no CLS, no registers, sin-cos added to every patch, final norm on tokens."""
    ref = timm.models.vision_transformer.VisionTransformer(
        **GEOMETRY, class_token=False, reg_tokens=0, global_pool="avg", fc_norm=False, no_embed_class=True,
        num_classes=0, qkv_bias=True)
    ref.pos_embed.data.copy_(bootleg_hf.sincos_position_embedding(32, 4, 4)[None])
    return randomize(ref, seed)


def predictor_blocks() -> torch.nn.ModuleList:
    block = partial(timm.models.vision_transformer.Block, PREDICTOR_WIDTH, 4, qkv_bias=True,
                    norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    return torch.nn.ModuleList(block() for _ in range(PREDICTOR_DEPTH))


def ijepa_predictor_state(seed: int) -> dict[str, torch.Tensor]:
    """A state dict with the official I-JEPA predictor's key names and shapes (depth 2, width 16, 4 heads)."""
    g = torch.Generator().manual_seed(seed)
    state = {f"predictor_blocks.{k}": v for k, v in randomize(predictor_blocks(), seed).state_dict().items()}
    state.update({
        "mask_token": torch.randn(1, 1, PREDICTOR_WIDTH, generator=g) * 0.02,
        "predictor_pos_embed": bootleg_hf.sincos_position_embedding(PREDICTOR_WIDTH, 4, 4)[None],
        "predictor_embed.weight": torch.randn(PREDICTOR_WIDTH, 32, generator=g) * 0.2,
        "predictor_embed.bias": torch.randn(PREDICTOR_WIDTH, generator=g) * 0.2,
        "predictor_norm.weight": 1 + torch.randn(PREDICTOR_WIDTH, generator=g) * 0.2,
        "predictor_norm.bias": torch.randn(PREDICTOR_WIDTH, generator=g) * 0.2,
        "predictor_proj.weight": torch.randn(32, PREDICTOR_WIDTH, generator=g) * 0.2,
        "predictor_proj.bias": torch.randn(32, generator=g) * 0.2,
    })
    return state


def ijepa_checkpoint(student: torch.nn.Module, teacher: torch.nn.Module) -> dict:
    """The dict I-JEPA's train.py saves: DDP `module.` prefixes, optimizer/scaler/bookkeeping entries."""
    def ddp(state):
        return {f"module.{k}": v.clone() for k, v in state.items()}

    return {"encoder": ddp(student.state_dict()), "target_encoder": ddp(teacher.state_dict()),
            "predictor": ddp(ijepa_predictor_state(3)), "opt": {"state": {}, "param_groups": [{"lr": 1e-3}]},
            "scaler": None, "epoch": 300, "loss": 0.1, "batch_size": 128, "world_size": 16, "lr": 1e-3}


@pytest.fixture(scope="module")
def ijepa(tmp_path_factory):
    """(path of a saved .pth.tar, timm student, timm teacher)."""
    student, teacher = timm_ijepa_encoder(1), timm_ijepa_encoder(2)
    path = tmp_path_factory.mktemp("ijepa") / "IN1K-vit.tiny.8-300e.pth.tar"
    torch.save(ijepa_checkpoint(student, teacher), path)
    return path, student, teacher


@pytest.mark.parametrize("student", [False, True])
def test_ijepa_cli_conversion_matches_timm(ijepa, tmp_path, capsys, student):
    path, timm_student, timm_teacher = ijepa
    out = tmp_path / "converted"
    convert_ijepa_main(["--checkpoint", str(path), "--out", str(out), "--num-heads", "4"] + ["--student"] * student)
    assert "wrote BootlegModel" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ENCODER_FOLDER
    model = AutoModel.from_pretrained(out).eval()
    assert isinstance(model, BootlegModel)
    c = model.config
    assert (c.use_cls_token, c.num_register_tokens, c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
            c.image_size, c.patch_size) == (False, 0, 32, 2, 4, 32, 8)
    ref = timm_student if student else timm_teacher
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(x)
        tokens = ref.forward_features(x)
        pooled = ref.forward_head(tokens, pre_logits=True)  # global_pool="avg": mean of the final-norm tokens
    torch.testing.assert_close(ours.last_hidden_state, tokens, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.pooler_output, pooled, atol=1e-5, rtol=0)
    other = timm_teacher if student else timm_student
    assert (ours.last_hidden_state - other.forward_features(x)).abs().max() > 1e-2  # the right encoder was taken


def test_ijepa_predictor_maps_into_pretraining_model(ijepa, tmp_path, capsys):
    path, timm_student, timm_teacher = ijepa
    out = tmp_path / "pretraining"
    convert_ijepa_main(["--checkpoint", str(path), "--out", str(out), "--with-predictor", "--num-heads", "4"])
    printed = capsys.readouterr().out
    assert "predictor_pos_embed" in printed and "reg_token" in printed  # what did not map one-to-one is reported
    model = BootlegForPretraining.from_pretrained(out).eval()
    assert (model.config.targets, model.config.predictor_num_register_tokens) == ("final", 0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.student(x).last_hidden_state, timm_student.forward_features(x), atol=1e-5,
                                   rtol=0)
        torch.testing.assert_close(model.teacher(x).last_hidden_state, timm_teacher.forward_features(x), atol=1e-5,
                                   rtol=0)

    # the predictor computes I-JEPA's function: [embed(ctx) + pos, mask_token + pos] → blocks → norm → proj
    sd = ijepa_predictor_state(3)
    blocks = predictor_blocks()
    blocks.load_state_dict({k.removeprefix("predictor_blocks."): v for k, v in sd.items()
                            if k.startswith("predictor_blocks.")})
    ctx_idx = torch.tensor([[0, 1, 2, 4, 5, 6, 8], [3, 7, 8, 9, 10, 11, 15]])
    tgt_idx = torch.tensor([[10, 11, 14, 15], [0, 1, 4, 5]])
    z = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(1))
    pos = sd["predictor_pos_embed"].expand(2, -1, -1)

    def gather(t, idx):
        return torch.gather(t, 1, idx[..., None].expand(-1, -1, t.shape[-1]))

    with torch.no_grad():
        seq = torch.cat([F.linear(z, sd["predictor_embed.weight"], sd["predictor_embed.bias"]) + gather(pos, ctx_idx),
                         sd["mask_token"] + gather(pos, tgt_idx)], dim=1)
        for block in blocks.eval():
            seq = block(seq)
        seq = F.layer_norm(seq, (PREDICTOR_WIDTH,), sd["predictor_norm.weight"], sd["predictor_norm.bias"], 1e-6)
        expected = F.linear(seq[:, -4:], sd["predictor_proj.weight"], sd["predictor_proj.bias"])
        ours = model.predictor(None, z, ctx_idx, tgt_idx[:, None])[:, 0]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_ijepa_malformed_checkpoints_give_readable_errors(ijepa, tmp_path):
    path, _, _ = ijepa
    ckpt = torch.load(path, weights_only=True)
    ckpt["target_encoder"].pop("module.blocks.1.mlp.fc2.bias")
    ckpt["target_encoder"]["module.blocks.1.ls1.gamma"] = torch.ones(32)
    with pytest.raises(KeyMismatchError) as err:
        ijepa_to_bootleg(load_ijepa_checkpoint(_save(ckpt, tmp_path / "bad.pth.tar")),
                         num_heads=4)
    message = str(err.value)
    assert "1 missing and 1 unexpected" in message
    assert "missing:    blocks.1.mlp.fc2.bias" in message and "unexpected: blocks.1.ls1.gamma" in message

    learned = torch.load(path, weights_only=True)
    learned["target_encoder"]["module.pos_embed"] = torch.randn(1, 16, 32)
    with pytest.raises(ValueError, match="not Bootleg's fixed 2-D sin-cos table"):
        ijepa_to_bootleg(_save(learned, tmp_path / "learned.pth.tar"), num_heads=4)
    with pytest.raises(KeyMismatchError, match="not an I-JEPA checkpoint"):
        ijepa_to_bootleg(_save({"model": {}}, tmp_path / "other.pth.tar"))
    # arbitrary pickled objects are refused by weights_only=True, with no unsafe fallback
    ckpt = torch.load(path, weights_only=True)
    ckpt["args"] = argparse.Namespace(lr=1e-3)
    with pytest.raises(pickle.UnpicklingError):
        ijepa_to_bootleg(_save(ckpt, tmp_path / "pickled.pth.tar"), num_heads=4)


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_ijepa_config_inference_for_official_widths():
    def encoder(width, depth, patch, grid):
        meta = partial(torch.empty, device="meta")
        return {"patch_embed.proj.weight": meta(width, 3, patch, patch), "pos_embed": meta(1, grid * grid, width),
                "blocks.0.mlp.fc1.weight": meta(4 * width, width), "blocks.0.attn.qkv.bias": meta(3 * width),
                **{f"blocks.{i}.norm1.weight": meta(width) for i in range(depth)}}

    vith = config_from_ijepa(encoder(1280, 32, 14, 16))  # I-JEPA ViT-H/14 at 224: 16 heads, not 1280 / 64
    assert (vith.num_attention_heads, vith.num_hidden_layers, vith.image_size) == (16, 32, 224)
    assert vith.num_prefix_tokens == 0
    assert config_from_ijepa(encoder(1280, 32, 14, 32)).image_size == 448
    with pytest.raises(ValueError, match="pass num_heads"):
        config_from_ijepa(encoder(96, 2, 8, 4))
    assert config_from_ijepa(encoder(96, 2, 8, 4), num_heads=2).num_attention_heads == 2


# ------------------------------------------------------------------------------------------------ export_pretrained
@pytest.fixture(scope="module")
def pretraining_checkpoint(tmp_path_factory):
    """A `BootlegForPretraining` saved like a Trainer `checkpoint-N`, with teacher ≠ student (one EMA update)."""
    torch.manual_seed(0)
    model = BootlegForPretraining(tiny_config())
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.update_teacher(0.5)
    folder = tmp_path_factory.mktemp("run") / "checkpoint-3"
    model.save_pretrained(folder)
    for junk in ("optimizer.pt", "rng_state.pth", "training_args.bin"):  # Trainer pickles: must not be carried over
        torch.save({"x": torch.zeros(1)}, folder / junk)
    (folder / "trainer_state.json").write_text("{}")
    return folder, model.eval()


@pytest.mark.parametrize("student", [False, True])
def test_export_pretrained_encoder(pretraining_checkpoint, tmp_path, student):
    folder, model = pretraining_checkpoint
    out = tmp_path / "encoder"
    export_main([str(folder), "--out", str(out)] + ["--student"] * student)
    assert sorted(p.name for p in out.iterdir()) == ENCODER_FOLDER
    with safe_open(out / "model.safetensors", framework="pt") as f:
        assert not any(k.startswith(("student.", "predictor.", "bootleg.")) for k in f.keys())
    encoder = AutoModel.from_pretrained(out).eval()
    assert type(encoder) is BootlegModel and encoder.config.architectures == ["BootlegModel"]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = encoder(x).last_hidden_state
        want, other = (model.student(x), model.teacher(x)) if student else (model.teacher(x), model.student(x))
    assert torch.equal(got, want.last_hidden_state)
    assert (got - other.last_hidden_state).abs().max() > 1e-3


def test_export_accepts_encoder_folders_but_needs_pretraining_for_the_student(tmp_path):
    BootlegModel(tiny_config()).save_pretrained(tmp_path / "enc")  # e.g. a converted I-JEPA encoder, to attach heads
    out = export_pretrained(tmp_path / "enc", tmp_path / "out")
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "enc" / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="not a BootlegForPretraining folder"):
        export_pretrained(tmp_path / "enc", tmp_path / "out2", student=True)


def test_export_pretrained_with_trained_heads(pretraining_checkpoint, tmp_path):
    folder, model = pretraining_checkpoint
    config = model.config
    probe = randomize(bootleg_hf.build_probe("xblk", config, 3), 4)
    # as the probes write their best heads: the head's state dict, the probe type in the metadata
    save_file({k: v.contiguous() for k, v in probe.state_dict().items()}, tmp_path / "xblk.safetensors",
              metadata={"probe_type": "xblk", "top1": "80.0"})
    (tmp_path / "labels.json").write_text('{"0": "shirt", "1": "shoe", "2": "bag"}')
    out = tmp_path / "cls"
    export_main([str(folder), "--out", str(out), "--probe-head", str(tmp_path / "xblk.safetensors"), "--labels",
                 str(tmp_path / "labels.json")])
    classifier = AutoModelForImageClassification.from_pretrained(out).eval()
    assert type(classifier) is BootlegForImageClassification and classifier.config.probe_type == "xblk"
    assert classifier.config.id2label == {0: "shirt", 1: "shoe", 2: "bag"}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(classifier(x).logits, probe(model.teacher(x).last_hidden_state), atol=1e-6, rtol=0)

    head = randomize(build_segmentation_head("blk", config, 2), 5)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, tmp_path / "blk.safetensors")
    out = tmp_path / "seg"
    export_main([str(folder), "--out", str(out), "--student", "--segmentation-head", str(tmp_path / "blk.safetensors"),
                 "--segmentation-type", "blk", "--labels", "background", "item"])
    segmenter = AutoModelForSemanticSegmentation.from_pretrained(out).eval()
    assert segmenter.config.id2label == {0: "background", 1: "item"}
    with torch.no_grad():
        torch.testing.assert_close(segmenter(x).logits, head(model.student(x).last_hidden_state, (4, 4)), atol=1e-6,
                                   rtol=0)

    with pytest.raises(KeyMismatchError, match="unexpected: mlp.fc1.weight"):  # an X-Blk head is not a patch probe
        export_pretrained(folder, tmp_path / "bad", probe_head=tmp_path / "xblk.safetensors",
                                            probe_type="xattn", labels=["a", "b", "c"])


# ------------------------------------------------------------------------------------------------ data-loss guards
def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_export_refuses_an_output_that_overlaps_its_input(pretraining_checkpoint, tmp_path, where):
    source = tmp_path / "run" / "checkpoint-3"
    shutil.copytree(pretraining_checkpoint[0], source)
    before = snapshot(tmp_path)
    out = {"same": source, "inside": source / "encoder", "parent": source.parent}[where]
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="overlap") as err:
            export_pretrained(source, out, overwrite=overwrite)
        assert str(source) in str(err.value) and str(out) in str(err.value)
    assert snapshot(tmp_path) == before  # the student and predictor survive


def test_export_replaces_a_non_empty_output_only_with_overwrite(pretraining_checkpoint, tmp_path):
    folder = pretraining_checkpoint[0]
    out = tmp_path / "encoder"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        export_pretrained(folder, out)
    assert snapshot(out) == {"notes.txt": b"mine"}
    export_pretrained(folder, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ENCODER_FOLDER
    # a head file in the output folder is an input: never replaced, even with overwrite
    save_file({"w": torch.zeros(1)}, out / "head.safetensors")
    with pytest.raises(ValueError, match="overlap"):
        export_pretrained(folder, out, probe_head=out / "head.safetensors", labels=["a"], overwrite=True)
    assert (out / "head.safetensors").is_file()


def test_save_model_folder_is_atomic_and_refuses_non_finite_weights(tmp_path, monkeypatch):
    model = BootlegModel(tiny_config())
    out = tmp_path / "encoder"
    with torch.no_grad():
        model.blocks[1].mlp.fc2.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="'blocks.1.mlp.fc2.weight' holds non-finite values"):
        save_model_folder(model, out)
    assert list(tmp_path.iterdir()) == []

    model = BootlegModel(tiny_config())
    save_model_folder(model, out)
    reference = tmp_path / "fresh"
    reference.mkdir()
    assert out.stat().st_mode == reference.stat().st_mode  # as a plain mkdir: no private temporary-folder mode
    before = snapshot(out)
    with pytest.raises(ValueError, match="not empty"):
        save_model_folder(model, out)

    def crash(*args, **kwargs):
        (Path(args[1]) / "partial.json").write_text("{")
        raise OSError("disk full")

    monkeypatch.setattr(transformers.MobileNetV2ImageProcessorPil, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):  # a crash half-way leaves the old folder as it was
        save_model_folder(BootlegModel(tiny_config()), out, overwrite=True)
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["encoder", "fresh"]
    monkeypatch.undo()
    replacement = BootlegModel(tiny_config())
    save_model_folder(replacement, out, overwrite=True)
    assert snapshot(out) != before and sorted(p.name for p in tmp_path.iterdir()) == ["encoder", "fresh"]
    loaded = BootlegModel.from_pretrained(out)
    assert torch.equal(loaded.blocks[0].attn.qkv.weight, replacement.blocks[0].attn.qkv.weight)


# ------------------------------------------------------------------------------- transformers' IJepaModel layout
def hf_ijepa(sincos: bool = False, **config) -> IJepaModel:
    """A tiny `IJepaModel` (width 32, 2 layers, 2 heads, 32 px, patch 8) with non-trivial weights everywhere; its
    position table random (as transformers initialises it) or the fixed sin-cos one (as the Hub's converted weights)."""
    torch.manual_seed(0)
    model = IJepaModel(IJepaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                   image_size=32, patch_size=8, **config), add_pooling_layer=True)
    randomize(model, 7)
    if sincos:
        model.embeddings.position_embeddings.data.copy_(bootleg_hf.sincos_position_embedding(32, 4, 4)[None])
    return model.eval()


@pytest.fixture(scope="module")
def hf_ijepa_folders(tmp_path_factory):
    """(IJepaModel, root) with root/one (model.safetensors) and root/sharded (an index and several shards)."""
    model, root = hf_ijepa(), tmp_path_factory.mktemp("hf-ijepa")
    model.save_pretrained(root / "one")
    model.save_pretrained(root / "sharded", max_shard_size="20KB")
    assert len(list((root / "sharded").glob("model-*.safetensors"))) > 1
    return model, root


def assert_same_ijepa_outputs(ours: BootlegModel, ref: IJepaModel, size: int = 32) -> float:
    """Final-norm patch tokens and every hidden state (embeddings, each layer) within 1e-5; returns the max diff."""
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = ours(x, output_hidden_states=True), ref(x, output_hidden_states=True)
    assert len(got.hidden_states) == len(want.hidden_states) == 3
    errs = [(got.last_hidden_state - want.last_hidden_state).abs().max().item()]
    errs += [(a - b).abs().max().item() for a, b in zip(got.hidden_states, want.hidden_states)]
    assert max(errs) <= 1e-5, errs
    return max(errs)


@pytest.mark.parametrize("source", ["one", "sharded", "one/model.safetensors", "sharded/model-00001-of-"])
def test_hf_ijepa_layout_matches_ijepamodel(hf_ijepa_folders, source):
    ref, root = hf_ijepa_folders
    path = root / source if not source.endswith("-of-") else next((root / "sharded").glob("model-00001-of-*"))
    model, notes = ijepa_to_bootleg(path)
    c = model.config
    assert (c.use_cls_token, c.num_register_tokens, c.num_attention_heads, c.intermediate_size, c.layer_norm_eps,
            c.position_embedding_type, c.position_embedding_includes_prefix) == (False, 0, 2, 64, 1e-12, "learned",
                                                                                False)
    assert any(n.startswith("pooler: dropped") for n in notes)  # IJepaModel's optional pooler is a head
    assert_same_ijepa_outputs(model, ref)
    torch.testing.assert_close(model.embeddings.pos_embed, ref.embeddings.position_embeddings, atol=0, rtol=0)
    with pytest.raises(ValueError, match="holds one encoder"):
        ijepa_to_bootleg(path, student=True)


def test_hf_ijepa_cli_folder_round_trip(hf_ijepa_folders, tmp_path, capsys):
    ref, root = hf_ijepa_folders
    assert convert_ijepa_main(["--checkpoint", str(root / "sharded"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "note: pooler: dropped" in printed and "wrote BootlegModel" in printed
    loaded = AutoModel.from_pretrained(tmp_path / "out").eval()  # the learned table survives meta-device loading
    assert type(loaded) is BootlegModel and loaded.config.position_embedding_type == "learned"
    assert_same_ijepa_outputs(loaded, ref)


def test_hf_ijepa_sincos_table_and_current_names_without_config(tmp_path):
    """A bare safetensors file in transformers 5.x names (q_proj/k_proj/v_proj, layers.N), no config.json: shapes
    come from the tensors, heads and eps from the arguments; a sin-cos table is regenerated, not stored."""
    ref = hf_ijepa(sincos=True)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "weights.safetensors")
    with pytest.raises(ValueError, match="pass num_heads"):  # width 32 is no official I-JEPA width
        ijepa_to_bootleg(tmp_path / "weights.safetensors")
    model, notes = ijepa_to_bootleg(tmp_path / "weights.safetensors", num_heads=2, layer_norm_eps=1e-12)
    assert model.config.position_embedding_type == "sincos" and "embeddings.pos_embed" not in model.state_dict()
    assert any("no config.json" in n for n in notes) and any("sin-cos table" in n for n in notes)
    assert_same_ijepa_outputs(model, ref)


def test_hf_ijepa_unrepresentable_layouts_give_clear_errors(hf_ijepa_folders, tmp_path, capsys):
    _, root = hf_ijepa_folders
    config = (root / "one" / "config.json").read_text()

    def variant(name: str, **changes) -> Path:
        folder = tmp_path / name
        shutil.copytree(root / "one", folder)
        (folder / "config.json").write_text(config[:-2] + "".join(f', "{k}": {v}' for k, v in changes.items())
                                            + "\n}")
        return folder

    with pytest.raises(ValueError, match=r"patch_size=\[8, 4\] \(non-square patches\)"):
        ijepa_to_bootleg(variant("patch", patch_size="[8, 4]"))
    with pytest.raises(ValueError, match="head_dim=8 with 2 heads"):
        ijepa_to_bootleg(variant("head_dim", head_dim=8))
    with pytest.raises(ValueError, match="model_type 'vit', not 'ijepa'"):
        ijepa_to_bootleg(variant("vit", model_type='"vit"'))
    state = IJepaModel(IJepaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                   image_size=32, patch_size=8)).state_dict()
    state.pop("layers.1.attention.k_proj.weight")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "partial.safetensors")
    with pytest.raises(KeyMismatchError, match=r"missing:    blocks\.1\.attn\.qkv\.weight[\s\S]*unexpected: "
                                               r"layers\.1\.attention\.q_proj\.weight"):
        ijepa_to_bootleg(tmp_path / "partial.safetensors", num_heads=2)
    (tmp_path / "empty").mkdir()
    assert convert_ijepa_main(["--checkpoint", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1
    assert "no model.safetensors" in capsys.readouterr().err and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- standard timm ViTs
TIMM_GEOMETRY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
TIMM_TINY = dict(pretrained=False, **TIMM_GEOMETRY)
TIMM_VARIANTS = {  # name → create_model kwargs on vit_small_patch16_224 (learned pos_embed; CLS row unless noted)
    "cls+head": dict(num_classes=5),  # the standard ViT: the head is dropped
    "avg": dict(class_token=False, global_pool="avg", fc_norm=False, num_classes=0),
    "cls+reg-prefix-rows": dict(reg_tokens=4, num_classes=0),
    "cls+reg-no_embed_class": dict(reg_tokens=4, no_embed_class=True, num_classes=0),
    "avg+reg": dict(class_token=False, reg_tokens=2, global_pool="avg", fc_norm=False, num_classes=0),
    "quick_gelu": dict(act_layer="quick_gelu", num_classes=0),
    # every config field read from the module differs from BootlegConfig's default (a field lost on the way would
    # silently take the default: BootlegConfig, like every PretrainedConfig, accepts unknown keyword arguments)
    "shape-options": dict(mlp_ratio=2.0, qkv_bias=False, in_chans=2, num_classes=0,
                          norm_layer=partial(torch.nn.LayerNorm, eps=1e-5)),
}


def timm_vit(seed: int = 1, **kwargs) -> torch.nn.Module:
    return randomize(timm.create_model("vit_small_patch16_224", **{**TIMM_TINY, **kwargs}), seed)


def timm_block_outputs(ref: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """timm's `forward_features` and each block's output (all tokens, before the final norm)."""
    outs = []
    hooks = [b.register_forward_hook(lambda module, args, out: outs.append(out)) for b in ref.blocks]
    with torch.no_grad():
        final = ref.forward_features(x)
    for hook in hooks:
        hook.remove()
    return final, outs


def assert_same_timm_outputs(ours: BootlegModel, ref: torch.nn.Module, size: tuple[int, int] = (32, 32)) -> float:
    x = torch.randn(2, ref.patch_embed.proj.in_channels, *size, generator=torch.Generator().manual_seed(0))
    final, blocks = timm_block_outputs(ref, x)
    with torch.no_grad():
        got = ours(x, output_hidden_states=True, interpolate_pos_encoding=size != (32, 32))
        pooled = ref.forward_head(final, pre_logits=True)  # CLS, or the mean patch token (global_pool="avg")
    errs = [(got.last_hidden_state - final).abs().max().item(), (got.pooler_output - pooled).abs().max().item()]
    errs += [(got.hidden_states[k + 1] - out).abs().max().item() for k, out in enumerate(blocks)]
    assert max(errs) <= 1e-5, errs
    return max(errs)


@pytest.mark.parametrize("variant", TIMM_VARIANTS)
def test_timm_standard_vits_match_timm(variant):
    kwargs = TIMM_VARIANTS[variant]
    ref = timm_vit(**kwargs)
    model = timm_vit_to_bootleg(ref)
    c = model.config
    assert (c.use_cls_token, c.num_register_tokens) == (kwargs.get("class_token", True), kwargs.get("reg_tokens", 0))
    assert c.position_embedding_type == "learned"
    assert c.position_embedding_includes_prefix == (not kwargs.get("no_embed_class") and c.num_prefix_tokens > 0)
    assert c.hidden_act == ("quick_gelu" if variant == "quick_gelu" else "gelu")
    assert (c.intermediate_size, c.qkv_bias, c.num_channels, c.layer_norm_eps) == (
        ref.blocks[0].mlp.fc1.out_features, ref.blocks[0].attn.qkv.bias is not None, ref.patch_embed.proj.in_channels,
        ref.norm.eps)
    assert_same_timm_outputs(model, ref)
    # and back: timm's state dict without the head, the learned table included
    expected = {k: v for k, v in ref.state_dict().items() if not k.startswith("head.")}
    back = bootleg_to_timm(model.state_dict(), c)
    assert back.keys() == expected.keys() and all(torch.equal(back[k], v) for k, v in expected.items())


def test_timm_learned_table_resized_like_timm_dynamic_img_size():
    """Another input size: the patch rows are resized as timm's `dynamic_img_size` does, the CLS/register rows kept."""
    ref = timm_vit(dynamic_img_size=True, reg_tokens=1, num_classes=0)
    model = timm_vit_to_bootleg(ref)
    assert model.config.position_embedding_includes_prefix and model.embeddings.pos_embed.shape == (1, 2 + 16, 32)
    assert_same_timm_outputs(model, ref, size=(48, 40))
    with pytest.raises(ValueError, match="pass interpolate_pos_encoding=True"):
        model(torch.zeros(1, 3, 48, 40))
    # student mode gathers patches after their positions were added; the prefix keeps its own rows
    x = torch.randn(2, 3, 32, 32)
    keep = torch.tensor([[0, 3, 5], [15, 1, 2]])
    with torch.no_grad():
        full = model.embeddings(x)
        part = model.embeddings(x, context_indices=keep)
    torch.testing.assert_close(part[:, :2], full[:, :2], atol=0, rtol=0)
    torch.testing.assert_close(part[:, 2:], torch.stack([full[i, 2 + keep[i]] for i in range(2)]), atol=0, rtol=0)


def test_timm_cli_standard_layout_with_pretrained_cfg_processor(tmp_path, capsys):
    ref = timm_vit(num_classes=3)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "timm.safetensors")
    geometry = [f"--timm-arg={k}={v}" for k, v in TIMM_GEOMETRY.items()]
    out = tmp_path / "converted"
    assert convert_timm_main(["--layout", "timm", "--timm-arch", "vit_small_patch16_224", *geometry,
                              "--timm-arg", "num_classes=3", "--checkpoint", str(tmp_path / "timm.safetensors"),
                              "--out", str(out)]) == 0
    assert "learned position embedding incl. prefix rows" in capsys.readouterr().out
    model = AutoModel.from_pretrained(out).eval()
    assert_same_timm_outputs(model, ref)
    processor = AutoImageProcessor.from_pretrained(out)
    cfg = ref.pretrained_cfg  # augreg: mean = std = 0.5, crop_pct 0.9, bicubic
    assert (list(processor.image_mean), list(processor.image_std)) == (list(cfg["mean"]), list(cfg["std"]))
    assert processor.size == {"shortest_edge": 35}  # timm: floor(32 / 0.9), not round
    assert processor.crop_size == {"height": 32, "width": 32} and processor.resample == PILImageResampling.BICUBIC

    # back to timm: the arch without its head loads the reversed state dict strictly and computes the same
    assert convert_timm_main(["--reverse", "--bootleg", str(out), "--out", str(tmp_path / "back.safetensors")]) == 0
    twin = timm.create_model("vit_small_patch16_224", **TIMM_TINY, num_classes=0).eval()
    twin.load_state_dict(bootleg_hf.conversion.read_state_dict(tmp_path / "back.safetensors"), strict=True)
    assert_same_timm_outputs(model, twin)

    # the Bootleg layout keeps Bootleg's default processor (its weights are not the arch's timm ones)
    assert convert_timm_main(["--timm-arch", "vit_small_patch16_224", *geometry, "--out", str(tmp_path / "twin")]) == 0
    assert list(AutoImageProcessor.from_pretrained(tmp_path / "twin").image_mean) == [0.485, 0.456, 0.406]
    assert AutoModel.from_pretrained(tmp_path / "twin").config.position_embedding_type == "sincos"


UNSUPPORTED_TIMM = [  # create_model kwargs → the phrase the error must contain
    (dict(qk_norm=True), "qk_norm=True"),
    (dict(init_values=1e-5), r"init_values \(layer scale\)"),
    (dict(class_token=False, global_pool="avg"), "fc_norm"),  # timm's default for avg pooling
    (dict(pre_norm=True), "pre_norm=True"),
    (dict(dynamic_img_pad=True), "dynamic_img_pad=True"),
    (dict(norm_layer="rmsnorm"), "norm_layer=RmsNorm"),
    (dict(act_layer="silu"), "act_layer=SiLU"),
    (dict(global_pool="map"), "global_pool='map'"),
    (dict(pos_embed="none"), "pos_embed='none'"),
    (dict(final_norm=False), "final_norm=False"),
    (dict(scale_mlp_norm=True), "scale_mlp_norm=True"),
    (dict(proj_bias=False), "proj_bias=False"),
]


@pytest.mark.parametrize("kwargs,phrase", UNSUPPORTED_TIMM, ids=[p.split("=")[0] for _, p in UNSUPPORTED_TIMM])
def test_timm_unsupported_options_are_named(kwargs, phrase):
    with pytest.raises(ValueError, match=phrase):
        timm_vit_to_bootleg(timm_vit(**kwargs))


@pytest.mark.parametrize("variant", ["cls+head", "avg+reg+head"])
def test_timm_classifier_converts_with_its_head(variant, tmp_path):
    """`with_head=True`: timm's Linear head on the pooled token becomes the `linear` head of a
    `BootlegForImageClassification`, whose logits are timm's `forward` (CLS and average pooling)."""
    kwargs = {"cls+head": dict(num_classes=5),
              "avg+reg+head": dict(class_token=False, reg_tokens=2, global_pool="avg", fc_norm=False, num_classes=5)}
    ref = timm_vit(**kwargs[variant])
    model = timm_vit_to_bootleg(ref, with_head=True)
    assert isinstance(model, BootlegForImageClassification) and model.config.probe_type == "linear"
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref(x), atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForImageClassification.from_pretrained(tmp_path).eval()(x).logits, ref(x),
                                   atol=1e-5, rtol=0)


def test_timm_head_and_fc_norm_refusals_write_nothing(tmp_path, capsys):
    with pytest.raises(ValueError, match="without a Linear classifier head"):  # nothing to keep
        timm_vit_to_bootleg(timm_vit(num_classes=0), with_head=True)
    out = tmp_path / "out"
    geometry = [f"--timm-arg={k}={v}" for k, v in TIMM_GEOMETRY.items()]
    assert convert_timm_main(["--layout", "timm", *geometry, "--timm-arg", "qk_norm=True", "--with-head",
                              "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "qk_norm=True" in err and not out.exists()
    # a bare state dict with an fc_norm: named, not reported as a missing final norm
    state = timm_vit(class_token=False, global_pool="avg", num_classes=0).state_dict()
    with pytest.raises(ValueError, match="fc_norm"):
        timm_to_bootleg(state, tiny_config(position_embedding_type="learned", use_cls_token=False))
    torch.save(timm_vit(depth=3).state_dict(), tmp_path / "deeper.pth")
    with pytest.raises(KeyMismatchError, match="does not fit timm"):  # torch's raw report, named and explained
        bootleg_hf.conversion.build_timm_model("vit_small_patch16_224", checkpoint=tmp_path / "deeper.pth",
                                               layout="timm", **TIMM_GEOMETRY)


def test_position_embedding_config_fields(tmp_path):
    defaults = bootleg_hf.BootlegConfig()
    assert (defaults.position_embedding_type, defaults.position_embedding_includes_prefix) == ("sincos", False)
    with pytest.raises(ValueError, match="position_embedding_type must be one of"):
        tiny_config(position_embedding_type="rope")
    with pytest.raises(ValueError, match="needs position_embedding_type='learned'"):
        tiny_config(position_embedding_includes_prefix=True)
    assert tiny_config(position_embedding_type="learned", hidden_size=30, num_attention_heads=3).hidden_size == 30
    config = tiny_config(position_embedding_type="learned", position_embedding_includes_prefix=True)
    model = BootlegModel(config).eval()
    assert model.embeddings.pos_embed.shape == (1, 5 + 16, 32) and model.embeddings.pos_embed.std() > 0.01
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x).last_hidden_state, model(x).last_hidden_state)


# ------------------------------------------------------------------------------------------- guards of the mappings
def test_sincos_tables_are_checked_at_the_documented_tolerance_and_named():
    """A stored sin-cos table is regenerated, so a table that differs from ours by more than 1e-4 is refused (naming
    the tensor), while float32 rounding-level differences pass: for timm's `pos_embed` and I-JEPA's predictor table."""
    config = tiny_config(use_cls_token=False, num_register_tokens=0, position_embedding_type="sincos")
    state = dict(BootlegModel(config).state_dict())
    table = bootleg_hf.sincos_position_embedding(config.hidden_size, *config.grid_size)[None]
    for offset, ok in [(2e-5, True), (1e-3, False)]:
        timm_state = {**bootleg_to_timm(state, config), "pos_embed": table + offset}
        if ok:
            timm_to_bootleg(timm_state, config)
        else:
            with pytest.raises(ValueError, match=r"the timm pos_embed is not Bootleg's fixed 2-D sin-cos table"):
                timm_to_bootleg(timm_state, config)
    pretraining = tiny_config(use_cls_token=False, num_register_tokens=0, targets="final", predictor_hidden_size=16,
                              predictor_num_register_tokens=0)
    predictor = ijepa_predictor_state(3)
    predictor["predictor_pos_embed"] = predictor["predictor_pos_embed"] + 1e-3
    with pytest.raises(ValueError, match="the I-JEPA predictor_pos_embed is not Bootleg's fixed 2-D sin-cos table"):
        ijepa_predictor_to_bootleg(predictor, pretraining)


@pytest.mark.parametrize("field", ["predictor_num_register_tokens", "use_cls_token", "targets"])
def test_ijepa_predictor_refuses_each_config_it_cannot_map_into(field):
    """Each of the three conditions alone refuses the mapping (I-JEPA's predictor has no CLS, no registers and
    predicts the final layer only)."""
    base = dict(use_cls_token=False, num_register_tokens=0, targets="final", predictor_hidden_size=16,
                predictor_num_register_tokens=0)
    change = {"predictor_num_register_tokens": 1, "use_cls_token": True, "targets": "1:1:2"}[field]
    with pytest.raises(ValueError, match="an I-JEPA predictor only maps into"):
        ijepa_predictor_to_bootleg(ijepa_predictor_state(3), tiny_config(**{**base, field: change}))
    ijepa_predictor_to_bootleg(ijepa_predictor_state(3), tiny_config(**base))  # the base maps


def test_ijepa_predictor_keys_that_map_nowhere_are_kept_for_the_key_check():
    """An unknown key keeps its name (so the strict key check names it) instead of breaking the mapping."""
    config = tiny_config(use_cls_token=False, num_register_tokens=0, targets="final", predictor_hidden_size=16,
                         predictor_num_register_tokens=0)
    state = {"extra.weight": torch.zeros(2), **ijepa_predictor_state(3)}
    out, notes = ijepa_predictor_to_bootleg(state, config)
    assert torch.equal(out["extra.weight"], torch.zeros(2)) and "mask_token" in out and out["reg_token"].numel() == 0


def test_hf_ijepa_classification_model_converts_in_any_key_order(tmp_path):
    """`IJepaForImageClassification` weights (keys prefixed `ijepa.`, a classifier head) convert to the encoder of
    its `ijepa` submodule: the head is dropped with a note, wherever it sits in the state dict."""
    torch.manual_seed(0)
    ref = IJepaForImageClassification(IJepaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                  intermediate_size=64, image_size=32, patch_size=8, num_labels=3))
    randomize(ref, 5)
    state = ref.state_dict()
    head_first = {k: state[k] for k in sorted(state, key=lambda k: not k.startswith("classifier."))}
    assert next(iter(head_first)).startswith("classifier.")
    save_file({k: v.contiguous() for k, v in head_first.items()}, tmp_path / "model.safetensors")
    model, notes = ijepa_to_bootleg(tmp_path / "model.safetensors", num_heads=2, layer_norm_eps=1e-12)
    assert any(n.startswith("classifier: dropped") for n in notes)
    assert_same_ijepa_outputs(model, ref.ijepa.eval())


def test_key_check_names_the_checkpoint_and_every_shape_mismatch():
    """A tensor of the wrong shape is reported with both shapes, under the name of what was checked."""
    from bootleg_hf.conversion import check_keys

    expected = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    check_keys({"a": torch.ones(2, 3), "b": torch.ones(4)}, expected, "x")
    with pytest.raises(KeyMismatchError, match=r"^timm ViT: 0 missing and 0 unexpected keys\n  shape:      a: \(3, 2\) "
                                               r"vs \(2, 3\)$"):
        check_keys({"a": torch.zeros(3, 2), "b": torch.zeros(4)}, expected, "timm ViT")


def test_sincos_table_error_is_infinite_for_tables_of_another_layout():
    """Only `[1, N, D]` / `[N, D]` tables of our width and grid are compared; other shapes (and widths that are no
    multiple of 4, which have no 2-D sin-cos table) are infinitely far, so they are refused, not reshaped."""
    from bootleg_hf.conversion import sincos_table_error

    table = bootleg_hf.sincos_position_embedding(32, 4, 4)
    assert sincos_table_error(table, 32, (4, 4)) == 0 and sincos_table_error(table[None], 32, (4, 4)) == 0
    assert sincos_table_error(table[None, None], 32, (4, 4)) == float("inf")
    assert sincos_table_error(table.flatten(), 32, (4, 4)) == float("inf")
    assert sincos_table_error(torch.zeros(16, 30), 30, (4, 4)) == float("inf")


def test_bootleg_to_timm_writes_the_sincos_table_in_the_weights_dtype():
    config = tiny_config(use_cls_token=False, num_register_tokens=0, position_embedding_type="sincos")
    state = {k: v.to(torch.float64) for k, v in BootlegModel(config).state_dict().items()}
    assert bootleg_to_timm(state, config)["pos_embed"].dtype == torch.float64


def test_ijepa_config_takes_every_field_from_the_tensors_and_states_ijepas_ema():
    """Channels and qkv bias come from the tensors (no silent default), an explicit image size wins over the grid's,
    and with a predictor the EMA schedule is I-JEPA's (0.996 → 1.0)."""
    meta = partial(torch.empty, device="meta")
    encoder = {"patch_embed.proj.weight": meta(96, 1, 8, 8), "pos_embed": meta(1, 16, 96),
               "blocks.0.mlp.fc1.weight": meta(192, 96), "blocks.0.norm1.weight": meta(96)}
    config = config_from_ijepa(encoder, ijepa_predictor_state(3), num_heads=2, image_size=64)
    assert (config.num_channels, config.qkv_bias, config.intermediate_size) == (1, False, 192)
    assert config.image_size == 64 and (config.ema_start, config.ema_end) == (0.996, 1.0)
    encoder["blocks.0.attn.qkv.bias"] = meta(288)
    assert config_from_ijepa(encoder, num_heads=2).qkv_bias is True
