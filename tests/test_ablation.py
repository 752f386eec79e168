"""The objective ablation (bootleg_hf.evaluation.ablation): objective table, a tiny two-objective × two-seed
ablation (report structure, per-run configs, same initial encoder per seed, mean ± std) and run-level resume."""

import json
import statistics

import pytest
from conftest import needs_fmnist

import bootleg_hf
from bootleg_hf.configuration_bootleg import default_targets
from bootleg_hf.evaluation import ablation
from bootleg_hf.evaluation.ablation import AblationSettings, fmt, run_ablation
from bootleg_hf.evaluation.classification import quick_metric_results

# A 2-block, width-32 encoder on 16 px images (4×4 grid, so a smaller minimum context), a run takes about a second;
# a fast EMA, so that the teacher visibly moves away from its initialisation in the 2 steps of a run.
TINY = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
        "model.predictor_hidden_size=16", "model.predictor_num_hidden_layers=1",
        "model.predictor_num_attention_heads=2", "data.image_size=16", "model.mask_min_context=4",
        "model.ema_start=0.5", "model.ema_end=0.5"]


pytestmark = pytest.mark.usefixtures("single_thread")


def test_objectives_are_depth_aware_and_distinct():
    assert default_targets(6) == "1:2:6"
    assert default_targets(12) == "1:4:12"
    assert default_targets(24) == "1:4:24"
    assert ablation.objective_settings("bootleg", 6) == {"targets": "1:2:6", "target_merge": "concat",
                                                         "mask_mode": "bootleg"}
    assert ablation.objective_settings("last", 6)["targets"] == "6"
    assert ablation.objective_settings("ijepa", 6) == {"targets": "final", "target_merge": "concat",
                                                       "mask_mode": "ijepa"}
    assert ablation.objective_settings("average", 6) == {"targets": "1:2:6", "target_merge": "average",
                                                         "mask_mode": "bootleg"}
    assert ablation.objective_settings("pixels", 6)["targets"] == "pixels"
    assert ablation.objective_settings("random-mask", 6)["mask_mode"] == "random"
    assert ablation.objective_settings("deep", 12)["targets"] == "9-12"  # the paper's "blocks 9-12" row
    assert ablation.objective_settings("middle", 12)["targets"] == "5-8"
    settings = [tuple(ablation.objective_settings(n, 6).values()) for n in ablation.ALL_OBJECTIVES]
    assert len(set(settings)) == len(settings)
    for depth in (2, 3, 6, 12, 24):  # every objective is a valid config at every depth
        for name in ablation.ALL_OBJECTIVES:
            s = ablation.objective_settings(name, depth)
            bootleg_hf.BootlegConfig(num_hidden_layers=depth, **s).target_spec
    with pytest.raises(ValueError, match="unknown objective"):
        ablation.objective_settings("dino", 6)


