"""Mutation check of the core modules (`make mutation`; not part of `make test`).

mutmut (configured in pyproject.toml's `[tool.mutmut]`) copies the package to `mutants/`, plants one small bug at a
time in the functions matched by `CORE` and runs only the tests that reach the mutated function. A mutant is
*killed* when a test fails, *survives* otherwise; "no tests" means no selected test reaches the function. The score is
killed / (all − equivalent): mutants proven equivalent to the original carry `# pragma: no mutate` on their line with
the reason (see docs/mutation.md), so they are not generated at all.

    python -m bench.mutation                 # all core functions (about an hour on 2 cores)
    python -m bench.mutation --only targets  # one group
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import machine_info, write_json

ROOT = Path(__file__).resolve().parents[1]

# The core: the functions the paper's numbers and the library's guarantees rest on, grouped by concept (argument
# validation, reports and model plumbing are left out to keep a run near an hour on 2 cores). Patterns are mutmut's
# mangled names: `x_<function>` for module functions, `xǁ<Class>ǁ<method>` for methods.
CORE: dict[str, list[str]] = {
    "targets": ["bootleg_hf.targets.*", *(f"bootleg_hf.modeling_bootleg_pretraining.{f}*" for f in (
        "x_channel_std", "xǁBootlegForPretrainingǁcompute_targets", "xǁBootlegForPretrainingǁteacher_features",
        "xǁBootlegForPretrainingǁbuild_targets"))],
    "losses": ["bootleg_hf.losses.*"],
    "masking": [f"bootleg_hf.masking.{f}*" for f in (
        "xǁMaskGeneratorǁgenerate", "xǁMaskGeneratorǁ_background_size", "xǁMaskGeneratorǁ_boxes",
        "xǁMaskGeneratorǁ_target_indices", "xǁMaskGeneratorǁ_rows", "xǁMaskGeneratorǁ_bootleg",
        "xǁMaskGeneratorǁ_ijepa", "xǁMaskGeneratorǁ_random", "xǁMaskGeneratorǁ_inverse_block",
        "xǁMaskGeneratorǁ_green_noise", "x_blur_matrix", "xǁMaskGeneratorǁ_cyclic_block",
        "xǁBootlegDataCollatorǁ")],
    "optimizer groups": ["bootleg_hf.optim.*"],
    "schedules and EMA": [
        *(f"bootleg_hf.trainer.{f}*" for f in (
            "x_cosine", "x_learning_rate_at", "x_weight_decay_at", "x_momentum_at", "xǁScheduleǁ", "xǁScheduleLRǁ",
            "xǁBootlegEMACallbackǁ", "xǁ_BootlegCallbackǁ", "xǁBootlegTrainerǁsettle_schedule")),
        *(f"bootleg_hf.modeling_bootleg_pretraining.xǁBootlegForPretrainingǁ{f}*" for f in (
            "init_teacher_from_student", "update_teacher", "student_fingerprint", "check_teacher_follows")),
    ],
    "checkpoint guards": [
        "bootleg_hf.trainer.xǁBootlegTrainerǁsave_model*", "bootleg_hf.trainer.xǁBootlegTrainerǁ_save_checkpoint*",
        "bootleg_hf.checkpoints.x_check_finite*", "bootleg_hf.checkpoints.x_check_output*",
        "bootleg_hf.checkpoints.x_replacing_folder*",
    ],
    "publishing guards": [
        "bootleg_hf.publishing.x_check_repo_id*", "bootleg_hf.publishing.x_check_no_pickles*",
        "bootleg_hf.publishing.x_upload*",
    ],
    "probe grid and heads": [
        "bootleg_hf.evaluation.classification.xǁProbeSweepǁ*",
        *(f"bootleg_hf.modeling_bootleg_heads.{f}*" for f in (
            "x_init_probe_weights", "x_build_probe", "xǁPatchProbeǁ", "xǁClsProbeǁ", "xǁLinearHeadǁ",
            "xǁAttentiveProbeǁ")),
    ],
    "conversion": [f"bootleg_hf.conversion.{f}*" for f in (
        "x_check_keys", "x_sincos_table_error", "x_check_sincos_table", "x_config_from_timm", "x_timm_to_bootleg",
        "x_bootleg_to_timm", "x_config_from_ijepa", "x_ijepa_encoder_to_bootleg", "x_ijepa_predictor_to_bootleg",
        "x_hf_ijepa_to_official")],
}


def mutmut(*args: str, capture: bool = False) -> str:
    """Run the mutmut CLI of this interpreter's environment in the repository root."""
    command = [str(Path(sys.executable).with_name("mutmut")), *args]
    done = subprocess.run(command, cwd=ROOT, text=True, check=args[0] != "run",
                          stdout=subprocess.PIPE if capture else None)
    return done.stdout or ""


