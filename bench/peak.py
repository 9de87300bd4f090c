"""Benchmark 3: distance to the machine's limit.

The CPU's fp32 matmul throughput (torch.mm of two
2048x2048 matrices, median of repeats; bf16 too, for the AMX/AVX-512 units) against the FLOP/s
that training achieves: zoo.models.profile's forward FLOPs per sample x 3 (forward + backward) x samples
per second. Training steps as in the bare loop (the recipe's optimizer, cross-entropy; in fp32 here,
also for the conv nets that train.py runs in bf16 on such a CPU), on one resident batch ("step") and \
through the data path (TensorLoader + normalisation, "with loader").
The profiler counts only matmuls and convolutions, so everything else a step does (activations,
the loss, the optimizer, data) is time without FLOPs: exactly the distance we want to see.
"""
import os

import torch

from bench.common import Section, body, load, med, num_threads, spread, timeit
from bench.loops import BareLoop, setup_data
from zoo.models.profile import profile

# model, dataset, batch, fused optimizer step (torch.optim.Adam/SGD(..., fused=True), train.py's default)
# or the for-loop one
CASES = [("mlp", "mnist", 100, False), ("mlp", "mnist", 256, False), ("mlp", "mnist", 1024, False),
         ("mlp", "mnist", 100, True), ("mlp", "mnist", 1024, True),
         ("lenet5", "mnist", 128, False), ("lenet5", "mnist", 1024, False), ("resnet20", "cifar10", 128, False)]
QUICK_CASES = [("mlp", "mnist", 100, False), ("mlp", "mnist", 100, True), ("lenet5", "mnist", 32, False),
               ("resnet20", "cifar10", 8, False)]


def mm_gflops(n: int, dtype: torch.dtype, repeats: int) -> list[float]:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return [2 * n**3 / t / 1e9 for t in timeit(lambda: torch.mm(a, b), repeats, warmup=2)]


def shape_gflops(m: int, k: int, n: int, repeats: int) -> float:
    """fp32 GFLOP/s of the MLP's first-layer matmul shape (m x k) @ (k x n)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    reps = 50
    return med([2 * m * k * n * reps / t / 1e9 for t in timeit(lambda: [torch.mm(a, b) for _ in range(reps)], repeats)])


def train_rate(dm, arch: str, batch: int, fused: bool, steps: int, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds per step on one resident batch, and through the loader, `repeats` times each."""
    loop = BareLoop(dm, arch, total_steps=10**6, fused=fused, bf16=False)  # fp32, against the fp32 peak
    x, y = dm.train_x[:batch], dm.train_y[:batch]
    resident, loader = [], []
    for _ in range(repeats):
        resident.append(med(timeit(lambda: loop.step(x, y), steps, warmup=2)))
        loader.append(loop.seconds_per_step(steps, batch_size=batch))
    return resident, loader


def op_breakdown(dm, batch: int, steps: int, k: int = 8) -> list[list]:
    """torch.profiler: where an MLP training step's time goes, by operator (self CPU time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    loop = BareLoop(dm, "mlp", total_steps=10**6)
    x, y = dm.train_x[:batch], dm.train_y[:batch]
    for _ in range(3):
        loop.step(x, y)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            loop.step(x, y)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    return [[e.key, e.count // steps, f"{e.self_cpu_time_total / steps:.0f}", f"{e.self_cpu_time_total / total:.0%}"]
            for e in events[:k]]


def run(quick: bool) -> Section:
    repeats = 3 if not quick else 1
    s = Section("3. Distance to the machine's limit (fp32 matmul peak vs training FLOP/s)")
    s.text(body(__doc__))
    n = 256 if quick else 2048
    peak32 = mm_gflops(n, torch.float32, 2 if quick else 7)
    peak16 = mm_gflops(n, torch.bfloat16, 2 if quick else 7)
    peak = med(peak32)
    s.text(f"torch.mm {n}x{n}, {torch.get_num_threads()} thread(s), as everything below: fp32 **{spread(peak32, 0)} "
           f"GFLOP/s**, bf16 {spread(peak16, 0)} GFLOP/s (median (min-max) of {len(peak32)}; load {load():.2f}).")
    cores = os.cpu_count() or 1
    if cores != torch.get_num_threads():
        with num_threads(cores):
            s.text(f"For reference, with {cores} threads: "
                   f"fp32 {spread(mm_gflops(n, torch.float32, 2 if quick else 7), 0)} "
                   f"GFLOP/s (load {load():.2f}).")
    data = {}
    rows = []
    ratios = {}
    for arch, dataset, batch, fused in QUICK_CASES if quick else CASES:
        if dataset not in data:
            data[dataset] = setup_data(dataset)
        dm = data[dataset]
        flops = profile(BareLoop(dm, arch).model, dm.input_shape)["flops"] * 3 * batch  # per step
        steps = 2 if quick else (10 if arch == "resnet20" else 50 if arch == "lenet5" else 200)
        resident, loader = train_rate(dm, arch, batch, fused, steps, repeats)
        g_res, g_load = [flops / t / 1e9 for t in resident], [flops / t / 1e9 for t in loader]
        ratios[(arch, batch, fused)] = med(g_load) / peak
        rows.append([arch, batch, "fused" if fused else "for-loop", f"{flops / 1e9:.3f}", spread(resident, 2, 1000),
                     spread(g_res, 1), f"{med(g_res) / peak:.2f}", spread(loader, 2, 1000), spread(g_load, 1),
                     f"{med(g_load) / peak:.2f}", f"{load():.1f}"])
    s.table(["model", "batch", "optimizer", "GFLOP/step", "step ms", "step GFLOP/s", "of peak", "with loader ms/step",
             "with loader GFLOP/s", "of peak", "load avg"], rows)
    for fused in (False, True):
        batch, r = max(((b, r) for (a, b, f), r in ratios.items() if a == "mlp" and f == fused), key=lambda br: br[1])
        s.goal(f"3. MLP training FLOP/s / fp32 matmul peak, {'fused' if fused else 'for-loop'} optimizer step "
               "(best batch)",
               f"{r:.2f} at batch {batch}", ">= 0.5", r >= 0.5)
    for (arch, batch, fused), r in ratios.items():
        if arch != "mlp":
            s.goal(f"3. {arch} training FLOP/s / fp32 matmul peak (batch {batch})", f"{r:.2f}", "(report)", None)

    shapes = [(b, 784, 128) for b in ((100, 256) if quick else (100, 256, 1024))]
    s.text("Why the MLP stays far from the peak: its largest matmul, (batch x 784) @ (784 x 128), runs at "
           + ", ".join(f"{shape_gflops(*sh, repeats):.0f} GFLOP/s at batch {sh[0]}" for sh in shapes)
           + f" on its own (the 2048^2 peak: {peak:.0f}), and the rest of a step is small operations with no "
           "FLOPs counted. Where one MLP step's time goes at batch 100 (torch.profiler, self CPU time):")
    s.table(["operator", "calls per step", "us per step", "share"],
            op_breakdown(data["mnist"], 100, 5 if quick else 100))
    return s
