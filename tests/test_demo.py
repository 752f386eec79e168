"""The main job (`make demo`) at a tiny budget, and every README command that can run offline."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bootleg_hf.demo import DemoSettings, run_demo

REPO = Path(__file__).resolve().parents[1]


def test_demo_smoke(tmp_path):
    summary = run_demo(DemoSettings.smoke(out=tmp_path))
    for name in ("training.png", "masks.png", "probes.png", "segmentation.png", "summary.json", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert set(summary["scores"]) == {"bootleg", "random init"}
    assert set(summary["scores"]["bootleg"]) == {"patch top-1", "cls top-1", "xblk top-1", "seg knn mIoU",
                                                 "seg lin mIoU"}
    assert len(summary["examples"]) == 6 and all(e["predicted"] for e in summary["examples"])
    for kind in ("encoder", "classifier"):
        folder = Path(summary["hub_folders"][kind])
        config = json.loads((folder / "config.json").read_text())
        assert "AutoModel" in config["auto_map"] and (folder / "README.md").exists()
        assert not list(folder.glob("*.bin")) and list(folder.glob("*.safetensors"))
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 4
    assert "random init" in (tmp_path / "summary.md").read_text()


def readme_blocks(language: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def readme_commands() -> list[str]:
    """Shell commands of the README (continuations joined, comments dropped), except the two set-up commands."""
    commands = []
    for block in readme_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#") and not line.startswith("make "):
                commands.append(line)
    return commands


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """One folder for all README commands: they run in order, and later ones (--resume) use earlier outputs."""
    return tmp_path_factory.mktemp("runs")


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs(command, runs_dir):
    """Each README command runs as written, with `runs/` redirected to a temporary folder."""
    command = command.replace("runs/", f"{runs_dir}/")
    bin_dir = Path(sys.executable).parent  # python, torchrun and the console commands
    command = command.replace(".venv/bin/", f"{bin_dir}/")
    command = command.replace(f"{bin_dir}/torchrun", f"{sys.executable} -m torch.distributed.run --standalone")
    result = subprocess.run(shlex.split(command), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("index", range(len(readme_blocks("python"))))
def test_readme_python_snippet_runs(index, runs_dir):
    """Each README Python snippet runs (after the shell commands, whose outputs some snippets load)."""
    code = readme_blocks("python")[index].replace('"runs/', f'"{runs_dir}/')
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{code}\n{result.stderr[-3000:]}"
