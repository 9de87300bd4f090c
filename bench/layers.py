"""Each convolution of a zoo model, forward + backward at its own input shape, in bf16 and in fp32
(channels_last, batch 128): which layers a CPU's bf16 kernels make slower rather than faster.
The probe that found MobileNetV2's strided depthwise layers (zoo/models/mobilenetv2.py). Each layer is
timed alone, as a plain nn.Conv2d with the layer's configuration, so a layer already lifted to fp32
shows what its bf16 kernel would cost:

    python bench/layers.py resnet20 > results/cifar10_conv/layers_resnet20_zen5.txt
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.depthwise import ms_per_step  # noqa: E402
from zoo.errors import ZooError  # noqa: E402
from zoo.models.registry import create_model  # noqa: E402


def conv_shapes(arch: str, batch: int) -> dict[tuple, int]:
    """(in, out, kernel, stride, groups, input shape) of every Conv2d the model runs -> how many times."""
    model = create_model(arch, (3, 32, 32), 10)
    seen: dict[tuple, int] = {}

    def hook(m, inputs, _):
        key = (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.groups, tuple(inputs[0].shape))
        seen[key] = seen.get(key, 0) + 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.randn(batch, 3, 32, 32))
    for h in handles:
        h.remove()
    return seen


def ms_forward_backward(conv: nn.Module, x: torch.Tensor, bf16: bool) -> float:
    def forward(x, _):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return conv(x)
    return ms_per_step(forward, x, conv.weight, n=4)  # after 2 warm-ups: oneDNN builds its primitives


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/layers.py ARCH   (a zoo model that takes 3x32x32 images, e.g. resnet20)")
    arch, batch = sys.argv[1], 128
    try:
        shapes = conv_shapes(arch, batch)
    except ZooError as err:
        sys.exit(f"bench/layers.py: {err}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: python bench/layers.py {arch}; "
          f"{torch.get_num_threads()} threads, batch {batch}, channels_last, ms per forward + backward")
    print("| in | out | k | stride | groups | input HxW | times | bf16 ms | fp32 ms | bf16 / fp32 |\n"
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    total = {True: 0.0, False: 0.0}
    for (c_in, c_out, k, s, g, shape), times in shapes.items():
        conv = nn.Conv2d(c_in, c_out, k, s, k // 2, groups=g, bias=False).to(memory_format=torch.channels_last)
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_(shape[1] > 3)
        ms = {bf16: ms_forward_backward(conv, x, bf16) for bf16 in (True, False)}
        for bf16 in ms:
            total[bf16] += ms[bf16] * times
        flag = "  **fp32 faster**" if ms[True] > ms[False] else ""
        print(f"| {c_in} | {c_out} | {k} | {s} | {g} | {shape[2]}x{shape[3]} | {times} | {ms[True]:.1f} | "
              f"{ms[False]:.1f} | {ms[True] / ms[False]:.2f}{flag} |", flush=True)
    print(f"\nsum over the network's convolutions: bf16 {total[True]:.0f} ms, fp32 {total[False]:.0f} ms")
