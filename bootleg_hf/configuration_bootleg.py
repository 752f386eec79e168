"""`BootlegConfig`: the encoder, predictor, targets, masking and EMA of a Bootleg model in one config."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

from .targets import TARGET_NORMS, TargetSpec

# name → encoder and predictor shape; targets follow `default_targets` of the depth (1:4:12, 1:4:24, 1:2:6).
PRESETS: dict[str, dict[str, Any]] = {
    # CPU-sized: 32 px images, patch 4 → an 8×8 grid.
    "vit-micro": dict(hidden_size=96, num_hidden_layers=6, num_attention_heads=3, image_size=32, patch_size=4,
                      predictor_hidden_size=48, predictor_num_hidden_layers=3, predictor_num_attention_heads=4),
    "vit-tiny": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, predictor_hidden_size=96,
                     predictor_num_hidden_layers=10, predictor_num_attention_heads=8),
    "vit-small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, predictor_hidden_size=192,
                      predictor_num_hidden_layers=10, predictor_num_attention_heads=16),
    "vit-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, predictor_hidden_size=384,
                     predictor_num_hidden_layers=10, predictor_num_attention_heads=16),
    "vit-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, predictor_hidden_size=512,
                      predictor_num_hidden_layers=10, predictor_num_attention_heads=16),
}
PROBE_TYPES = ("patch", "cls", "xattn", "xblk")  # the paper's frozen-encoder probes
# classification heads: the probes, and `linear` (the final-norm CLS or mean patch token → Linear, as timm's and
# transformers' ViT classifiers, for converted classifiers and fine-tuning)
HEAD_TYPES = (*PROBE_TYPES, "linear")
POSITION_EMBEDDING_TYPES = ("sincos", "learned")
# segmentation heads: the paper's Lin and Blk (Segmenter mask transformers with 0 and 1 block), and `linear` (one
# Linear per patch: what earlier versions called `lin`, for their saved models)
SEGMENTATION_HEADS = ("lin", "blk", "linear")
MASK_MODES = ("bootleg", "ijepa", "random", "inverse_block", "green_noise", "cyclic_block")  # validated in full by
# `MaskGenerator`; the modes whose targets are every hidden token:
HIDDEN_TARGET_MODES = ("random", "inverse_block", "green_noise", "cyclic_block")
LOSS_TYPES = ("mse", "smooth_l1", "l1")  # computed by `bootleg_hf.losses.prediction_loss`
PREDICTOR_TYPES = ("bootleg", "joint", "crossmae", "conv")  # built by `modeling_bootleg_pretraining.build_predictor`


def default_targets(depth: int) -> str:
    """Bootleg's target blocks for an encoder of `depth` blocks: block 1 and every s-th block, s = min(4, depth // 3)
    (at least 1), so `1:4:12` = {1, 4, 8, 12} for ViT-S/B, `1:4:24` for ViT-L and `1:2:6` = {1, 2, 4, 6} for 6 blocks:
    about four target layers spread over the depth."""
    return f"1:{min(4, max(1, depth // 3))}:{depth}"


def to_pair(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    """`224` or `[224, 224]` → `(224, 224)` (height, width)."""
    if isinstance(value, int):
        return value, value
    if len(value) != 2:
        raise ValueError(f"expected an int or a (height, width) pair, got {value!r}")
    return int(value[0]), int(value[1])


@strict
class BootlegConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""Configuration of a Bootleg ViT (encoder, predictor, targets, masking, EMA, probe heads).

    Field names follow the Hugging Face ViT family. Defaults are the paper's ViT-B/16. Use
    `BootlegConfig.from_preset("vit-small")` for the other sizes. A strict dataclass (transformers v5): a value of the
    wrong type raises at construction or assignment, an impossible combination of values a `ValueError`
    (`check_values`).

    Args:
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: encoder width, depth, heads and MLP
            width (`intermediate_size` defaults to `mlp_ratio · hidden_size`).
        image_size, patch_size, num_channels: input geometry; the patch grid is `image_size / patch_size`.
        num_register_tokens: register tokens after CLS. use_cls_token: prepend a CLS token.
        drop_path_rate: stochastic depth of the encoder's blocks in training, linear from 0 (first block) to this
            rate (last), as timm's `drop_path_rate`; 0 (default) for pretraining and probes, set for fine-tuning.
        position_embedding_type: `"sincos"` (default, Bootleg's and I-JEPA's): the fixed 2-D sin-cos table on the
            patches, regenerated for any grid, no weights; `"learned"`: a trained table `embeddings.pos_embed`
            `[1, N (+ CLS + registers), D]` (timm's standard ViTs), resized for other grids as timm does.
        position_embedding_includes_prefix: the learned table also has rows for CLS and the registers, added to them
            (timm `no_embed_class=False`); otherwise the prefix tokens get no position term.
        predictor_*: width, depth, heads and register tokens of the narrow ViT predictor (docs/design.md §4.1);
            `predictor_type` the decoder (`bootleg_hf.predictors`): `bootleg` (per target region), `joint` (MAE's: all
            regions in one sequence), `crossmae` (cross-attention only; `predictor_feature_maps` for CrossMAE's
            weighted feature maps) or `conv` (data2vec 2.0's, `predictor_kernel_size`, `predictor_groups`).
        mask_repeats: masked views of each image per step (data2vec 2.0's multi-mask), one teacher pass for all.
        targets, target_merge: teacher targets in the `TargetSpec` grammar; default `default_targets(depth)`.
        target_norm: `token` (default: each representation z-scored per token over channels) or `instance` (data2vec
            2.0's: per channel over the image's patch tokens, then the merged target per token; `bootleg_hf.targets`).
        loss_type: the prediction loss, `mse` (Bootleg's), `smooth_l1` (I-JEPA's) or `l1` (`bootleg_hf.losses`).
        mask_*: masking (docs/design.md §5); `mask_noise_sigmas` (mode `green_noise`): the band-pass's two Gaussian
            standard deviations in patches; `mask_target_aspect` (mode `cyclic_block`): the visible block's aspect
            range; `mask_prediction_ratio` (modes `random`, `inverse_block`, `green_noise`, `cyclic_block`): CrossMAE's
            partial reconstruction (its `kept_mask_ratio`), predict only this fraction of the tokens, drawn from the
            hidden ones; None (default): every hidden token. ema_start, ema_end: teacher momentum schedule endpoints
            (docs/design.md §4.4), reached after `ema_anneal_steps` optimizer steps (None: at the end of the run) and
            kept from there, as data2vec 2.0's `ema_anneal_end_step`.
        probe_type, segmentation_head: head types of `BootlegForImageClassification` / `…ForSemanticSegmentation`.
        out_features, out_indices, apply_layernorm, reshape_hidden_states: `BootlegBackbone` outputs
            (`stage_names = ["stem", "stage1", …]`, index k = output of block k).
    """

    model_type = "bootleg"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    mlp_ratio: float | int = 4.0
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    drop_path_rate: float | int = 0.0
    initializer_range: float = 0.02
    image_size: int | list[int] | tuple[int, int] = 224
    patch_size: int = 16
    num_channels: int = 3
    num_register_tokens: int = 4
    use_cls_token: bool = True
    position_embedding_type: str = "sincos"
    position_embedding_includes_prefix: bool = False
    predictor_hidden_size: int = 384
    predictor_num_hidden_layers: int = 10
    predictor_num_attention_heads: int = 16
    predictor_num_register_tokens: int = 4
    predictor_type: str = "bootleg"
    predictor_feature_maps: bool = False
    predictor_kernel_size: int = 3
    predictor_groups: int = 16
    targets: str | int | None = None
    target_merge: str = "concat"
    target_norm: str = "token"
    loss_type: str = "mse"
    mask_mode: str = "bootleg"
    mask_num_targets: int = 4
    mask_target_scale: list[float | int] | tuple[float | int, ...] | None = None
    mask_target_aspect: list[float | int] | tuple[float | int, ...] | None = None
    mask_context_scale: list[float | int] | tuple[float | int, ...] = (0.85, 1.0)
    mask_min_context: int = 10
    mask_ratio: float = 0.75
    mask_block_size: int = 3
    mask_block_adjust: float | int = 0.07
    mask_prediction_ratio: float | int | None = None
    mask_noise_sigmas: list[float | int] | tuple[float | int, ...] = (1.0, 2.0)
    mask_repeats: int = 1
    ema_start: float | int = 0.9985
    ema_end: float | int = 0.9985
    ema_anneal_steps: int | None = None
    probe_type: str = "xblk"
    segmentation_head: str = "lin"
    semantic_loss_ignore_index: int = 255
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None
    apply_layernorm: bool = True
    reshape_hidden_states: bool = True

    def __post_init__(self, **kwargs: Any):
        if self.intermediate_size is None:
            self.intermediate_size = int(self.hidden_size * self.mlp_ratio)
        if self.targets is None:
            self.targets = default_targets(self.num_hidden_layers)
        elif isinstance(self.targets, int) and not isinstance(self.targets, bool):
            self.targets = str(self.targets)  # a single block, e.g. `--set model.targets=6`
        # pairs are stored as lists, as they come back from config.json
        for name in ("image_size", "mask_target_scale", "mask_target_aspect", "mask_context_scale",
                     "mask_noise_sigmas"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, self.num_hidden_layers + 1)]
        self.set_output_features_output_indices(out_indices=kwargs.pop("out_indices", None),
                                                out_features=kwargs.pop("out_features", None))
        super().__post_init__(**kwargs)
        self.check_values()

    # --- derived geometry -------------------------------------------------------------------------------------
    @property
    def image_hw(self) -> tuple[int, int]:
        return to_pair(self.image_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (rows, columns) at the configured image size."""
        h, w = self.image_hw
        return h // self.patch_size, w // self.patch_size

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_size
        return gh * gw

    @property
    def num_prefix_tokens(self) -> int:
        """CLS + registers: the tokens before the patches."""
        return int(self.use_cls_token) + self.num_register_tokens

    @property
    def target_spec(self) -> TargetSpec:
        return TargetSpec.parse(self.targets, self.num_hidden_layers, self.target_merge)

    def check_values(self) -> None:
        """Raise a `ValueError` naming the problem for any impossible combination of values."""
        positive = ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size",
                    "num_channels", "predictor_hidden_size", "predictor_num_hidden_layers",
                    "predictor_num_attention_heads", "mask_num_targets", "predictor_kernel_size", "predictor_groups",
                    "mask_repeats"]
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("num_register_tokens", "predictor_num_register_tokens", "mask_min_context"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {getattr(self, name)!r}")
        for width, heads in (("hidden_size", "num_attention_heads"),
                             ("predictor_hidden_size", "predictor_num_attention_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(f"{width}={getattr(self, width)} is not divisible by {heads}={getattr(self, heads)}")
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(f"position_embedding_type must be one of {POSITION_EMBEDDING_TYPES}, got "
                             f"'{self.position_embedding_type}'")
        if self.position_embedding_includes_prefix and self.position_embedding_type != "learned":
            raise ValueError("position_embedding_includes_prefix=True needs position_embedding_type='learned': the "
                             "sin-cos table has rows for the patches only")
        # the predictor always uses the sin-cos table; the encoder only with the default type
        for width in ("hidden_size", "predictor_hidden_size")[self.position_embedding_type == "learned":]:
            if getattr(self, width) % 4:
                raise ValueError(f"{width}={getattr(self, width)} must be divisible by 4 for the 2-D sin-cos embedding")
        h, w = self.image_hw
        if h < 1 or w < 1 or h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        for name in ("ema_start", "ema_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.ema_anneal_steps is not None and (not isinstance(self.ema_anneal_steps, int)
                                                  or self.ema_anneal_steps < 1):
            raise ValueError(f"ema_anneal_steps must be a positive integer or None, got {self.ema_anneal_steps!r}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must lie in [0, 1), got {self.drop_path_rate}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {self.mask_ratio}")
        if self.mask_prediction_ratio is not None and (
                self.mask_mode not in HIDDEN_TARGET_MODES
                or not 0.0 < self.mask_prediction_ratio <= self.mask_ratio):
            raise ValueError(f"mask_prediction_ratio={self.mask_prediction_ratio} (partial reconstruction) needs "
                             f"mask_mode in {HIDDEN_TARGET_MODES} (got '{self.mask_mode}') and a value in "
                             f"(0, mask_ratio={self.mask_ratio}]")
        if self.predictor_type not in PREDICTOR_TYPES:
            raise ValueError(f"predictor_type must be one of {PREDICTOR_TYPES}, got '{self.predictor_type}'")
        if self.predictor_feature_maps and self.predictor_type != "crossmae":
            raise ValueError("predictor_feature_maps=True (CrossMAE's weighted feature maps) needs predictor_type="
                             f"'crossmae', got '{self.predictor_type}'")
        if self.target_norm not in TARGET_NORMS:
            raise ValueError(f"target_norm must be one of {TARGET_NORMS}, got '{self.target_norm}'")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got '{self.loss_type}'")
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got '{self.mask_mode}'")
        if self.probe_type not in HEAD_TYPES:
            raise ValueError(f"probe_type must be one of {HEAD_TYPES}, got '{self.probe_type}'")
        if self.segmentation_head not in SEGMENTATION_HEADS:
            raise ValueError(f"segmentation_head must be one of {SEGMENTATION_HEADS}, got '{self.segmentation_head}'")
        self.target_spec  # parses and checks the blocks against the depth

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "BootlegConfig":
        """`vit-micro` (CPU tests/demo), `vit-tiny`, `vit-small`, `vit-base`, `vit-large` (docs/design.md §6), plus
        overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset '{name}'; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
