"""Pretraining (docs/design.md §4, §6): targets, loss, predictor, EMA, trainer schedules, exact resume, NaN stop, recipes."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback
import torch.nn.functional as F
from conftest import tiny_config

import bootleg_hf
from bootleg_hf import (
    BootlegForPretraining,
    BootlegTrainer,
    BootlegTrainingArguments,
    MSELossNoForward,
    NonFiniteLossError,
    TargetSpec,
)
from bootleg_hf.targets import TargetTerm, merge_targets, zscore

REPO = Path(__file__).resolve().parents[1]


# ---- TargetSpec ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,layers,blocks", [
    ("1:4:12", 12, [1, 4, 8, 12]),
    ("1:4:24", 24, [1, 4, 8, 12, 16, 20, 24]),
    ("1:6:12", 12, [1, 6, 12]),
    ("2:2:12", 12, [2, 4, 6, 8, 10, 12]),
    ("1:1:12", 12, list(range(1, 13))),
    ("3-12", 12, list(range(3, 13))),
    ("5", 12, [5]),
    ("9-12,1:4:12", 12, [9, 10, 11, 12, 1, 4, 8]),  # ordered, duplicates dropped
])
def test_target_spec_block_grammar(spec, layers, blocks):
    parsed = TargetSpec.parse(spec, layers)
    assert [t.block for t in parsed.terms] == blocks and all(t.kind == "out" for t in parsed.terms)


def test_target_spec_kinds_specials_and_dims():
    spec = TargetSpec.parse("1:1:12.attn,1:1:12.out", 12)
    assert len(spec.terms) == 24 and spec.terms[0] == TargetTerm(1, "attn") and spec.terms[12] == TargetTerm(1, "out")
    assert TargetSpec.parse("final", 12).terms == (TargetTerm(12, "final"),)
    assert TargetSpec.parse("embed,pixels", 12).terms == (TargetTerm(0, "embed"), TargetTerm(0, "pixels"))
    assert TargetSpec.parse("1:4:12", 12).target_dim(384, 16, 3) == 1536  # the paper's ViT-S target width
    assert TargetSpec.parse("1:4:24", 24).target_dim(1024, 16, 3) == 7168
    assert TargetSpec.parse("1:4:12", 12, merge="average").target_dim(768, 16, 3) == 768
    assert TargetSpec.parse("pixels", 12).target_dim(768, 16, 3) == 768
    assert TargetSpec.parse("3.mid", 4).deepest_block == 3


def test_target_spec_edge_cases():
    """A range may hold one block; spaces are ignored; a single term merges to itself, also with `average` (pixels
    alone included: only pixels next to feature terms cannot be averaged)."""
    assert [t.block for t in TargetSpec.parse("2:1:2", 6).terms] == [2] == [t.block for t in
                                                                              TargetSpec.parse("2-2", 6).terms]
    assert TargetSpec.parse(" 1 : 2 : 6 , final ", 6).terms == TargetSpec.parse("1:2:6,final", 6).terms
    assert TargetSpec.parse("pixels", 6, merge="average").target_dim(32, 8, 3) == 192
    assert TargetSpec.parse("2", 6, merge="average").target_dim(32, 8, 3) == 32
    x = zscore(torch.randn(2, 5, 16))
    assert merge_targets([x], "concat") is x
    torch.testing.assert_close(merge_targets([x], "average"), x, atol=1e-4, rtol=0)


@pytest.mark.parametrize("spec,merge,message", [
    ("1:0:6", "concat", "needs step >= 1 and end >= start"),
    ("5:1:3", "concat", "needs step >= 1 and end >= start"),
    ("5-3", "concat", "has end < start"),
    ("pixels,2", "average", "cannot mix"),
    ("13", "concat", "outside the encoder's blocks 1..12"),
    ("1:4:16", "concat", r"\[16\]"),
    ("0", "concat", "outside"),
    ("4.foo", "concat", "unknown target kind"),
    ("", "concat", "empty"),
    ("1:4", "concat", "cannot parse"),
    ("pixels,1:4:12", "average", "cannot mix"),
    ("1:4:12", "sum", "merge"),
])
def test_target_spec_errors(spec, merge, message):
    with pytest.raises(ValueError, match=message):
        TargetSpec.parse(spec, 12, merge)


# ---- loss ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_mse_loss_no_forward_gradient_equals_mse(dtype, tol):
    torch.manual_seed(0)
    pred = torch.randn(4, 3, 5, 7, dtype=dtype, requires_grad=True)
    target = torch.randn(4, 3, 5, 7, dtype=dtype)
    F.mse_loss(pred, target).backward()
    reference = pred.grad.clone()
    pred.grad = None
    placeholder = MSELossNoForward.apply(pred, target)
    assert placeholder.item() == 0.0 and placeholder.requires_grad
    (placeholder * 3.0).backward()  # upstream scaling (e.g. gradient accumulation) must pass through
    torch.testing.assert_close(pred.grad.float(), 3.0 * reference.float(), atol=tol, rtol=tol)
    assert pred.grad.dtype == dtype
    assert bootleg_hf.mse_loss(pred, target).item() == pytest.approx(F.mse_loss(pred, target).item())


# ---- model --------------------------------------------------------------------------------------------------------
def make_masks(config, batch_size: int, seed: int = 0):
    return bootleg_hf.MaskGenerator.from_config(config).generate(batch_size, batch_index=seed)


def test_predictor_rectangles_are_independent_sequences():
    config = tiny_config(image_size=48)
    model = BootlegForPretraining(config).eval()
    masks = make_masks(config, 3)
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        encoded = model.student(x, context_indices=masks.context_indices).last_hidden_state
        cls, ctx = encoded[:, :1], encoded[:, config.num_prefix_tokens:]
        batched = model.predictor(cls, ctx, masks.context_indices, masks.target_indices)
        for r in range(masks.target_indices.shape[1]):
            alone = model.predictor(cls, ctx, masks.context_indices, masks.target_indices[:, r:r + 1])
            torch.testing.assert_close(alone[:, 0], batched[:, r], atol=1e-5, rtol=0)
    assert batched.shape == (3, 4, masks.target_indices.shape[2], 2 * 32)  # targets 1:1:2 → 2 layers


def test_targets_are_zscored_teacher_layers_at_target_cells():
    config = tiny_config(image_size=48, num_hidden_layers=3, targets="1:1:3")
    model = BootlegForPretraining(config).eval()
    masks = make_masks(config, 2)
    x = torch.randn(2, 3, 48, 48)
    targets, std = model.compute_targets(x, masks.target_indices)
    hidden = model.teacher(x, output_hidden_states=True).hidden_states
    b, r, t = masks.target_indices.shape
    for i, block in enumerate([1, 2, 3]):
        layer = hidden[block][:, 5:]  # drop CLS + 4 registers
        cells = torch.stack([layer[j, masks.target_indices[j].flatten()] for j in range(b)]).reshape(b, r, t, -1)
        expected = (cells - cells.mean(-1, keepdim=True)) / torch.sqrt(cells.var(-1, unbiased=False, keepdim=True) + 1e-5)
        torch.testing.assert_close(targets[..., 32 * i:32 * (i + 1)], expected, atol=1e-5, rtol=1e-5)
    assert std.shape == (3,)
    averaged = BootlegForPretraining(tiny_config(image_size=48, num_hidden_layers=3, targets="1:1:3",
                                                 target_merge="average"))
    averaged.teacher.load_state_dict(model.teacher.state_dict())
    avg, _ = averaged.compute_targets(x, masks.target_indices)
    mean = torch.stack([targets[..., 32 * i:32 * (i + 1)] for i in range(3)]).mean(0)
    torch.testing.assert_close(avg, F.layer_norm(mean, (32,), eps=1e-5), atol=1e-5, rtol=1e-5)


def test_pixel_and_final_targets():
    config = tiny_config(image_size=48, targets="final,pixels")
    model = BootlegForPretraining(config).eval()
    masks = make_masks(config, 2)
    x = torch.randn(2, 3, 48, 48)
    targets, _ = model.compute_targets(x, masks.target_indices)
    assert targets.shape[-1] == 32 + 8 * 8 * 3 and model.predictor.head.out_features == 32 + 192
    first_cell = masks.target_indices[0, 0, 0].item()
    row, col = divmod(first_cell, 6)
    patch = x[0, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8].permute(1, 2, 0).reshape(-1)
    torch.testing.assert_close(targets[0, 0, 0, 32:], (patch - patch.mean()) / (patch.var() + 1e-6).sqrt())
    final = model.teacher(x).last_hidden_state[0, 5 + first_cell]
    torch.testing.assert_close(targets[0, 0, 0, :32], F.layer_norm(final, (32,), eps=1e-5), atol=1e-5, rtol=1e-5)


def test_instance_normalised_targets_are_data2vec2s(tmp_path):
    """target_norm="instance": each block normalised per channel over the image's patch tokens (torch's
    F.instance_norm), averaged, then per token (F.layer_norm) — data2vec 2.0's targets — at the target cells."""
    kwargs = dict(image_size=48, num_hidden_layers=3, targets="2:1:3", target_merge="average")
    model = BootlegForPretraining(tiny_config(**kwargs, target_norm="instance")).eval()
    masks = make_masks(model.config, 2)
    x = torch.randn(2, 3, 48, 48)
    targets, std = model.compute_targets(x, masks.target_indices)
    hidden = model.teacher(x, output_hidden_states=True).hidden_states
    normed = [F.instance_norm(hidden[k][:, 5:].transpose(1, 2)).transpose(1, 2) for k in (2, 3)]  # no CLS/registers
    full = F.layer_norm(torch.stack(normed).mean(0), (32,), eps=1e-5)
    b, r, t = masks.target_indices.shape
    expected = torch.stack([full[j, masks.target_indices[j].flatten()] for j in range(b)]).reshape(b, r, t, -1)
    torch.testing.assert_close(targets, expected, atol=1e-4, rtol=1e-4)
    assert std.shape == (2,)
    token = BootlegForPretraining(tiny_config(**kwargs))  # the default normalisation gives other targets
    token.teacher.load_state_dict(model.teacher.state_dict())
    assert (token.compute_targets(x, masks.target_indices)[0] - targets).abs().max() > 0.1
    # concatenated: the instance-normalised blocks side by side, z-scored per token together
    concat = BootlegForPretraining(tiny_config(**{**kwargs, "target_merge": "concat"}, target_norm="instance"))
    concat.teacher.load_state_dict(model.teacher.state_dict())
    cells = torch.stack([torch.cat(normed, -1)[j, masks.target_indices[j].flatten()] for j in range(b)])
    torch.testing.assert_close(concat.compute_targets(x, masks.target_indices)[0],
                               F.layer_norm(cells, (64,), eps=1e-5).reshape(b, r, t, -1), atol=1e-4, rtol=1e-4)
    # saved and reloaded with the model; trains; a wrong value is refused by name
    model.train()
    loss = model(x, masks.context_indices, masks.target_indices).loss
    loss.backward()
    assert torch.isfinite(loss)
    model.save_pretrained(tmp_path)
    assert BootlegForPretraining.from_pretrained(tmp_path).config.target_norm == "instance"
    with pytest.raises(ValueError, match="target_norm must be one of"):
        tiny_config(target_norm="batch").check_values()


