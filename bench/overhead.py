"""Benchmark 2: what Lightning and our harness cost per epoch, against a bare PyTorch loop over the
same in-memory tensors (TensorLoader + the datamodule's normalisation), the same model, optimizer
and schedule, and the same fast path (train.py's defaults on this machine: precision, memory format,
fused optimizer step). MNIST, batch 128, validation on 5,000 images every epoch (eval batch 1000).

Ours is `train.py fit` run in this process (zoo.cli.cli_main) with a timing callback: `--quiet true`
(no progress bar, as scripts run it) and without --quiet (the default Rich bar, made to render as in
an interactive terminal), both with the defaults (50 optimizer steps per Lightning step for these small
nets), and `--quiet` with `--steps_per_execution 1` (one step per Lightning step, the plain path).
Between them, Lightning alone: a Trainer with nothing added, whose module
steps are forward + loss, the floor any Lightning harness stands on. Epoch 0 (warm-up) is dropped;
every other epoch of every run is a sample.
Then: where the extra time goes, from ablations (train.py with one of our per-step costs patched
out), micro-benchmarks of those per-step costs, Lightning's SimpleProfiler and cProfile.
"""
import contextlib
import re

import torch
import torch.nn.functional as F

from bench.common import REPO, Section, body, callback, load, med, read_metrics, run_cli, spread, timeit, tmpdir
from bench.loops import BareLoop, setup_data
from zoo.run import AUTO_CHUNK

ARCHS = ("mlp", "lenet5")
PLAIN = ("--steps_per_execution", "1")  # one optimizer step per Lightning step (the defaults chunk these nets)
QUICK_LIMITS = ["--trainer.limit_train_batches", "5", "--trainer.limit_val_batches", "1",
                "--trainer.limit_test_batches", "1"]


def ours(arch: str, epochs: int, quick: bool, rich: bool = False,
         extra: tuple[str, ...] = ()) -> tuple[list[dict], dict[str, list[float]]]:
    """Per-epoch seconds (train, val, total) of `train.py fit` on MNIST, in this process, and the
    SimpleProfiler's durations when `extra` turns it on."""
    args = ["fit", "--data", "mnist", "--model.arch", arch, "--trainer.max_epochs", str(epochs), "--patience", "0",
            "--quiet", "false" if rich else "true", "--trainer.callbacks+=bench.clocks.EpochClock", *extra]
    with tmpdir() as tmp:
        cli = run_cli(args + (QUICK_LIMITS if quick else []), tmp, rich_tty=rich)
        acc = read_metrics(tmp)[0]["test_acc"]
    clock = callback(cli.trainer, "EpochClock")
    return [dict(e, load=load(), acc=acc) for e in clock.epochs], clock.profile


def bare(dm, arch: str, epochs: int, quick: bool) -> list[dict]:
    """Per-epoch seconds of the bare loop: a training pass, then a validation pass."""
    steps = 5 if quick else len(BareLoop(dm, "linear").loader())
    loop = BareLoop(dm, arch, total_steps=epochs * steps)
    out = []
    for epoch in range(epochs):
        train = loop.train_epoch(epoch, limit=5 if quick else None)
        val, _ = loop.evaluate("val", limit=1 if quick else None)
        out.append({"train": train, "val": val, "total": train + val, "load": load()})
    return out


# --- ablations: train.py with one of our per-step costs removed (patched in this process only) ----

def _step_without_isfinite(self, batch, batch_idx):
    x, y = batch
    logits = self(x)
    loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
    self._update("train", logits.detach(), y, loss.detach())
    return loss


def _step_without_metrics(self, batch, batch_idx):
    x, y = batch
    loss = F.cross_entropy(self(x), y, label_smoothing=self.hparams.label_smoothing)
    if not torch.isfinite(loss):
        raise RuntimeError("non-finite loss")
    return loss


def _step_bare(self, batch, batch_idx):
    x, y = batch
    return F.cross_entropy(self(x), y, label_smoothing=self.hparams.label_smoothing)


