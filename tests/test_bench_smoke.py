"""The benchmarks still run: every `bench/` module's core function on a tiny config, one repeat, JSON checked.

Benchmarks themselves are never part of the test run (`make bench` runs them); this only guards against bit rot.
`bench` is imported as a package from the repository root (pytest's `pythonpath` setting in pyproject.toml).
"""

import json
from pathlib import Path

import pytest
import torch

from bench import bench_breakdown, bench_encoder, bench_input, bench_masking, bench_pretrain_step, common, gpu, run_cpu
from bootleg_hf.masking import MODES

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=48, patch_size=8,
            predictor_hidden_size=16, predictor_num_hidden_layers=1, predictor_num_attention_heads=2,
            targets="1:1:2")
MACHINE_KEYS = {"platform", "cpu_model", "cpu_count", "torch", "transformers", "timm", "numpy", "torch_threads", "date"}
STAT_KEYS = {"median_s", "p10_s", "p90_s", "min_s", "repeats", "times_s"}


def check_machine(result: dict) -> None:
    assert MACHINE_KEYS <= set(result["machine"])


def roundtrip(result: dict, path: Path) -> dict:
    """Results must be JSON-serialisable as written by `write_json`."""
    common.write_json(result, path)
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(autouse=True)
def keep_thread_count():
    """`bench_masking` pins torch to one thread (its budget is per core): do not leak that into later tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_time_alternating_alternates_and_reports_raw_times():
    calls = []
    out = common.time_alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3,
                                  warmup=1)
    assert calls == ["a", "b"] * 4
    assert STAT_KEYS <= set(out["a"]) and len(out["a"]["times_s"]) == 3


def test_encoder_bench(results):
    out = roundtrip(bench_encoder.run(["vit-micro"], {"vit-micro": 2}, repeats=1, warmup=0, config_overrides=TINY),
                    results / "encoder.json")
    check_machine(out)
    r = out["results"]["vit-micro"]
    assert set(r["timings"]) == {"bootleg", "timm", "hf_vit", "bootleg_noreg", "bootleg_bf16"}
    assert STAT_KEYS | {"images_per_s"} <= set(r["timings"]["bootleg"])
    assert set(r["ratios"]) == {"ours_over_timm", "ours_over_hf", "ours_noreg_over_hf", "ours_bf16_over_fp32"}
    assert r["timm_parity_max_abs_diff"] < 1e-5  # timm really is the same network


def test_pretrain_step_bench(results):
    out = roundtrip(bench_pretrain_step.run(["vit-micro"], batch_size=2, repeats=1, warmup=0, config_overrides=TINY),
                    results / "pretrain_step.json")
    check_machine(out)
    r = out["results"]["vit-micro"]
    assert set(r["timings"]) == {"bootleg", "bootleg_bf16", "mae", "ijepa", "ijepa_bf16"}
    assert set(r["ratios"]) == {"bootleg_over_mae", "bootleg_over_ijepa", "bootleg_bf16_over_fp32",
                                "ijepa_bf16_over_fp32"}
    assert r["contenders"]["ijepa"]["targets"] == "final" and r["contenders"]["ijepa"]["mask_mode"] == "ijepa"
    assert r["contenders"]["mae"]["decoder"]["hidden_size"] == TINY["predictor_hidden_size"]


def test_breakdown_bench(results):
    out = roundtrip(bench_breakdown.run(["vit-micro"], batch_size=2, repeats=1, warmup=0, config_overrides=TINY,
                                        ema_repeats=1, loss_repeats=1, loss_shapes={"tiny": [2, 4, 3, 64]}),
                    results / "breakdown.json")
    check_machine(out)
    r = out["results"]["vit-micro"]
    assert list(r["shares"]) == list(bench_breakdown.PHASES)
    assert abs(sum(r["shares"].values()) - 1) < 1e-6
    # every phase is found among the labels the model's forward and the training step carry
    assert all(r["phase_medians_s"][p] > 0 for p in bench_breakdown.PHASES), r["phase_medians_s"]
    assert {"targets_plus_loss_share", "ema_share", "teacher_share", "requirements", "step", "profiled_step"} <= set(r)
    assert set(out["ema"]["vit-micro"]["timings"]) == {"foreach_lerp", "per_parameter_loop", "foreach_mul_add"}
    assert set(out["loss"]["tiny"]["timings"]) == {"mse_loss", "mse_no_forward"}


def test_masking_bench(results):
    out = bench_masking.main(["--out", str(results / "masking.json"), "--batch-size", "8", "--repeats", "20",
                              "--warmup", "1", "--workers", "0", "--loader-batches", "2", "--image-size", "32"])
    check_machine(out)
    assert set(out["generate"]) == set(MODES)  # every MaskGenerator mode
    assert out["loading"]["bootleg_collator"]["images_per_s"] > 0


def test_input_bench(results):
    out = bench_input.main(["--out", str(results / "input.json"), "--images", "8", "--long-side", "48", "64",
                            "--image-size", "32", "--batch-size", "4", "--repeats", "1", "--warmup", "0",
                            "--workers", "1", "--loader-samples", "16", "--loader-rounds", "1"])
    check_machine(out)
    pre = out["pretrain_in_process"]
    for name in ("before", "after"):
        assert list(pre[name]["stage_shares"]) == list(bench_input.STAGES)
        assert abs(sum(pre[name]["stage_shares"].values()) - 1) < 1e-6
        assert pre[name]["end_to_end"]["images_per_s"] > 0
    assert out["pretrain_loader"]["after_1_workers"]["images_per_worker_cpu_s"] > 0
    assert {"train_before", "train_after", "eval_before", "eval_after"} <= set(out["probe_in_process"])
    assert set(out["alternatives"]["decoders"]) >= {"pil", "pil_draft_half", "torchvision_decode_jpeg"}
    assert out["gpu_demand"]["workers_needed"] >= 1


def test_gpu_script_dry_run_on_cpu(tmp_path):
    out = gpu.main(["--device", "cpu", "--tiny", "--steps", "1", "--warmup", "1", "--batch-size", "2",
                    "--inference-batch", "2", "--out", str(tmp_path / "gpu.json")])
    assert json.loads((tmp_path / "gpu.json").read_text())["config"] == "tiny"
    e = out["train"]["eager"]
    assert e["images_per_s"] > 0 and 0 < e["mfu"] < 1
    assert set(e["model_gflops_per_image"]) == {"teacher", "student", "predictor", "total"}
    assert out["breakdown_eager"]["shares"] and out["inference"]["eager"]["bootleg"]["images_per_s"] > 0


def test_flop_counts_match_the_notes():
    from bootleg_hf import BootlegConfig

    # notes §5: ViT-S/16 and ViT-B/16 forward at 197 tokens = 9.20 and 35.13 GFLOPs
    assert gpu.encoder_flops(BootlegConfig.from_preset("vit-small"), 197) / 1e9 == pytest.approx(9.20, abs=0.01)
    assert gpu.encoder_flops(BootlegConfig.from_preset("vit-base"), 197) / 1e9 == pytest.approx(35.13, abs=0.01)
    f = gpu.step_flops_per_image(BootlegConfig.from_preset("vit-base"), 90, 32, 4)
    assert f["teacher"] / 1e9 == pytest.approx(35.9, abs=0.05)  # all 201 tokens
    assert f["total"] == pytest.approx(f["teacher"] + f["student"] + f["predictor"])


def test_summary_from_the_smoke_results(results):
    # runs last in this module: the files written by the tests above feed the summary
    path = run_cpu.write_summary(results)
    text = path.read_text()
    for title in ("Encoder forward", "Pretraining step", "Step breakdown", "Mask generation", "Input pipeline"):
        assert title in text


def test_ijepa_official_skips_cleanly_without_the_official_code(tmp_path):
    # the official I-JEPA code is never a dependency: without a path holding it the script (and its run_cpu part)
    # says why, writes a JSON saying `skipped` and returns normally (exit status 0)
    from bench import bench_ijepa_official

    for extra in ([], ["--ijepa-repo", str(tmp_path)]):
        out = bench_ijepa_official.main(["--out", str(tmp_path / "ijepa_official.json")] + extra)
        written = json.loads((tmp_path / "ijepa_official.json").read_text())
        assert written["skipped"] == out["skipped"] and "results" not in written
        check_machine(written)
    assert "does not hold the official I-JEPA code" in out["skipped"]
    run_cpu.main(["--only", "ijepa_official", "--out-dir", str(tmp_path)])
    log = json.loads((tmp_path / "run_cpu_log.json").read_text())
    assert log["parts"]["ijepa_official"] == {"skipped": "no --ijepa-repo given"}
    assert "Skipped: " in (tmp_path / "SUMMARY.md").read_text()


def test_compile_bench(results):
    from bench import bench_compile

    # the `eager` backend traces with dynamo but generates no code: the bench's paths in seconds
    out = roundtrip(bench_compile.run(["vit-micro"], batch_size=2, repeats=1, backend="eager", config_overrides=TINY),
                    results / "compile.json")
    check_machine(out)
    r = out["results"]["vit-micro"]
    assert set(r["timings"]) == {"step_eager", "step_compiled", "encoder_eager", "encoder_compiled"}
    assert set(r["ratios"]) == {"step_compiled_over_eager", "encoder_compiled_over_eager"}
    assert r["compile_first_call_s"]["step"] > 0 and r["backend"] == "eager"