def test_teacher_starts_as_copy_is_frozen_and_ema_is_exact(tmp_path):
    model = BootlegForPretraining(tiny_config())
    pairs = list(zip(model.teacher.parameters(), model.student.parameters()))
    assert all(torch.equal(t, s) for t, s in pairs) and not any(t.requires_grad for t, _ in pairs)
    model.train()
    assert model.student.training and not model.teacher.training
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    before = [t.clone() for t, _ in pairs]
    model.update_teacher(0.9)
    for (t, s), t0 in zip(pairs, before):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s)
    model.save_pretrained(tmp_path)
    loaded = BootlegForPretraining.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.teacher.parameters(), model.teacher.parameters()))
    assert not any(p.requires_grad for p in loaded.teacher.parameters())
    encoder = bootleg_hf.BootlegModel.from_pretrained(tmp_path)  # the teacher lives under the base prefix
    assert torch.equal(encoder.blocks[0].mlp.fc1.weight, model.teacher.blocks[0].mlp.fc1.weight)


def test_forward_validates_masks():
    model = BootlegForPretraining(tiny_config())
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="target_indices must be"):
        model(x, torch.tensor([[0, 1]]), torch.tensor([[2, 3]]))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model(x, torch.tensor([[0, 1]]), torch.tensor([[[2, 99]]]))


