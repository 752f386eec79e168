"""transformers' common-model conventions applied to every Bootleg model class from outside (cf. transformers'
`tests/test_modeling_common.py`): meta-device initialisation of parameters and buffers, activation checkpointing,
loading info, torch.export / torch.compile, config-driven outputs, and clear errors for empty inputs."""

import pytest
import torch
from conftest import tiny_config

from bootleg_hf import (
    BootlegBackbone,
    BootlegForImageClassification,
    BootlegForPretraining,
    BootlegForSemanticSegmentation,
    BootlegModel,
)
from bootleg_hf.modeling_bootleg import sincos_position_embedding

# (class, config overrides): every model class, each probe type and segmentation head
MODELS = {
    "encoder": (BootlegModel, {}),
    "backbone": (BootlegBackbone, {"out_indices": [0, 1, 2]}),
    **{f"probe-{kind}": (BootlegForImageClassification, {"probe_type": kind, "num_labels": 3})
       for kind in ("patch", "cls", "xattn", "xblk")},
    **{f"segmentation-{kind}": (BootlegForSemanticSegmentation, {"segmentation_head": kind, "num_labels": 3})
       for kind in ("lin", "blk", "linear")},
    "pretraining": (BootlegForPretraining, {}),
}


def pixels(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def indices() -> tuple[torch.Tensor, torch.Tensor]:
    """`context_indices [2, 6]` and `target_indices [2, 2, 3]` on the 4×4 grid."""
    context = torch.tensor([[0, 1, 2, 4, 5, 6], [3, 7, 9, 10, 11, 15]])
    targets = torch.tensor([[[8, 9, 12], [10, 14, 15]], [[0, 1, 4], [2, 5, 6]]])
    return context, targets


def check_initialised(model: torch.nn.Module, fresh: torch.nn.Module) -> None:
    """Every tensor of `model` finite and plausibly initialised: buffers and constant-initialised parameters (norms,
    biases) equal a freshly constructed model's, random ones are neither constant nor far larger than fresh ones."""
    tensors, reference = dict(model.state_dict(keep_vars=True)), dict(fresh.state_dict(keep_vars=True))
    tensors.update(model.named_buffers())  # non-persistent buffers (sin-cos tables) too
    reference.update(fresh.named_buffers())
    assert tensors.keys() == reference.keys()
    for name, tensor in tensors.items():
        tensor, want = tensor.detach(), reference[name].detach()
        assert tensor.device.type == "cpu" and torch.isfinite(tensor.float()).all(), name
        if name in dict(fresh.named_buffers()) or bool(want.min() == want.max()):
            assert torch.equal(tensor, want), name
        else:
            assert tensor.min() < tensor.max() and tensor.abs().max() <= 10 * want.abs().max(), name
    for name, table in model.named_buffers():
        if name.endswith("pos_embed"):  # the analytic table, not whatever memory meta loading handed over
            torch.testing.assert_close(table, sincos_position_embedding(table.shape[-1], 4, 4)[None], atol=0, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_meta_device_loading_initialises_every_parameter_and_buffer(name, tmp_path):
    """Like transformers' `test_can_init_all_missing_weights` / `test_init_weights_can_init_buffers`: a model loaded
    from an encoder folder (head / predictor missing) or from nothing at all (every tensor missing) is built on the
    meta device, so `_init_weights` must fill every parameter and buffer it does not load."""
    cls, overrides = MODELS[name]
    config = tiny_config(**overrides)
    torch.manual_seed(0)
    fresh = cls(config)
    BootlegModel(tiny_config()).save_pretrained(tmp_path / "encoder")
    from_encoder = cls.from_pretrained(tmp_path / "encoder", **overrides)
    from_nothing = cls.from_pretrained(None, config=config, state_dict={})
    for model in (from_encoder, from_nothing):
        check_initialised(model, fresh)
    if cls in (BootlegForImageClassification, BootlegForSemanticSegmentation):  # eval mode: BatchNorm statistics
        assert torch.isfinite(from_encoder.eval()(pixels()).logits).all()


def loss_and_grads(model: torch.nn.Module, checkpointing: dict | None) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    if checkpointing is not None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    x = pixels()
    if isinstance(model, BootlegForPretraining):
        loss = model(x, *indices()).loss
    elif isinstance(model, BootlegBackbone):  # the fast path (only the requested blocks run)
        loss = sum(m.square().mean() for m in model(x).feature_maps)
    elif isinstance(model, BootlegModel):
        loss = model(x).last_hidden_state.square().mean()
    else:
        labels = torch.tensor([0, 2]) if isinstance(model, BootlegForImageClassification) \
            else torch.randint(0, 3, (2, 32, 32), generator=torch.Generator().manual_seed(1))
        loss = model(x, labels=labels).loss
    loss.backward()
    if checkpointing is not None:
        model.gradient_checkpointing_disable()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_:FutureWarning")  # the long-standing name (< 5.2x)
@pytest.mark.parametrize("name", MODELS)
def test_activation_checkpointing_reentrant_and_not_matches_plain_training(name):
    """Every `BootlegBlock` user (encoder, backbone fast path, Blk head, predictor) under `use_reentrant=True`
    (blocks then return plain tuples) and `False`: the same loss and gradients as without checkpointing."""
    cls, overrides = MODELS[name]
    torch.manual_seed(0)
    model = cls(tiny_config(**overrides)).train()
    loss, grads = loss_and_grads(model, None)
    assert len(grads) == sum(p.requires_grad for p in model.parameters())
    for reentrant in (True, False):
        got_loss, got_grads = loss_and_grads(model, {"use_reentrant": reentrant})
        torch.testing.assert_close(got_loss, loss, atol=1e-6, rtol=0)
        assert got_grads.keys() == grads.keys()
        for n, g in got_grads.items():
            torch.testing.assert_close(g, grads[n], atol=1e-6, rtol=0, msg=f"{n}, use_reentrant={reentrant}")


def test_pretraining_from_pretrained_returns_loading_info_and_freezes_the_teacher(tmp_path):
    BootlegForPretraining(tiny_config()).save_pretrained(tmp_path)
    model, info = BootlegForPretraining.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(model, BootlegForPretraining) and not info["missing_keys"] and not info["unexpected_keys"]
    plain = BootlegForPretraining.from_pretrained(tmp_path)
    for loaded in (model, plain):
        assert not any(p.requires_grad for p in loaded.teacher.parameters())
        assert all(p.requires_grad for p in loaded.student.parameters())


@pytest.mark.parametrize("with_context", [False, True])
def test_encoder_exports_with_and_without_context_indices(with_context):
    model = BootlegModel(tiny_config()).eval()
    kwargs = {"context_indices": indices()[0]} if with_context else {}
    program = torch.export.export(model, (pixels(),), kwargs)
    x = pixels()
    with torch.no_grad():
        got, want = program.module()(x, **kwargs), model(x, **kwargs)
    assert got.last_hidden_state.shape == (2, 5 + (6 if with_context else 16), 32)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=0, rtol=0)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=0, rtol=0)