@needs_fmnist
def test_tiny_ablation_report_and_resume(tmp_path, monkeypatch):
    kwargs = dict(preset="vit-micro", objectives=["bootleg", "ijepa"], seeds=[0, 1], steps=2, batch_size=8,
                  probes=["patch", "xblk"], probe_epochs=1, probe_train=32, probe_test=16, probe_lrs=[1e-3],
                  probe_wds=[0.05], include_random_init=True, pretrain_limit=64, overrides=TINY, analyze_images=8)
    reference_calls = []  # the reference lines' features and fits: once per seed, not once per run

    def count(encoders, *args, **kwargs):
        reference_calls.append(list(encoders))
        return quick_metric_results(encoders, *args, **kwargs)

    monkeypatch.setattr(ablation, "quick_metric_results", count)
    data = run_ablation(AblationSettings(**kwargs), out=tmp_path / "abl")
    assert reference_calls == [["random init"], ["random init"]]
    names = ["bootleg-s0", "ijepa-s0", "bootleg-s1", "ijepa-s1", "random-init-s0", "random-init-s1"]
    assert data["ran"] == names and data["skipped"] == []
    assert data["depth"] == 2

    # per run: the objective's config is what was actually trained (the exported encoder's config says so)
    runs = {(r["objective"], r["seed"]): r for r in data["runs"]}
    for name in ("bootleg", "ijepa"):
        expected = ablation.objective_settings(name, 2)
        for seed in (0, 1):
            run = runs[(name, seed)]
            assert {k: run["settings"][k] for k in expected} == expected
            saved = json.loads((tmp_path / "abl" / "runs" / f"{name}-s{seed}" / "encoder" / "config.json").read_text())
            assert {k: saved[k] for k in expected} == expected
            assert run["pretrain"]["steps"] == 2 and run["pretrain"]["loss_last"] is not None
    assert runs[("bootleg", 0)]["target_spec"] == "1.out,2.out" and runs[("ijepa", 0)]["target_spec"] == "final"
    # one seed = one initial encoder for every objective (and the random-init baseline is that encoder)
    for seed in (0, 1):
        assert len({runs[(n, seed)]["pretrain"]["init_sha256"] for n in ("bootleg", "ijepa", "random-init")}) == 1
    assert runs[("bootleg", 0)]["pretrain"]["init_sha256"] != runs[("bootleg", 1)]["pretrain"]["init_sha256"]

    # mean ± sample std over the seeds
    for name in ("bootleg", "ijepa", "random-init"):
        for kind in ("patch", "xblk"):
            stat = data["summary"][name]["probes"][kind]
            values = [runs[(name, s)]["probes"][kind]["top1"] for s in (0, 1)]
            assert stat["n"] == 2 and stat["values"] == values
            assert stat["mean"] == pytest.approx(statistics.fmean(values))
            assert stat["std"] == pytest.approx(statistics.stdev(values))
    assert set(data["paired_vs_bootleg"]) == {"ijepa", "random-init", "raw pixels"}

    # quick metrics: every run has them; the random-init run's are its seed's reference line, which was computed on
    # that seed's initial encoder; the raw-pixel line is summarised over the seeds and paired with Bootleg
    for seed in (0, 1):
        saved = json.loads((tmp_path / "abl" / "references" / f"s{seed}.json").read_text())
        assert saved["init_sha256"] == runs[("bootleg", seed)]["pretrain"]["init_sha256"]
        assert runs[("random-init", seed)]["probes"]["knn"] == saved["scores"]["random init"]["knn"]
        assert runs[("random-init", seed)]["probes"]["linear"] == saved["scores"]["random init"]["linear"]
        for name in ("bootleg", "ijepa"):
            assert 0 <= runs[(name, seed)]["probes"]["knn"]["top1"] <= 100
            assert runs[(name, seed)]["probes"]["linear"]["converged"]
    pixels = [json.loads((tmp_path / "abl" / "references" / f"s{s}.json").read_text())["scores"]["raw pixels"]
              for s in (0, 1)]
    assert data["references"]["raw pixels"]["probes"]["linear"]["values"] == [p["linear"]["top1"] for p in pixels]
    assert list(data["references"]) == ["raw pixels"]  # the random-init run stands for the random-init line
    assert data["paired_vs_bootleg"]["raw pixels"]["knn"]["values"] == [
        p["knn"]["top1"] - runs[("bootleg", s)]["probes"]["knn"]["top1"] for s, p in zip((0, 1), pixels)]
    assert set(data["paired_vs_bootleg"]["raw pixels"]) == {"knn", "linear"}

    report = tmp_path / "abl" / "ablation"
    saved = json.loads(report.with_suffix(".json").read_text())
    assert list(saved["summary"]) == ["bootleg", "ijepa", "random-init"]
    md = report.with_suffix(".md").read_text()
    assert ("| objective | targets | merge | masking | patch top-1 % | xblk top-1 % | knn top-1 % | linear top-1 % |"
            in md)
    assert "quick protocol (epochs 1 instead of 10, batch size 256" not in md  # the ablation's batch is quick's
    assert "quick protocol (epochs 1 instead of 10, warmup epochs 0 instead of 5" in md
    for label in ("Bootleg (spaced blocks, concat)", "I-JEPA (final LN, I-JEPA masks)", "random init"):
        row = next(line for line in md.splitlines() if line.startswith(f"| {label}"))
        assert all("±" in cell for cell in row.split(" | ")[4:8])  # patch, xblk, knn, linear
    row = next(line for line in md.splitlines() if line.startswith("| raw pixels (reference) |"))
    assert row.split(" | ")[4:8] == ["–", "–", *(fmt(data["references"]["raw pixels"]["probes"][k])
                                                  for k in ("knn", "linear"))]
    assert report.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    stds = runs[("bootleg", 0)]["pretrain"]["target_std_last"]  # the collapse monitor, per target layer
    assert set(stds) == {"1.out", "2.out"}
    row = next(line for line in md.splitlines() if line.startswith("| Bootleg (spaced blocks, concat) | 0 |"))
    assert row.endswith(" | " + ", ".join(f"{k} {v:.2f}" for k, v in stds.items()) + " |")

    # representations: each run's numbers are read off its own analysis (the random-init baseline is its seed's
    # initial encoder, which pretraining moves), CKA in [0, 1], and the report has the seed-mean table
    for (name, seed), run in runs.items():
        analysis = json.loads((tmp_path / "abl" / "runs" / f"{name}-s{seed}" / "analysis" / "analysis.json")
                              .read_text())
        assert analysis["num_images"] == 8 and analysis["remove_position_mean"]
        rep = run["representation"]
        layers, cka = analysis["layers"], analysis["cka"]
        assert rep["cka_embed_last"] == cka[layers.index("embed")][layers.index("2.out")]
        assert rep["cka_consecutive"] == cka[layers.index("1.out")][layers.index("2.out")]  # the only pair at depth 2
        assert rep["spatial_d1_last"] == analysis["spatial_autocorrelation"]["layers"]["2.out"][1]
        assert 0 <= rep["cka_embed_last"] <= 1 + 1e-6 and 0 <= rep["cka_consecutive"] <= 1 + 1e-6
        assert -1 <= rep["spatial_d1_last"] <= 1
    for seed in (0, 1):
        assert runs[("bootleg", seed)]["representation"] != runs[("random-init", seed)]["representation"]
    stat = data["summary"]["ijepa"]["representation"]["cka_embed_last"]
    assert stat["values"] == [runs[("ijepa", s)]["representation"]["cka_embed_last"] for s in (0, 1)]
    assert "| objective | CKA(tokenizer output, last block) |" in md

    # resume: finished runs are skipped; a run without its result is redone, reusing its finished pretraining
    (tmp_path / "abl" / "runs" / "ijepa-s1" / "result.json").unlink()
    again = run_ablation(AblationSettings(**kwargs), out=tmp_path / "abl")
    assert again["ran"] == ["ijepa-s1"] and len(again["skipped"]) == 5
    redone = next(r for r in again["runs"] if r["objective"] == "ijepa" and r["seed"] == 1)
    assert redone["pretrain"] == runs[("ijepa", 1)]["pretrain"]  # not retrained
    assert again["summary"]["bootleg"]["probes"] == data["summary"]["bootleg"]["probes"]
    assert again["summary"]["bootleg"]["representation"] == data["summary"]["bootleg"]["representation"]
    assert again["references"] == data["references"] and len(reference_calls) == 2  # reused, not recomputed

    # other settings in the same folder are refused instead of silently mixed
    with pytest.raises(ValueError, match="other settings"):
        run_ablation(AblationSettings(**{**kwargs, "steps": 3}), out=tmp_path / "abl")


