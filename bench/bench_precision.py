"""Does bf16 learn the same? vit-micro pretraining in float32 and in bf16 autocast, two seeds each: loss curves and
frozen-probe accuracy side by side (seed-to-seed spread as the yardstick), and the probes of one encoder with
float32 vs bf16 frozen-encoder features (the demo's probe settings). Not a speed benchmark: step times are recorded
for information only (the runs are sequential, not alternated).

    python -m bench.bench_precision                       # 300 steps × batch 128, 2 seeds (~20 min on 2 cores)
    python -m bench.bench_precision --steps 20 --probe-train 512 --probe-test 256 --seeds 0   # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import machine_info, set_threads, write_json
from bootleg_hf.evaluation.classification import ProbeSettings, run_probes
from bootleg_hf.pretraining import PretrainSettings, run_pretraining

BF16 = {"fp32": False, "bf16": True}  # the two runs per seed: name → BootlegTrainingArguments.bf16


def pretrain(run_dir: Path, steps: int, batch: int, seed: int, bf16: bool) -> dict[str, Any]:
    tick = time.perf_counter()
    logging = f"training.logging_steps={max(1, steps // 30)}"  # ~30 points on the loss curve
    trainer = run_pretraining(PretrainSettings(recipe="vit-micro", overrides=[logging],
                                               output_dir=run_dir, max_steps=steps, batch_size=batch, seed=seed),
                              bf16=bf16, save_strategy="no")
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"seconds": time.perf_counter() - tick, "steps": [h["step"] for h in logs],
            "loss": [h["loss"] for h in logs], "final_loss_mean_last_5": statistics.mean(h["loss"] for h in logs[-5:])}


def probe(encoder: str, a: argparse.Namespace, precision: str, probes: list[str]) -> dict[str, float]:
    settings = ProbeSettings(probes=probes, epochs=a.probe_epochs, limit_train=a.probe_train,
                             limit_test=a.probe_test, num_workers=0, precision=precision)
    tick = time.perf_counter()
    result = run_probes(encoder, "fashion-mnist", settings)
    return {**{k: v["best"]["top1"] for k, v in result["probes"].items()}, "seconds": time.perf_counter() - tick}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--probes", default="patch,cls,xblk", help="the demo's probe types")
    p.add_argument("--probe-epochs", type=int, default=3)
    p.add_argument("--probe-train", type=int, default=6000)
    p.add_argument("--probe-test", type=int, default=2000)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default="bench/results/precision.json")
    a = p.parse_args(argv)
    threads = set_threads(a.threads)
    probes = a.probes.split(",")
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            for name, bf16 in BF16.items():
                key = f"{name} seed {seed}"
                print(f"== pretraining {key}", flush=True)
                run_dir = Path(tmp) / key.replace(" ", "-")
                runs[key] = {"precision": name, "seed": seed, **pretrain(run_dir, a.steps, a.batch_size, seed, bf16)}
                # probes in float32 everywhere here: this compares what the two pretraining precisions learned
                runs[key]["probes_fp32_features"] = probe(str(run_dir / "encoder"), a, "fp32", probes)
        # the same encoder probed with float32 vs bf16 frozen features (the inference half of the question)
        first = f"bf16 seed {a.seeds[0]}"
        encoder = str(Path(tmp) / first.replace(" ", "-") / "encoder")
        inference = {prec: probe(encoder, a, prec, probes) for prec in ("fp32", "bf16")}
    summary = {
        name: {"final_loss": [runs[f"{name} seed {s}"]["final_loss_mean_last_5"] for s in a.seeds],
               **{k: [runs[f"{name} seed {s}"]["probes_fp32_features"][k] for s in a.seeds] for k in probes},
               "pretrain_seconds": [round(runs[f"{name} seed {s}"]["seconds"], 1) for s in a.seeds]}
        for name in BF16}
    inference["difference_points"] = {k: inference["bf16"][k] - inference["fp32"][k] for k in probes}
    result = {"benchmark": "precision", "machine": machine_info(), "threads": threads,
              "settings": {k: v for k, v in vars(a).items() if k != "out"}, "summary": summary,
              "probe_features_fp32_vs_bf16": {"encoder": first, **inference}, "runs": runs}
    print(write_json(result, a.out))
    for name, row in summary.items():
        print(name, {k: [round(v, 3) for v in vals] for k, vals in row.items()})
    print("probes fp32 vs bf16 features:", inference["difference_points"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