def read_statuses() -> dict[str, str]:
    """Every generated mutant's name → status ("killed", "survived", "no tests", "timeout", …)."""
    statuses = {}
    for line in mutmut("results", "--all", "true", capture=True).splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name.startswith("bootleg_hf."):
            statuses[name] = status
    return statuses


def score(statuses: dict[str, str], patterns: list[str]) -> dict:
    """Counts per status of the mutants whose function matches one of `patterns`, and the share killed."""
    names = [n for n in statuses if any(fnmatch.fnmatch(n, p) for p in patterns)]
    counts: dict[str, int] = {}
    for n in names:
        counts[statuses[n]] = counts.get(statuses[n], 0) + 1
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    checked = len(names) - counts.get("not checked", 0)
    return {"mutants": len(names), "killed": killed, "counts": counts,
            "score": round(100 * killed / len(names), 1) if names else None,
            "checked_score": round(100 * killed / checked, 1) if checked else None,
            "not_killed": sorted(n for n in names if statuses[n] not in ("killed", "timeout"))}


def function_of(mutant: str) -> str:
    return re.sub(r"__mutmut_\d+$", "", mutant)


def run(patterns: list[str], resume: bool) -> None:
    """A fresh mutmut run of the core mutants, or (`resume`) of those an earlier run in mutants/ has not killed."""
    if resume and (ROOT / "mutants").is_dir():
        todo = score(read_statuses(), patterns)["not_killed"]
        if todo:  # named explicitly, mutmut runs them whatever their earlier result
            mutmut("run", *todo)
    else:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)  # mutmut's scratch copy, never a user's file
        mutmut("run", *patterns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(CORE), help="groups to run (default: all)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "mutation.json"))
    parser.add_argument("--resume", action="store_true",
                        help="keep the results of the run in mutants/ and run only the core mutants it has not "
                             "killed (not yet run, survived, no tests): after an interruption or new tests")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write the score of the results in mutants/ (e.g. of an interrupted run)")
    args = parser.parse_args()
    groups = {g: CORE[g] for g in (args.only or CORE)}
    patterns = [p for group in groups.values() for p in group]
    tick = time.perf_counter()
    if not args.report_only:
        run(patterns, args.resume)
    seconds = time.perf_counter() - tick
    statuses = read_statuses()
    result = {"tool": "mutmut", "seconds": round(seconds), "resumed": args.resume, "report_only": args.report_only,
              "groups": {g: score(statuses, p) for g, p in groups.items()}, "total": score(statuses, patterns),
              "machine": machine_info()}
    write_json(result, args.out)
    print(f"\nmutation score (killed / generated; of the checked ones) after {seconds / 60:.0f} min:")
    for group, s in [*result["groups"].items(), ("TOTAL", result["total"])]:
        print(f"  {group:22s} {s['killed']:5d} / {s['mutants']:5d}  {s['score']}%; {s['checked_score']}%  "
              f"{s['counts']}")
    survivors: dict[str, int] = {}
    for name in result["total"]["not_killed"]:
        survivors[function_of(name)] = survivors.get(function_of(name), 0) + 1
    if survivors:
        print("not killed, per function (`mutmut show <name>` prints a mutant):")
        for fn, n in sorted(survivors.items(), key=lambda kv: -kv[1]):
            print(f"  {n:4d}  {fn}")


if __name__ == "__main__":
    main()