@contextlib.contextmanager
def patched(*triples):
    """Set attributes (obj, name, value) for the duration of a block."""
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in triples]
    for obj, name, value in triples:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def ablations():
    import zoo.insight
    import zoo.module

    module = zoo.module.ZooModule
    no_train_log = (module, "on_train_epoch_end", lambda self: None)
    return {
        "train.py as it is (a separate run)": (),
        "no per-step isfinite(loss) check": ((module, "training_step", _step_without_isfinite),),
        "no training metrics (loss and accuracy not accumulated)": (
            (module, "training_step", _step_without_metrics), no_train_log),
        "training_step = forward + loss only (no check, no metrics)": (
            (module, "training_step", _step_bare), no_train_log),
        "no insight callbacks (sanity check, pictures)": ((zoo.insight, "callbacks", lambda cfg, run_dir: []),),
        "the optimizer's for-loop step instead of the fused one (the old default)": (
            (zoo.module, "use_fused", lambda *args: None),),
    }


def lightning_floor(dm, arch: str, epochs: int, quick: bool) -> list[dict]:
    """Per-epoch seconds of Lightning alone: a Trainer with no callbacks, loggers, checkpoints or bar,
    and a module whose steps are forward + loss (ZooModule's network, optimizer and fast path)."""
    import lightning as L

    from bench.clocks import EpochClock
    from zoo.module import ZooModule, default_precision

    class Minimal(ZooModule):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            F.cross_entropy(self(x), y)

        def on_train_epoch_end(self) -> None:
            pass

        def on_validation_epoch_end(self) -> None:
            pass

    torch.manual_seed(42)
    model = Minimal(arch, num_classes=dm.num_classes, input_shape=list(dm.input_shape))
    clock = EpochClock()
    limits = dict(limit_train_batches=5, limit_val_batches=1) if quick else {}
    trainer = L.Trainer(max_epochs=epochs, callbacks=[clock], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        precision=default_precision(arch, "cpu"), accelerator="cpu", devices=1, **limits)
    trainer.fit(model, datamodule=dm)
    return [dict(e, load=load()) for e in clock.epochs]


# --- micro-benchmarks of single per-step operations ----------------------------------------------

def micro(batch: int, classes: int = 10, quick: bool = False) -> list[tuple[str, float]]:
    """Microseconds per call of the per-step operations of training_step (MLP-sized logits)."""
    from torchmetrics.classification import MulticlassAccuracy

    logits, y = torch.randn(batch, classes), torch.randint(0, classes, (batch,))
    loss = F.cross_entropy(logits, y)
    from torchmetrics import MeanMetric

    checked, unchecked = (MulticlassAccuracy(classes, average="micro"),
                          MulticlassAccuracy(classes, average="micro", validate_args=False))
    mean = MeanMetric(nan_strategy="disable")
    correct = torch.zeros((), dtype=torch.long)

    def isfinite():
        if not torch.isfinite(loss):
            raise RuntimeError

    def running_sum():
        correct.add_((logits.argmax(1) == y).sum())

    n = 20 if quick else 2000
    ops = [("`if not torch.isfinite(loss)`", isfinite),
           ("`MulticlassAccuracy.update(logits, y)`, validate_args=True", lambda: checked.update(logits, y)),
           ("the same with validate_args=False (ours)", lambda: unchecked.update(logits, y)),
           ("`MulticlassAccuracy(logits, y)` (forward: also computes the batch's value, our old way)",
            lambda: checked(logits, y)),
           ("`MeanMetric.update(loss, n)` (ours, the epoch's training loss)", lambda: mean.update(loss, len(y))),
           ("`correct += (logits.argmax(1) == y).sum()` (a running count instead)", running_sum),
           ("`F.cross_entropy(logits, y)` (for scale)", lambda: F.cross_entropy(logits, y))]
    out = []
    for name, fn in ops:
        runs = [t / n for t in timeit(lambda: [fn() for _ in range(n)], repeats=3)]
        out.append((name, med(runs) * 1e6))
    return out


