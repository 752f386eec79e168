"""The other systems' decoders (`config.predictor_type`) and data2vec 2.0's multi-mask training: shapes, what each
query may see, CrossMAE's weighted feature maps, one teacher pass for M masked views, and a falling loss for every
edition."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from bootleg_hf import BootlegDataCollator, BootlegForPretraining, MaskGenerator
from bootleg_hf.modeling_bootleg_pretraining import BootlegPredictor
from bootleg_hf.predictors import ConvPredictor, CrossMAEPredictor

EDITIONS = {
    "bootleg": {},
    "joint": {"predictor_type": "joint"},
    "crossmae": {"predictor_type": "crossmae"},
    "crossmae-wfm": {"predictor_type": "crossmae", "predictor_feature_maps": True},
    "conv": {"predictor_type": "conv", "predictor_groups": 4, "predictor_hidden_size": 16},
}


def inputs(config, batch: int = 3, seed: int = 0, repeats: int = 1):
    torch.manual_seed(seed)
    masks = MaskGenerator.from_config(config).generate(batch * repeats, seed=seed)
    return torch.randn(batch, 3, 32, 32), masks.context_indices, masks.target_indices


@pytest.mark.parametrize("edition", list(EDITIONS))
def test_every_predictor_gives_predictions_at_the_target_cells(edition):
    config = tiny_config(**EDITIONS[edition])
    model = BootlegForPretraining(config)
    expected = {"bootleg": BootlegPredictor, "joint": BootlegPredictor, "crossmae": CrossMAEPredictor,
                "crossmae-wfm": CrossMAEPredictor, "conv": ConvPredictor}[edition]
    assert type(model.predictor) is expected
    images, ctx, tgt = inputs(config)
    out = model(images, ctx, tgt, output_predictions=True)
    assert out.predictions.shape == out.targets.shape == (*tgt.shape, 2 * 32)  # targets 1:1:2, width 32
    assert torch.isfinite(out.loss)


def crossmae_predictions(predictor, context, ctx_idx, tgt_idx):
    b = context.shape[0]
    encoded = torch.cat([torch.zeros(b, 5, context.shape[-1]), context], dim=1)
    return predictor(encoded[:, :1], context, ctx_idx, tgt_idx, encoded=encoded)


def test_crossmae_queries_never_see_each_other_and_overlaps_give_duplicate_queries():
    config = tiny_config(predictor_type="crossmae")
    predictor = BootlegForPretraining(config).predictor.eval()
    torch.manual_seed(0)
    context, ctx_idx = torch.randn(2, 6, 32), torch.arange(6).repeat(2, 1)
    targets = torch.tensor([[[6, 7, 8], [8, 9, 10]]] * 2)  # cell 8 in both regions
    base = crossmae_predictions(predictor, context, ctx_idx, targets)
    assert torch.allclose(base[:, 0, 2], base[:, 1, 0], atol=1e-6)  # the same cell twice: the same query, kept twice
    moved = targets.clone()
    moved[:, 1, 2] = 15  # move one query: no other query's prediction may change
    after = crossmae_predictions(predictor, context, ctx_idx, moved)
    assert torch.allclose(after[:, 0], base[:, 0], atol=1e-6) and torch.allclose(after[:, 1, :2], base[:, 1, :2],
                                                                                 atol=1e-6)
    assert not torch.allclose(after[:, 1, 2], base[:, 1, 2], atol=1e-4)
    # the self-attention predictor, by contrast, lets the queries of a region see each other
    bootleg = BootlegForPretraining(tiny_config()).predictor.eval()
    a = bootleg(context[:, :1], context, ctx_idx, targets)
    b = bootleg(context[:, :1], context, ctx_idx, moved)
    assert not torch.allclose(a[:, 1, :2], b[:, 1, :2], atol=1e-6)


def test_joint_predictor_lets_regions_see_each_other_and_bootleg_does_not():
    torch.manual_seed(0)
    context, ctx_idx = torch.randn(2, 6, 32), torch.arange(6).repeat(2, 1)
    targets = torch.tensor([[[6, 7], [12, 13]]] * 2)
    moved = targets.clone()
    moved[:, 1, 1] = 15
    for kind, sees_other_region in (("bootleg", False), ("joint", True)):
        torch.manual_seed(1)
        predictor = BootlegForPretraining(tiny_config(predictor_type=kind)).predictor.eval()
        a, b = predictor(None, context, ctx_idx, targets), predictor(None, context, ctx_idx, moved)
        assert torch.allclose(a[:, 0], b[:, 0], atol=1e-6) != sees_other_region, kind


def test_weighted_feature_maps_get_gradients_and_one_map_per_decoder_block():
    config = tiny_config(predictor_type="crossmae", predictor_feature_maps=True, predictor_num_hidden_layers=3)
    model = BootlegForPretraining(config)
    wfm = model.predictor.feature_maps
    assert wfm.weights.shape == (3, config.num_hidden_layers + 1) and len(wfm.norms) == 3
    assert 0.2 < wfm.weights.std().item() < 1.5  # N(0, 1/k), k = 3: std 0.58
    images, ctx, tgt = inputs(config)
    model(images, ctx, tgt).loss.backward()
    assert wfm.weights.grad is not None and wfm.weights.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.student.blocks[0].parameters())
    maps = [torch.randn(2, 7, 32) for _ in range(3)]
    with torch.no_grad():
        mixed = wfm(maps)
        expected = wfm.norms[1](sum(wfm.weights[1, i] * maps[i] for i in range(3)))
    assert torch.allclose(mixed[1], expected, atol=1e-5)


def test_conv_predictor_is_data2vec_2s_decoder_and_refuses_bad_groups():
    config = tiny_config(predictor_type="conv", predictor_groups=4, predictor_hidden_size=16,
                         predictor_num_hidden_layers=2, predictor_kernel_size=3)
    predictor = BootlegForPretraining(config).predictor
    assert [c.groups for c in predictor.convs] == [4, 4] and predictor.convs[0].in_channels == 32
    assert predictor.convs[1].kernel_size == (3, 3) and predictor.convs[1].padding == (1, 1)
    with pytest.raises(ValueError, match="predictor_groups=5 must divide"):
        BootlegForPretraining(tiny_config(predictor_type="conv", predictor_groups=5))
    with pytest.raises(ValueError, match="predictor_feature_maps"):
        tiny_config(predictor_feature_maps=True)
    with pytest.raises(ValueError, match="predictor_type must be one of"):
        tiny_config(predictor_type="mlp")


def test_multi_mask_uses_one_teacher_pass_for_all_views_and_averages_their_losses():
    config = tiny_config()
    torch.manual_seed(0)
    model = BootlegForPretraining(config)
    calls = []
    model.teacher.embeddings.register_forward_hook(lambda *_: calls.append(1))
    images, ctx, tgt = inputs(config, batch=3, repeats=4)
    assert ctx.shape[0] == 12
    loss = model(images, ctx, tgt).loss
    assert len(calls) == 1  # one teacher pass for 4 views of 3 images
    # the same as the mean over the views, each computed with its own teacher pass
    views = [model(images, ctx[v::4], tgt[v::4]).loss for v in range(4)]
    assert loss.item() == pytest.approx(torch.stack(views).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="10 rows for 3 images"):
        model(images, ctx[:10], tgt[:10])


def test_the_collator_draws_m_views_per_image():
    config = tiny_config(mask_repeats=3)
    collator = BootlegDataCollator(MaskGenerator.from_config(config), repeats=config.mask_repeats)
    batch = collator([{"pixel_values": torch.zeros(3, 32, 32), "sample_index": i} for i in range(4)])
    assert batch["pixel_values"].shape[0] == 4 and batch["context_indices"].shape[0] == 12
    assert len({tuple(r.tolist()) for r in batch["target_indices"][:3].flatten(1)}) > 1  # an image's views differ


@pytest.mark.parametrize("edition", ["joint", "crossmae-wfm", "conv"])
def test_a_few_training_steps_lower_the_loss_for_each_edition(edition):
    config = tiny_config(**EDITIONS[edition], mask_repeats=2 if edition == "conv" else 1)
    torch.manual_seed(0)
    model = BootlegForPretraining(config)
    images, ctx, tgt = inputs(config, batch=8, repeats=config.mask_repeats)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(25):
        loss = model(images, ctx, tgt).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_teacher(1.0)  # a frozen teacher: the same targets every step
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1 and max(losses[-5:]) < min(losses[:5]), losses
