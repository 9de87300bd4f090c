"""How fast can a conv net's training step get here, with the convolution kernels torch has? (issue 16)

Issue 16 asks for ResNet-20 and MobileNetV2 to train at 2x and 3x the images/s of the code of its day. A step
is convolutions (oneDNN's kernels, in bf16 where they are faster) plus everything else (BatchNorm, activations,
the residual adds, the optimizer, the data). This measures both in one process, on the bare bf16 channels_last
step of bench/convsteps.py (the recipe's optimizer, the in-memory loader, batch 128, freed memory kept as
train.py keeps it for MobileNetV2), and sets them beside the CPU's matmul peak (bench/ceiling.py's 2048^3 bf16
product, the same threads) and the step's training FLOPs (zoo.models.profile's forward FLOPs x 3: convolutions
and the linear layer). For each MODEL:IMAGES_PER_S target it prints the step time the target allows, what the
convolutions alone take today, what they would take at the matmul peak, the least a fused BatchNorm +
activation could take, what torch.compile's fusing of one takes, and the step without oneDNN (torch's own
convolution kernels, the only other ones it has on a CPU):

    python bench/conv_bound.py resnet20:3232 mobilenetv2:660 [THREADS] > results/cifar10_conv/conv_bound_zen5.txt
"""
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.ceiling import matmul_gflops  # noqa: E402
from bench.common import machine, med, now_utc  # noqa: E402
from bench.loops import BareLoop, setup_data  # noqa: E402
from zoo.errors import ZooError  # noqa: E402
from zoo.models.profile import profile  # noqa: E402
from zoo.models.registry import check_model_name  # noqa: E402
from zoo.module import keep_freed_memory  # noqa: E402

BATCH, PROFILED_STEPS = 128, 3