# ---- trainer ------------------------------------------------------------------------------------------------------
class SyntheticImages(torch.utils.data.Dataset):
    """Smooth random images (sums of oriented sinusoids): structured enough for the predictor to learn."""

    def __init__(self, n: int, size: int = 48, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
        freq = torch.rand(n, 3, 2, generator=g) * 6
        phase = torch.rand(n, 3, 1, 1, generator=g) * 6.28
        self.images = torch.sin(freq[..., 0, None, None] * xx * 6.28 + freq[..., 1, None, None] * yy * 6.28 + phase)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"pixel_values": self.images[i]}


def make_trainer(tmp_path, max_steps=None, model=None, ema_start=0.99, ema_end=0.999, **overrides):
    config = tiny_config(image_size=48, ema_start=ema_start, ema_end=ema_end)  # the EMA schedule is the config's
    torch.manual_seed(0)
    model = model or BootlegForPretraining(config)
    args = dict(output_dir=str(tmp_path), max_steps=max_steps or -1, per_device_train_batch_size=8, lr_max=3e-3,
                lr_init=1e-4, lr_final=1e-4, warmup_steps=3, scale_lr_by_batch=False, logging_steps=5,
                save_strategy="no", report_to="none", seed=0, use_cpu=True, disable_tqdm=True,
                dataloader_drop_last=True)
    args = BootlegTrainingArguments(**{**args, **overrides})
    return BootlegTrainer(model=model, args=args, train_dataset=SyntheticImages(64))


