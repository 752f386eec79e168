"""The main job (`make demo`) at a tiny budget (the README's commands: tests/test_readme.py)."""

import json
from pathlib import Path


from bootleg_hf.demo import DemoSettings, run_demo

REPO = Path(__file__).resolve().parents[1]


def test_demo_smoke(tmp_path):
    summary = run_demo(DemoSettings.smoke(out=tmp_path))
    for name in ("training.png", "masks.png", "probes.png", "segmentation.png", "summary.json", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert set(summary["scores"]) == {"bootleg", "random init", "raw pixels"}
    assert set(summary["scores"]["bootleg"]) == {"patch top-1", "cls top-1", "xblk top-1", "knn top-1",
                                                 "linear top-1", "seg knn mIoU", "seg lin mIoU"}
    assert set(summary["scores"]["random init"]) == set(summary["scores"]["bootleg"])
    assert set(summary["scores"]["raw pixels"]) == {"knn top-1", "linear top-1"}  # the reference line
    assert len(summary["examples"]) == 6 and all(e["predicted"] for e in summary["examples"])
    for kind in ("encoder", "classifier"):
        folder = Path(summary["hub_folders"][kind])
        config = json.loads((folder / "config.json").read_text())
        assert "AutoModel" in config["auto_map"] and (folder / "README.md").exists()
        assert not list(folder.glob("*.bin")) and list(folder.glob("*.safetensors"))
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 4
    text = (tmp_path / "summary.md").read_text()
    assert "| probe | Bootleg | random init | raw pixels | Bootleg − random init |" in text
    pixels = summary["scores"]["raw pixels"]["linear top-1"]
    assert any(line.startswith("| linear top-1 |") and f"| {pixels:.2f} |" in line for line in text.splitlines())
    assert "quick protocol (epochs 1 instead of 10" in text  # the probes' budget is labelled
