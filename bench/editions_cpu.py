"""CPU evidence for the paper's other systems (README "The paper's other systems"): MAE and CrossMAE unmodified
(`mae-micro`, `crossmae-micro`) against the same decoders with the paper's changes (`mae-bootleg-micro`,
`crossmae-bootleg-micro`: EMA teacher, the paper's masking, hidden-layer targets), the two ends of Table 3's rows,
at the demo's budget (1200 steps × 128 Fashion-MNIST images), several seeds, then the demo's frozen evaluation:
the patch probe (quick protocol, 3 epochs) and the quick metrics (kNN, converged linear classifier), with a
random-init encoder and the raw pixels as reference lines. Not part of `make test`.

    python -m bench.editions_cpu                       # 4 recipes × 2 seeds

Writes `bench/results/editions_cpu.json` (every run and the means per recipe, machine info) and `.md`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from bench.common import RESULTS_DIR, machine_info, write_json
from bootleg_hf.evaluation.classification import ProbeSettings, run_probes
from bootleg_hf.pretraining import PretrainSettings, run_pretraining

RECIPES = ("mae-micro", "mae-bootleg-micro", "crossmae-micro", "crossmae-bootleg-micro")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--probe-epochs", type=int, default=3)
    p.add_argument("--probe-train", type=int, default=6000)
    p.add_argument("--probe-test", type=int, default=2000)
    p.add_argument("--work", default="/tmp/bootleg-editions-bench", help="run folders (replaced)")
    p.add_argument("--out", default=str(RESULTS_DIR / "editions_cpu.json"))
    a = p.parse_args(argv)
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    runs = []
    for recipe in a.recipes:
        for seed in a.seeds:
            start = time.perf_counter()
            run_dir = work / f"{recipe}-{seed}"
            trainer = run_pretraining(PretrainSettings(
                recipe=recipe, overrides=[f"training.logging_steps={max(1, a.steps // 20)}",
                                          f"training.save_steps={a.steps}"],
                output_dir=run_dir, max_steps=a.steps, batch_size=a.batch_size, seed=seed))
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            pretrain_s = time.perf_counter() - start
            probes = run_probes(run_dir / "encoder", "fashion-mnist", ProbeSettings(
                probes=("patch",), epochs=a.probe_epochs, limit_train=a.probe_train, limit_test=a.probe_test,
                seed=seed, num_workers=0))
            runs.append({"recipe": recipe, "seed": seed, "loss_first": losses[0], "loss_last": losses[-1],
                         "pretrain_s": round(pretrain_s, 1), "wall_s": round(time.perf_counter() - start, 1),
                         "quick_metrics": {name: {k: row[k] for k in ("knn_top1", "linear_top1")}
                                           for name, row in probes["quick_metrics"]["rows"].items()},
                         "patch_top1": probes["probes"]["patch"]["best"]["top1"]})
            print({k: v for k, v in runs[-1].items() if k != "quick_metrics"}, flush=True)
    summary = {}
    for recipe in a.recipes:
        mine = [r for r in runs if r["recipe"] == recipe]
        summary[recipe] = {key: statistics.fmean(value(r) for r in mine) for key, value in {
            "patch_top1": lambda r: r["patch_top1"],
            "knn_top1": lambda r: r["quick_metrics"]["encoder"]["knn_top1"],
            "linear_top1": lambda r: r["quick_metrics"]["encoder"]["linear_top1"]}.items()}
    references = {name: {key: statistics.fmean(r["quick_metrics"][name][key] for r in runs)
                         for key in ("knn_top1", "linear_top1")}
                  for name in runs[0]["quick_metrics"] if name != "encoder"}
    result = {"benchmark": "editions_cpu", "machine": machine_info(), "steps": a.steps, "batch_size": a.batch_size,
              "seeds": a.seeds, "probe_epochs": a.probe_epochs, "probe_train": a.probe_train,
              "probe_test": a.probe_test, "runs": runs, "summary": summary, "references": references}
    write_json(result, a.out)
    lines = ["# The paper's other systems on CPU: vit-micro on Fashion-MNIST", "",
             f"{a.steps} pretraining steps × {a.batch_size} images, seeds {a.seeds}; frozen evaluation on "
             f"{a.probe_train} / {a.probe_test} images: patch probe (quick protocol, {a.probe_epochs} epochs), kNN "
             "(k = 20) and converged linear classifier on the pooled token. Means over seeds, top-1 %.", "",
             "| recipe | patch probe | kNN | linear |", "|---|---|---|---|"]
    lines += [f"| {name} | {s['patch_top1']:.1f} | {s['knn_top1']:.1f} | {s['linear_top1']:.1f} |"
              for name, s in summary.items()]
    lines += [f"| {name} (reference) | – | {s['knn_top1']:.1f} | {s['linear_top1']:.1f} |"
              for name, s in references.items()]
    Path(a.out).with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
