"""The encoder (docs/design.md §3): timm parity, sin-cos, save/load, attention backends, student/teacher paths, errors."""

import math

import numpy as np
import pytest
import timm
import torch
from conftest import tiny_config
from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel, pipeline

import bootleg_hf
from bootleg_hf import BootlegBackbone, BootlegConfig, BootlegModel


def mae_sincos_reference(dim: int, gh: int, gw: int) -> np.ndarray:
    """Independent NumPy version of MAE's table: [emb(col), emb(row)], each [sin | cos]."""
    def emb1d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2))
        out = np.outer(pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    return np.concatenate([emb1d(dim // 2, cols), emb1d(dim // 2, rows)], axis=1)


def timm_twin(model: BootlegModel) -> torch.nn.Module:
    cfg = model.config
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=cfg.image_hw, patch_size=cfg.patch_size, embed_dim=cfg.hidden_size, depth=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads, mlp_ratio=cfg.intermediate_size / cfg.hidden_size, qkv_bias=True,
        class_token=True, reg_tokens=cfg.num_register_tokens, no_embed_class=True, num_classes=0)
    ref.load_state_dict(bootleg_hf.bootleg_to_timm(model.state_dict(), cfg))
    return ref.eval()


def compare_with_timm(model: BootlegModel, x: torch.Tensor) -> float:
    ref = timm_twin(model)
    n = model.config.num_hidden_layers
    with torch.no_grad():
        ours = model(x, output_hidden_states=True)
        final, inter = ref.forward_intermediates(x, indices=list(range(n)), norm=False, output_fmt="NLC",
                                                 return_prefix_tokens=True)
    errs = [(ours.last_hidden_state - final).abs().max().item()]
    errs += [(ours.hidden_states[k + 1] - torch.cat([pre, pat], 1)).abs().max().item()
             for k, (pat, pre) in enumerate(inter)]
    return max(errs)


def test_timm_parity_vit_small():
    torch.manual_seed(0)
    model = BootlegModel(BootlegConfig.from_preset("vit-small")).eval()
    assert compare_with_timm(model, torch.randn(2, 3, 224, 224)) < 1e-5


def test_timm_parity_tiny_and_state_dict_round_trip(config):
    torch.manual_seed(0)
    model = BootlegModel(config).eval()
    assert compare_with_timm(model, torch.randn(3, 3, 32, 32)) < 1e-5
    back = bootleg_hf.timm_to_bootleg(timm_twin(model).state_dict(), config)
    assert set(back) == set(model.state_dict())
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    derived = bootleg_hf.config_from_timm(timm_twin(model))
    assert (derived.hidden_size, derived.num_hidden_layers, derived.num_register_tokens) == (32, 2, 4)


def test_timm_learned_pos_embed_is_refused(config):
    sd = bootleg_hf.bootleg_to_timm(BootlegModel(config).state_dict(), config)
    sd["pos_embed"] = torch.randn_like(sd["pos_embed"])
    with pytest.raises(ValueError, match="sin-cos"):
        bootleg_hf.timm_to_bootleg(sd, config)


@pytest.mark.parametrize("dim,gh,gw", [(32, 4, 4), (64, 14, 14), (48, 3, 5)])
def test_sincos_matches_formula(dim, gh, gw):
    table = bootleg_hf.sincos_position_embedding(dim, gh, gw)
    np.testing.assert_allclose(table.numpy(), mae_sincos_reference(dim, gh, gw), atol=1e-6)
    # spot checks straight from the definition: token 1 = (row 0, col 1), token gw = (row 1, col 0)
    assert table[1, 0].item() == pytest.approx(math.sin(1.0), abs=1e-6)
    assert table[1, dim // 2].item() == pytest.approx(0.0, abs=1e-6)
    assert table[gw, dim // 2].item() == pytest.approx(math.sin(1.0), abs=1e-6)
    assert table[gw, dim // 4].item() == pytest.approx(1.0, abs=1e-6)  # cos(0·ω) for the column of token gw


def test_sincos_survives_save_and_meta_device_load(tmp_path):
    config = tiny_config(image_size=[32, 48])  # non-square: 4×6 grid
    model = BootlegModel(config).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is BootlegModel
    expected = torch.from_numpy(mae_sincos_reference(32, 4, 6)).float()[None]
    torch.testing.assert_close(loaded.embeddings.pos_embed, expected, atol=1e-6, rtol=0)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(model(x).last_hidden_state, loaded(x).last_hidden_state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "configuration_bootleg.py", "model.safetensors",
                                                         "modeling_bootleg.py", "targets.py"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_auto_classes_and_config_round_trip(tmp_path, config):
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, BootlegConfig)
    assert {k: v for k, v in loaded.to_dict().items() if k != "_name_or_path"} == {
        k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
    assert isinstance(AutoModel.from_config(config), BootlegModel)
    backbone = AutoBackbone.from_config(tiny_config(out_indices=[1, 2]))
    assert isinstance(backbone, BootlegBackbone)
    bootleg_hf.make_image_processor(config).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(processor).__name__.startswith("MobileNetV2ImageProcessor") and processor.resample == 3
    assert processor.size.shortest_edge == round(32 / 0.875) and processor.do_center_crop
    assert (processor.crop_size.height, processor.crop_size.width) == (32, 32)
    assert list(processor.image_mean) == [0.485, 0.456, 0.406]


def test_eager_matches_sdpa(config):
    torch.manual_seed(0)
    model = BootlegModel(config).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        sdpa = model(x, output_hidden_states=True)
        model.set_attn_implementation("eager")
        eager = model(x, output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(sdpa.last_hidden_state, eager.last_hidden_state, atol=1e-5, rtol=0)
    assert eager.attentions[0].shape == (2, 4, 1 + 4 + 16, 1 + 4 + 16)
    torch.testing.assert_close(eager.attentions[0].sum(-1), torch.ones(2, 4, 21))


def test_outputs_follow_hf_vit_convention(config):
    model = BootlegModel(config).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 21, 32)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    torch.testing.assert_close(out.hidden_states[0], model.embeddings(x))
    torch.testing.assert_close(model.norm(out.hidden_states[-1]), out.last_hidden_state)
    assert not torch.allclose(out.hidden_states[-1], out.last_hidden_state)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 0])
    tuple_out = model(x, return_dict=False)
    assert torch.equal(tuple_out[0], out.last_hidden_state)


def test_student_with_all_indices_equals_full_forward(config):
    model = BootlegModel(config).eval()
    x = torch.randn(3, 3, 32, 32)
    all_idx = torch.arange(16).expand(3, -1)
    with torch.no_grad():
        full = model(x).last_hidden_state
        student = model(x, context_indices=all_idx).last_hidden_state
        part = model(x, context_indices=torch.tensor([[0, 5, 15]] * 3))
    torch.testing.assert_close(student, full, atol=1e-6, rtol=0)
    assert part.last_hidden_state.shape == (3, 5 + 3, 32)
    # the gathered patches carry the positions of their own cells: the embedding of cell 15 is unchanged
    emb_full = model.embeddings(x)
    emb_part = model.embeddings(x, torch.tensor([[0, 5, 15]] * 3))
    torch.testing.assert_close(emb_part[:, -1], emb_full[:, 5 + 15])


def test_representation_fast_path_matches_hidden_states(config):
    model = BootlegModel(tiny_config(num_hidden_layers=3)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        reps = model.forward_representations(x, [(1, "out"), (3, "out"), (0, "embed"), (3, "final"), (2, "mid"),
                                                 (2, "attn"), (2, "mlp")])
    torch.testing.assert_close(reps[0], out.hidden_states[1])
    torch.testing.assert_close(reps[1], out.hidden_states[3])
    torch.testing.assert_close(reps[2], out.hidden_states[0])
    torch.testing.assert_close(reps[3], out.last_hidden_state)
    torch.testing.assert_close(reps[4], out.hidden_states[1] + reps[5])  # mid = input + attention term
    torch.testing.assert_close(reps[4] + reps[6], out.hidden_states[2])  # out = mid + MLP term
    with pytest.raises(ValueError, match="3-block encoder"):
        model.forward_representations(x, [(4, "out")])


def test_fast_path_skips_unneeded_blocks(config):
    model = BootlegModel(tiny_config(num_hidden_layers=3)).eval()
    calls = []
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda *_, i=i: calls.append(i))
    model.forward_representations(torch.randn(1, 3, 32, 32), [(1, "out")])
    assert calls == [0]


def test_gradients_reach_every_parameter_and_checkpointing_matches(config):
    torch.manual_seed(0)
    model = BootlegModel(config).train()
    x = torch.randn(2, 3, 32, 32)
    model(x).last_hidden_state.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), [n for n, g in grads.items() if g is None]
    model.zero_grad()
    model.gradient_checkpointing_enable()  # the long-standing name (alias of activation checkpointing in 5.2x)
    assert all(block.gradient_checkpointing for block in model.blocks)
    model(x).last_hidden_state.square().mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-6, rtol=1e-5)


def test_interpolate_pos_encoding(config):
    model = BootlegModel(config).eval()
    x = torch.randn(1, 3, 48, 64)
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model(x)
    out = model(x, interpolate_pos_encoding=True, output_hidden_states=True)
    assert out.last_hidden_state.shape == (1, 5 + 6 * 8, 32)
    pos = torch.from_numpy(mae_sincos_reference(32, 6, 8)).float()
    emb = model.embeddings(x, interpolate_pos_encoding=True)[:, 5:]
    torch.testing.assert_close(emb - model.embeddings.patch_embed(x), pos[None], atol=1e-5, rtol=0)


def test_backbone_feature_maps(config):
    backbone = BootlegBackbone(tiny_config(out_indices=[0, 1, 2])).eval()
    encoder = BootlegModel(backbone.config)
    encoder.load_state_dict(backbone.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = backbone(x).feature_maps
        hidden = encoder.eval()(x, output_hidden_states=True).hidden_states
    assert [m.shape for m in maps] == [(2, 32, 4, 4)] * 3
    expected = encoder.norm(hidden[2])[:, 5:].reshape(2, 4, 4, 32).permute(0, 3, 1, 2)
    torch.testing.assert_close(maps[2], expected)
    assert backbone.channels == [32, 32, 32]


@pytest.mark.parametrize("bad,message", [
    (torch.randn(1, 1, 32, 32), "channels"),
    (torch.randn(1, 3, 30, 32), "not divisible by the patch size"),
    (torch.randn(1, 3, 64, 64), "does not match"),
    (torch.randn(3, 32, 32), r"\[batch, channels, height, width\]"),
])
def test_bad_pixel_values_raise(config, bad, message):
    with pytest.raises(ValueError, match=message):
        BootlegModel(config)(bad)


@pytest.mark.parametrize("indices,message", [
    (torch.tensor([[0, 16]]), r"\[0, 16\)"),
    (torch.tensor([[-1, 2]]), r"\[0, 16\)"),
    ([[0, 1, 2], [3, 4]], "ragged"),
    (torch.tensor([0, 1]), r"\[batch, K\]"),
    (torch.tensor([[0.0, 1.0]]), "integer"),
    (torch.tensor([[0, 1], [2, 3]]), "rows but the batch has 1"),
])
def test_bad_context_indices_raise(config, indices, message):
    with pytest.raises(ValueError, match=message):
        BootlegModel(config)(torch.randn(1 if not isinstance(indices, list) else 2, 3, 32, 32), context_indices=indices)


@pytest.mark.parametrize("overrides,message", [
    (dict(hidden_size=30), "not divisible by num_attention_heads"),
    (dict(image_size=30), "not divisible by patch_size"),
    (dict(num_register_tokens=-1), "num_register_tokens"),
    (dict(targets="1:4:24"), "outside the encoder"),
    (dict(probe_type="mlp"), "probe_type"),
    (dict(ema_start=1.5), "ema_start"),
])
def test_invalid_config_raises(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_presets_have_paper_sizes():
    with torch.device("meta"):
        counts = {name: sum(p.numel() for p in BootlegModel(BootlegConfig.from_preset(name)).parameters())
                  for name in ("vit-small", "vit-base", "vit-large")}
    assert 21e6 < counts["vit-small"] < 23e6  # the paper's ViT-S/16 is ~22 M
    assert 85e6 < counts["vit-base"] < 88e6
    assert 302e6 < counts["vit-large"] < 306e6
    with pytest.raises(ValueError, match="unknown preset"):
        BootlegConfig.from_preset("vit-huge")


def test_feature_extraction_pipeline_from_folder(tmp_path, config):
    from PIL import Image

    model = BootlegModel(config).eval()
    model.save_pretrained(tmp_path)
    bootleg_hf.make_image_processor(config).save_pretrained(tmp_path)
    extractor = pipeline("image-feature-extraction", model=str(tmp_path), device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8))  # gray, any size
    tokens = np.asarray(extractor(image))
    pooled = np.asarray(extractor(image, pool=True))
    assert tokens.shape == (1, 21, 32) and pooled.shape == (1, 32)
    np.testing.assert_allclose(pooled[0], tokens[0, 0], atol=1e-6)


def test_timm_conversion_script_round_trip(tmp_path):
    from bootleg_hf.cli import convert_timm_main
    from bootleg_hf.conversion import read_state_dict

    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, reg_tokens=4, no_embed_class=True,
        num_classes=0).eval()
    ref.pos_embed.data.copy_(bootleg_hf.sincos_position_embedding(32, 4, 4)[None])
    from safetensors.torch import load_file, save_file
    save_file(ref.state_dict(), tmp_path / "timm.safetensors")
    torch.save(ref.state_dict(), tmp_path / "timm.pth")  # read back with weights_only=True
    convert_timm_main(["--timm-arch", "vit_small_patch16_224", "--reg-tokens", "4", "--out", str(tmp_path / "small")])
    loaded = AutoModel.from_pretrained(tmp_path / "small")
    assert loaded.config.hidden_size == 384 and loaded.config.num_register_tokens == 4
    convert_timm_main(["--reverse", "--bootleg", str(tmp_path / "small"), "--out", str(tmp_path / "back.safetensors")])
    back = load_file(tmp_path / "back.safetensors")
    assert set(back) >= {"pos_embed", "cls_token", "reg_token", "blocks.11.mlp.fc2.weight"}
    assert torch.equal(back["cls_token"], loaded.embeddings.cls_token.detach())
    for name in ("timm.pth", "timm.safetensors"):
        loaded_sd = read_state_dict(tmp_path / name)
        assert all(torch.equal(loaded_sd[k], v) for k, v in ref.state_dict().items())


def test_image_processor_works_without_torchvision(tmp_path):
    """A subprocess where `import torchvision` fails: the package imports and the PIL processor handles any mode."""
    import subprocess
    import sys

    code = f"""
import sys
sys.modules["torchvision"] = None
import numpy as np
from PIL import Image
from transformers import AutoImageProcessor
import bootleg_hf
bootleg_hf.make_image_processor(bootleg_hf.BootlegConfig.from_preset("vit-micro")).save_pretrained({str(tmp_path)!r})
processor = AutoImageProcessor.from_pretrained({str(tmp_path)!r})
image = Image.fromarray(np.full((50, 40, 4), 255, dtype=np.uint8), mode="RGBA")
values = processor(image, return_tensors="pt")["pixel_values"]
print(type(processor).__name__, tuple(values.shape), round(float(values[0, 0, 0, 0]), 4))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    name, *_ = result.stdout.split()
    assert name == "MobileNetV2ImageProcessorPil"
    assert "(1, 3, 32, 32)" in result.stdout
    assert result.stdout.split()[-1] == str(round((1.0 - 0.485) / 0.229, 4))  # white, ImageNet-normalised
