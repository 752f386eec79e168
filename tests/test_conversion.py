"""Conversion (docs/design.md §8): official I-JEPA checkpoints → Bootleg; pretraining checkpoints → clean encoder
folders, with trained probe / segmentation heads attached on request."""

import argparse
import pickle
import shutil
from functools import partial
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import tiny_config
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModel, AutoModelForImageClassification, AutoModelForSemanticSegmentation

import bootleg_hf
from bootleg_hf import BootlegForImageClassification, BootlegForPretraining, BootlegModel
from bootleg_hf.conversion import KeyMismatchError, config_from_ijepa, ijepa_to_bootleg, load_ijepa_checkpoint
from bootleg_hf.checkpoints import export_pretrained, save_model_folder
from bootleg_hf.cli import convert_ijepa_main, export_main
from bootleg_hf.modeling_bootleg_heads import build_segmentation_head

ROOT = Path(__file__).resolve().parents[1]
GEOMETRY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)
PREDICTOR_WIDTH, PREDICTOR_DEPTH = 16, 2


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
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
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
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
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
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
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

    monkeypatch.setattr(bootleg_hf.checkpoints.BeitImageProcessorPil, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):  # a crash half-way leaves the old folder as it was
        save_model_folder(BootlegModel(tiny_config()), out, overwrite=True)
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["encoder", "fresh"]
    monkeypatch.undo()
    replacement = BootlegModel(tiny_config())
    save_model_folder(replacement, out, overwrite=True)
    assert snapshot(out) != before and sorted(p.name for p in tmp_path.iterdir()) == ["encoder", "fresh"]
    loaded = BootlegModel.from_pretrained(out)
    assert torch.equal(loaded.blocks[0].attn.qkv.weight, replacement.blocks[0].attn.qkv.weight)
