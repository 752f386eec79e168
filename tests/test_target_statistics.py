"""Targets and the collapse monitor (docs/design.md §4.2): the `final` target is the final LayerNorm's output
z-scored again (visible only when that LayerNorm's weight and bias are not 1 and 0), and `target_std`, which the
trainer logs per target layer, is the per-channel standard deviation over target tokens of the z-scored targets,
averaged over channels — both checked against formulas written here from the teacher's plain hidden states."""

import pytest
import torch
from conftest import tiny_config

from bootleg_hf import BootlegForPretraining, BootlegTrainer, BootlegTrainingArguments, MaskGenerator

PREFIX = 5  # CLS + 4 registers


def perturbed_final_norm(model: BootlegForPretraining, seed: int = 0) -> BootlegForPretraining:
    """The final LayerNorm of student and teacher moved away from weight 1 / bias 0, so its output is no longer
    z-scored per token."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for encoder in (model.student, model.teacher):
            encoder.norm.weight.copy_(0.5 + torch.rand(encoder.norm.weight.shape, generator=g))
            encoder.norm.bias.copy_(torch.randn(encoder.norm.bias.shape, generator=g) * 0.5)
        model.teacher.load_state_dict(model.student.state_dict())
    return model


def zscored(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + 1e-5)


def at_cells(tokens: torch.Tensor, target_indices: torch.Tensor) -> torch.Tensor:
    """`tokens [B, PREFIX + N, D]` at the target cells → `[B, R, T, D]`."""
    b, r, t = target_indices.shape
    patches = tokens[:, PREFIX:]
    return torch.stack([patches[i, target_indices[i].flatten()] for i in range(b)]).reshape(b, r, t, -1)


def expected_std(cells: torch.Tensor) -> float:
    """Per-channel standard deviation (n − 1) over every target token of the z-scored cells, averaged over channels."""
    rows = zscored(cells).reshape(-1, cells.shape[-1]).double()
    n = rows.shape[0]
    variance = ((rows - rows.mean(0)) ** 2).sum(0) / (n - 1)
    return variance.sqrt().mean().item()


def teacher_layers(model: BootlegForPretraining, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """The teacher's outputs of blocks 1 and 2 and of its final LayerNorm, from the plain forward."""
    with torch.no_grad():
        out = model.teacher(pixel_values, output_hidden_states=True)
    return {"1.out": out.hidden_states[1], "2.out": out.hidden_states[2], "final": out.last_hidden_state}


def test_final_target_is_the_final_layernorm_output_zscored_again():
    """The `final` target (I-JEPA's) with a final LayerNorm whose weight and bias are not 1 / 0: the target equals the
    LayerNorm's output z-scored per token (eps 1e-5), which is visibly not the LayerNorm's output itself."""
    config = tiny_config(targets="1,final")
    torch.manual_seed(0)
    model = perturbed_final_norm(BootlegForPretraining(config)).eval()
    masks = MaskGenerator.from_config(config).generate(3, batch_index=1)
    x = torch.randn(3, 3, 32, 32)
    out = model(x, masks.context_indices, masks.target_indices, output_predictions=True)
    d = config.hidden_size
    final = at_cells(teacher_layers(model, x)["final"], masks.target_indices)
    torch.testing.assert_close(out.targets[..., d:], zscored(final), atol=1e-5, rtol=1e-5)
    assert (out.targets[..., d:] - final).abs().max() > 0.5  # the z-scoring is visible: the raw LN output differs
    block1 = at_cells(teacher_layers(model, x)["1.out"], masks.target_indices)
    torch.testing.assert_close(out.targets[..., :d], zscored(block1), atol=1e-5, rtol=1e-5)


def test_target_std_follows_the_formula_in_the_forward_and_in_the_trainer_logs(tmp_path):
    """The collapse monitor: `target_std` of the forward and the `target_std/<layer>` values the trainer logs equal,
    per target layer, the mean over channels of the standard deviation over target tokens of the z-scored teacher
    representation, computed here from the teacher's hidden states at the batch's target cells."""
    config = tiny_config(targets="1,2,final")
    torch.manual_seed(0)
    model = perturbed_final_norm(BootlegForPretraining(config))
    names = [t.name for t in model.target_spec.terms]
    assert names == ["1.out", "2.out", "final"]

    # the forward
    masks = MaskGenerator.from_config(config).generate(4, batch_index=2)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    std = model(x, masks.context_indices, masks.target_indices).target_std
    layers = teacher_layers(model, x)
    want = [expected_std(at_cells(layers[name], masks.target_indices)) for name in names]
    assert std.tolist() == pytest.approx(want, rel=1e-4)
    assert all(abs(w - 1) > 0.02 for w in want), want  # not the per-token std over channels, which is 1

    # the trainer's logs: the value of the step's batch, from the teacher as that step's forward saw it
    seen = {}

    def record(module, args, kwargs):
        if module.training:
            layers = teacher_layers(module, kwargs["pixel_values"])
            seen["want"] = [expected_std(at_cells(layers[n], kwargs["target_indices"])) for n in names]

    model.register_forward_pre_hook(record, with_kwargs=True)
    images = [{"pixel_values": t} for t in torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))]
    args = BootlegTrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8,
                                    logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
                                    disable_tqdm=True, scale_lr_by_batch=False, warmup_steps=0)
    trainer = BootlegTrainer(model=model.train(), args=args, train_dataset=images)
    trainer.train()
    logged = next(h for h in trainer.state.log_history if "loss" in h)
    assert [logged[f"target_std/{n}"] for n in names] == pytest.approx(seen["want"], rel=1e-4)


def test_pixel_targets_are_maes_normalised_patches():
    """MAE's `norm_pix_loss` targets, written out: per patch, (x − mean) / sqrt(unbiased variance + 1e-6); a
    constant patch becomes zeros (not NaN)."""
    from bootleg_hf.targets import normalized_pixels

    patches = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(0)) * 3 + 1
    patches[1, 2] = 0.25  # constant
    n = patches.shape[-1]
    mean = patches.sum(-1, keepdim=True) / n
    var = ((patches - mean) ** 2).sum(-1, keepdim=True) / (n - 1)
    torch.testing.assert_close(normalized_pixels(patches), (patches - mean) / torch.sqrt(var + 1e-6), atol=1e-6,
                               rtol=1e-6)
    assert torch.equal(normalized_pixels(patches)[1, 2], torch.zeros(n))
