"""Benchmark 4: CIFAR-10 ResNet-20 training images/s, ours against the textbook setup (and MobileNetV2's, ours).

A fixed number of steps of batch 128 after a few warm-up steps, data loading included; SGD with
Nesterov momentum (lr 0.1, weight decay 5e-4), the recipe of both. Textbook: torchvision's CIFAR10
Dataset (the offline copy, `_check_integrity` skipped) with RandomCrop(32, 4) + RandomHorizontalFlip
+ ToTensor + Normalize per sample, a shuffling DataLoader with num_workers 0 or 2, NCHW fp32.
Ours: `train.py fit --data cifar10 --model.arch resnet20` in this process (in-memory uint8
TensorLoader, crop + flip on whole batches, normalisation after the transfer), timed by a callback
from the first step after warm-up to the end of the last: with its defaults (on a CPU with native
bf16 they are channels_last + bf16-mixed for the conv nets, and the fused optimizer step), and with
each of those turned off (`--model.channels_last false`, `--trainer.precision 32-true`), to show
what each one brings, and with `--model.compile true` added; its compile falls in the warm-up steps,
so that row is the steady state (bench/convsteps.py prints the compile's seconds). These short fits do
not compile by default; a fit of at least 5,000 steps does where zoo.module.compile_by_default says so
(ResNets in bf16 on a CPU with AMX), and there issue 16's row takes the compiled figure.
"""
import time

import torch
import torch.nn.functional as F

from bench.common import Section, body, callback, data_dir, load, med, run_cli, spread, tmpdir

WARMUP, STEPS, BATCH = 3, 15, 128
MOBILENET_STEPS = 8
FP32, NCHW = ["--trainer.precision", "32-true"], ["--model.channels_last", "false"]
OURS = {  # label -> extra train.py arguments
    "ours, defaults": [],
    "ours, fp32 NCHW": FP32 + NCHW,
    "ours, channels_last (fp32)": FP32,
    "ours, bf16-mixed (NCHW)": NCHW,
    "ours, defaults + --model.compile true": ["--model.compile", "true"],
}
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # the usual published CIFAR-10 statistics


def textbook_dataset():
    import torchvision
    import torchvision.transforms as T

    class OfflineCIFAR10(torchvision.datasets.CIFAR10):
        def _check_integrity(self) -> bool:  # the offline copy is rebuilt, so its md5 differs (data README)
            return True

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    return OfflineCIFAR10(data_dir(), train=True, download=False, transform=transform)


def textbook(dataset, workers: int, warmup: int, steps: int, batch: int) -> float:
    """Images/s of the textbook loop over `steps` steps after `warmup`."""
    from torch.utils.data import DataLoader

    from zoo.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", (3, 32, 32), 10).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)
    it = iter(loader)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        x, y = next(it)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    del it  # stops the workers
    return steps * batch / seconds


def ours(extra: list[str], warmup: int, steps: int, batch: int, arch: str = "resnet20") -> float:
    """Images/s of train.py fit over `steps` steps after `warmup`: one epoch of exactly warmup+steps
    batches (train_fraction), one validation and one test batch."""
    n = (warmup + steps) * batch
    fraction = (n + 0.25) / 45_000  # rounds to exactly n training images
    args = ["fit", "--data", "cifar10", "--model.arch", arch, "--data.batch_size", str(batch),
            "--data.train_fraction", f"{fraction:.10f}", "--trainer.max_epochs", "1", "--patience", "0",
            "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--quiet", "true",
            "--trainer.callbacks+=bench.clocks.StepClock", f"--trainer.callbacks.init_args.warmup={warmup}", *extra]
    with tmpdir() as tmp:
        cli = run_cli(args, tmp)
    clock = callback(cli.trainer, "StepClock")
    assert clock.steps == steps, (clock.steps, steps)
    return steps * batch / clock.seconds


def run(quick: bool) -> Section:
    warmup, steps, batch, repeats = (1, 2, 16, 1) if quick else (WARMUP, STEPS, BATCH, 3)
    dataset = textbook_dataset()
    results: dict[str, list[float]] = {}
    loads: dict[str, list[float]] = {}
    mobilenet: list[float] = []  # issue 16's other throughput goal; not in the ResNet-20 table
    mobilenet_loads: list[float] = []
    for _ in range(repeats):  # rounds over all configurations, so load changes hit them alike
        for workers in (0, 2):
            label = f"textbook, DataLoader num_workers={workers}, NCHW fp32"
            results.setdefault(label, []).append(textbook(dataset, workers, warmup, steps, batch))
            loads.setdefault(label, []).append(load())
        for label, extra in OURS.items():
            if quick and label not in ("ours, defaults", "ours, fp32 NCHW"):
                continue  # the smoke test: the defaults and everything off exercise the code
            results.setdefault(label, []).append(ours(extra, warmup, steps, batch))
            loads.setdefault(label, []).append(load())
        if not quick:  # ~0.6 s a step here, so fewer steps
            mobilenet.append(ours([], warmup, MOBILENET_STEPS, batch, "mobilenetv2"))
            mobilenet_loads.append(load())
    best_textbook = max(med(v) for k, v in results.items() if k.startswith("textbook"))
    s = Section("4. CIFAR-10 ResNet-20 training images/s")
    s.text(body(__doc__))
    s.table(["setup", "images/s", "vs best textbook", "load avg"],
            [[k, spread(v, 0), f"{med(v) / best_textbook:.2f}x", spread(loads[k], 1)] for k, v in results.items()])
    s.text(f"{steps} steps of batch {batch} after {warmup} warm-up steps; median (min-max) of {repeats} rounds. "
           "bf16 on the CPU uses its AMX/AVX-512-BF16 units where present (see the CPU flags above).")
    from zoo.module import compile_by_default, default_precision

    default = med(results["ours, defaults"])
    plain = med(results["ours, fp32 NCHW"])
    precision = default_precision("resnet20", "cpu")
    compiles = compile_by_default("resnet20", precision, torch.device("cpu"), float("inf"))
    s.text(f"The defaults on this machine: precision {precision}, channels_last, fused SGD; a fit of 5,000 steps "
           f"or more {'compiles' if compiles else 'does not compile'} the network.")
    s.goal("4. ResNet-20 images/s vs the best textbook setup, ours with its defaults",
           f"{default / best_textbook:.2f}x", ">= 2x", default / best_textbook >= 2)
    s.goal("4. ... ours with the fast path off (fp32 NCHW)", f"{plain / best_textbook:.2f}x", "(reference)", None)
    compiled = compiles and not quick  # (the smoke test does not run the compiled row)
    long = med(results["ours, defaults + --model.compile true"]) if compiled else default
    s.goal(f"4. ResNet-20 images/s, ours with a long fit's defaults{' (compiled)' if compiled else ''} (issue 16)",
           f"{long:.0f}", ">= 1,200", long >= 1200)
    if mobilenet:
        s.text("MobileNetV2, `train.py fit --data cifar10 --model.arch mobilenetv2` with its defaults, "
               f"{MOBILENET_STEPS} steps of batch {batch} after {warmup}, one per round: "
               f"{spread(mobilenet, 0)} images/s "
               f"(load {spread(mobilenet_loads, 1)}).")
        s.goal("4. MobileNetV2 images/s, ours with its defaults (issue 16)", f"{med(mobilenet):.0f}", ">= 200",
               med(mobilenet) >= 200)
    return s
