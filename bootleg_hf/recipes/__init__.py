"""Training recipes: YAML files with `model` (a preset plus `BootlegConfig` fields), `data` (image size, crop scale)
and `training` (`BootlegTrainingArguments` fields plus `global_batch_size` and `warmup_epochs`) sections.

The paper's recipes ship with the package (`vit-micro`, `vit-small`, `vit-base`, `vit-large` in this folder); a recipe
is named by one of those names or by the path of a YAML file. `--set section.key=value` overrides any value.

Recipes are checked strictly before anything runs (`validate_recipe`): an unknown section or key, or a value of the
wrong type, is a `RecipeError` naming it (with the closest known key); ranges are checked where the values are used
(`BootlegConfig`, `BootlegTrainingArguments`, here for the data section). Values are read with the YAML 1.2 core
schema: only `true`/`false` are booleans (YAML 1.1 would read `no` as False), `1e-3` is a float and `1:2:6` a string.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import torch
import yaml

from ..configuration_bootleg import BootlegConfig

RECIPE_DIR = Path(__file__).resolve().parent
SECTIONS = ("model", "data", "training")


class RecipeError(ValueError):
    """A recipe or an override is malformed: the message names the key and what is expected."""


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core-schema scalars (booleans, integers and floats)."""


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                   list("-+0123456789"))
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def available_recipes(directory: Path = RECIPE_DIR) -> list[str]:
    """Names of the recipes shipped with the package (pretraining; `directory` for another kind)."""
    return sorted(p.stem for p in directory.glob("*.yaml"))


def recipe_path(recipe: str | os.PathLike, directory: Path = RECIPE_DIR) -> Path:
    """A shipped recipe's file for a name such as `vit-micro` (in `directory`), else `recipe` as a path."""
    path = Path(recipe)
    if path.is_file():
        return path
    if path.suffix not in (".yaml", ".yml") and (directory / f"{recipe}.yaml").is_file():
        return directory / f"{recipe}.yaml"
    raise FileNotFoundError(f"no recipe '{recipe}': give a YAML file or one of {available_recipes(directory)}")


LADDERS = RECIPE_DIR / "ladders" / "table3.yaml"


def ladder_rows(path: str | os.PathLike = LADDERS) -> dict[str, list[tuple[str, str, list[str]]]]:
    """The paper's Table 3 as recipes (`ladders/table3.yaml`): per system, its rows as (name, recipe, overrides),
    each row's overrides those of every row up to it (each row changes one thing of the row before); a key set again
    keeps its place with the later value, so every key appears once."""
    data = read_recipe_file(path, ("<system>",))
    ladders = {}
    for system, spec in data.items():
        settings: dict[str, str] = {}
        rows = []
        for row in spec["rows"]:
            for item in row["set"]:
                key, _, value = str(item).partition("=")
                settings[key] = value
            rows.append((row["name"], spec["recipe"], [f"{k}={v}" for k, v in settings.items()]))
        ladders[system] = rows
    return ladders


def ladder_commands(path: str | os.PathLike = LADDERS, dataset: str = '"$IMAGENET_TRAIN"') -> str:
    """Every row of `ladder_rows` as a `bootleg-pretrain` command line on `dataset`, with a comment naming the row
    (what `bootleg-ladders` prints)."""
    lines = []
    for system, rows in ladder_rows(path).items():
        for i, (name, recipe, overrides) in enumerate(rows):
            sets = " ".join(f"--set {item}" for item in overrides)
            lines += [f"# {system} {i}: {name}",
                      f"bootleg-pretrain --recipe {recipe} {sets} --dataset {dataset} --output-dir runs/table3-{system}-{i}"]
    return "\n".join(lines) + "\n"


def parse_value(text: str) -> Any:
    """A `--set` value, read as YAML 1.2 (see the module docstring)."""
    return yaml.load(text, Loader=RecipeLoader)


def apply_overrides(recipe: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """`recipe` with `section.key=value` overrides applied (in place; also returned)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise RecipeError(f"override '{item}' must look like section.key=value, e.g. training.lr_max=1e-3")
        section, name = key.split(".", 1)
        recipe.setdefault(section, {})[name] = parse_value(value)
    return recipe


def read_recipe_file(path: str | os.PathLike, sections: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    """The mapping in the YAML file `path` (YAML 1.2 scalars); a `RecipeError` when it is not a mapping."""
    with open(path) as f:
        data = yaml.load(f, Loader=RecipeLoader) or {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with the sections {sections}, got {type(data).__name__}")
    return data


def load_recipe(recipe: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a recipe (a shipped name or a YAML path), apply `section.key=value` overrides and validate the result."""
    return validate_recipe(apply_overrides(read_recipe_file(recipe_path(recipe)), overrides))


def typed_fields(cls: type) -> dict[str, Any]:
    """The public fields of a dataclass with their types (what a recipe section may set)."""
    hints = typing.get_type_hints(cls, localns={"torch": torch})  # some base-class annotations name torch
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if not f.name.startswith("_")}