def test_training_lowers_the_loss_and_logs_the_schedules(tmp_path):
    trainer = make_trainer(tmp_path, 30)
    output = trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    losses = [h["loss"] for h in logs]
    assert len(logs) == 6 and max(losses[-2:]) < 0.9 * losses[0], losses
    for key in ("learning_rate", "weight_decay", "ema_momentum", "context_rate", "target_rate", "target_std/1.out",
                "target_std/2.out", "images_per_second"):
        assert key in logs[-1], key
    assert 0 < logs[-1]["context_rate"] < 1 and 0 < logs[-1]["target_rate"] < 1
    assert logs[-1]["ema_momentum"] == pytest.approx(0.99 + 0.009 * 30 / 30)
    # the reported train loss is the mean of real MSE values, not of MSELossNoForward placeholders
    assert output.training_loss == pytest.approx(sum(h["loss"] for h in logs) / len(logs), rel=1e-6)
    model = trainer.model
    assert not all(torch.equal(t, s) for t, s in zip(model.teacher.parameters(), model.student.parameters()))


def test_one_step_follows_the_ema_formula_and_param_groups(tmp_path):
    trainer = make_trainer(tmp_path, 1, ema_start=0.9, ema_end=0.5)
    teacher0 = [p.clone() for p in trainer.model.teacher.parameters()]
    trainer.train()
    model = trainer.model
    for t, t0, s in zip(model.teacher.parameters(), teacher0, model.student.parameters()):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s, atol=1e-6, rtol=0)
    decay, no_decay = trainer.optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert {"student.embeddings.cls_token", "student.embeddings.reg_token", "predictor.mask_token",
            "predictor.reg_token", "student.norm.weight", "student.blocks.0.attn.qkv.bias"} <= no_decay_names
    assert all(p.ndim > 1 for p in decay["params"]) and no_decay["weight_decay"] == 0.0
    assert not any(n.startswith("bootleg.") for n in map(names.get, map(id, decay["params"] + no_decay["params"])))
    assert trainer.optimizer.defaults["betas"] == (0.9, 0.95)