def test_encoder_compiles_in_one_graph_with_context_indices_and_still_validates_eagerly():
    model = BootlegModel(tiny_config()).eval()
    context = indices()[0]
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # a graph break (value read) would raise
    with torch.no_grad():
        torch.testing.assert_close(compiled(pixels(), context_indices=context).last_hidden_state,
                                   model(pixels(), context_indices=context).last_hidden_state, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"context_indices must lie in \[0, 16\)"):
        model(pixels(), context_indices=context + 10)


@pytest.mark.parametrize("case, message", [
    ("empty batch", "empty batch"),
    ("K=0", "no context tokens K"),
    ("R=0", "no rectangles R"),
    ("T=0", "no tokens per rectangle T"),
])
def test_pretraining_rejects_empty_inputs_clearly(case, message):
    model = BootlegForPretraining(tiny_config())
    x, (context, targets) = pixels(), indices()
    x, context, targets = {"empty batch": (x[:0], context[:0], targets[:0]), "K=0": (x, context[:, :0], targets),
                           "R=0": (x, context, targets[:, :0]), "T=0": (x, context, targets[:, :, :0])}[case]
    with pytest.raises(ValueError, match=message):
        model(x, context, targets)


@pytest.mark.parametrize("cls, overrides", [(BootlegForImageClassification, {"probe_type": "xblk"}),
                                            (BootlegForSemanticSegmentation, {"segmentation_head": "blk"})])
def test_task_models_follow_the_config_output_flags(cls, overrides):
    x = pixels()
    labels = torch.tensor([0, 2]) if cls is BootlegForImageClassification else torch.zeros(2, 32, 32, dtype=torch.long)
    torch.manual_seed(0)
    model = cls(tiny_config(num_labels=3, output_hidden_states=True, output_attentions=True, **overrides)).eval()
    with torch.no_grad():
        out = model(x, labels=labels)
        encoded = model.bootleg(x, output_hidden_states=True, output_attentions=True)
        assert len(out.hidden_states) == 3 and len(out.attentions) == 2
        for got, want in zip(out.hidden_states + out.attentions, encoded.hidden_states + encoded.attentions):
            torch.testing.assert_close(got, want)
        assert model(x, output_hidden_states=False, output_attentions=False).hidden_states is None  # call wins

        as_tuple = model(x, labels=labels, return_dict=False)
        assert isinstance(as_tuple, tuple) and len(as_tuple) == 4
        torch.testing.assert_close(as_tuple[0], out.loss)
        torch.testing.assert_close(as_tuple[1], out.logits)
        model.config.return_dict = False
        model.config.output_hidden_states = model.config.output_attentions = False
        from_config = model(x)
        assert isinstance(from_config, tuple) and len(from_config) == 1
        torch.testing.assert_close(from_config[0], out.logits)
