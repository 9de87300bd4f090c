"""Benchmark 9: fit, from process start to the first training step, against `import lightning.pytorch`.

Fresh processes in alternating rounds, at the threads a process gets by default: `python -c
"import lightning.pytorch"` (what fit must pay), and `train.py fit` on two-moons (mlp) and on MNIST
(lenet5) with every default left on (sanity check, TensorBoard, checkpoints, progress bar). A
callback passed on the command line (FirstStep, below) notes the time at each stage and ends the
process at the first training step, so a row is the time a user waits before training starts. The
goal of issue 18: at most the import plus 1 s. The stage columns say where the rest goes, each from
the end of the previous stage: "built" is imports, argument parsing and the model, datamodule and
Trainer being built; "checks" is train.py's checks before fit (FLOP profile, resume and monitor
checks, which load the dataset); "setup" is Lightning's own setup up to fit start (loggers,
datamodule setup, moving the model); "sanity" is the sanity check's validation steps; "start" is
what remains up to the first step (the dataloader's first batch, callbacks' train start).
"""

import json
import os
import time

from lightning.pytorch.callbacks import Callback

from bench.common import PY, Section, body, check, med, run_processes, spread, tmpdir

GOAL_SECONDS = 1.0  # above the time of `import lightning.pytorch`
STAGES = ("built", "checks", "setup", "sanity", "start")


class FirstStep(Callback):
    """Notes seconds since ZOO_T0 (the wall clock when the bench started the process) at each stage,
    prints them as one JSON line at the first training step, and ends the process there."""

    def __init__(self) -> None:
        self.t0 = float(os.environ.get("ZOO_T0", time.time()))
        self.times = {"built": time.time() - self.t0}

    def _note(self, stage: str) -> None:
        self.times.setdefault(stage, time.time() - self.t0)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._note("checks")

    def on_fit_start(self, trainer, pl_module) -> None:
        self._note("setup")

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        self._note("sanity")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._note("sanity")  # no sanity check ran
        self._note("start")
        print("FIRSTSTEP " + json.dumps(self.times), flush=True)
        os._exit(0)  # the measurement ends here: no training, no files left to finish


def commands(tmp: str) -> dict[str, list[str]]:
    fit = [PY, "train.py", "fit", "--runs_root", tmp, "--trainer.callbacks+=bench.firststep.FirstStep"]
    return {
        "import lightning.pytorch": [PY, "-c", "import lightning.pytorch"],
        "fit moons (mlp)": [*fit, "--data", "moons"],
        "fit mnist (lenet5)": [*fit, "--data", "mnist", "--model", "lenet5"],
    }


def stages(out: str) -> dict[str, float]:
    line = next(x for x in out.splitlines() if x.startswith("FIRSTSTEP "))
    return json.loads(line[len("FIRSTSTEP "):])


def run(quick: bool) -> Section:
    rounds = 1 if quick else 5
    with tmpdir() as tmp:
        cmds = commands(tmp)
        if quick:  # the smoke test: that the callback and the table work, with the cheapest fit only
            cmds = {name: cmd for name, cmd in cmds.items() if name == "fit moons (mlp)"}
        walls: dict[str, list[float]] = {name: [] for name in cmds}
        marks: dict[str, list[dict]] = {name: [] for name in cmds if name.startswith("fit")}
        for i in range(rounds + (0 if quick else 1)):  # the first round warms the page cache, not counted
            for name, cmd in cmds.items():
                os.environ["ZOO_T0"] = repr(time.time())
                (p,) = run_processes([cmd], parallel=False)
                check(p, name)
                if i or quick:
                    walls[name].append(p.wall)
                    if name in marks:
                        marks[name].append(stages(p.out))
        os.environ.pop("ZOO_T0", None)
    imports = walls.get("import lightning.pytorch", [])
    floor = med(imports) if imports else float("nan")
    s = Section("9. fit: process start to the first training step")
    s.text(body(__doc__))
    rows = [["import lightning.pytorch", spread(imports), "", *[""] * len(STAGES)]] if imports else []
    for name, m in marks.items():
        first = [x["start"] for x in m]
        # each stage's own seconds: its mark minus the previous one (medians of the repeats)
        own = [med([x[stage] - (x[STAGES[i - 1]] if i else 0.0) for x in m]) for i, stage in enumerate(STAGES)]
        rows.append([name, spread(walls[name]), spread(first), *[f"{v:.2f}" for v in own]])
        s.goal(f"first step: {name}", f"{med(first):.2f} s = import lightning + {med(first) - floor:.2f} s",
               f"<= import lightning + {GOAL_SECONDS:g} s", None if quick else med(first) - floor <= GOAL_SECONDS)
    s.table(["command", "process wall s", "first step at s", *[f"{x} s" for x in STAGES]], rows)
    return s