def test_ema_anneal_steps_end_the_momentum_ramp_early_and_are_saved(tmp_path):
    """ema_anneal_steps (data2vec 2.0's ema_anneal_end_step): the momentum reaches ema_end after that many steps and
    stays there; the schedule file of a checkpoint records it, and one written before the field existed still loads."""
    import dataclasses

    from bootleg_hf.trainer import SCHEDULE_FILE, Schedule

    torch.manual_seed(0)
    model = BootlegForPretraining(tiny_config(image_size=48, ema_start=0.99, ema_end=0.999, ema_anneal_steps=4))
    trainer = make_trainer(tmp_path, 10, model=model, save_strategy="steps", save_steps=10)
    assert [trainer.momentum_at(k) for k in (0, 2, 4, 7)] == pytest.approx([0.99, 0.9945, 0.999, 0.999])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "ema_momentum" in h]
    assert [h["ema_momentum"] for h in logs] == pytest.approx([0.999, 0.999])  # steps 5 and 10
    saved = json.loads((tmp_path / "checkpoint-10" / SCHEDULE_FILE).read_text())
    assert saved["ema_anneal_steps"] == 4 and saved["total_steps"] == 10
    assert json.loads((tmp_path / "checkpoint-10" / "config.json").read_text())["ema_anneal_steps"] == 4
    old = {k: v for k, v in saved.items() if k != "ema_anneal_steps"}
    assert Schedule(**old).momentum(5) == pytest.approx(0.99 + 0.009 * 5 / 10)  # over the whole run, as before
    callback = bootleg_hf.BootlegEMACallback()  # the stock-Trainer update follows the same ramp
    assert callback.momentum(model, type("State", (), {"global_step": 6, "max_steps": 10})) == pytest.approx(0.999)
    assert dataclasses.asdict(trainer.schedule)["ema_anneal_steps"] == 4
    with pytest.raises(ValueError, match="ema_anneal_steps must be a positive integer"):
        tiny_config(ema_anneal_steps=0).check_values()


def test_schedules():
    from bootleg_hf.trainer import learning_rate_at, momentum_at, weight_decay_at

    assert learning_rate_at(0, 100, 10, 1e-4, 3e-3, 1e-5) == pytest.approx(1e-4)
    assert learning_rate_at(5, 100, 10, 1e-4, 3e-3, 1e-5) == pytest.approx(1e-4 + 0.5 * (3e-3 - 1e-4))
    assert learning_rate_at(10, 100, 10, 1e-4, 3e-3, 1e-5) == pytest.approx(3e-3)
    assert learning_rate_at(55, 100, 10, 1e-4, 3e-3, 1e-5) == pytest.approx((3e-3 + 1e-5) / 2)
    assert learning_rate_at(100, 100, 10, 1e-4, 3e-3, 1e-5) == pytest.approx(1e-5)
    assert weight_decay_at(50, 100, 0.04, 0.4) == pytest.approx(0.22)
    assert momentum_at(25, 100, 0.996, 1.0) == pytest.approx(0.997)
    args = BootlegTrainingArguments(output_dir="unused", per_device_train_batch_size=64, gradient_accumulation_steps=4,
                                    use_cpu=True)
    assert args.lr_scale == pytest.approx(256 / 2048)


def capture_masks(model):
    seen = []
    model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["context_indices"].clone()), with_kwargs=True)
    return seen