def cprofile_top(arch: str, epochs: int, quick: bool, k: int = 14) -> tuple[list[list], dict[str, float], int]:
    """cProfile of `train.py fit` (--quiet) over its epochs after the first: the top functions by own
    time, and own time grouped by where the code lives."""
    args = ["fit", "--data", "mnist", "--model.arch", arch, "--trainer.max_epochs", str(epochs), "--patience", "0",
            "--quiet", "true", "--trainer.callbacks+=bench.clocks.EpochProfile"] + (QUICK_LIMITS if quick else [])
    with tmpdir() as tmp:
        cli = run_cli(args, tmp)
    prof = callback(cli.trainer, "EpochProfile")
    groups: dict[str, float] = {}
    rows = []
    for (file, line, func), (cc, nc, tt, ct, callers) in prof.stats.stats.items():
        groups[_origin(file)] = groups.get(_origin(file), 0.0) + tt / prof.epochs
        rows.append((tt / prof.epochs, nc // prof.epochs, ct / prof.epochs, _short(file, line, func)))
    rows.sort(reverse=True)
    top = [[name, calls, f"{tt * 1000:.0f}", f"{ct * 1000:.0f}"] for tt, calls, ct, name in rows[:k]]
    return top, groups, prof.epochs


def _action(name: str) -> str:
    """SimpleProfiler's action name, with a callback's state dict shortened to its monitor."""
    return re.sub(r"\{'monitor': ([^,]+),[^}]*\}", r"(monitor=\1)", name)


def _origin(file: str) -> str:
    if file.startswith("~") or file.startswith("<"):
        return "C functions (torch ops, builtins)"
    for key, label in (("/lightning/", "lightning"), ("/torchmetrics/", "torchmetrics"), ("/torch/", "torch (Python)"),
                       (str(REPO / "zoo"), "ours: zoo/"), (str(REPO / "datamodules"), "ours: datamodules/"),
                       (str(REPO / "train.py"), "ours: train.py"), (str(REPO / "bench"), "bench (the clock)")):
        if key in file:
            return label
    return "other Python (stdlib, tensorboard, ...)"


def _short(file: str, line: int, func: str) -> str:
    if file.startswith("~"):
        return func
    for cut in ("site-packages/", str(REPO) + "/"):
        if cut in file:
            file = file.split(cut, 1)[1]
    file = re.sub(r".*/lib/python3\.\d+/", "", file)  # the standard library: copy.py, not its full path
    return f"{file}:{line}({func})"


def run(quick: bool) -> Section:
    epochs = 2 if quick else 4
    repeats = 1 if quick else 2
    dm = setup_data("mnist")
    s = Section("2. Harness overhead: Lightning + our module and callbacks vs the bare loop (MNIST)")
    s.text(body(__doc__))
    rows, results = [], {}
    steps = 5 if quick else len(BareLoop(dm, "linear").loader())  # training steps per epoch
    archs = ARCHS[:1] if quick else ARCHS
    for arch in archs:
        samples = {"bare": [], "floor": [], "plain": [], "quiet": [], "rich": []}
        for _ in range(repeats):  # alternate them, so load changes hit all alike
            samples["bare"] += bare(dm, arch, epochs, quick)[1:]
            samples["floor"] += lightning_floor(dm, arch, epochs, quick)[1:]
            samples["plain"] += ours(arch, epochs, quick, extra=PLAIN)[0][1:]
            samples["quiet"] += ours(arch, epochs, quick)[0][1:]
            samples["rich"] += ours(arch, epochs, quick, rich=True)[0][1:]
        results[arch] = samples
        base = {k: med([e[k] for e in samples["bare"]]) for k in ("train", "val", "total")}
        for key, label in (("bare", "bare PyTorch loop"),
                           ("floor", "Lightning alone: no callbacks/loggers/checkpoints, step = forward + loss"),
                           ("plain", "ours, --quiet, one step per Lightning step (--steps_per_execution 1)"),
                           ("quiet", f"ours, --quiet (defaults: {AUTO_CHUNK} steps per Lightning step for these nets)"),
                           ("rich", "ours, Rich progress bar (defaults)")):
            ep = samples[key]
            train, total = med([e["train"] for e in ep]), med([e["total"] for e in ep])
            rows.append([arch, label, spread([e["train"] for e in ep], 3), spread([e["val"] for e in ep], 3),
                         spread([e["total"] for e in ep], 3), f"{train / base['train']:.2f}x",
                         f"{total / base['total']:.2f}x", f"{(train - base['train']) / steps * 1e6:+.0f}",
                         spread([e["load"] for e in ep], 1)])
    s.table(["model", "loop", "train s/epoch", "val s/epoch", "whole epoch s", "train vs bare", "epoch vs bare",
             "extra us per training step", "load avg"], rows)
    s.text(f"Median (min-max) over {repeats} runs x {epochs - 1} epochs (epoch 0 dropped). `whole epoch` for ours "
           "runs from one epoch's start to the next: training, validation, both checkpoints (fsync'd), logging. "
           "For the bare loop it is the training pass plus the validation pass.")
    for arch in archs:
        r = results[arch]
        for key, label in (("plain", "--quiet --steps_per_execution 1"), ("quiet", "--quiet"), ("rich", "Rich bar")):
            x = med([e["total"] for e in r[key]]) / med([e["total"] for e in r["bare"]])
            s.goal(f"2. epoch time vs bare loop, {arch} on MNIST, {label}", f"{x:.2f}x", "<= 1.10x", x <= 1.10)

    # Ablations on the MLP, where a step is shortest and per-step costs weigh most.
    abl_rows = []
    variants = ablations()
    if quick:  # the smoke test: one patched run exercises the code
        variants = dict(list(variants.items())[1:2])
    base_train = med([e["train"] for e in results["mlp"]["plain"]])  # the plain path, from the runs above
    abl_epochs = epochs if quick else epochs + 1  # one run each: one more epoch for one more sample
    for name, patches in variants.items():
        with patched(*patches):
            ep = ours("mlp", abl_epochs, quick, extra=PLAIN)[0][1:]
        train = med([e["train"] for e in ep])
        abl_rows.append([name, spread([e["train"] for e in ep], 3), f"{(train - base_train) * 1000:+.0f}",
                         f"{train / base_train - 1:+.1%}", f"{ep[0]['acc']:.2%}", spread([e["load"] for e in ep], 1)])
    s.text(f"**Ablations** (MLP, --quiet; one run of {abl_epochs} epochs each, epoch 0 dropped; the changes are "
           f"patched into this process, the files are untouched). {steps} training steps per epoch. Single runs: "
           "differences below a few percent are within the noise.")
    s.text(f"The reference for the changes is the plain path (--steps_per_execution 1) of the main comparison above "
           f"({base_train:.3f} s, test accuracy {results['mlp']['plain'][0]['acc']:.2%} after {epochs} epochs); the "
           f"ablations run it too.")
    s.table(["train.py with", "train s/epoch", "ms/epoch vs as-is", "change", f"test acc ({abl_epochs} epochs)",
             "load avg"], abl_rows)

    us = micro(128, quick=quick)
    bare_train = med([e["train"] for e in results["mlp"]["bare"]])
    s.text(f"**Per-step operations in isolation** (batch 128, 10 classes; {steps} steps per epoch; the bare MLP "
           f"epoch takes {bare_train:.3f} s):")
    s.table(["operation", "us per call", "ms per epoch", "% of a bare MLP epoch"],
            [[name, f"{t:.1f}", f"{t * steps / 1000:.1f}", f"{t * steps / 1e6 / bare_train:.1%}"] for name, t in us])

    # Lightning's own view: SimpleProfiler's actions during fit, per epoch.
    _, profile = ours("mlp", epochs, quick, extra=("--trainer.profiler", "simple", *PLAIN))
    per_epoch = []
    for action, durations in profile.items():
        if len(durations) < epochs:  # one-off setup (data loading, the first pictures)
            continue
        total = sum(durations) / epochs
        per_epoch.append((total, action, len(durations) / epochs, med(durations)))
    per_epoch.sort(reverse=True)
    s.text("**Lightning's SimpleProfiler** (MLP, --quiet, --trainer.profiler simple): the actions that take most "
           "time per epoch, during fit. Nested: run_training_batch contains optimizer_step, which contains "
           "training_step and backward.")
    s.table(["action", "calls per epoch", "us per call (median)", "s per epoch"],
            [[_action(a), f"{n:.0f}", f"{m * 1e6:.0f}", f"{t:.3f}"] for t, a, n, m in per_epoch[:16]])

    top, groups, n = cprofile_top("mlp", epochs, quick)
    total = sum(groups.values())
    s.text(f"**cProfile** of `train.py fit` (MLP, --quiet) over its epochs 1..{n} (validation included, setup and "
           f"the final test not; the profiler inflates Python-heavy code, so read shares, not times). Own time per "
           f"epoch by origin ({total:.2f} s per epoch under the profiler):")
    s.table(["code", "own ms per epoch", "share"],
            [[k, f"{v * 1000:.0f}", f"{v / total:.0%}"] for k, v in sorted(groups.items(), key=lambda kv: -kv[1])])
    s.text("Top functions by own time (per epoch):")
    s.table(["function", "calls per epoch", "own ms", "cumulative ms"], top)
    return s
