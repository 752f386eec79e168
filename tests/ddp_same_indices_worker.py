"""Worker for tests/test_ddp_same_indices.py: `torchrun --nproc_per_node 2 tests/ddp_same_indices_worker.py OUT_DIR`.

Each rank trains the same tiny Bootleg model with BootlegTrainer (DDP over gloo on CPU), but — unlike a normal run,
where the distributed sampler gives each rank other samples — every rank reads the SAME samples in the same order
(a sequential DataLoader that is not sharded). What differs between the ranks is then only the rank itself, which
seeds the masks. Each rank writes the sample indices, pixels and masks of every step and its final student and teacher
weights (and its initial teacher) to OUT_DIR/rank<r>.safetensors.
"""

import os
import sys

import torch
from conftest import tiny_config  # run as a script: its folder (tests/) is on the import path
from safetensors.torch import save_file

import bootleg_hf

STEPS, BATCH, SIZE = 3, 4, 48


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.images = torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"pixel_values": self.images[i]}


class SameSamplesTrainer(bootleg_hf.BootlegTrainer):
    """The first STEPS × BATCH samples in order on every rank (a plain DataLoader: not sharded by the accelerator)."""

    indices: list[torch.Tensor]  # the sample indices of each batch, appended as the DataLoader collates it

    def get_train_dataloader(self):
        def collate(examples):
            self.indices.append(torch.tensor([ex["sample_index"] for ex in examples]))
            return self.data_collator(examples)

        return torch.utils.data.DataLoader(self.train_dataset, batch_size=BATCH, shuffle=False, drop_last=True,
                                           collate_fn=collate)


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    model = bootleg_hf.BootlegForPretraining(tiny_config(image_size=SIZE))
    initial = {f"initial.{k}": v.clone().contiguous() for k, v in model.teacher.state_dict().items()}
    seen = {"pixels": [], "context": [], "target": []}

    def record(module, args, kwargs):
        seen["pixels"].append(kwargs["pixel_values"].clone())
        seen["context"].append(kwargs["context_indices"].clone())
        seen["target"].append(kwargs["target_indices"].clone())

    model.register_forward_pre_hook(record, with_kwargs=True)
    args = bootleg_hf.BootlegTrainingArguments(
        output_dir=out_dir, max_steps=STEPS, per_device_train_batch_size=BATCH, warmup_steps=1, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, bf16=False, disable_tqdm=True, ddp_backend="gloo",
        seed=0, scale_lr_by_batch=False)
    trainer = SameSamplesTrainer(model=model, args=args, train_dataset=Images(STEPS * BATCH))
    trainer.indices = seen["indices"] = []
    trainer.train()
    rank = int(os.environ["RANK"])
    assert torch.distributed.get_world_size() == 2 and torch.distributed.get_rank() == rank  # one DDP run
    tensors = {f"student.{k}": v.contiguous() for k, v in model.student.state_dict().items()} | initial
    tensors.update({f"teacher.{k}": v.contiguous() for k, v in model.teacher.state_dict().items()})
    for name, values in seen.items():
        tensors.update({f"{name}.{i}": v.contiguous() for i, v in enumerate(values)})
    save_file(tensors, os.path.join(out_dir, f"rank{rank}.safetensors"))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