def test_exact_resume_is_bitwise(tmp_path):
    straight = make_trainer(tmp_path / "a", 8, save_strategy="steps", save_steps=4, logging_steps=2)
    masks_straight = capture_masks(straight.model)
    straight.train()
    resumed = make_trainer(tmp_path / "b", 8, save_strategy="steps", save_steps=4, logging_steps=2)
    masks_resumed = capture_masks(resumed.model)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))
    assert len(masks_resumed) == 4
    assert all(torch.equal(a, b) for a, b in zip(masks_straight[4:], masks_resumed))
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name  # student, teacher and predictor
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert opt_a.keys() == opt_b.keys()
    for k in opt_a:
        assert all(torch.equal(opt_a[k][s], opt_b[k][s]) for s in ("exp_avg", "exp_avg_sq"))
    assert straight.lr_scheduler.get_last_lr() == resumed.lr_scheduler.get_last_lr()


@pytest.mark.parametrize("length", [{"max_steps": 4}, {"max_steps": -1, "num_train_epochs": 0.5}])
def test_resuming_a_finished_run_trains_no_further_step(tmp_path, length):
    """`--resume` on a run whose last checkpoint holds all its steps changes nothing: no step past the end (stock
    transformers runs one more), the model is the checkpoint's, with max_steps or epochs (64 images, batch 8: 0.5
    epoch = 4 steps)."""
    first = make_trainer(tmp_path, save_strategy="steps", save_steps=2, **length)
    first.train()
    again = make_trainer(tmp_path, save_strategy="steps", save_steps=2, **length)
    again.train(resume_from_checkpoint=True)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert again.state.global_step == 4
    for (name, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name


class OptimizerSpy(TrainerCallback):
    """Records, before each optimizer step, the step and every param group's (lr, weight_decay, decay flag), and the
    mask collator's epoch."""

    def __init__(self, collator):
        self.groups, self.epochs, self.collator = [], [], collator

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.groups.append([(g["lr"], g["weight_decay"], g.get("decay", False)) for g in optimizer.param_groups])
        self.epochs.append(self.collator.epoch)


def test_every_step_applies_the_scheduled_lr_and_weight_decay_and_the_epoch(tmp_path):
    """The schedules reach the optimizer, written out independently: at step k the LR is lr_init → lr_max (linear,
    warm-up) → lr_final (cosine), times global batch / 2048; decayed groups get the cosine from wd_init to wd_final
    (I-JEPA's rising decay here), the others 0. Each epoch's masks are seeded with that epoch."""
    trainer = make_trainer(tmp_path, 16, scale_lr_by_batch=True, warmup_steps=4, lr_init=1e-4, lr_max=3e-3,
                           lr_final=1e-5, wd_init=0.04, wd_final=0.4)
    spy = OptimizerSpy(trainer.data_collator)
    trainer.add_callback(spy)
    trainer.train()
    assert len(spy.groups) == 16 and spy.epochs == [0] * 8 + [1] * 8  # 64 images, batch 8: 8 steps per epoch
    for k, groups in enumerate(spy.groups):
        if k < 4:
            lr = 1e-4 + (3e-3 - 1e-4) * k / 4
        else:
            lr = 1e-5 + (3e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (k - 4) / 12))
        wd = 0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * k / 16))
        assert {decay for _, _, decay in groups} == {True, False}
        for group_lr, group_wd, decay in groups:
            assert group_lr == pytest.approx(lr * 8 / 2048, rel=1e-9), k
            assert group_wd == (pytest.approx(wd, rel=1e-9) if decay else 0.0), k


