"""Training images/s of a conv net's step on CIFAR-10, per option: fp32 or bf16 autocast, NCHW or
channels_last, eager or torch.compile (its compile time printed apart). The bare loop of loops.py
(the recipe's optimizer, fused step, data from the in-memory loader), batch 128, after 2 warm-up steps.
A probe for issue 16, not yet a section of bench.md:

    python bench/convsteps.py resnet20 [THREADS] [VARIANTS] [profile] [batch=N]   # e.g. mobilenetv2 2 "fp32 CL,bf16 CL"

`profile` adds torch.profiler's table of one step per variant: where the step's time goes, by op.
`batch=N` times the step at another batch size than the recipe's 128 (a recipe option, issue 16's
"batch size with scaled learning rate": does a bigger batch buy images/s on this CPU?).
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
    # MobileNetV2 as it was before its strided depthwise layers ran in fp32 (zoo/models/mobilenetv2.py)
    "bf16 CL dw-bf16": dict(channels_last=True, bf16=True, strided_depthwise_bf16=True),
    # ReLU6 out of place: in place, autograd clones each input first (aten::clone under hardtanh_)
    "fp32 CL relu6-out": dict(channels_last=True, bf16=False, relu6_out_of_place=True),
    # MobileNetV2's ReLU6 with autograd's own in-place hardtanh_ (a clone of each input per step), as
    # before zoo.models.mobilenetv2.ReLU6
    "bf16 CL relu6-autograd": dict(channels_last=True, bf16=True, relu6_autograd=True),
    "fp32 CL relu6-autograd": dict(channels_last=True, bf16=False, relu6_autograd=True),
    # MobileNetV2 with every depthwise layer in fp32, not only the strided ones (bench/layers.py on the Xeon)
    "bf16 CL dw-fp32": dict(channels_last=True, bf16=True, depthwise_fp32=True),
}


def plain_strided_depthwise(model: torch.nn.Module) -> None:
    """Turn MobileNetV2's fp32 strided depthwise layers back into plain convolutions (bf16 under autocast)."""
    from zoo.models.mobilenetv2 import StridedDepthwiseConv2d
    for m in model.modules():
        if isinstance(m, StridedDepthwiseConv2d):
            m.__class__ = torch.nn.Conv2d


def autograd_relu6(model: torch.nn.Module) -> None:
    """Give MobileNetV2's ReLU6 layers back autograd's in-place hardtanh_ (a clone of each input per step)."""
    for m in model.modules():
        if isinstance(m, torch.nn.ReLU6):
            m.__class__ = torch.nn.ReLU6


def fp32_depthwise(model: torch.nn.Module) -> None:
    """Run every depthwise layer in fp32 under bf16 autocast, as StridedDepthwiseConv2d does the strided ones."""
    from zoo.models.mobilenetv2 import StridedDepthwiseConv2d
    for m in model.modules():
        if type(m) is torch.nn.Conv2d and m.groups == m.in_channels == m.out_channels > 1:
            m.__class__ = StridedDepthwiseConv2d  # fp32 at any stride


if __name__ == "__main__":
    arch = sys.argv[1] if len(sys.argv) > 1 else "resnet20"
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else torch.get_num_threads())
    names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(VARIANTS)
    flags = sys.argv[4:]
    batch = next((int(f[6:]) for f in flags if f.startswith("batch=")), 128)
    dm = setup_data("cifar10", batch_size=batch)
    steps = 6 if arch == "mobilenetv2" else 15
    for name in names:
        options = dict(VARIANTS[name])
        dw_bf16 = options.pop("strided_depthwise_bf16", False)
        relu6_out = options.pop("relu6_out_of_place", False)
        relu6_autograd = options.pop("relu6_autograd", False)
        depthwise_fp32 = options.pop("depthwise_fp32", False)
        loop = BareLoop(dm, arch, **options)
        if dw_bf16:
            plain_strided_depthwise(loop.model)
        for m in loop.model.modules() if relu6_out else []:
            if isinstance(m, torch.nn.ReLU6):
                m.inplace = False
        if depthwise_fp32:
            fp32_depthwise(loop.model)
        if relu6_autograd:
            autograd_relu6(loop.model)
        start = time.perf_counter()
        loop.seconds_per_step(1, warmup=2)  # warm-up, and the compile when there is one
        warm = time.perf_counter() - start
        s = loop.seconds_per_step(steps, warmup=0)
        print(f"{arch:12s} {name:20s} {batch / s:7.1f} img/s  (warm-up + compile {warm:.1f} s), "
              f"batch {batch}, {torch.get_num_threads()} threads", flush=True)
        if "profile" in flags:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                loop.seconds_per_step(1, warmup=0)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)
