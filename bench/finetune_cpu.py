"""CPU evidence for fine-tuning (docs/finetuning.md): the full, 1 % low-shot and LoRA protocols of the `vit-micro-*`
fine-tuning recipes, each for a Bootleg-pretrained encoder and for a random-init encoder of the same shape, at the same
budget, for several seeds, on Fashion-MNIST. Not part of `make test`.

    python -m bench.finetune_cpu --encoder demo_out/pretrain/encoder            # 3 protocols × 2 inits × 3 seeds

Writes `bench/results/finetune_cpu.json` (every run, the per-protocol means and the paired Bootleg − random
differences with 95 % t intervals over seeds, machine info) and `.md`.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import time
from pathlib import Path

from bench.common import RESULTS_DIR, machine_info, write_json
from bootleg_hf.finetuning import FinetuneSettings, load_finetune_recipe, run_finetune

# two-sided 95 % Student t quantiles by degrees of freedom
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """Mean of a − b over paired seeds with its 95 % t interval (half-width NaN for one pair)."""
    diffs = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(diffs)
    half = T95.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 \
        else float("nan")
    return {"mean": mean, "ci95": [mean - half, mean + half], "diffs": diffs}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="demo_out/pretrain/encoder", help="the Bootleg-pretrained vit-micro encoder")
    p.add_argument("--protocols", nargs="+", default=["full", "lowshot", "lora"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--limit", type=int, default=6000, help="training images for full and LoRA (low-shot: 1 %% of "
                                                            "all 60000)")
    p.add_argument("--eval-limit", type=int, default=2000)
    p.add_argument("--work", default="/tmp/bootleg-finetune-bench", help="run folders (replaced)")
    p.add_argument("--out", default=str(RESULTS_DIR / "finetune_cpu.json"))
    p.add_argument("--set", action="append", default=[], dest="overrides", help="recipe override for every run")
    a = p.parse_args(argv)
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    runs = []
    inits = {"bootleg": a.encoder, "random": "random:vit-micro:{seed}"}
    for protocol in a.protocols:
        recipe = load_finetune_recipe(f"vit-micro-{protocol}", ["training.save_strategy=no", *a.overrides])
        for seed in a.seeds:
            for init, source in inits.items():
                start = time.perf_counter()
                results = run_finetune(recipe, FinetuneSettings(
                    model=source.format(seed=seed), output_dir=work / f"{protocol}-{init}-{seed}",
                    limit=None if protocol == "lowshot" else a.limit, eval_limit=a.eval_limit, seed=seed))
                best = next(iter(results["probes"].values()))["best"]
                runs.append({"protocol": protocol, "init": init, "seed": seed, "top1": best["top1"],
                             "top1_before": best["initial_top1"], "steps": best["steps"],
                             "num_train": results["num_train"], "num_test": results["num_test"],
                             "trainable_parameters": results["trainable_parameters"],
                             "wall_s": round(time.perf_counter() - start, 1)})
                print(runs[-1], flush=True)
    summary = {}
    for protocol in a.protocols:
        scores = {init: [r["top1"] for r in runs if r["protocol"] == protocol and r["init"] == init] for init in inits}
        summary[protocol] = {
            **{init: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
               for init, v in scores.items()},
            "bootleg_minus_random": paired(scores["bootleg"], scores["random"])}
    result = {"benchmark": "finetune_cpu", "machine": machine_info(), "encoder": a.encoder, "seeds": a.seeds,
              "limit": a.limit, "eval_limit": a.eval_limit, "overrides": a.overrides, "runs": runs,
              "summary": summary}
    write_json(result, a.out)
    Path(a.out).with_suffix(".md").write_text(markdown(result), encoding="utf-8")


def markdown(result: dict) -> str:
    lines = ["# Fine-tuning on CPU: vit-micro on Fashion-MNIST", "",
             f"Recipes `vit-micro-<protocol>`; encoder `{result['encoder']}` (Bootleg) vs a random-init vit-micro, "
             f"seeds {result['seeds']}, test top-1 % on {result['eval_limit']} test images "
             f"(mean ± std over seeds; paired difference with its 95 % t interval).", "",
             "| protocol | train images | steps | Bootleg | random init | Bootleg − random [95 % CI] |",
             "|---|---|---|---|---|---|"]
    for protocol, s in result["summary"].items():
        run = next(r for r in result["runs"] if r["protocol"] == protocol)
        d = s["bootleg_minus_random"]
        lines.append(f"| {protocol} | {run['num_train']} | {run['steps']} | {s['bootleg']['mean']:.2f} ± "
                     f"{s['bootleg']['std']:.2f} | {s['random']['mean']:.2f} ± {s['random']['std']:.2f} | "
                     f"{d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
