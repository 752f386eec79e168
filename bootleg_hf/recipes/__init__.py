"""Training recipes: YAML files with `model` (a preset plus `BootlegConfig` fields), `data` (image size, crop scale)
and `training` (`BootlegTrainingArguments` fields plus `global_batch_size` and `warmup_epochs`) sections.

The paper's recipes ship with the package (`vit-micro`, `vit-small`, `vit-base`, `vit-large` in this folder); a recipe
is named by one of those names or by the path of a YAML file. `--set section.key=value` overrides any value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ..configuration_bootleg import BootlegConfig

RECIPE_DIR = Path(__file__).resolve().parent


def available_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(recipe: str | os.PathLike) -> Path:
    """A shipped recipe's file for a name such as `vit-micro`, else `recipe` as a path."""
    path = Path(recipe)
    if path.is_file():
        return path
    if path.suffix not in (".yaml", ".yml") and (RECIPE_DIR / f"{recipe}.yaml").is_file():
        return RECIPE_DIR / f"{recipe}.yaml"
    raise FileNotFoundError(f"no recipe '{recipe}': give a YAML file or one of {available_recipes()}")


def parse_value(text: str) -> Any:
    """A `--set` value as YAML, with '1e-3'-style floats accepted (PyYAML reads them as strings) and colon specs such
    as '1:2:6' kept as strings (YAML 1.1 would read them as base-60 integers)."""
    if ":" in text and not text.lstrip().startswith(("{", "[")):
        return text
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def apply_overrides(recipe: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """`recipe` with `section.key=value` overrides applied (in place; also returned)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"override '{item}' must look like section.key=value, e.g. training.lr_max=1e-3")
        section, name = key.split(".", 1)
        recipe.setdefault(section, {})[name] = parse_value(value)
    return recipe


def load_recipe(recipe: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a recipe (a shipped name or a YAML path) and apply `section.key=value` overrides."""
    with open(recipe_path(recipe)) as f:
        data = yaml.safe_load(f) or {}
    return apply_overrides(data, overrides)


def build_config(recipe: dict[str, Any]) -> BootlegConfig:
    """The `BootlegConfig` of a recipe: its `model.preset` (default `vit-small`) with the other `model` fields and
    `data.image_size` applied."""
    model = dict(recipe.get("model", {}))
    preset = model.pop("preset", "vit-small")
    image_size = recipe.get("data", {}).get("image_size")
    if image_size is not None:
        model.setdefault("image_size", image_size)
    return BootlegConfig.from_preset(preset, **model)


def world_size() -> int:
    """Processes of this run (torchrun/accelerate set `WORLD_SIZE`)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def build_training_args(recipe: dict[str, Any], output_dir: str | os.PathLike, num_images: int, **extra: Any):
    """`BootlegTrainingArguments` from the recipe's `training` section: the global batch is split over processes and
    gradient-accumulation steps, epoch-based warm-up becomes steps; `extra` (non-None values) overrides."""
    from ..trainer import BootlegTrainingArguments

    training = dict(recipe.get("training", {}))
    global_batch = int(training.pop("global_batch_size", 2048))
    warmup_epochs = training.pop("warmup_epochs", 0)
    accumulation = int(training.get("gradient_accumulation_steps", 1))
    per_device, rest = divmod(global_batch, world_size() * accumulation)
    if rest or per_device < 1:
        raise ValueError(f"global batch {global_batch} is not divisible by {world_size()} processes × "
                         f"{accumulation} accumulation steps")
    steps_per_epoch = max(1, num_images // global_batch)  # the Trainer drops the last partial batch (drop_last)
    args = dict(output_dir=str(output_dir), per_device_train_batch_size=per_device, dataloader_drop_last=True,
                warmup_steps=int(round(float(warmup_epochs) * steps_per_epoch)), report_to="none", **training)
    args.update({k: v for k, v in extra.items() if v is not None})
    return BootlegTrainingArguments(**args)


__all__ = ["RECIPE_DIR", "available_recipes", "recipe_path", "parse_value", "apply_overrides", "load_recipe",
           "build_config", "world_size", "build_training_args"]
