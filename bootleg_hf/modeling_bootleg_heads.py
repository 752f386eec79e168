"""Task heads on the Bootleg encoder (docs/design.md §7): the paper's frozen-encoder probes and segmentation decoders,
and the task models `BootlegForImageClassification` and `BootlegForSemanticSegmentation` that carry them.

Classification probes take the encoder's `last_hidden_state` `[B, T, D]` (tokens `[CLS, REG×R, patches]` after the
final LayerNorm) and return logits `[B, C]`:

- `PatchProbe` — mean of the patch tokens → BatchNorm (no affine) → Linear.
- `ClsProbe` — CLS token → LayerNorm (no parameters) → Linear.
- `AttentiveProbe(block=False)` (X-Attn) — one learned query cross-attends over **all** tokens (keys/values
  layer-normed, query not normalised; heads = encoder heads, width D) → Linear.
- `AttentiveProbe(block=True)` (X-Blk) — X-Attn plus the residual MLP sub-block `q += MLP(LN(q))` before the Linear
  (V-JEPA's attentive classifier).

Segmentation heads map the same tokens to logits `[B, C, h, w]`: the paper's Lin and Blk are Segmenter's mask
transformer (`MaskTransformerHead`) with 0 and 1 block; `LinearSegmentationHead` (`linear`: one Linear per patch) is
the head earlier versions called Lin, kept so that their saved models load (`upgrade_segmentation_keys`).

The task models keep the encoder under `bootleg.` (so an encoder folder or a pretraining checkpoint loads into them)
and the head under `classifier.` / `decode_head.`; `freeze_encoder()` reproduces the probing setting and
`from_encoder(...)` attaches a head trained on frozen features (`bootleg_hf.evaluation`) to an encoder for saving and
for `transformers` pipelines.

This module is shipped as Hub remote code: it imports only torch, transformers (and its safetensors) and sibling
modules.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput, SemanticSegmenterOutput
from transformers.models.auto import modeling_auto
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .configuration_bootleg import HEAD_TYPES, SEGMENTATION_HEADS, BootlegConfig
from .modeling_bootleg import BootlegBlock, BootlegMlp, BootlegModel, BootlegPreTrainedModel, init_module_weights


def init_probe_weights(module: nn.Module, std: float) -> nn.Module:
    """Initialise a head exactly as `BootlegPreTrainedModel._init_weights` does (`init_module_weights` on each of
    its modules), so a head built alone matches one built inside a model."""
    for m in module.modules():
        init_module_weights(m, std)
    return module


class Probe(nn.Module):
    """A probe split in two: `shared_features(tokens)` is parameter-free and the same for every probe of a type (a sweep
    computes it once per batch), `classify(features)` holds the parameters. `forward(tokens [B, T, D]) → [B, C]`."""

    def shared_features(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classify(self.shared_features(tokens))


class PatchProbe(Probe):
    """Mean of the patch tokens → `BatchNorm1d(affine=False)` → Linear."""

    def __init__(self, config: BootlegConfig, num_labels: int):
        super().__init__()
        self.num_prefix_tokens = config.num_prefix_tokens
        self.norm = nn.BatchNorm1d(config.hidden_size, affine=False)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_probe_weights(self, config.initializer_range)

    def shared_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.num_prefix_tokens:].mean(1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(features))


class ClsProbe(Probe):
    """CLS token → `LayerNorm(elementwise_affine=False)` → Linear."""

    def __init__(self, config: BootlegConfig, num_labels: int):
        super().__init__()
        if not config.use_cls_token:
            raise ValueError("the CLS probe needs an encoder with a CLS token (config.use_cls_token=True)")
        self.norm = nn.LayerNorm(config.hidden_size, elementwise_affine=False)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_probe_weights(self, config.initializer_range)

    def shared_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(tokens[:, 0])

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)


class LinearHead(Probe):
    """The pooled token as the encoder pools it (the final-norm CLS token; the mean patch token without CLS) →
    Linear: timm's and transformers' ViT classifier head (`global_pool="token"` / `"avg"` without `fc_norm`)."""

    def __init__(self, config: BootlegConfig, num_labels: int):
        super().__init__()
        self.num_prefix_tokens = config.num_prefix_tokens if not config.use_cls_token else None
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_probe_weights(self, config.initializer_range)

    def shared_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0] if self.num_prefix_tokens is None else tokens[:, self.num_prefix_tokens:].mean(1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)


class AttentiveProbe(Probe):
    """X-Attn (`block=False`) or X-Blk (`block=True`): attentive pooling with one learned query.

    `q = query + CrossAttn(query, LN(tokens))` over all T tokens (`q` projected by `q_proj`, keys/values by the fused
    `kv` Linear, heads = encoder heads, scale `head_dim^-0.5`, no output projection — as V-JEPA, whose `proj` is
    unused); X-Blk then adds `q += MLP(LN(q))` (GELU, ratio 4). Finally `Linear(D → C)`, no final norm.

    Computed without projecting the tokens (same result, O(T·D·H) instead of O(T·D²) per image): `LN(x) = x̂·γ + β`
    with x̂ the parameter-free standardised tokens (the shared features), and with one query the attention logits
    `q·(W_k LN(x_t) + b_k) = x̂_t·(γ ∘ W_kᵀq) + const` (constants cancel in the softmax), while the values give
    `Σ_t a_t (W_v LN(x_t) + b_v) = W_v ((Σ_t a_t x̂_t)·γ + β) + b_v` because the weights sum to one.
    """

    def __init__(self, config: BootlegConfig, num_labels: int, block: bool):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = nn.Parameter(torch.zeros(1, 1, d))
        self.norm = nn.LayerNorm(d)  # eps 1e-5: V-JEPA's nn.LayerNorm default
        self.q_proj = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.mlp_norm = nn.LayerNorm(d) if block else None
        self.mlp = BootlegMlp(config, d, 4 * d) if block else None
        self.classifier = nn.Linear(d, num_labels)
        init_probe_weights(self, config.initializer_range)

    def init_bootleg_weights(self, std: float) -> None:
        init.trunc_normal_(self.query, std=std)

    def shared_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(tokens, tokens.shape[-1:], eps=self.norm.eps)

    def key_directions(self) -> torch.Tensor:
        """`[H, D]`: attention logits of head h are `x̂ · key_directions()[h]` (up to a per-head constant)."""
        d = self.query.shape[-1]
        h = self.num_heads
        q = self.q_proj(self.query).reshape(h, d // h)
        w_k = self.kv.weight[:d].reshape(h, d // h, d)  # kv output layout: [k | v] × heads × head_dim
        return torch.einsum("hc,hcd->hd", q, w_k) * (d // h) ** -0.5 * self.norm.weight

    def classify_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Attention-weighted standardised tokens per head `[B, H, D]` → logits `[B, C]`."""
        b, h, d = pooled.shape
        w_v = self.kv.weight[d:].reshape(h, d // h, d)
        b_v = self.kv.bias[d:].reshape(h, d // h)
        x = pooled * self.norm.weight + self.norm.bias
        q = self.query.reshape(1, d) + (torch.einsum("bhd,hcd->bhc", x, w_v) + b_v).reshape(b, d)
        if self.mlp is not None:
            q = q + self.mlp(self.mlp_norm(q))
        return self.classifier(q)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        attn = torch.einsum("btd,hd->bht", features, self.key_directions()).softmax(dim=-1)
        return self.classify_pooled(torch.einsum("bht,btd->bhd", attn, features))


def build_probe(kind: str, config: BootlegConfig, num_labels: int) -> Probe:
    """Head of type `kind` (`patch`, `cls`, `xattn`, `xblk`, `linear`) for encoder `config`, `num_labels` outputs."""
    if kind == "patch":
        return PatchProbe(config, num_labels)
    if kind == "cls":
        return ClsProbe(config, num_labels)
    if kind in ("xattn", "xblk"):
        return AttentiveProbe(config, num_labels, block=kind == "xblk")
    if kind == "linear":
        return LinearHead(config, num_labels)
    raise ValueError(f"unknown probe type '{kind}'; choose one of {HEAD_TYPES}")


def tokens_to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Per-patch values `[B, N, C]` (raster order) → map `[B, C, h, w]`."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


class LinearSegmentationHead(nn.Module):
    """`linear`: `Linear(D → C)` on every patch token (after the encoder's final LN). `[B, T, D]` → `[B, C, h, w]`.
    Earlier versions' Lin head (see `upgrade_segmentation_keys`)."""

    def __init__(self, config: BootlegConfig, num_labels: int):
        super().__init__()
        self.num_prefix_tokens = config.num_prefix_tokens
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_probe_weights(self, config.initializer_range)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return tokens_to_map(self.classifier(tokens[:, self.num_prefix_tokens:]), grid)


class MaskTransformerHead(nn.Module):
    """Segmenter's mask-transformer decoder with `n_layers` blocks: the paper's Lin (0) and Blk (1).
    `[B, T, D]` → `[B, C, h, w]`.

    Patch tokens `[B, N, D]` (CLS/registers dropped) → `Linear(D → D)`; learned class embeddings `[1, C, D]`
    appended (patches first: `[B, N + C, D]`); `n_layers` pre-LN blocks (heads = encoder heads, which is Segmenter's
    D/64 for every paper size) → LN; patches and classes are projected by two D×D matrices and L2-normalised, and
    their dot products (cosine similarities `[B, N, C]`) go through a LayerNorm over the class axis. Segmenter's
    dropout is omitted (frozen-feature probes). The upsampling to pixels is the caller's (bilinear).
    """

    def __init__(self, config: BootlegConfig, num_labels: int, n_layers: int):
        super().__init__()
        d = config.hidden_size
        self.num_prefix_tokens = config.num_prefix_tokens
        self.proj_in = nn.Linear(d, d)
        self.class_embed = nn.Parameter(torch.zeros(1, num_labels, d))
        self.blocks = nn.ModuleList(BootlegBlock(config) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.proj_patch = nn.Parameter(torch.zeros(d, d))
        self.proj_classes = nn.Parameter(torch.zeros(d, d))
        self.mask_norm = nn.LayerNorm(num_labels)
        init_probe_weights(self, config.initializer_range)

    def init_bootleg_weights(self, std: float) -> None:
        init.trunc_normal_(self.class_embed, std=std)
        d = self.proj_patch.shape[0]
        init.normal_(self.proj_patch, std=d**-0.5)  # Segmenter: scale · randn, scale = d^-0.5
        init.normal_(self.proj_classes, std=d**-0.5)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.proj_in(tokens[:, self.num_prefix_tokens:])
        n = x.shape[1]
        x = torch.cat([x, self.class_embed.expand(x.shape[0], -1, -1)], dim=1)
        for block in self.blocks:
            x = block(x).out
        x = self.norm(x)
        patches = F.normalize(x[:, :n] @ self.proj_patch, dim=-1)
        classes = F.normalize(x[:, n:] @ self.proj_classes, dim=-1)
        return tokens_to_map(self.mask_norm(patches @ classes.transpose(1, 2)), grid)


# mask-transformer blocks of the paper's segmentation heads
SEGMENTATION_HEAD_LAYERS = {"lin": 0, "blk": 1}


def build_segmentation_head(kind: str, config: BootlegConfig, num_labels: int) -> nn.Module:
    """`lin` / `blk` → `MaskTransformerHead` with 0 / 1 block, `linear` → `LinearSegmentationHead`."""
    if kind in SEGMENTATION_HEAD_LAYERS:
        return MaskTransformerHead(config, num_labels, SEGMENTATION_HEAD_LAYERS[kind])
    if kind == "linear":
        return LinearSegmentationHead(config, num_labels)
    raise ValueError(f"unknown segmentation head '{kind}'; choose one of {SEGMENTATION_HEADS}")


def upgrade_segmentation_keys(kind: str, keys: Iterable[str], prefix: str = "") -> tuple[str, dict[str, str]]:
    """The kind and key renames `{old: new}` that load a head of `kind`, saved with state-dict `keys` (the head's
    under `prefix`), into today's heads; `(kind, {})` for a head saved in today's layout.

    Earlier versions saved two layouts that are no longer built under their name: `lin` was one Linear per patch
    (keys `classifier.*`), today's `linear`; `blk`'s single block was `block.*`, today's `blocks.0.*`.
    """
    keys = [k[len(prefix):] for k in keys if k.startswith(prefix)]
    if kind == "lin" and "classifier.weight" in keys:
        return "linear", {}
    if kind == "blk":
        return kind, {prefix + k: f"{prefix}blocks.0.{k[len('block.'):]}" for k in keys if k.startswith("block.")}
    return kind, {}


class BootlegHeadModel(BootlegPreTrainedModel):
    """Shared plumbing of the task models: the encoder under `bootleg`, the head under `head_name` (built by
    `build_head`), and one forward: encoder → `head_logits` → `head_loss` with labels → `output_class`."""

    head_name: str
    output_class: type[ModelOutput]
    # The Trainer must not hand `num_items_in_batch` to these models: their loss is a per-batch mean, so gradient
    # accumulation must divide by the number of micro-batches (transformers-v5 notes §13).
    accepts_loss_kwargs = False
    # a pretraining checkpoint holds the teacher under `bootleg.`; its student and predictor do not belong here
    _keys_to_ignore_on_load_unexpected = [r"^student\.", r"^predictor\."]
    remote_auto_map = {**BootlegPreTrainedModel.remote_auto_map,
                       "AutoModelForImageClassification": "modeling_bootleg_heads.BootlegForImageClassification",
                       "AutoModelForSemanticSegmentation": "modeling_bootleg_heads.BootlegForSemanticSegmentation"}

    def __init__(self, config: BootlegConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bootleg = BootlegModel(config)
        setattr(self, self.head_name, self.build_head(config))
        self.post_init()

    def build_head(self, config: BootlegConfig) -> nn.Module:
        raise NotImplementedError

    def head_logits(self, tokens: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any) -> ModelOutput:
        """`pixel_values [B, C, H, W]` (and `labels`) → `output_class` with `logits`, the loss when labels are given,
        and the encoder's hidden states / attentions on request. `kwargs` (`interpolate_pos_encoding`,
        `output_hidden_states`, `output_attentions`) go to the encoder; `return_dict=False` gives a tuple."""
        encoded = self.encode(pixel_values, **kwargs)
        logits = self.head_logits(encoded.last_hidden_state, pixel_values)
        loss = self.head_loss(logits, labels) if labels is not None else None
        return self.output_class(loss=loss, logits=logits, hidden_states=encoded.hidden_states,
                                 attentions=encoded.attentions)

    def encode(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool | None = None,
               output_hidden_states: bool | None = None, output_attentions: bool | None = None, **kwargs: Any):
        """The encoder's `BaseModelOutputWithPooling` (`last_hidden_state [B, 1+R+N, D]`) for the head; the output
        flags default to the config's."""
        return self.bootleg(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding,
                            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                            return_dict=True)

    def freeze_encoder(self) -> "BootlegHeadModel":
        """Frozen-encoder probing: no gradients for the encoder (it has no dropout, so its mode does not matter)."""
        self.bootleg.requires_grad_(False)
        return self

    @classmethod
    def from_encoder(cls, encoder: BootlegModel, head_state_dict: Mapping[str, torch.Tensor] | None = None,
                     id2label: Mapping[int, str] | Sequence[str] | None = None, **config_updates: Any):
        """A task model holding a copy of `encoder`'s weights and, if given, a trained head state dict.

        `config_updates` set config fields (e.g. `probe_type="xblk"` or `segmentation_head="blk"`); `id2label` sets
        the labels (a mapping or a list of names) and with them `num_labels`.
        """
        config = copy.deepcopy(encoder.config)
        config.architectures = [cls.__name__]
        for key, value in config_updates.items():
            setattr(config, key, value)
        if id2label is not None:
            items = id2label.items() if isinstance(id2label, Mapping) else enumerate(id2label)
            config.id2label = {int(i): str(name) for i, name in items}
            config.label2id = {name: i for i, name in config.id2label.items()}
        config.check_values()
        model = cls(config)
        model.bootleg.load_state_dict(encoder.state_dict())
        if head_state_dict is not None:
            getattr(model, cls.head_name).load_state_dict(head_state_dict)
        return model.to(next(encoder.parameters()).device)


class BootlegForImageClassification(BootlegHeadModel):
    """Bootleg encoder + the head of `config.probe_type` (a probe: `patch`, `cls`, `xattn`, `xblk`; or `linear`).

    `forward(pixel_values [B, C, H, W], labels [B])` → `ImageClassifierOutput` with `logits [B, num_labels]` and the
    loss of `config.problem_type` (cross-entropy for integer labels) when labels are given.
    """

    head_name = "classifier"
    output_class = ImageClassifierOutput

    def build_head(self, config: BootlegConfig) -> Probe:
        return build_probe(config.probe_type, config, config.num_labels)

    def head_logits(self, tokens: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(tokens)

    def head_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss_function(labels, logits, self.config)


class BootlegForSemanticSegmentation(BootlegHeadModel):
    """Bootleg encoder + a `config.segmentation_head` decoder (`lin`, `blk` or `linear`).

    `forward(pixel_values [B, C, H, W], labels [B, H', W'])` → `SemanticSegmenterOutput` with logits
    `[B, num_labels, H/P, W/P]`; the loss upsamples them bilinearly to the label size and takes the cross-entropy,
    skipping `config.semantic_loss_ignore_index`. `from_pretrained` also loads the folders of earlier versions,
    whose head layouts `upgrade_segmentation_keys` maps to today's.
    """

    head_name = "decode_head"
    output_class = SemanticSegmenterOutput

    def build_head(self, config: BootlegConfig) -> nn.Module:
        return build_segmentation_head(config.segmentation_head, config, config.num_labels)

    @classmethod
    def _load_pretrained_model(cls, model: "BootlegForSemanticSegmentation", state_dict: dict | None,
                               checkpoint_files: list[str] | None, load_config: Any, *args: Any, **kwargs: Any):
        # `from_pretrained` builds the model from the config before it reads the weights: a folder saved by an
        # earlier version gets its head rebuilt (`lin` saved as one Linear is today's `linear`) and its keys renamed
        # here, in memory, so that saving it again writes today's layout.
        if state_dict is None and checkpoint_files and all(f.endswith(".safetensors") for f in checkpoint_files):
            from safetensors import safe_open
            from safetensors.torch import load_file

            keys = []
            for file in checkpoint_files:
                with safe_open(file, framework="pt") as f:
                    keys += list(f.keys())
            if upgrade_segmentation_keys(model.config.segmentation_head, keys, "decode_head.") != (
                    model.config.segmentation_head, {}):
                state_dict = {k: v for file in checkpoint_files for k, v in load_file(file).items()}
        if state_dict is not None:
            kind, renames = upgrade_segmentation_keys(model.config.segmentation_head, state_dict, "decode_head.")
            state_dict = {renames.get(k, k): v for k, v in state_dict.items()}
            if kind != model.config.segmentation_head:
                model.config.segmentation_head = kind
                old = next(model.decode_head.parameters())
                with torch.device(old.device):  # the meta device while from_pretrained loads
                    model.decode_head = model.build_head(model.config).to(old.dtype)
        return super()._load_pretrained_model(model, state_dict, checkpoint_files, load_config, *args, **kwargs)

    def head_logits(self, tokens: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
        return self.decode_head(tokens, grid)

    def head_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss_function(logits, labels.long(), ignore_index=self.config.semantic_loss_ignore_index)


BootlegForImageClassification.register_for_auto_class("AutoModelForImageClassification")
BootlegForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
# The image-classification and image-segmentation pipelines check a model's class name against these name tables
# (not against classes registered with the Auto classes) and log "is not supported" for any other model. The key is
# our model type, which the library's own config table does not hold, so the Auto classes never look it up here.
modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.setdefault("bootleg", "BootlegForImageClassification")
modeling_auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES.setdefault("bootleg", "BootlegForSemanticSegmentation")

__all__ = ["BootlegForImageClassification", "BootlegForSemanticSegmentation", "Probe", "PatchProbe", "ClsProbe",
           "LinearHead", "AttentiveProbe", "build_probe", "init_probe_weights", "LinearSegmentationHead", "MaskTransformerHead",
           "SEGMENTATION_HEAD_LAYERS", "build_segmentation_head", "upgrade_segmentation_keys"]
