"""Worker for the two-process test: `torchrun --nproc_per_node 2 tests/ddp_worker.py OUT_DIR`.

Each rank trains the same tiny Bootleg model for a few steps with BootlegTrainer (DDP over gloo on CPU) and writes
its teacher weights and the context masks it used to OUT_DIR/rank<r>.safetensors.
"""

import os
import sys

import torch
from conftest import tiny_config  # run as a script: its folder (tests/) is on the import path
from safetensors.torch import save_file
from test_pretraining import SyntheticImages

import bootleg_hf


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    model = bootleg_hf.BootlegForPretraining(tiny_config(image_size=48))
    masks = []
    model.register_forward_pre_hook(lambda m, a, kw: masks.append(kw["context_indices"].clone()), with_kwargs=True)
    args = bootleg_hf.BootlegTrainingArguments(
        output_dir=out_dir, max_steps=4, per_device_train_batch_size=4, warmup_steps=1, logging_steps=2,
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, ddp_backend="gloo", seed=0)
    trainer = bootleg_hf.BootlegTrainer(model=model, args=args, train_dataset=SyntheticImages(64))
    trainer.train()
    rank = int(os.environ["RANK"])
    tensors = {f"teacher.{k}": v.contiguous() for k, v in model.teacher.state_dict().items()}
    tensors.update({f"mask.{i}": m for i, m in enumerate(masks)})
    save_file(tensors, os.path.join(out_dir, f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