@pytest.mark.parametrize("fn,args,expected", [
    ("learning_rate_at", (25, 20, 5, 1e-4, 3e-3, 1e-5), 1e-5),  # past the end: stays at lr_final
    ("learning_rate_at", (6, 6, 5, 1e-4, 3e-3, 1e-5), 1e-5),  # one step after warm-up: the cosine's end
    ("weight_decay_at", (30, 20, 0.04, 0.4), 0.4),
    ("weight_decay_at", (1, 1, 0.04, 0.4), 0.4),
    ("momentum_at", (30, 20, 0.99, 1.0), 1.0),
    ("momentum_at", (1, 1, 0.99, 1.0), 1.0),
])
def test_schedules_end_where_they_should(fn, args, expected):
    """The schedules reach their end value at the last step and stay there (e.g. a resumed run that was extended)."""
    from bootleg_hf import trainer as trainer_module

    assert getattr(trainer_module, fn)(*args) == pytest.approx(expected, rel=1e-12)


def test_checkpoints_rotate_to_the_save_total_limit(tmp_path):
    """`save_total_limit` keeps the newest checkpoints (the atomic save renames before rotating)."""
    make_trainer(tmp_path, 4, save_strategy="steps", save_steps=1, save_total_limit=2).train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]


def test_adamw_is_fused_for_float_parameters_on_one_device_type():
    """The optimizer is torch's fused AdamW (one kernel for all parameters) when it can be: float parameters on
    one device type; otherwise the foreach implementation."""
    from bootleg_hf.optim import adamw, param_groups

    model = torch.nn.Linear(4, 4)
    assert all("lr" not in g for g in param_groups(model, 0.05))  # the optimizer's lr, unless a group's is given
    assert [g["lr"] for g in param_groups(model, 0.05, lr=2e-3)] == [2e-3, 2e-3]
    fused = adamw(param_groups(model, 0.05), lr=1e-3).defaults
    assert fused["fused"] is True and not fused["foreach"]
    elsewhere = adamw([{"params": [torch.nn.Parameter(torch.zeros(2, device="meta"))]}], lr=1e-3).defaults
    assert not elsewhere["fused"] and elsewhere["foreach"] is True


def test_a_half_written_checkpoint_left_by_a_kill_is_cleared_before_the_next_save(tmp_path):
    """What a killed save left in the staging folder never ends up in a checkpoint (the kill itself:
    tests/test_reliability.py::test_kill_during_a_checkpoint_write_resumes_from_the_last_complete_one)."""
    from bootleg_hf.trainer import STAGING_DIR

    stale = tmp_path / STAGING_DIR / "checkpoint-2"
    stale.mkdir(parents=True)
    (stale / "optimizer.pt.partial").write_bytes(b"half")
    make_trainer(tmp_path, 2, save_strategy="steps", save_steps=2).train()
    assert not (tmp_path / STAGING_DIR).exists()
    assert not (tmp_path / "checkpoint-2" / "optimizer.pt.partial").exists()
    assert (tmp_path / "checkpoint-2" / "model.safetensors").is_file()


def test_nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, 10, save_strategy="steps", save_steps=2, logging_steps=1)
    calls = {"n": 0}
    original = trainer.model.forward

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = original(*args, **kwargs)
        if calls["n"] == 5:  # the 5th step produces NaN
            out.loss = out.loss * float("nan")
        return out

    trainer.model.forward = poisoned
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        trainer.train()
    checkpoints = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert all(math.isfinite(h["loss"]) for h in state["log_history"] if "loss" in h)


