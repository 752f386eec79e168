"""Every README command and Python snippet runs as written (with `runs/` redirected to a temporary folder), and does
what the README says it does: the folders it writes hold what they should, snippets print the shapes the README
states. Tests run in any order: a command first runs the earlier commands whose `runs/…` output it reads (each
command runs once per session). Console commands run in-process (the console script is a one-line wrapper around
`bootleg_hf.cli.<tool>_main`); torchrun and the Python snippets, whose point is a fresh interpreter, run as processes.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
RUNS = re.compile(r"runs/[\w.-]+")  # a run folder named in a command (the part after it is a file inside)


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


@dataclass
class Step:
    """One README command or Python snippet: what it runs, the run folders it writes and the ones it reads."""

    kind: str  # "command" or "python"
    text: str
    writes: set[str] = field(default_factory=set)
    reads: set[str] = field(default_factory=set)


def readme_steps() -> list[Step]:
    """The README's shell commands (continuations joined, comments dropped; not the two `make` set-up commands), then
    its Python snippets, in README order."""
    steps = []
    for block in readme_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(line.split(" #", 1)[0].split())
            if line and not line.startswith("#") and not line.startswith("make "):
                writes = set(re.findall(r"--(?:out|output-dir) (runs/[\w.-]+)", line))
                steps.append(Step("command", line, writes, set(RUNS.findall(line)) - writes))
    written = {folder for step in steps for folder in step.writes}
    for code in readme_blocks("python"):  # a snippet reads the commands' folders and writes the others it names
        folders = set(RUNS.findall(code))
        steps.append(Step("python", code, writes=folders - written, reads=folders & written))
    # --resume continues the folder an earlier command wrote: it reads it too
    for step in steps:
        if "--resume" in step.text:
            step.reads |= step.writes
    return steps


STEPS = readme_steps()


def dependencies(index: int) -> list[int]:
    """The latest earlier step writing each run folder that step `index` reads."""
    deps = []
    for folder in STEPS[index].reads:
        writers = [i for i in range(index) if folder in STEPS[i].writes]
        if writers:
            deps.append(writers[-1])
    return sorted(deps)


@dataclass
class Outcome:
    returncode: int
    output: str


class ReadmeSession:
    """Runs README steps at most once each, in a shared temporary `runs/` folder, dependencies first."""

    def __init__(self, runs: Path):
        self.runs = runs
        self.done: dict[int, Outcome] = {}
        bin_dir = Path(sys.executable).parent
        self.bin_dir = bin_dir
        self.tools = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.value.startswith("bootleg_hf.")}

    def path(self, folder: str) -> Path:
        return self.runs / folder.removeprefix("runs/")

    def outcome(self, index: int) -> Outcome:
        if index not in self.done:
            for dep in dependencies(index):
                assert self.outcome(dep).returncode == 0, f"{STEPS[dep].text} failed: {self.done[dep].output[-3000:]}"
            self.done[index] = self._run(STEPS[index])
        return self.done[index]

    def _run(self, step: Step) -> Outcome:
        if step.kind == "python":
            code = step.text.replace('"runs/', f'"{self.runs}/')
            result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                    timeout=600)
            return Outcome(result.returncode, result.stdout + result.stderr)
        argv = shlex.split(step.text.replace("runs/", f"{self.runs}/"))
        tool = argv[0].removeprefix(".venv/bin/")
        if tool in self.tools:
            return self._in_process(self.tools[tool].load(), argv[1:])
        assert tool == "torchrun", f"unexpected README command {argv[0]}"  # the one that needs processes
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", *argv[1:]]
        result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
        return Outcome(result.returncode, result.stdout + result.stderr)

    @staticmethod
    def _in_process(main, argv: list[str]) -> Outcome:
        out = io.StringIO()
        threads = torch.get_num_threads()
        try:
            with contextlib.chdir(REPO), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            torch.set_num_threads(threads)
        return Outcome(code or 0, out.getvalue())


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> ReadmeSession:
    return ReadmeSession(tmp_path_factory.mktemp("runs"))


def command_id(step: Step) -> str:
    return step.text.split()[0].removeprefix(".venv/bin/") + " " + " ".join(sorted(step.writes))


# What each command's output folder holds when the command did its job (beyond a zero exit code).
EXPECTED_FILES = {
    "bootleg-convert-timm": ["config.json", "model.safetensors", "preprocessor_config.json"],
    "bootleg-pretrain": ["config.json", "model.safetensors", "encoder/model.safetensors",
                         "checkpoint-20/trainer_state.json"],
    "torchrun": ["config.json", "model.safetensors", "encoder/model.safetensors"],
    "bootleg-probe": ["probe_results.json", "classifier/config.json"],
    "bootleg-segment": ["segment_results.json", "heads/lin.safetensors", "segmenter/config.json"],
    "bootleg-export": ["config.json", "model.safetensors", "preprocessor_config.json"],
    "bootleg-publish": ["config.json", "model.safetensors", "README.md"],
    "bootleg-release": ["results.json", "release.json", "hub/encoder/README.md", "hub/classifier/README.md"],
    "bootleg-finetune": ["model/config.json", "model/model.safetensors", "model/preprocessor_config.json",
                         "finetune_results.json", "recipe.yaml"],
    "bootleg-analyze": [],
    "bootleg-masks": [],
}


def check_ladders(command: str, output: str) -> None:
    """`bootleg-ladders` prints one `bootleg-pretrain` command per Table 3 row, each on the README's data set
    (tests/test_editions.py checks what each row's recipe builds)."""
    from bootleg_hf.recipes import ladder_rows

    argv = shlex.split(command)
    dataset = argv[argv.index("--dataset") + 1]
    commands = [shlex.split(line) for line in output.splitlines() if line and not line.startswith("#")]
    assert len(commands) == sum(len(rows) for rows in ladder_rows().values()), output
    for argv in commands:
        assert argv[0] == "bootleg-pretrain" and argv[argv.index("--dataset") + 1] == dataset, argv


# Commands that write no folder: what their printed output must show.
PRINTS = {"bootleg-ladders": check_ladders}


@pytest.mark.parametrize("index", [i for i, s in enumerate(STEPS) if s.kind == "command"],
                         ids=lambda i: command_id(STEPS[i]))
def test_readme_command(index, session):
    """Each README command runs as written and writes what it should into its output folder."""
    step = STEPS[index]
    outcome = session.outcome(index)
    assert outcome.returncode == 0, f"{step.text}\n{outcome.output[-3000:]}"
    tool = step.text.split()[0].removeprefix(".venv/bin/")
    if tool in PRINTS:  # a command whose product is what it prints
        PRINTS[tool](step.text, outcome.output)
        return
    (folder,) = step.writes  # every other README command names its output folder
    out = session.path(folder)
    assert out.is_dir() and any(out.iterdir()), f"{step.text}: {out} is missing or empty"
    for name in EXPECTED_FILES[tool]:
        assert (out / name).is_file(), f"{step.text}: no {name} in {out}"
    if tool == "bootleg-pretrain":
        state = json.loads((out / "checkpoint-20" / "trainer_state.json").read_text())
        assert state["global_step"] == 20 and state["max_steps"] == 20
        # --resume of the finished run trains nothing more
        assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-20"]
    if tool == "bootleg-probe":
        results = json.loads((out / "probe_results.json").read_text())
        assert set(results["classification"]["probes"]) == {"patch", "cls", "xblk"}
        for probe in results["classification"]["probes"].values():
            assert 0 <= probe["best"]["top1"] <= 100
    if tool == "bootleg-finetune":  # the run trained what it was asked to and scored its test images
        results = json.loads((out / "finetune_results.json").read_text())
        (section,) = [results[k] for k in ("classification", "segmentation") if k in results]
        (best,) = [p["best"] for p in section["probes"].values()]
        assert best["steps"] == int(re.search(r"--max-steps (\d+)", step.text)[1])
        assert section["num_test"] == int(re.search(r"--eval-limit (\d+)", step.text)[1])
        for name in {"lowshot": ["low_shot_split.json"], "lora": ["adapter/adapter_model.safetensors"]}.get(
                json.loads((out / "model" / "config.json").read_text()).get("finetuning", {}).get("protocol"), []):
            assert (out / name).is_file(), name
    if "--probe-head" in step.text:  # the exported classifier holds the probe's xblk head
        head = load_file(str(session.path("runs/probe-micro") / "heads" / "xblk.safetensors"))
        weights = load_file(str(out / "model.safetensors"))
        for name, value in head.items():
            assert torch.equal(weights[f"classifier.{name}"], value), name


# A printed line and the shape the README comment after `print(...)` promises, e.g. `# [2, 384]: …`.
PROMISED_SHAPE = re.compile(r"^print\(.*\)\s+#\s*(\[[\d, ]+\])", flags=re.M)


@pytest.mark.parametrize("index", [i for i, s in enumerate(STEPS) if s.kind == "python"],
                         ids=lambda i: f"snippet{i - sum(s.kind == 'command' for s in STEPS)}")
def test_readme_python_snippet(index, session):
    """Each README Python snippet runs in a fresh interpreter and prints what its comments say (shapes), or, for the
    training snippet, a falling loss."""
    step = STEPS[index]
    outcome = session.outcome(index)
    assert outcome.returncode == 0, f"{step.text}\n{outcome.output[-3000:]}"
    printed = [line for line in outcome.output.splitlines() if line.startswith(("torch.Size", "[", "{"))]
    for shape in PROMISED_SHAPE.findall(step.text):
        assert any(f"torch.Size({shape})" == line for line in printed), f"{shape} not printed: {printed}"
    if "trainer.state.log_history" in step.text:  # the loss falls clearly: the LR is the one given, not scaled down
        losses = json.loads(printed[-1])
        # single-batch losses vary by ~0.03 between seeds (here one seed): compare pair means
        assert len(losses) == 8 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.1 and losses[0] > 0.8, losses


def test_every_readme_step_has_its_inputs_written_before_it():
    """The dependency rule sees every run folder a step reads: each is written by an earlier command (or by the step
    itself, for --resume), so any test order works."""
    for index, step in enumerate(STEPS):
        for folder in step.reads - step.writes:
            assert any(folder in STEPS[i].writes for i in range(index)), f"nothing before {step.text!r} writes {folder}"
