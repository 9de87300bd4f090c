"""Benchmark 8: how long a command takes from process start to exit, against `import torch`.

Fresh processes, run in rounds that alternate the commands (so a change in the machine's load hits
all of them), at the threads the process gets by default: `python -c "import torch"` (the floor),
`import lightning.pytorch` (what fit must pay), `train.py --help`, `train.py predict` of one PNG with
the shipped LeNet-5 weights, a TorchScript `export` of the same weights, `evaluate.py --help`. The
goal of issue 18: the commands that do not train within 1.5x `import torch`. predict, export and
--help import no Lightning, torchmetrics or tensorboard (tests/test_layout.py checks); evaluate.py
runs Lightning's Trainer.test, and its --help still imports it with the module. A .pt2 or ONNX
export pulls in the exporter and runs it, so those rows are measured against the exporter alone:
bench/bare_export.py, torch's own export of the same network shape with nothing else imported or
checked. The goal is the same 0.5x `import torch` of margin above it that the other commands get
above `import torch`: our part (arguments, the weights, the metadata, the atomic write and the
check that loads the written file back and compares its outputs; for ONNX that check imports
onnxruntime).
"""

import importlib.util

import numpy as np
from PIL import Image

from bench.common import PY, Section, body, check, med, run_processes, spread, tmpdir

GOAL = 1.5  # x the time of `python -c "import torch"`
PT2, ONNX = "train.py export (.pt2, shipped LeNet-5)", "train.py export (ONNX, shipped LeNet-5)"
EXPORTS = {  # an export row -> the row of the exporter alone, its floor
    PT2: "the .pt2 exporter alone (bench/bare_export.py)",
    ONNX: "the ONNX exporter alone (bench/bare_export.py)",
}


def commands(tmp: str) -> dict[str, list[str]]:
    png = f"{tmp}/digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(png)
    shipped = ["--pretrained", "mnist", "--model", "lenet5"]
    cmds = {
        "import torch": [PY, "-c", "import torch"],
        "import lightning.pytorch": [PY, "-c", "import lightning.pytorch"],
        "train.py --help": [PY, "train.py", "--help"],
        "train.py predict (1 PNG, shipped LeNet-5)": [PY, "train.py", "predict", *shipped, "--inputs", png],
        "train.py export (TorchScript, shipped LeNet-5)": [PY, "train.py", "export", *shipped, "--out",
                                                           f"{tmp}/lenet5.pt"],
        "evaluate.py --help": [PY, "evaluate.py", "--help"],
    }
    for row, fmt in [(PT2, "pt2"), *([(ONNX, "onnx")] if onnx_installed() else [])]:
        cmds[EXPORTS[row]] = [PY, "bench/bare_export.py", fmt, f"{tmp}/bare.{fmt}"]
        cmds[row] = [PY, "train.py", "export", *shipped, "--out", f"{tmp}/lenet5.{fmt}"]
    return cmds


def onnx_installed() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))


def run(quick: bool) -> Section:
    rounds = 1 if quick else 5
    with tmpdir() as tmp:
        cmds = commands(tmp)
        times: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(rounds + (0 if quick else 1)):  # the first round warms the page cache, not counted
            procs = run_processes(list(cmds.values()), parallel=quick)
            for name, p in zip(cmds, procs):
                times[name].append(check(p, name).wall)
        if not quick:
            times = {name: t[1:] for name, t in times.items()}
    floor = med(times["import torch"])
    s = Section("8. Start-up: commands against `import torch`")
    s.text(body(__doc__))
    rows = []
    for name, t in times.items():
        ratio = med(t) / floor
        exporter = med(times[EXPORTS[name]]) if name in EXPORTS else None
        extra = None if exporter is None else (med(t) - exporter) / floor
        rows.append([name, spread(t), f"{ratio:.2f}x", "" if extra is None else f"{extra:+.2f}x"])
        if extra is not None:
            s.goal(f"start-up: {name}, above the exporter alone",
                   f"{med(t):.2f} s = {exporter:.2f} s + {extra:.2f}x import torch",
                   f"<= +{GOAL - 1:.1f}x", None if quick else extra <= GOAL - 1)
        elif name.startswith(("train.py", "evaluate.py")):
            s.goal(f"start-up: {name}", f"{med(t):.2f} s = {ratio:.2f}x import torch", f"<= {GOAL}x",
                   None if quick else ratio <= GOAL)
    s.table(["command", "wall s, median (min-max)", "x import torch", "above the exporter alone, x import torch"],
            rows)
    return s
