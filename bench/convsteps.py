"""Training images/s of a conv net's step on CIFAR-10, per option: fp32 or bf16 autocast, NCHW or
channels_last, eager or torch.compile (its compile time printed apart). The bare loop of loops.py
(the recipe's optimizer, fused step, data from the in-memory loader), batch 128, after 2 warm-up steps.
A probe for issue 16, not yet a section of bench.md:

    python bench/convsteps.py resnet20 [THREADS] [VARIANTS] [profile]   # e.g. mobilenetv2 2 "fp32 CL,bf16 CL"

`profile` adds torch.profiler's table of one step per variant: where the step's time goes, by op.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.loops import BareLoop, setup_data  # noqa: E402

VARIANTS = {
    "fp32 NCHW": dict(channels_last=False, bf16=False),
    "fp32 CL": dict(channels_last=True, bf16=False),
    "bf16 CL": dict(channels_last=True, bf16=True),
    "fp32 NCHW compile": dict(channels_last=False, bf16=False, compile="model"),
    "fp32 CL compile": dict(channels_last=True, bf16=False, compile="model"),
    "bf16 CL compile": dict(channels_last=True, bf16=True, compile="model"),
}

if __name__ == "__main__":
    arch = sys.argv[1] if len(sys.argv) > 1 else "resnet20"
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else torch.get_num_threads())
    names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(VARIANTS)
    dm = setup_data("cifar10")
    steps = 6 if arch == "mobilenetv2" else 15
    for name in names:
        loop = BareLoop(dm, arch, **VARIANTS[name])
        start = time.perf_counter()
        loop.seconds_per_step(1, warmup=2)  # warm-up, and the compile when there is one
        warm = time.perf_counter() - start
        s = loop.seconds_per_step(steps, warmup=0)
        print(f"{arch:12s} {name:20s} {128 / s:7.1f} img/s  (warm-up + compile {warm:.1f} s), "
              f"{torch.get_num_threads()} threads", flush=True)
        if sys.argv[4:5] == ["profile"]:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                loop.seconds_per_step(1, warmup=0)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)
