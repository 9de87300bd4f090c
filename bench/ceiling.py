"""The most images/s this CPU could train a conv net at, from the arithmetic it can do (issue 16).

A training step costs about 3 forward passes of multiply-adds (forward, gradient of the input,
gradient of the weights), and FlopCounterMode counts a forward's FLOPs (2 per multiply-add). A large
fp32 matrix product is the fastest arithmetic torch does on a CPU, so `best matmul GFLOP/s / (3 x
forward FLOPs)` bounds the images/s of any step on this machine: convolutions, BatchNorm, the
optimizer and the data only lower it. FlopCounterMode's own count of a whole step is printed beside
it: 2.99 forwards for ResNet-20, but for MobileNetV2 it is not usable, for torch 2.14.1 counts a
grouped (depthwise) convolution's backward as if it were dense (`step_flops`). bf16
products are timed too: on a CPU without native bf16 (no avx512_bf16 or AMX) torch emulates them,
and they are far slower than fp32.

    python bench/ceiling.py [THREADS]   # e.g. 2 > results/cifar10_conv/ceiling_avx2.txt (no data needed)

A bound, not a forecast: a conv net's step also runs BatchNorm, activations and small convolutions
that reach less than the matmul rate.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.common import machine, med, now_utc  # noqa: E402
from zoo.models.profile import profile  # noqa: E402
from zoo.models.registry import create_model  # noqa: E402

# issue 16's throughput goals, images/s at batch 128 and default threads
GOALS = {"resnet20": 1200, "mobilenetv2": 200}


def matmul_gflops(n: int, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Median GFLOP/s of an n x n by n x n product, over repeats for about `seconds`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)  # warm-up
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / med(times) / 1e9


def step_flops(arch: str, batch: int = 2) -> int:
    """FlopCounterMode's count of one training image's forward and backward pass (CIFAR-10). Its
    convolution_backward formula ignores `groups`, so a depthwise layer's backward counts ~channels
    times too much: only for nets without grouped convolutions is this the step's cost."""
    model = create_model(arch, (3, 32, 32), 10).train()
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(torch.randn(batch, 3, 32, 32)), torch.arange(batch) % 10).backward()
    return counter.get_total_flops() // batch


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
    torch.manual_seed(0)
    print(f"# {now_utc()}; python bench/ceiling.py {' '.join(sys.argv[1:])}")
    for key, value in machine().items():
        print(f"# {key}: {value}")
    best = {}
    # fp32 in 3 rounds, for the best is the bound and a shared VM's speed drifts by tens of percent;
    # bf16 once at one size: emulated, a 2048^3 product takes minutes
    for dtype, sizes in ((torch.float32, (512, 1024, 2048) * 3), (torch.bfloat16, (512,))):
        for n in sizes:
            g = matmul_gflops(n, dtype)
            best[dtype] = max(best.get(dtype, 0.0), g)
            print(f"matmul {str(dtype)[6:]:8s} {n:5d}^3  {g:7.1f} GFLOP/s")
    peak = max(best.values())
    print(f"best: {peak:.1f} GFLOP/s")
    for arch, goal in GOALS.items():
        forward = profile(create_model(arch, (3, 32, 32), 10), (3, 32, 32))["flops"]
        step = 3 * forward
        print(f"{arch:12s} forward {forward / 1e6:5.1f} MFLOP/image, step ~{step / 1e6:5.1f} "
              f"(FlopCounterMode: {step_flops(arch) / 1e6:.1f}): at most {peak * 1e9 / step:4.0f} img/s at "
              f"{peak:.0f} GFLOP/s; issue 16's goal {goal} img/s needs {goal * step / 1e9:.0f} GFLOP/s")
