"""The encoder's transformers-v5 idioms: attention through `AttentionInterface`, outputs via `capture_outputs`."""

import pytest
import torch
from conftest import tiny_config

from bootleg_hf import BootlegBackbone, BootlegForImageClassification, BootlegForSemanticSegmentation, BootlegModel
from bootleg_hf import modeling_bootleg


@pytest.fixture
def kernel_calls(monkeypatch) -> dict[str, int]:
    """Counts the calls of our eager attention and of torch's SDPA (which transformers' `sdpa` entry runs)."""
    calls = {"eager": 0, "sdpa": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(modeling_bootleg, "eager_attention_forward",
                        counted("eager", modeling_bootleg.eager_attention_forward))
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        counted("sdpa", torch.nn.functional.scaled_dot_product_attention))
    return calls


def run_counted(model, x, calls: dict[str, int]) -> tuple[torch.Tensor, dict[str, int]]:
    """The model's main output for `x` (`last_hidden_state` or the last feature map) and its kernel calls."""
    calls.update(eager=0, sdpa=0)
    with torch.no_grad():
        out = model(x)
    first = out.feature_maps[-1] if isinstance(model, BootlegBackbone) else out.last_hidden_state
    return first, dict(calls)


@pytest.mark.parametrize("cls,overrides", [(BootlegModel, {}), (BootlegBackbone, {"out_indices": [1, 2]})])
def test_set_attn_implementation_switches_the_kernel(tmp_path, kernel_calls, cls, overrides):
    torch.manual_seed(0)
    cls(tiny_config(**overrides)).save_pretrained(tmp_path)
    model = cls.from_pretrained(tmp_path).eval()
    assert cls._can_set_attn_implementation()  # transformers' source heuristic finds the interface dispatch
    x = torch.randn(2, 3, 32, 32)
    assert model.config._attn_implementation == "sdpa"
    sdpa, calls = run_counted(model, x, kernel_calls)
    assert calls == {"eager": 0, "sdpa": 2}  # one per block
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    eager, calls = run_counted(model, x, kernel_calls)
    assert calls == {"eager": 2, "sdpa": 0}
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=0)
    model.set_attn_implementation("sdpa")
    assert run_counted(model, x, kernel_calls)[1] == {"eager": 0, "sdpa": 2}

    loaded_eager = cls.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert loaded_eager.config._attn_implementation == "eager"
    eager, calls = run_counted(loaded_eager, x, kernel_calls)
    assert calls == {"eager": 2, "sdpa": 0}
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=0)


def test_eager_attention_forward_matches_sdpa():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 7, 8).unbind(0)
    module = torch.nn.Module()
    out, weights = modeling_bootleg.eager_attention_forward(module, q, k, v, None, scaling=0.3)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3).transpose(1, 2)
    assert out.shape == (2, 7, 4, 8) and weights.shape == (2, 4, 7, 7)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 7))
    half, half_weights = modeling_bootleg.eager_attention_forward(module, q.half(), k.half(), v.half(), None)
    assert half.dtype == half_weights.dtype == torch.float16  # softmax in float32, cast back


def test_attentions_requested_under_sdpa_come_from_eager(config, kernel_calls):
    """Under the default SDPA config, `output_attentions=True` runs the eager kernel so the weights exist."""
    torch.manual_seed(0)
    model = BootlegModel(config).eval()
    assert model.config._attn_implementation == "sdpa"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        kernel_calls.update(eager=0, sdpa=0)
        out = model(x, output_attentions=True)
    assert kernel_calls == {"eager": 2, "sdpa": 0}
    assert [a.shape for a in out.attentions] == [(2, 4, 21, 21)] * 2 and out.hidden_states is None
    torch.testing.assert_close(out.last_hidden_state, plain.last_hidden_state, atol=1e-5, rtol=0)


