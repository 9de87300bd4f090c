"""Benchmark 5: scaling with data size, model size and processes.

Data: `train.py fit --data mnist --model.arch mlp` on 1/4, 1/2 and all of the 55,000 training
images (`--data.train_fraction`), in this process, timed per epoch by a callback (epoch 0
dropped); validation stays 5,000 images, so only the training part should scale. Model: ResNet-20,
32 and 56 for a fixed number of CIFAR-10 steps (batch 128, the bare loop over the datamodule's
tensors); their forward MACs grow as 41M : 69M : 125M. Processes: the MNIST MLP with
`--trainer.strategy ddp --trainer.devices 2 --trainer.accelerator cpu` against one process, both
as fresh `train.py` processes with the per-process batch of 128 (so DDP takes half the steps per
epoch); Lightning gives each DDP process cpu_count/2 threads unless OMP_NUM_THREADS is set.
"""
import json
from pathlib import Path

from bench.common import (
    PY,
    Section,
    body,
    callback,
    check,
    load,
    med,
    read_metrics,
    run_cli,
    run_processes,
    spread,
    tmpdir,
)
from bench.loops import BareLoop, setup_data
from zoo.models.profile import profile

QUICK_LIMITS = ["--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
                "--trainer.limit_test_batches", "1"]


def data_scaling(s: Section, quick: bool) -> None:
    fractions = (0.5, 1.0) if quick else (0.25, 0.5, 1.0)
    epochs, repeats = (2, 1) if quick else (3, 2)
    samples: dict[float, list[dict]] = {f: [] for f in fractions}
    for _ in range(repeats):
        for f in fractions:
            args = ["fit", "--data", "mnist", "--model.arch", "mlp", "--data.train_fraction", str(f),
                    "--trainer.max_epochs", str(epochs), "--patience", "0", "--quiet", "true",
                    "--trainer.callbacks+=bench.clocks.EpochClock"] + (QUICK_LIMITS if quick else [])
            with tmpdir() as tmp:
                cli = run_cli(args, tmp)
            samples[f] += [dict(e, load=load()) for e in callback(cli.trainer, "EpochClock").epochs[1:]]
    full = med([e["train"] for e in samples[1.0]])
    rows = []
    for f in fractions:
        train = med([e["train"] for e in samples[f]])
        rows.append([f"{f:g}", round(55_000 * f), spread([e["train"] for e in samples[f]], 3),
                     f"{train / full:.2f} (ideal {f:g})", f"{train / (55_000 * f) * 1e6:.1f}",
                     spread([e["total"] for e in samples[f]], 3), spread([e["load"] for e in samples[f]], 1)])
    s.text("**Data size** (MNIST MLP, train.py, --quiet):")
    s.table(["fraction", "training images", "train s/epoch", "relative", "us per image", "whole epoch s",
             "load avg"], rows)
    small = fractions[0]
    rel = med([e["train"] for e in samples[small]]) / full
    s.goal(f"5. MLP epoch (training part) at {small:g} of MNIST, relative to all", f"{rel:.2f}", f"{small:g} (linear)",
           None if quick else abs(rel - small) <= 0.05)


def model_scaling(s: Section, quick: bool) -> None:
    dm = setup_data("cifar10", 16 if quick else None)
    warmup, steps, repeats = (1, 2, 1) if quick else (2, 8, 3)
    rows, base = [], None
    for arch in ("resnet20", "resnet32", "resnet56"):
        loop = BareLoop(dm, arch, total_steps=10**6)
        macs = profile(loop.model, dm.input_shape)["macs"]
        times = [loop.seconds_per_step(steps, warmup) for _ in range(repeats)]
        base = base or (med(times), macs)
        rows.append([arch, f"{macs / 1e6:.1f}M", spread(times, 3), f"{med(times) / base[0]:.2f}",
                     f"{macs / base[1]:.2f}", f"{med(times) * len(loop.loader()):.0f}", f"{load():.1f}"])
    s.text(f"**Model size** (CIFAR-10, bare loop, batch {dm.batch_size}, {steps} steps after {warmup} warm-up, "
           f"median (min-max) of {repeats}; an epoch is {len(BareLoop(dm, 'linear').loader())} steps):")
    s.table(["model", "MACs/image", "s/step", "time relative", "MACs relative", "s/epoch (est.)", "load avg"], rows)
    s.goal("5. ResNet-56 / ResNet-20 time per step", f"{rows[-1][3]} (MACs {rows[-1][4]})", "linear in MACs", None)


def ddp_scaling(s: Section, quick: bool) -> None:
    epochs, repeats = (1, 1) if quick else (3, 2)
    data = ["--data", "moons"] if quick else ["--data", "mnist", "--model.arch", "mlp"]
    base = ["train.py", "fit", *data, "--trainer.max_epochs", str(epochs), "--patience", "0", "--quiet", "true",
            "--trainer.accelerator", "cpu", "--trainer.callbacks+=bench.clocks.SavingEpochClock"]
    variants = {"1 process": ["--trainer.devices", "1"],
                "DDP, 2 processes": ["--trainer.strategy", "ddp", "--trainer.devices", "2"]}
    res: dict[str, dict[str, list[float]]] = {k: {"epoch": [], "wall": [], "fit": [], "acc": [], "load": []}
                                              for k in variants}
    for _ in range(repeats):  # alternating when measuring; both at once in a smoke test
        with tmpdir() as tmp:
            labels = list(variants)
            cmds = [[PY, *base, *variants[k], "--runs_root", f"{tmp}/{i}"] for i, k in enumerate(labels)]
            for i, (label, p) in enumerate(zip(labels, run_processes(cmds, parallel=quick))):
                check(p, f"train.py fit ({label})")
                metrics, run_dir = read_metrics(Path(tmp) / str(i))
                epochs_clock = json.loads((run_dir / "epoch_clock.json").read_text())
                measured = epochs_clock[1:] or epochs_clock
                res[label]["epoch"] += [e["total"] for e in measured]
                res[label]["wall"].append(p.wall)
                res[label]["fit"].append(metrics["fit_seconds"])
                res[label]["acc"].append(metrics["test_acc"])
                res[label]["load"].append(load())
    one, two = med(res["1 process"]["epoch"]), med(res["DDP, 2 processes"]["epoch"])
    rows = [[label, spread(r["epoch"], 3), f"{one / med(r['epoch']):.2f}x", spread(r["fit"], 2), spread(r["wall"], 1),
             spread(r["acc"], 4), spread(r["load"], 1)] for label, r in res.items()]
    s.text(f"**Processes** ({' '.join(data[1:])}, {epochs} epochs, fresh processes; epoch time from the epoch "
           f"callback of rank 0, epoch 0 dropped; {repeats} alternating runs each):")
    s.table(["run", "s/epoch", "speed-up", "fit s", "process wall s", "test acc", "load avg"], rows)
    s.text(f"DDP speed-up {one / two:.2f}x on 2 processes: parallel efficiency {one / two / 2:.0%}.")
    s.goal("5. DDP on 2 CPU processes: epoch speed-up (efficiency)", f"{one / two:.2f}x ({one / two / 2:.0%})",
           "(report)", None)


def run(quick: bool) -> Section:
    s = Section("5. Scaling: data size, model size, processes")
    s.text(body(__doc__))
    data_scaling(s, quick)
    model_scaling(s, quick)
    ddp_scaling(s, quick)
    return s
