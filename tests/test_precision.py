"""Precision (docs/design.md §10): bf16 autocast where it is fast, the CPU half-precision attention path, float32
targets and loss, and the settings that choose them."""

import pytest
import torch
from conftest import tiny_config

import bootleg_hf
from bootleg_hf import BootlegForPretraining, BootlegModel
from bootleg_hf.evaluation.common import frozen_tokens
from bootleg_hf.modeling_bootleg import eager_attention_forward
from bootleg_hf.precision import autocast, fast_bf16, use_bf16


def test_precision_names_and_resolution():
    assert use_bf16("fp32", "cpu") is False and use_bf16("bf16", "cpu") is True
    assert use_bf16("auto", "cpu") == fast_bf16("cpu")
    assert fast_bf16("meta") is False
    with pytest.raises(ValueError, match="precision must be one of"):
        use_bf16("fp16", "cpu")
    from bootleg_hf.evaluation.classification import ProbeSettings

    with pytest.raises(ValueError, match="precision must be one of"):
        ProbeSettings(precision="half")
    x = torch.randn(4, 8)
    with autocast("cpu", "bf16"):
        assert (x @ x.T).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert (x @ x.T).dtype == torch.float32


def test_training_arguments_choose_bf16_where_it_is_fast(tmp_path):
    args = bootleg_hf.BootlegTrainingArguments(output_dir=str(tmp_path), report_to="none")
    assert args.bf16 == fast_bf16("cuda" if torch.cuda.is_available() else "cpu")
    forced = bootleg_hf.BootlegTrainingArguments(output_dir=str(tmp_path), report_to="none", bf16=False)
    assert forced.bf16 is False and forced.mixed_precision == "no"


def test_cpu_half_precision_uses_the_explicit_attention_kernel():
    """SDPA is slow in bf16 on a CPU (its backward most): half precision on a CPU takes the eager kernel, float32
    keeps SDPA. Both kernels compute the same attention."""
    model = BootlegModel(tiny_config()).train()
    attention = model.blocks[0].attn
    q = torch.randn(2, 4, 5, 8)
    sdpa = attention.kernel(q, output_attentions=False)
    assert sdpa is not eager_attention_forward
    assert attention.kernel(q.bfloat16(), output_attentions=False) is eager_attention_forward
    with torch.no_grad():
        assert attention.kernel(q.bfloat16(), output_attentions=False) is eager_attention_forward
    k, v = torch.randn_like(q), torch.randn_like(q)
    torch.testing.assert_close(sdpa(attention, q, k, v, None, scaling=8**-0.5)[0],
                               eager_attention_forward(attention, q, k, v, None, scaling=8**-0.5)[0],
                               atol=1e-5, rtol=0)
    # in bf16 the CPU softmax runs in the input dtype (accumulating in float32): as close to float64 as SDPA's
    exact = eager_attention_forward(attention, q.double(), k.double(), v.double(), None, scaling=8**-0.5)[0]
    half = [q.bfloat16(), k.bfloat16(), v.bfloat16()]
    ours = (eager_attention_forward(attention, *half, None, scaling=8**-0.5)[0].double() - exact).abs().max()
    theirs = (sdpa(attention, *half, None, scaling=8**-0.5)[0].double() - exact).abs().max()
    assert ours <= 2 * theirs + 1e-3, (ours, theirs)


def test_bf16_pretraining_step_keeps_float32_weights_targets_and_loss(config):
    """Under bf16 autocast the loss and the targets stay float32, gradients reach float32 parameters, and the step is
    close to the float32 one (bf16 rounding)."""
    torch.manual_seed(0)
    model = BootlegForPretraining(config).train()
    batch = bootleg_hf.BootlegDataCollator(bootleg_hf.MaskGenerator.from_config(config), seed=0)(
        [{"pixel_values": torch.randn(3, 32, 32)} for _ in range(4)])
    reference = model(**batch, output_predictions=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch, output_predictions=True)
    assert out.loss.dtype == torch.float32 and out.targets.dtype == torch.float32
    assert out.predictions.dtype == torch.bfloat16
    torch.testing.assert_close(out.targets, reference.targets, atol=0.1, rtol=0.05)
    assert abs(out.loss.item() - reference.loss.item()) < 0.02 * reference.loss.item()
    out.loss.backward()
    weight = model.student.blocks[0].attn.qkv.weight
    assert weight.dtype == torch.float32 and weight.grad.dtype == torch.float32 and weight.grad.abs().sum() > 0


def test_frozen_tokens_are_float32_in_either_precision(config):
    encoder = BootlegModel(config).eval()
    x = torch.randn(2, 3, 32, 32)
    full, half = frozen_tokens(encoder, x, "fp32"), frozen_tokens(encoder, x, "bf16")
    assert full.dtype == half.dtype == torch.float32 and not torch.equal(full, half)
    torch.testing.assert_close(half, full, atol=0.1, rtol=0.05)