def test_outputs_from_config_flags_and_tuple(config):
    torch.manual_seed(0)
    model = BootlegModel(tiny_config(output_hidden_states=True, output_attentions=True)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        explicit_none = model(x, output_hidden_states=None, output_attentions=None, return_dict=None)
        off = model(x, output_hidden_states=False, output_attentions=False)
        as_tuple = model(x, return_dict=False)
    assert len(out.hidden_states) == 3 and [h.shape for h in out.hidden_states] == [(2, 21, 32)] * 3
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 21, 21)
    torch.testing.assert_close(out.hidden_states[0], model.embeddings(x))
    torch.testing.assert_close(model.norm(out.hidden_states[-1]), out.last_hidden_state)  # before the final LN
    assert not torch.allclose(out.hidden_states[-1], out.last_hidden_state)
    torch.testing.assert_close(out.hidden_states[1], model.blocks[0](out.hidden_states[0]).out)
    assert len(explicit_none.hidden_states) == 3 and len(explicit_none.attentions) == 2  # None → the config's flag
    assert off.hidden_states is None and off.attentions is None
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 4
    for got, want in zip(as_tuple, (out.last_hidden_state, out.pooler_output, out.hidden_states, out.attentions)):
        torch.testing.assert_close(got, want)
    model.config.return_dict = False
    with torch.no_grad():
        assert isinstance(model(x, output_hidden_states=False, output_attentions=False), tuple)


def test_hidden_states_in_student_mode_and_after_plain_forwards(config):
    model = BootlegModel(config).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        student = model(x, context_indices=torch.tensor([[0, 3, 9]] * 2), output_hidden_states=True)
        plain = model(x)  # the capture hooks are installed now, but inactive
        full = model(x, output_hidden_states=True)
    assert [h.shape for h in student.hidden_states] == [(2, 5 + 3, 32)] * 3
    assert plain.hidden_states is None and plain.attentions is None
    assert len(full.hidden_states) == 3
    torch.testing.assert_close(plain.last_hidden_state, full.last_hidden_state)


@pytest.mark.parametrize("cls,overrides", [(BootlegForImageClassification, {"probe_type": "xblk"}),
                                           (BootlegForSemanticSegmentation, {"segmentation_head": "blk"})])
def test_head_models_return_the_encoder_hidden_states(cls, overrides):
    """The heads hold `BootlegBlock`s outside the encoder (probe / mask transformer): they are not recorded."""
    torch.manual_seed(0)
    model = cls(tiny_config(num_labels=3, **overrides)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x, output_hidden_states=True, output_attentions=True)
        encoder = model.bootleg(x, output_hidden_states=True, output_attentions=True)
        from_config = cls(tiny_config(num_labels=3, output_hidden_states=True, **overrides)).eval()(x)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    for got, want in zip(out.hidden_states + out.attentions, encoder.hidden_states + encoder.attentions):
        torch.testing.assert_close(got, want)
    assert len(from_config.hidden_states) == 3 and from_config.attentions is None


def test_backbone_outputs_from_config_and_fast_path(monkeypatch):
    torch.manual_seed(0)
    backbone = BootlegBackbone(tiny_config(out_indices=[0, 2])).eval()
    x = torch.randn(2, 3, 32, 32)
    fast_calls = []
    fast = backbone.forward_representations
    monkeypatch.setattr(backbone, "forward_representations", lambda *a, **k: fast_calls.append(1) or fast(*a, **k))
    with torch.no_grad():
        plain = backbone(x)
        assert fast_calls == [1] and plain.hidden_states is None and plain.attentions is None
        backbone.config.output_hidden_states = True
        with_hidden = backbone(x)
        assert fast_calls == [1]  # the full forward built the feature maps from the hidden states
        as_tuple = backbone(x, output_hidden_states=False, return_dict=False)
        backbone.config.output_hidden_states = False
        backbone.set_attn_implementation("eager")
        backbone.config.output_attentions = True  # allowed with eager attention only
        with_attentions = backbone(x)
    assert len(with_hidden.hidden_states) == 3 and with_hidden.attentions is None
    assert with_attentions.hidden_states is None and len(with_attentions.attentions) == 2
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    for maps in (with_hidden.feature_maps, with_attentions.feature_maps, as_tuple[0]):
        for got, want in zip(maps, plain.feature_maps):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    expected = backbone.norm(with_hidden.hidden_states[2])[:, 5:].reshape(2, 4, 4, 32).permute(0, 3, 1, 2)
    torch.testing.assert_close(plain.feature_maps[1], expected)


def test_backbone_negative_out_indices_resolve_like_python_indices():
    torch.manual_seed(0)
    negative = BootlegBackbone(tiny_config(out_indices=[0, -1])).eval()
    positive = BootlegBackbone(tiny_config(out_indices=[0, 2])).eval()
    positive.load_state_dict(negative.state_dict())
    assert negative.out_features == positive.out_features == ["stem", "stage2"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for flags in ({}, {"output_hidden_states": True}):
            for got, want in zip(negative(x, **flags).feature_maps, positive(x, **flags).feature_maps):
                torch.testing.assert_close(got, want)