def test_recipes_build_the_paper_sizes():
    from bootleg_hf import recipes as pretrain
    expected = {"vit-small": (384, 12, 6, 192, 10, 1536), "vit-base": (768, 12, 12, 384, 10, 3072),
                "vit-large": (1024, 24, 16, 512, 10, 7168), "vit-micro": (96, 6, 3, 48, 3, 384)}
    for name, (d, depth, heads, dp, pdepth, tdim) in expected.items():
        recipe = pretrain.load_recipe(name)
        config = pretrain.build_config(recipe)
        assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (d, depth, heads)
        assert (config.predictor_hidden_size, config.predictor_num_hidden_layers) == (dp, pdepth)
        with torch.device("meta"):
            model = BootlegForPretraining(config)
        assert model.predictor.head.out_features == tdim
        args = pretrain.build_training_args(recipe, "unused", num_images=1_281_167, use_cpu=True)
        assert config.ema_start == (0.996 if name == "vit-micro" else 0.9985)
        if name != "vit-micro":
            assert args.per_device_train_batch_size == 2048 and args.lr_max == 3e-3 and args.num_train_epochs == 600
            assert args.warmup_steps == 105 * (1_281_167 // 2048)
    small = pretrain.load_recipe(pretrain.RECIPE_DIR / "vit-small.yaml",
                                 ["training.lr_max=1e-3", "model.targets=1:2:12", "training.bf16=false"])
    assert small["training"]["lr_max"] == 1e-3 and small["training"]["bf16"] is False
    assert pretrain.build_config(small).targets == "1:2:12"  # not YAML 1.1's base-60 integer 4332
    with pytest.raises(ValueError, match="section.key=value"):
        pretrain.load_recipe("vit-small", ["lr_max=1"])


def test_two_process_cpu_run(tmp_path):
    """torchrun with 2 CPU processes (gloo): different masks per rank, identical teachers."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    # --standalone lets torchrun pick a free port itself (no race with a port chosen here and released)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "ddp_worker.py"), str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    teacher_keys = [k for k in ranks[0] if k.startswith("teacher.")]
    assert teacher_keys and all(torch.equal(ranks[0][k], ranks[1][k]) for k in teacher_keys)
    mask_keys = [k for k in ranks[0] if k.startswith("mask.")]
    assert len(mask_keys) == 4
    assert all(not torch.equal(ranks[0][k], ranks[1][k]) for k in mask_keys)
    fresh = BootlegForPretraining(tiny_config(image_size=48)).teacher.state_dict()
    assert not all(torch.equal(fresh[k[len("teacher."):]], ranks[0][k]) for k in teacher_keys)  # it trained


def test_pretrain_script_on_a_folder_with_a_corrupt_image(tmp_path, caplog):
    from bootleg_hf.cli import pretrain_main
    from bootleg_hf.data import CorruptImageError, load_fashion_mnist, write_image_folder
    from bootleg_hf.pretraining import PretrainSettings, run_pretraining

    folder = write_image_folder(load_fashion_mnist("train", limit=16), tmp_path / "images")  # 2 batches/epoch
    bad = next(folder.glob("*/*.png"))
    bad.write_bytes(b"this is not a png")
    overrides = ["training.logging_steps=1", "training.save_steps=1000"]
    with pytest.raises(CorruptImageError, match=bad.name):
        pretrain_main(["--recipe", "vit-micro", "--dataset", str(folder), "--batch-size", "8", "--max-steps", "3",
                       *sum((["--set", o] for o in overrides), []), "--output-dir", str(tmp_path / "raise"),
                       "--on-corrupt", "raise"])
    caplog.clear()
    with caplog.at_level("WARNING"):
        trainer = run_pretraining(PretrainSettings(recipe="vit-micro", overrides=overrides, dataset=folder,
                                                   batch_size=8, max_steps=3, output_dir=tmp_path / "skip"))
    assert bad.name in caplog.text
    assert trainer.state.global_step == 3
    encoder = bootleg_hf.BootlegModel.from_pretrained(tmp_path / "skip" / "encoder")
    resumed = BootlegForPretraining.from_pretrained(tmp_path / "skip")
    assert torch.equal(encoder.blocks[0].attn.qkv.weight, resumed.teacher.blocks[0].attn.qkv.weight)
    assert (tmp_path / "skip" / "encoder" / "preprocessor_config.json").exists()


def test_from_encoder_continues_pretraining_from_an_encoder():
    encoder = bootleg_hf.BootlegModel(tiny_config())
    model = BootlegForPretraining.from_encoder(encoder, targets="2")
    assert model.config.targets == "2" and model.predictor.head.out_features == 32
    for s, t, e in zip(model.student.parameters(), model.teacher.parameters(), encoder.parameters()):
        assert torch.equal(s, e) and torch.equal(t, e) and not t.requires_grad
