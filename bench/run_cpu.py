"""Run the CPU benchmark set and write `bench/results/*.json` + `bench/results/SUMMARY.md` (`make bench`).

    python -m bench.run_cpu                  # everything, ~8–12 minutes on 2 cores
    python -m bench.run_cpu --only encoder   # one part (masking, input, encoder, pretrain_step, breakdown)
    python -m bench.run_cpu --only ijepa_official --ijepa-repo /tmp/ijepa-official   # vs the official I-JEPA code
    python -m bench.run_cpu --summary-only   # rebuild SUMMARY.md from the JSON files already there

Torch runs with `--threads` intra-op threads (default 1). On a shared machine whose other processes keep the cores
busy, two OpenMP threads that must meet at every op's barrier can be slowed down 10–30× by one preempted thread;
one thread per process gives stable per-core numbers. The load average before and after each part is recorded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import RESULTS_DIR, load_average, machine_info, set_threads, write_json

PARTS = ("masking", "input", "encoder", "pretrain_step", "breakdown", "ijepa_official")
ONE_THREAD_PARTS = ("masking", "input")  # measured per core by definition: these scripts pin torch to one thread


def run_part(part: str, out_dir: Path, quick: bool, ijepa_repo: str | None = None) -> dict:
    out = out_dir / f"{part}.json"
    if part == "masking":
        from bench import bench_masking

        return bench_masking.main(["--out", str(out)] + (["--loader-batches", "4"] if quick else []))
    if part == "input":
        from bench import bench_input

        return bench_input.main(["--out", str(out)] + (["--images", "64", "--repeats", "3", "--loader-samples", "256",
                                                        "--loader-rounds", "1"] if quick else []))
    if part == "encoder":
        from bench import bench_encoder

        presets = ["vit-micro", "vit-small"] if quick else ["vit-micro", "vit-small", "vit-base"]
        result = bench_encoder.run(presets, repeats=3 if quick else None)
    elif part == "pretrain_step":
        from bench import bench_pretrain_step

        result = bench_pretrain_step.run(["vit-micro", "vit-small"], repeats=2 if quick else None)
    elif part == "breakdown":
        from bench import bench_breakdown

        result = bench_breakdown.run(["vit-micro", "vit-small"], repeats=2 if quick else None)
    elif part == "ijepa_official":  # main() skips it without --ijepa-repo; the script skips a path without the code
        from bench import bench_ijepa_official

        result = bench_ijepa_official.run(ijepa_repo, repeats=2 if quick else None)
    else:
        raise ValueError(part)
    write_json(result, out)
    return result


# ------------------------------------------------------------------------------------------------------ summary
def _ms(t: dict) -> str:
    return f"{t['median_s'] * 1e3:,.1f}"


def _pct(x: float) -> str:
    return f"{x * 100:.2f} %"


def _machine_line(m: dict) -> str:
    load = m.get("load_average_1_5_15min")
    return (f"{m.get('cpu_model')} ({m.get('cpu_count')} cores), {m.get('platform')}; torch {m.get('torch')}, "
            f"transformers {m.get('transformers')}, timm {m.get('timm')}, numpy {m.get('numpy')}; "
            f"**{m.get('torch_threads')} torch thread(s)**; {m.get('date')}" +
            (f"; 1-min load average {load[0]} when recorded" if load else ""))


def summarize_encoder(r: dict) -> list[str]:
    lines = ["## Encoder forward (inference)", "", f"Machine: {_machine_line(r['machine'])}.", "",
             "`BootlegModel` (SDPA) vs timm `VisionTransformer(class_token=True, reg_tokens=4, no_embed_class=True)` "
             "holding the same weights vs `transformers.ViTModel` (SDPA, no pooler, 1 + N tokens: no registers); "
             "`ours, no reg` = `BootlegModel` without registers (the same 1 + N tokens as HF). "
             "`torch.inference_mode()`, alternated, median of the repeats. Ratio cells: **ratio of the median wall times** · "
             "median of the per-round ratios (robust to the machine changing speed mid-run) · ratio of the median "
             "process CPU times (robust to other processes taking the cores). Ratio < 1: ours is faster.", "",
             "| preset | batch | image | ours ms | timm ms | HF ViT ms | ours, no reg ms | ours img/s | timm img/s | "
             "HF img/s | ours/timm | ours/HF | ours no reg/HF | timm parity (max abs) | repeats |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, x in r["results"].items():
        t, rt = x["timings"], x["ratios"]
        noreg = t.get("bootleg_noreg")

        def paired(key: str, x=x) -> str:
            extra = [x.get(k, {}).get(key) for k in ("paired_ratios", "cpu_time_ratios")]
            return "".join(f" · {v:.3f}" if v is not None else " · –" for v in extra)

        lines.append(f"| {name} | {x['shape']['batch_size']} | {x['shape']['image_size'][0]} px / "
                     f"{x['shape']['patch_size']} | {_ms(t['bootleg'])} | {_ms(t['timm'])} | {_ms(t['hf_vit'])} | "
                     f"{_ms(noreg) if noreg else '–'} | {t['bootleg']['images_per_s']:.1f} | "
                     f"{t['timm']['images_per_s']:.1f} | {t['hf_vit']['images_per_s']:.1f} | "
                     f"**{rt['ours_over_timm']:.3f}**{paired('ours_over_timm')} | {rt['ours_over_hf']:.3f}"
                     f"{paired('ours_over_hf')} | {rt.get('ours_noreg_over_hf', float('nan')):.3f}"
                     f"{paired('ours_noreg_over_hf')} | "
                     f"{x.get('timm_parity_max_abs_diff', float('nan')):.1e} | {t['bootleg']['repeats']} |")
    return lines + [""]


def summarize_pretrain(r: dict) -> list[str]:
    lines = ["## Pretraining step (forward + backward + AdamW + EMA)", "",
             f"Machine: {_machine_line(r['machine'])}.", ""]
    for name, x in r["results"].items():
        c = x["contenders"]
        lines += [f"### {name}, batch {x['batch_size']}", "",
                  "| contender | s/step | images/s | trainable params | notes |", "|---|---|---|---|---|"]
        for k, t in x["timings"].items():
            info = c[k]
            if k == "mae":
                d = info["decoder"]
                note = (f"ViTMAEForPreTraining, decoder {d['hidden_size']} wide / {d['num_hidden_layers']} blocks / "
                        f"{d['num_attention_heads']} heads / MLP {d['intermediate_size']}, mask 0.75, "
                        f"{info['encoder_tokens']} encoder tokens, norm_pix_loss")
            else:
                p = info["predictor"]
                note = (f"targets {info['targets']}, predictor {p['hidden_size']}/{p['num_hidden_layers']}/"
                        f"{p['num_attention_heads']}, `{info['mask_mode']}` masks: context "
                        f"{info['context_tokens_mean']:.1f} tokens, 4 × {info['target_tokens_per_rectangle_mean']:.1f}"
                        f" target tokens; {info['loss']}")
            lines.append(f"| {k} | {t['median_s']:.3f} | {t['images_per_s']:.2f} | "
                         f"{info['params']['trainable'] / 1e6:.2f} M | {note} |")
        lines.append("")
        pr, cr = x.get("paired_ratios", {}), x.get("cpu_time_ratios", {})
        lines.append("Time ratios (of the median wall times; in brackets the median per-round ratio and the ratio of "
                     "median process CPU times): " + ", ".join(
                         f"{k.replace('_over_', ' / ')} **{v:.2f}**" +
                         (f" ({pr[k]:.2f}, CPU {cr[k]:.2f})" if k in pr and k in cr else "")
                         for k, v in x["ratios"].items()) + ".")
        lines.append("")
    return lines


def summarize_ijepa_official(r: dict) -> list[str]:
    lines = ["## Side by side with the official I-JEPA code", "", f"Machine: {_machine_line(r['machine'])}.", ""]
    if "skipped" in r:
        return lines + [f"Skipped: {r['skipped']}.", ""]
    for name, x in r["results"].items():
        pred, ratios = x["shape"]["predictor"], x["ratios"]
        lines += [f"### {name}, batch {x['batch_size']}", "",
                  f"Official `{x['shape']['model']}` ({x['shape']['image_size']} px / {x['shape']['patch_size']}) + "
                  f"predictor {pred['hidden_size']}/{pred['num_hidden_layers']}/{pred['num_heads']} vs "
                  "`BootlegForPretraining` as I-JEPA holding the same weights (fp32 parity: predictions "
                  f"{x['parity']['predictions_max_abs_diff']:.1e}, targets {x['parity']['targets_max_abs_diff']:.1e}) "
                  "and Bootleg's own preset for reference; the same images and official `MaskCollator` masks "
                  f"(context {x['masks']['context_tokens_mean']:.1f} tokens, 4 × "
                  f"{x['masks']['target_tokens_per_rectangle_mean']:.1f} target tokens). One step = forward, "
                  "backward, AdamW, zero_grad, EMA; bf16 = CPU autocast around the forward. Official code: "
                  f"`{x['official_code']['sha256_of_files_used'][:12]}` (sha256 of the files used).", "",
                  "| contender | " + " | ".join(f"{p} s/step" for p in x["precisions"]) + " | best |",
                  "|---|" + "---|" * (len(x["precisions"]) + 1)]
        for c, best in x["best_precision"].items():
            lines.append(f"| {c} | " + " | ".join(f"{x['timings'][f'{c}/{p}']['median_s']:.3f}"
                                                  for p in x["precisions"]) + f" | {best} |")
        lines += ["", "Ratios (of the median wall times; in brackets the median per-round ratio and the ratio of "
                  "median process CPU times): " + ", ".join(
                      f"{k.replace('_over_', ' / ')} **{v:.2f}** ({x['paired_ratios'][k]:.2f}, CPU "
                      f"{x['cpu_time_ratios'][k]:.2f})" for k, v in ratios.items()) + "."]
        if t := x.get("target"):
            lines.append(f"Target {t['ratio'].replace('_over_', ' / ')} ≤ {t['max']}: "
                         f"{'met' if t['met'] else '**not met**'}.")
        if prof := x.get("profile"):
            at = prof["precision"]
            lines += ["", f"Largest differences in self CPU time per step (ours I-JEPA at {at['ours_ijepa']} − "
                      f"official at {at['official']}; totals {prof['ours_total_self_cpu_ms']:.0f} vs "
                      f"{prof['official_total_self_cpu_ms']:.0f} ms):", "",
                      "| op | ours ms (calls) | official ms (calls) | difference ms |", "|---|---|---|---|"]
            lines += [f"| `{d['op']}` | {d['ours_ms']:.1f} ({d['ours_calls']:g}) | {d['official_ms']:.1f} "
                      f"({d['official_calls']:g}) | {d['diff_ms']:+.1f} |" for d in prof["largest_differences"][:10]]
        lines.append("")
    return lines


def summarize_breakdown(r: dict) -> list[str]:
    lines = ["## Step breakdown (Bootleg)", "", f"Machine: {_machine_line(r['machine'])}.", "",
             "The phases `BootlegForPretraining.forward` labels for `torch.profiler` (`bootleg.*`) and those of the "
             "training step (`step.*`: backward with the loss's backward, AdamW + zero_grad, EMA), one profiled step "
             "at a time on the same batch; CPU time of each range, median over the repeats; shares of the sum of the "
             "phase medians. The last rows compare the step with and without the profiler (alternated).", ""]
    names = list(r["results"])
    header = "| phase | " + " | ".join(f"{n} ms | {n} share" for n in names) + " |"
    lines += [header, "|---|" + "---|---|" * len(names)]
    phases = list(next(iter(r["results"].values()))["shares"])
    for p in phases:
        row = f"| {p} |"
        for n in names:
            x = r["results"][n]
            row += f" {x['phase_medians_s'][p] * 1e3:,.2f} | {_pct(x['shares'][p])} |"
        lines.append(row)
    lines.append("| **sum of phases** |" + "".join(
        f" {r['results'][n]['sum_of_phase_medians_s'] * 1e3:,.1f} | |" for n in names))
    lines.append("| profiled step |" + "".join(
        f" {r['results'][n]['profiled_step']['median_s'] * 1e3:,.1f} | |" for n in names))
    lines.append("| step without profiler |" + "".join(
        f" {r['results'][n]['step']['median_s'] * 1e3:,.1f} | |" for n in names))
    lines.append("")
    for n in names:
        x = r["results"][n]
        req = x["requirements"]
        lines.append(f"- **{n}** (batch {x['batch_size']}, context {x['context_tokens']} tokens, targets "
                     f"{x['target_shape']}, {x['targets']}, {x['loss']}): teacher **{_pct(x['teacher_share'])}**, "
                     f"target building + loss **{_pct(x['targets_plus_loss_share'])}** (≤ 3 %: "
                     f"{'met' if req['targets_plus_loss_le_3pct'] else 'NOT met'}), EMA **{_pct(x['ema_share'])}** "
                     f"(≤ 1 %: {'met' if req['ema_le_1pct'] else 'NOT met'}).")
    lines += ["", "EMA update alone (teacher ← m·teacher + (1−m)·student):", "",
              "| preset | tensors | params | foreach lerp (ours) ms | per-parameter mul_/add_ loop ms | "
              "foreach mul_ + add_ ms | loop / ours |", "|---|---|---|---|---|---|---|"]
    for n, e in r["ema"].items():
        t = e["timings"]
        lines.append(f"| {n} | {e['tensors']} | {e['parameters'] / 1e6:.1f} M | {_ms(t['foreach_lerp'])} | "
                     f"{_ms(t['per_parameter_loop'])} | {_ms(t['foreach_mul_add'])} | "
                     f"{e['speedup_foreach_lerp_vs_loop']:.2f} |")
    lines += ["", "On a CPU `_foreach_*` ops have no fused kernel (they loop over the tensors), so for a small model "
              "all three variants cost about the same per-tensor dispatch time; the gain of the fused form appears "
              "with size on CPU and, as one multi-tensor kernel per dtype, on GPUs."]
    lines += ["", "Loss forward + backward, `F.mse_loss` vs `MSELossNoForward` (fp32):", "",
              "| target size of | shape | mse ms | MSELossNoForward ms | ratio | saving ms |",
              "|---|---|---|---|---|---|"]
    for n, x in r["loss"].items():
        t = x["timings"]
        lines.append(f"| {n} | {x['shape']} | {_ms(t['mse_loss'])} | {_ms(t['mse_no_forward'])} | "
                     f"{x['no_forward_over_mse']:.2f} | {x['saving_s'] * 1e3:.2f} |")
    return lines + [""]


def summarize_masking(r: dict) -> list[str]:
    cfg = r["config"]
    lines = ["## Mask generation and loading", "", f"Machine: {_machine_line(r['machine'])}.", "",
             f"`MaskGenerator.generate` for a {cfg['batch_size']} × {cfg['grid'][0]}×{cfg['grid'][1]} batch on one "
             "thread (docs/design.md §10 budget: 5 ms):", "", "| mode | median ms | p10 ms | p90 ms |",
             "|---|---|---|---|"]
    for mode, g in r["generate"].items():
        lines.append(f"| {mode} | {g['median_ms']:.3f} | {g['p10_ms']:.3f} | {g['p90_ms']:.3f} |")
    ld = r.get("loading")
    if ld:
        lines += ["", f"DataLoader throughput ({ld['workers']} workers, {ld['image_size']} px synthetic tensors, batch "
                      f"{ld['batch_size']}): `BootlegDataCollator` {ld['bootleg_collator']['images_per_s']:,.0f} "
                      f"images/s vs stack-only collator {ld['stack_only']['images_per_s']:,.0f} images/s; mask "
                      f"generation alone {ld['mask_only_images_per_s']:,.0f} images/s per core."]
    return lines + [""]


def summarize_input(r: dict) -> list[str]:
    cfg, pre, ld, alt, g = (r[k] for k in ("config", "pretrain_in_process", "pretrain_loader", "alternatives",
                                           "gpu_demand"))
    lines = ["## Input pipeline (JPEG → masked batch)", "", f"Machine: {_machine_line(r['machine'])}.", "",
             f"{cfg['images']} generated JPEGs (quality {cfg['quality']}, mean {cfg['mean_file_kb']:.0f} kB, "
             f"{cfg['mean_pixels'] / 1e3:.0f} kpixels), `PretrainTransform({cfg['image_size']})` + "
             f"`BootlegDataCollator` ({cfg['masks']}), batch {cfg['batch_size']}. *before*: the transforms before "
             "issue 16 (ops on the PIL image, torchvision ToImage + ToDtype + Normalize); *after*: today's (ops on a "
             "uint8 tensor, one fused normalisation). Same random draws. In-process, one thread, alternated:", "",
             "| pipeline | images/s | images/CPU-s | " + " | ".join(f"{s} ms" for s in pre["after"]["stage_ms_per_image"])
             + " |", "|---" * (3 + len(pre["after"]["stage_ms_per_image"])) + "|"]
    for name in ("before", "after"):
        x = pre[name]
        lines.append(f"| {name} | {x['end_to_end']['images_per_s']:.0f} | {x['end_to_end']['images_per_cpu_s']:.0f} | "
                     + " | ".join(f"{v:.3f} ({x['stage_shares'][s] * 100:.0f} %)"
                                  for s, v in x["stage_ms_per_image"].items()) + " |")
    lines += ["", f"after / before time: **{pre['after_over_before_time']:.2f}**.", "",
              "| DataLoader | workers | images/s | per worker | per worker CPU-second |", "|---|---|---|---|---|"]
    for key, x in ld.items():
        if isinstance(x, dict):
            lines.append(f"| {key.split('_')[0]} | {x['workers']} | {x['images_per_s']:.0f} | "
                         f"{x['images_per_s_per_worker']:.0f} | {x['images_per_worker_cpu_s']:.0f} |")
    probe = r["probe_in_process"]
    lines += ["", "Probe path in-process (images/s): " + ", ".join(
        f"{k.replace('_', ' ')} {v['images_per_s']:.0f}" for k, v in probe.items() if isinstance(v, dict)) + ".", "",
        "Alternatives (ms/image): decoders " + ", ".join(f"{k.replace('_', ' ')} {v['ms_per_image']:.3f}"
                                                    for k, v in alt["decoders"].items()) +
        f" (torchvision's decoders are deprecated since 0.29); PIL `draft` at 1/2 would apply to "
        f"{alt['draft']['fraction_of_crops_decodable_at_half_scale'] * 100:.1f} % of the crops "
        f"({alt['draft']['expected_saving_ms_per_image']:.3f} ms/image expected); normalisation " + ", ".join(
            f"{k.replace('_', ' ')} {v['ms_per_image']:.3f}" for k, v in alt["normalize"].items()) +
        "; a worker's batch to shared memory " + ", ".join(
            f"{k} {v['ms_per_image']:.3f}" for k, v in alt["shared_memory_handover"].items()) + ".", "",
        f"GPU demand: a ViT-B/16 step at ≈ {g['gpu_images_per_s']:,.0f} images/s ({g['source']}; "
        f"{g['model_gflops_per_image']:.0f} GFLOP/image) needs **{g['workers_needed']} workers** (cores) at "
        f"{g['images_per_s_per_worker']:.0f} images/s each."]
    return lines + [""]


def summarize_library_ab(r: dict) -> list[str]:
    lines = ["## Library changes, before / after", "", r.get("description", ""), "",
             f"Machine: {_machine_line(r['machine'])}.", "",
             "| measurement | before ms | after ms | after / before (medians) | per-round median | CPU time | repeats |",
             "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        extra = [row.get("paired_after_over_before"), row.get("cpu_after_over_before")]
        lines.append(f"| {row['what']} | {row['before_s'] * 1e3:,.2f} | {row['after_s'] * 1e3:,.2f} | "
                     f"{row['after_s'] / row['before_s']:.2f} | " +
                     " | ".join(f"{v:.2f}" if v is not None else "–" for v in extra) + f" | {row.get('repeats', '–')} |")
    if r.get("note"):
        lines += ["", r["note"]]
    if r.get("equivalence"):
        lines += ["", "Equivalence (same weights and inputs, before vs after): " + "; ".join(
            f"{k}: {v}" for k, v in r["equivalence"].items()) + "."]
    return lines + [""]


def headlines(results_dir: Path) -> list[str]:
    """The numbers docs/design.md §10 asks for, in a few bullets (from whichever result files exist)."""
    out = []

    def load(name: str) -> dict | None:
        path = results_dir / name
        return json.loads(path.read_text()) if path.exists() else None

    if enc := load("encoder.json"):
        def cpu(x: dict, key: str) -> str:
            v = x.get("cpu_time_ratios", {}).get(key)
            return f" (CPU time {v:.3f})" if v is not None else ""

        out.append("- Encoder forward, ours / timm (target ≤ 1.05): " + ", ".join(
            f"{n} {x['ratios']['ours_over_timm']:.3f}{cpu(x, 'ours_over_timm')}" for n, x in enc["results"].items()) +
            "; ours / HF ViTModel: " + ", ".join(f"{n} {x['ratios']['ours_over_hf']:.3f}"
                                                 for n, x in enc["results"].items()) +
            " (without registers, i.e. the same tokens as HF: " + ", ".join(
                f"{n} {x['ratios']['ours_noreg_over_hf']:.3f}" for n, x in enc["results"].items()
                if "ours_noreg_over_hf" in x["ratios"]) + ").")
    if pre := load("pretrain_step.json"):
        for n, x in pre["results"].items():
            t = x["timings"]
            out.append(f"- Pretraining step {n}, batch {x['batch_size']}: " + ", ".join(
                f"{k} {v['median_s']:.3f} s ({v['images_per_s']:.1f} img/s)" for k, v in t.items()) + "; " + ", ".join(
                f"{k.replace('_over_', ' / ')} {v:.2f}" for k, v in x["ratios"].items()) + ".")
    if bd := load("breakdown.json"):
        for n, x in bd["results"].items():
            out.append(f"- Step breakdown {n}: teacher {_pct(x['teacher_share'])}, target building + loss "
                       f"{_pct(x['targets_plus_loss_share'])} (≤ 3 %), EMA {_pct(x['ema_share'])} (≤ 1 %).")
    if mk := load("masking.json"):
        out.append("- Mask generation, 256 × 14×14 on one thread (≤ 5 ms): " + ", ".join(
            f"{m} {g['median_ms']:.2f} ms" for m, g in mk["generate"].items()) + ".")
    if inp := load("input.json"):
        pre, g = inp["pretrain_in_process"], inp["gpu_demand"]
        after, was = pre["after"]["end_to_end"], pre["before"]["end_to_end"]
        out.append(f"- Input pipeline, JPEG → 224 px masked batch, one thread: {after['images_per_s']:.0f} images/s, "
                   f"{after['images_per_cpu_s']:.0f} per CPU-second (before issue 16: {was['images_per_s']:.0f} / "
                   f"{was['images_per_cpu_s']:.0f}; time ratio {pre['after_over_before_time']:.2f}); a ViT-B/16 GPU "
                   f"step (≈ {g['gpu_images_per_s']:,.0f} images/s) needs {g['workers_needed']} DataLoader workers.")
    return (["## Headlines", ""] + out + [""]) if out else []


def write_summary(results_dir: str | Path = RESULTS_DIR) -> Path:
    """Build `SUMMARY.md` from whichever result files exist in `results_dir`."""
    results_dir = Path(results_dir)
    lines = ["# Benchmark summary", "",
             "Generated by `bench/run_cpu.py` from the JSON files in this folder (raw per-repeat times are there). "
             "CPU timings on a shared, noisy machine: compare the ratios (contenders alternated in one run), not "
             "absolute times across runs. No GPU was available for these runs: `bench/gpu.py` is ready for one "
             "(see `bench/README.md`).", ""]
    lines += headlines(results_dir)
    sections = [("encoder.json", summarize_encoder), ("pretrain_step.json", summarize_pretrain),
                ("breakdown.json", summarize_breakdown), ("masking.json", summarize_masking),
                ("input.json", summarize_input), ("ijepa_official.json", summarize_ijepa_official),
                ("library_ab.json", summarize_library_ab)]
    for name, fn in sections:
        path = results_dir / name
        if path.exists():
            lines += fn(json.loads(path.read_text()))
    gpu = results_dir / "gpu.json"
    if gpu.exists():
        g = json.loads(gpu.read_text())
        e = g["train"]["eager"]
        lines += ["## GPU", "", f"Machine: {_machine_line(g['machine'])}, {g['machine'].get('gpu')}.", "",
                  f"ViT-B/16 bf16 step, batch {e['batch_size']}: {e['images_per_s']:.0f} images/s, MFU "
                  f"{e['mfu'] * 100:.1f} % ({e['model_gflops_per_image']['total']:.1f} GFLOP/image), peak memory "
                  f"{e['peak_memory_gib']:.1f} GiB.", ""]
    out = results_dir / "SUMMARY.md"
    out.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, see above)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and no ViT-B (a smoke run, ~3 minutes)")
    p.add_argument("--out-dir", default=str(RESULTS_DIR))
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--ijepa-repo", default=None, help="extracted copy of facebookresearch/ijepa: runs the "
                   "ijepa_official part (skipped without it)")
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir)
    if not args.summary_only:
        set_threads(args.threads)
        print(f"machine: {_machine_line(machine_info())}", flush=True)
        log = {}
        for part in args.only:
            t0, before = time.perf_counter(), load_average()
            print(f"\n=== {part} ===", flush=True)
            if part == "ijepa_official" and not args.ijepa_repo:  # the official code is never a dependency
                log[part] = {"skipped": "no --ijepa-repo given"}
                print("=== ijepa_official: skipped (no --ijepa-repo given)", flush=True)
                continue
            if part not in ONE_THREAD_PARTS:
                set_threads(args.threads)
            run_part(part, out_dir, args.quick, args.ijepa_repo)
            log[part] = {"seconds": round(time.perf_counter() - t0, 1), "load_before": before,
                         "load_after": load_average()}
            print(f"=== {part}: {log[part]['seconds']} s, load average {before} → {log[part]['load_after']}",
                  flush=True)
        log_path = out_dir / "run_cpu_log.json"  # parts run earlier (e.g. with --only) keep their entries
        previous = json.loads(log_path.read_text()).get("parts", {}) if log_path.exists() else {}
        write_json({"threads": args.threads, "parts": {**previous, **log}, "machine": machine_info()}, log_path)
    write_summary(out_dir)


if __name__ == "__main__":
    main()