def conv_share(loop: BareLoop) -> float:
    """The convolutions' share (forward and backward) of a step's profiled self time. A share, because the
    profiler slows the many small operations more than the convolutions (up to 1.3x for MobileNetV2's step):
    applied to the unprofiled step, it underestimates the convolutions' time, if anything."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loop.seconds_per_step(PROFILED_STEPS, warmup=0)
    events = prof.key_averages()
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    return conv / sum(e.self_cpu_time_total for e in events)


def batchnorm_outputs(model: torch.nn.Module, input_shape: list[int]) -> tuple[int, tuple[int, ...]]:
    """Bytes of all BatchNorm outputs of a training batch in bf16, and the shape of the largest one."""
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
             for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        model(torch.randn(BATCH, *input_shape).contiguous(memory_format=torch.channels_last))
    for h in hooks:
        h.remove()
    return sum(2 * math.prod(shape) for shape in shapes), max(shapes, key=math.prod)


def batchnorm_block_ms(shape: tuple[int, ...], relu6: bool, compiled: bool) -> float:
    """Milliseconds of one BatchNorm + ReLU (ReLU6) forward and backward at `shape`, bf16 channels_last, eager or
    torch.compile'd (which fuses them into generated loops; its compile is not timed): the fusing the library
    offers, beside the floor of a perfect one."""
    bn = torch.nn.BatchNorm2d(shape[1])
    block = torch.nn.Sequential(bn, torch.nn.ReLU6() if relu6 else torch.nn.ReLU())
    block = torch.compile(block) if compiled else block
    x = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    grad = torch.randn_like(x)
    times = []
    for _ in range(13):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = block(x)
        y.backward(grad)
        times.append(time.perf_counter() - start)
    return 1e3 * med(times[3:])


def copy_bandwidth(nbytes: int) -> float:
    """GB/s of clone() of a bf16 tensor of `nbytes` (read once, written once), median of 15 after 3."""
    x = torch.randn(nbytes // 2).to(torch.bfloat16)
    times = []
    for _ in range(18):
        start = time.perf_counter()
        x.clone()
        times.append(time.perf_counter() - start)
    return 2 * nbytes / med(times[3:]) / 1e9


def main(args: list[str]) -> int:
    targets = [a.split(":") for a in args if ":" in a]
    threads = [a for a in args if ":" not in a]
    if not targets or any(len(t) != 2 or not t[1].isdigit() or int(t[1]) == 0 for t in targets) or len(threads) > 1 \
            or (threads and not threads[0].isdigit()):
        print("usage: python bench/conv_bound.py MODEL:IMAGES_PER_S [MODEL:IMAGES_PER_S ...] [THREADS], "
              "e.g. resnet20:3232 mobilenetv2:660 2", file=sys.stderr)
        return 2
    try:
        for arch, _ in targets:  # a mistyped name, before minutes of measuring
            check_model_name(arch)
        return measure(targets, args, int(threads[0]) if threads else None)
    except ZooError as err:  # that, or CIFAR-10 missing: one paragraph, not a traceback
        print(f"bench/conv_bound.py: {err}", file=sys.stderr)
        return 2


def measure(targets: list[list[str]], args: list[str], threads: int | None) -> int:
    if threads:
        torch.set_num_threads(threads)
    # As train.py keeps it for MobileNetV2, whose step's blocks are over glibc's mmap ceiling (ResNet-20's steps run
    # as fast either way: results/README.md)
    keep_freed_memory(2**63)
    dm = setup_data("cifar10", batch_size=BATCH)
    print(f"# {now_utc()}; python bench/conv_bound.py {' '.join(args)}; batch {BATCH}")
    for key, value in machine().items():
        print(f"# {key}: {value}")
    peak = {name: matmul_gflops(2048, dtype) for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))}
    print(f"torch.mm 2048x2048: bf16 {peak['bf16']:.0f} GFLOP/s, fp32 {peak['fp32']:.0f} GFLOP/s (median over 2 s)")
    for arch, target in targets:
        loop = BareLoop(dm, arch, channels_last=True, bf16=True)
        loop.seconds_per_step(1, warmup=2)  # oneDNN builds its primitives
        step_ms = 1e3 * loop.seconds_per_step(6 if arch == "mobilenetv2" else 15, warmup=0)
        conv_ms = step_ms * conv_share(loop)
        gflop = 3 * profile(loop.model, list(dm.input_shape))["flops"] * BATCH / 1e9
        bn_bytes, bn_largest = batchnorm_outputs(loop.model, list(dm.input_shape))
        bandwidth = copy_bandwidth(2 * math.prod(bn_largest))
        # BatchNorm + activation at their fewest passes over each output, fused: forward reads x twice (the
        # statistics, then normalise) and writes y; backward reads the gradient and x for its two sums, then both
        # again to write the input's gradient. 8 passes at the speed of a copy of the largest output.
        bn_floor = 8 * bn_bytes / bandwidth / 1e6
        allowed, at_peak = 1e3 * BATCH / int(target), gflop / peak["bf16"] * 1e3
        print(f"\n{arch}, bf16 channels_last: {BATCH / step_ms * 1e3:.0f} img/s, {step_ms:.1f} ms a step; "
              f"{gflop:.1f} GFLOP of training arithmetic; BatchNorm outputs {bn_bytes / 2**20:.0f} MiB a step\n"
              f"  convolutions (forward and backward): {conv_ms:.1f} ms, {conv_ms / step_ms:.0%} of the profiled step, "
              f"{gflop / conv_ms * 1e3:.0f} GFLOP/s = {gflop / conv_ms * 1e3 / peak['bf16']:.0%} of the bf16 matmul "
              f"peak (the linear layer's few FLOPs counted in); everything else {step_ms - conv_ms:.1f} ms\n"
              f"  BatchNorm and activation fused at 8 passes at {bandwidth:.0f} GB/s (a copy of the largest "
              f"output): at least {bn_floor:.1f} ms\n"
              f"  target {target} img/s allows {allowed:.1f} ms a step. Floors: today's convolutions + that "
              f"BatchNorm {conv_ms + bn_floor:.1f} ms ({BATCH / (conv_ms + bn_floor) * 1e3:.0f} img/s); "
              f"convolutions at the matmul peak ({at_peak:.1f} ms) + that BatchNorm {at_peak + bn_floor:.1f} ms "
              f"({BATCH / (at_peak + bn_floor) * 1e3:.0f} img/s)", flush=True)
        relu6 = arch == "mobilenetv2"
        eager, compiled = (batchnorm_block_ms(bn_largest, relu6, c) for c in (False, True))
        print(f"  one BatchNorm + {'ReLU6' if relu6 else 'ReLU'} at the largest output {list(bn_largest)}, forward and "
              f"backward: eager {eager:.1f} ms, torch.compile {compiled:.1f} ms, the 8-pass floor "
              f"{8 * 2 * math.prod(bn_largest) / bandwidth / 1e6:.1f} ms", flush=True)
        with torch.backends.mkldnn.flags(enabled=False):
            plain = BareLoop(dm, arch, channels_last=True, bf16=True)
            plain.seconds_per_step(1, warmup=1)
            print(f"  without oneDNN: {BATCH / plain.seconds_per_step(2, warmup=0):.0f} img/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