def recipe_fields() -> dict[str, dict[str, Any]]:
    """Every key each section accepts, with its type."""
    from ..trainer import BootlegTrainingArguments

    model = typed_fields(BootlegConfig) | {"preset": str, "out_features": list[str], "out_indices": list[int]}
    training = typed_fields(BootlegTrainingArguments) | {"global_batch_size": int, "warmup_epochs": float}
    return {"model": model, "data": {"image_size": int | list[int], "crop_scale": list[float]}, "training": training}


def matches(value: Any, hint: Any) -> bool:
    """Whether `value` (as YAML gives it) fits the type annotation `hint`; annotations it cannot judge pass."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple):
        items = [a for a in args if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(matches(v, items[0]) for v in value) if items else \
            isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint) or value in {m.value for m in hint}
    if hint in (int, float):  # YAML integers are fine where floats are expected; booleans are not numbers
        return isinstance(value, int if hint is int else (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _unknown(kind: str, name: str, known: typing.Iterable[str]) -> RecipeError:
    close = difflib.get_close_matches(name, list(known), n=1)
    return RecipeError(f"unknown {kind} '{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))


def check_sections(recipe: dict[str, Any], fields: dict[str, dict[str, Any]]) -> None:
    """Raise a `RecipeError` for a section or key of `recipe` that `fields` (section → key → type) does not know, or
    a value of the wrong type."""
    for section, values in recipe.items():
        if section not in fields:
            raise _unknown("recipe section", section, fields)
        if not isinstance(values, dict):
            raise RecipeError(f"recipe section '{section}' must be a mapping of keys to values, got {values!r}")
        for key, value in values.items():
            if key not in fields[section]:
                raise _unknown("recipe key", f"{section}.{key}", [f"{section}.{k}" for k in fields[section]])
            hint = fields[section][key]
            if not matches(value, hint):
                expected = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
                raise RecipeError(f"{section}.{key} must be {expected}, got {value!r} ({type(value).__name__})")


def check_crop_scale(scale: Any, key: str = "data.crop_scale") -> None:
    """Raise a `RecipeError` unless `scale` is None or `[low, high]` with 0 < low <= high <= 1."""
    if scale is not None and not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
        raise RecipeError(f"{key} must be [low, high] with 0 < low <= high <= 1, got {scale}")


def validate_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """Raise a `RecipeError` for an unknown section or key, a value of the wrong type, or a bad crop scale; return
    the recipe unchanged otherwise."""
    check_sections(recipe, recipe_fields())
    check_crop_scale(recipe.get("data", {}).get("crop_scale"))
    return recipe


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
    warmup_epochs = float(training.pop("warmup_epochs", 0))
    accumulation = int(training.get("gradient_accumulation_steps", 1))
    if global_batch < 1:
        raise RecipeError(f"training.global_batch_size must be >= 1, got {global_batch}")
    if warmup_epochs < 0:
        raise RecipeError(f"training.warmup_epochs must be >= 0, got {warmup_epochs}")
    per_device, rest = divmod(global_batch, world_size() * accumulation)
    if rest or per_device < 1:
        raise RecipeError(f"global batch {global_batch} is not divisible by {world_size()} processes × "
                          f"{accumulation} accumulation steps")
    steps_per_epoch = max(1, num_images // global_batch)  # the Trainer drops the last partial batch (drop_last)
    args = dict(output_dir=str(output_dir), per_device_train_batch_size=per_device, dataloader_drop_last=True,
                warmup_steps=int(round(warmup_epochs * steps_per_epoch)), report_to="none", **training)
    if world_size() > 1 and not torch.cuda.is_available():
        # without both, the Trainer runs each CPU process as a separate, unsynchronised run
        args.setdefault("ddp_backend", "gloo")
        args.setdefault("use_cpu", True)
    args.update({k: v for k, v in extra.items() if v is not None})
    return BootlegTrainingArguments(**args)


__all__ = ["RECIPE_DIR", "RecipeError", "RecipeLoader", "available_recipes", "recipe_path", "parse_value",
           "apply_overrides", "read_recipe_file", "load_recipe", "typed_fields", "check_sections", "check_crop_scale", "validate_recipe", "build_config", "world_size", "build_training_args"]