@needs_fmnist
def test_ablation_segmentation_probes(tmp_path):
    """Mosaic segmentation as report columns: every run scored with the same kNN / Lin protocol on its seed's mosaics,
    the random-init run taking its seed's reference, raw pixels as the kNN reference line, mIoU in the table."""
    kwargs = dict(preset="vit-micro", objectives=["bootleg"], seeds=[0], steps=2, batch_size=8, probes=["patch"],
                  probe_epochs=1, probe_train=32, probe_test=16, probe_lrs=[1e-3], probe_wds=[0.05],
                  include_random_init=True, pretrain_limit=64, overrides=TINY, seg_probes=["knn", "lin"],
                  seg_train=12, seg_test=6, seg_epochs=1)
    data = run_ablation(AblationSettings(**kwargs), out=tmp_path / "abl")
    assert data["metrics"] == ["patch", "knn", "linear", "seg-knn", "seg-lin"]
    runs = {r["objective"]: r for r in data["runs"]}
    for name in ("bootleg", "random-init"):
        for k in ("seg-knn", "seg-lin"):
            assert 0 <= runs[name]["probes"][k]["miou"] <= 100
    assert runs["bootleg"]["settings"]["seg_protocol"]["name"] == "quick"
    assert runs["bootleg"]["settings"]["seg_protocol"]["epochs"] == 1

    # the bootleg run's scores are those of run_segmentation on its exported teacher with the seed's mosaics
    from bootleg_hf.evaluation.segmentation import run_segmentation
    s = AblationSettings(**kwargs)
    again = run_segmentation(str(tmp_path / "abl" / "runs" / "bootleg-s0" / "encoder"),
                             ablation._Data(s).mosaics(0), s.segmentation_settings(0))
    assert runs["bootleg"]["probes"]["seg-knn"]["miou"] == pytest.approx(again["probes"]["knn"]["best"]["miou"])
    assert runs["bootleg"]["probes"]["seg-lin"]["miou"] == pytest.approx(again["probes"]["lin"]["best"]["miou"],
                                                                         abs=1e-4)
    assert again["num_train"] == 12 and again["num_test"] == 6

    saved = json.loads((tmp_path / "abl" / "references" / "s0.json").read_text())
    assert runs["random-init"]["probes"]["seg-knn"] == saved["scores"]["random init"]["seg-knn"]
    pixels = saved["scores"]["raw pixels"]
    assert set(pixels) == {"knn", "linear", "seg-knn"}  # no trained head on raw pixels
    assert data["references"]["raw pixels"]["probes"]["seg-knn"]["values"] == [pixels["seg-knn"]["miou"]]
    assert data["paired_vs_bootleg"]["raw pixels"]["seg-knn"]["values"] == [
        pytest.approx(pixels["seg-knn"]["miou"] - runs["bootleg"]["probes"]["seg-knn"]["miou"])]

    md = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| knn top-1 % | linear top-1 % | seg-knn mIoU % | seg-lin mIoU % |" in md
    assert "Segmentation probes knn, lin (columns seg-*): quick protocol" in md
    row = next(line for line in md.splitlines() if line.startswith("| raw pixels (reference) |"))
    cells = row.split(" | ")
    assert cells[7] == fmt(data["references"]["raw pixels"]["probes"]["seg-knn"]) and cells[8] == "–"

    # segmentation settings are part of a run's signature: other sizes in the same folder are refused
    with pytest.raises(ValueError, match="other settings"):
        run_ablation(AblationSettings(**{**kwargs, "seg_test": 7}), out=tmp_path / "abl")
    with pytest.raises(ValueError, match="segmentation probes"):
        AblationSettings(seg_probes=["knnn"])
