"""A wheel built from the repository works on its own, as a `pip install bootleg-hf` user meets it.

The wheel is installed into a fresh virtual environment whose only other packages are this environment's dependencies
(torch, transformers, …; added through a `.pth` line, so the editable install of the repository stays inactive) and
run outside the repository. There its console commands build a model folder's Hub folder with the packaged
model-card template and recipe, publish it to the fake Hub, and a process without bootleg-hf loads the repo back with
`trust_remote_code=True` and gets the same outputs.
"""

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file, save_file

from bootleg_hf import BootlegModel
from bootleg_hf.checkpoints import save_model_folder

try:  # tests/ is importable under pytest's default "prepend" import mode; tests.fake_hub if tests/ is a package
    from fake_hub import fake_hub, hub_env  # noqa: F401  (fake_hub is a fixture)
except ImportError:  # pragma: no cover
    from tests.fake_hub import fake_hub, hub_env  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> Path:
    """A fresh venv with the wheel of this repository installed (no dependencies of its own, see the module doc)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # what an sdist holds; building there keeps build/ out of the repository
    shutil.copytree(ROOT / "bootleg_hf", source / "bootleg_hf", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
         "-q", "-w", tmp / "dist", source], cwd=tmp)
    wheel = next((tmp / "dist").glob("bootleg_hf-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "bootleg_hf/model_cards/bootleg.md" in names and "bootleg_hf/recipes/vit-micro.yaml" in names
    assert "bootleg_hf/recipes/finetune/vit-micro-full.yaml" in names
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    purelib = next(venv.glob("lib/python*/site-packages"))
    (purelib / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", "-q", wheel], cwd=tmp)
    return venv


def test_wheel_publishes_and_the_repo_loads_with_remote_code(wheel_env, fake_hub, tmp_path):
    python, bin_dir = wheel_env / "bin" / "python", wheel_env / "bin"
    env = {k: v for k, v in hub_env(fake_hub.url, tmp_path / "home").items() if k != "PYTHONPATH"}
    where = run([python, "-c", "import bootleg_hf; print(bootleg_hf.__file__)"], cwd=tmp_path, env=env).stdout
    assert Path(where.strip()).is_relative_to(wheel_env), where  # the wheel's copy, not the repository's

    torch.manual_seed(0)
    model = BootlegModel(tiny_config()).eval()
    save_model_folder(model, tmp_path / "encoder")
    publish = run([bin_dir / "bootleg-publish", tmp_path / "encoder", "--repo-id", "user/from-wheel", "--recipe",
                   "vit-micro", "--out", tmp_path / "hub"], cwd=tmp_path, env=env)
    assert "published user/from-wheel" in publish.stdout
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "library_name: transformers" in card and "preset: vit-micro" in card  # template and recipe from the wheel
    assert sorted(fake_hub.repos["user/from-wheel"].files()) == sorted(
        [".gitattributes", *(p.name for p in (tmp_path / "hub").iterdir())])

    # a process without bootleg-hf: only the dependencies, loaded with -S so no .pth (editable install) is processed
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    save_file({"pixels": pixels}, tmp_path / "in.safetensors")
    code = ("import sys, torch\n"
            "from safetensors.torch import load_file, save_file\n"
            "from transformers import AutoModel\n"
            "try:\n    import bootleg_hf\nexcept ImportError:\n    pass\n"
            "else:\n    raise SystemExit('bootleg_hf is importable: ' + bootleg_hf.__file__)\n"
            "model = AutoModel.from_pretrained('user/from-wheel', trust_remote_code=True).eval()\n"
            "with torch.no_grad():\n"
            "    out = model(load_file(sys.argv[1])['pixels']).last_hidden_state.contiguous()\n"
            "save_file({'out': out}, sys.argv[2])\n")
    run([sys.executable, "-S", "-c", code, tmp_path / "in.safetensors", tmp_path / "out.safetensors"], cwd=tmp_path,
        env={**env, "PYTHONPATH": os.pathsep.join(site.getsitepackages()), "HF_HOME": str(tmp_path / "home2"),
             "HF_HUB_CACHE": str(tmp_path / "home2" / "hub"), "HF_MODULES_CACHE": str(tmp_path / "home2" / "modules")})
    with torch.no_grad():
        want = model(pixels).last_hidden_state
    torch.testing.assert_close(load_file(tmp_path / "out.safetensors")["out"], want, atol=1e-6, rtol=0)
    assert json.loads((tmp_path / "hub" / "config.json").read_text())["auto_map"]["AutoModel"] == \
        "modeling_bootleg.BootlegModel"
