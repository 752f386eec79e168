"""Pretrain Bootleg with `BootlegTrainer` on a Hub dataset, a local image folder or the embedded Fashion-MNIST.

    python training/pretrain.py --recipe training/recipes/vit-micro.yaml --dataset fashion-mnist --output-dir runs/micro
    python training/pretrain.py --recipe training/recipes/vit-small.yaml --dataset /data/my_images --output-dir runs/s
    torchrun --nproc_per_node 8 training/pretrain.py --recipe training/recipes/vit-base.yaml --dataset <hub name> ...

Overrides: `--set training.lr_max=1e-3 --set model.targets=1:2:12` (dotted YAML keys), `--max-steps`, `--batch-size`
(global), `--limit` (first N images). Writes Trainer checkpoints (`checkpoint-*`, resumable with `--resume`), the final
`BootlegForPretraining` folder and an encoder-only export (teacher weights + image processor) in `<output-dir>/encoder`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import yaml
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

import bootleg_hf
from bootleg_hf.data import PretrainTransform, load_image_dataset


def load_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> dict[str, Any]:
    """Read a recipe YAML and apply `section.key=value` overrides (values parsed as YAML)."""
    with open(path) as f:
        recipe = yaml.safe_load(f) or {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"override '{item}' must look like section.key=value, e.g. training.lr_max=1e-3")
        section, name = key.split(".", 1)
        recipe.setdefault(section, {})[name] = parse_value(value)
    return recipe


def parse_value(text: str) -> Any:
    """YAML value, with '1e-3'-style floats accepted (PyYAML reads them as strings) and colon specs such as '1:2:6'
    kept as strings (YAML 1.1 would read them as base-60 integers)."""
    if ":" in text and not text.lstrip().startswith(("{", "[")):
        return text
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def build_config(recipe: dict[str, Any]) -> bootleg_hf.BootlegConfig:
    model = dict(recipe.get("model", {}))
    preset = model.pop("preset", "vit-small")
    image_size = recipe.get("data", {}).get("image_size")
    if image_size is not None:
        model.setdefault("image_size", image_size)
    return bootleg_hf.BootlegConfig.from_preset(preset, **model)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def build_training_args(recipe: dict[str, Any], output_dir: str, num_images: int,
                        **extra: Any) -> bootleg_hf.BootlegTrainingArguments:
    """Turn the recipe's `training` section into arguments; epochs-based warm-up becomes steps."""
    training = dict(recipe.get("training", {}))
    global_batch = int(training.pop("global_batch_size", 2048))
    warmup_epochs = training.pop("warmup_epochs", 0)
    accumulation = int(training.get("gradient_accumulation_steps", 1))
    per_device, rest = divmod(global_batch, world_size() * accumulation)
    if rest or per_device < 1:
        raise ValueError(f"global batch {global_batch} is not divisible by {world_size()} processes × "
                         f"{accumulation} accumulation steps")
    steps_per_epoch = max(1, num_images // global_batch)  # the Trainer drops the last partial batch (drop_last)
    args = dict(output_dir=output_dir, per_device_train_batch_size=per_device, dataloader_drop_last=True,
                warmup_steps=int(round(float(warmup_epochs) * steps_per_epoch)), report_to="none",
                **training)
    args.update(extra)
    return bootleg_hf.BootlegTrainingArguments(**{k: v for k, v in args.items() if v is not None})


def export_encoder(model: bootleg_hf.BootlegForPretraining, out: str | os.PathLike, student: bool = False) -> None:
    """Encoder-only folder: teacher (default) or student weights, config and image processor."""
    encoder = bootleg_hf.BootlegModel(model.config)
    encoder.load_state_dict((model.student if student else model.teacher).state_dict())
    encoder.save_pretrained(out)
    bootleg_hf.make_image_processor(model.config).save_pretrained(out)


def main(argv: list[str] | None = None) -> bootleg_hf.BootlegTrainer:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="training/recipes/vit-micro.yaml")
    p.add_argument("--dataset", default="fashion-mnist", help="'fashion-mnist', an image folder, or a Hub dataset")
    p.add_argument("--split", default="train")
    p.add_argument("--output-dir", default="runs/bootleg")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (overrides the recipe)")
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--on-corrupt", choices=("skip", "raise"), default="skip")
    p.add_argument("--resume", nargs="?", const="auto", help="resume from a checkpoint (default: the latest)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    recipe = load_recipe(args.recipe, args.set)
    if args.batch_size:
        recipe.setdefault("training", {})["global_batch_size"] = args.batch_size
    config = build_config(recipe)
    data_cfg = recipe.get("data", {})
    dataset = load_image_dataset(args.dataset, split=args.split)
    if args.limit:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    transform = PretrainTransform(config.image_hw[0], scale=tuple(data_cfg.get("crop_scale", (0.35, 1.0))),
                                  on_error=args.on_corrupt)
    dataset.set_transform(transform)

    training_args = build_training_args(recipe, args.output_dir, len(dataset), max_steps=args.max_steps,
                                        seed=args.seed, dataloader_num_workers=args.num_workers)
    set_seed(args.seed)  # the initial weights depend on --seed too, not only the data order and masks
    model = bootleg_hf.BootlegForPretraining(config)
    trainer = bootleg_hf.BootlegTrainer(model=model, args=training_args, train_dataset=dataset)
    resume = get_last_checkpoint(args.output_dir) if args.resume == "auto" else args.resume
    trainer.train(resume_from_checkpoint=resume)
    if trainer.is_world_process_zero():
        trainer.save_model(args.output_dir)
        export_encoder(model, Path(args.output_dir) / "encoder")
        skipped = getattr(transform, "num_skipped", 0)
        if skipped:
            print(f"warning: {skipped} unreadable images were skipped (their paths are in the log above)")
        print(f"saved {args.output_dir} (BootlegForPretraining) and {args.output_dir}/encoder (teacher encoder)")
    return trainer


if __name__ == "__main__":
    main()
