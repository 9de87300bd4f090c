"""MobileNetV2's training step with zoo.models.mobilenetv2.ReLU6 (in place, no copy) against autograd's
own in-place nn.ReLU6 (a clone of each input per step), two networks in one process, alternating rounds
of 8 steps, with the page faults each step caused (fresh allocations the clones need). Issue 16:

    python bench/relu6.py [ROUNDS] > results/cifar10_conv/relu6_xeon.txt
"""
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.loops import BareLoop, setup_data  # noqa: E402

if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    dm = setup_data("cifar10", batch_size=128)
    loops = {"ours": BareLoop(dm, "mobilenetv2"), "autograd": BareLoop(dm, "mobilenetv2")}
    for m in loops["autograd"].model.modules():
        if isinstance(m, torch.nn.ReLU6):
            m.__class__ = torch.nn.ReLU6  # autograd's hardtanh_, as before
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: python bench/relu6.py {rounds}; MobileNetV2, "
          f"batch 128, {torch.get_num_threads()} threads, bf16={loops['ours'].bf16}, channels_last", flush=True)
    for loop in loops.values():
        loop.seconds_per_step(1, warmup=1)
    speeds: dict[str, list[float]] = {k: [] for k in loops}
    for r in range(rounds):
        for name, loop in loops.items():
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            speeds[name].append(128 / loop.seconds_per_step(8, warmup=0))
            faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 8
            print(f"round {r}  {name:8s}  {speeds[name][-1]:6.1f} img/s  {faults:6.0f} page faults/step", flush=True)
    for name, v in speeds.items():
        print(f"{name:8s} median {statistics.median(v):6.1f} img/s ({min(v):.1f}-{max(v):.1f})")
    print(f"ours / autograd: {statistics.median(speeds['ours']) / statistics.median(speeds['autograd']):.2f}x")
