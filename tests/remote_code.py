"""Loading published folders the way a user without bootleg-hf does: `outputs_without_package` runs
`AutoX.from_pretrained(source, trust_remote_code=True)` for each job in a child Python that cannot import bootleg_hf
and returns what each model computes on the given pixels."""

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHILD = """
import json, sys
import torch, transformers
from safetensors.torch import load_file, save_file
try:
    import bootleg_hf
except ImportError:
    pass
else:
    raise SystemExit(f"bootleg_hf is importable in the child: {bootleg_hf.__file__}")
jobs = json.loads(sys.argv[1])
x = load_file(sys.argv[2])["pixels"]
out = {}
with torch.no_grad():
    for name, (auto, source) in jobs.items():
        model = getattr(transformers, auto).from_pretrained(source, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        if auto == "AutoModelForPreTraining":
            result = model.teacher(x).last_hidden_state
        else:
            result = model(x)
            result = (torch.cat([f.flatten() for f in result.feature_maps]) if hasattr(result, "feature_maps")
                      else result.logits if hasattr(result, "logits") else result.last_hidden_state)
        out[name] = result.contiguous()
save_file(out, sys.argv[3])
"""


def outputs_without_package(jobs: dict[str, tuple[str, str]], pixels: torch.Tensor, tmp_path: Path,
                            env: dict | None = None) -> dict[str, torch.Tensor]:
    """`{name: (Auto class name, folder or Hub id)}` → `{name: output}` (features, flattened feature maps, logits, or a
    pretraining model's teacher tokens), computed in a child where bootleg_hf cannot be imported: `-S` takes the
    site-packages from PYTHONPATH without the editable install's .pth file, and the working directory is not the
    repository. `env` defaults to this process's (pass `fake_hub.hub_env(...)` to reach the fake Hub)."""
    save_file({"pixels": pixels}, tmp_path / "in.safetensors")
    env = {**(env or os.environ), "PYTHONPATH": os.pathsep.join(site.getsitepackages()), "OMP_NUM_THREADS": "1",
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run([sys.executable, "-S", "-c", CHILD, json.dumps(jobs), str(tmp_path / "in.safetensors"),
                          str(tmp_path / "out.safetensors")], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return load_file(tmp_path / "out.safetensors")
