"""A 3x3 depthwise convolution's forward + backward at MobileNetV2's CIFAR shapes (batch 128, fp32):
torch's convolution (oneDNN on CPU) against the same function written as nine shifted
multiply-adds (a custom autograd Function with its own backward), in NCHW and channels_last.
A probe for issue 16 (is there a faster depthwise algorithm in eager PyTorch on this CPU?):

    python bench/depthwise.py > results/cifar10_mobilenetv2/depthwise.txt

`dtypes` instead compares torch's convolution in bf16 and fp32, channels_last and NCHW, and each
stride-2 layer also as a stride-1 convolution subsampled (the probe behind StridedDepthwiseConv2d):

    python bench/depthwise.py dtypes > results/cifar10_mobilenetv2/depthwise_bf16.txt
"""
import sys
import time

import torch
import torch.nn.functional as F


class ShiftDepthwise(torch.autograd.Function):
    """out[c] = sum over the 9 taps of w[c, i, j] * the input shifted by (i, j): strided views, no im2col."""

    @staticmethod
    def forward(ctx, x, w, stride):
        C, (Ho, Wo) = x.shape[1], ((x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1)
        xp = F.pad(x, (1, 1, 1, 1))
        out = None
        for i in range(3):
            for j in range(3):
                tap = xp[:, :, i:i + (Ho - 1) * stride + 1:stride, j:j + (Wo - 1) * stride + 1:stride]
                term = tap * w[:, 0, i, j].view(1, C, 1, 1)
                out = term if out is None else out.add_(term)
        ctx.save_for_backward(xp, w)
        ctx.stride = stride
        return out

    @staticmethod
    def backward(ctx, g):
        xp, w = ctx.saved_tensors
        s, (C, Ho, Wo) = ctx.stride, g.shape[1:]
        gxp, gw = torch.zeros_like(xp), torch.empty_like(w)
        for i in range(3):
            for j in range(3):
                tap = (slice(None), slice(None), slice(i, i + (Ho - 1) * s + 1, s), slice(j, j + (Wo - 1) * s + 1, s))
                gxp[tap].addcmul_(g, w[:, 0, i, j].view(1, C, 1, 1))
                gw[:, 0, i, j] = (g * xp[tap]).sum((0, 2, 3))
        return gxp[:, :, 1:-1, 1:-1], gw, None


# (channels, input size, stride) of MobileNetV2's depthwise layers on 32x32 inputs (zoo/models/mobilenetv2.py)
SHAPES = [(96, 32, 1), (144, 32, 1), (144, 32, 2), (192, 16, 1), (192, 16, 2), (384, 8, 1), (576, 8, 1),
          (576, 8, 2), (960, 4, 1)]


def ms_per_step(fn, x, w, n=5):
    for _ in range(2):  # warm-up
        out = fn(x, w)
        out.backward(torch.ones_like(out))
    start = time.perf_counter()
    for _ in range(n):
        x.grad = w.grad = None
        out = fn(x, w)
        out.backward(torch.ones_like(out))
    return (time.perf_counter() - start) / n * 1000


def dtypes() -> None:
    total: dict[str, float] = {}
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: python bench/depthwise.py dtypes")
    print(f"ms per forward + backward, batch 128, {torch.get_num_threads()} threads; s1sub: stride 1, then [::2, ::2]")
    for C, size, s in SHAPES:
        cells = []
        for dtype, dtype_name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
            for fmt_name, fmt in (("CL", torch.channels_last), ("NCHW", torch.contiguous_format)):
                x = torch.randn(128, C, size, size, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
                w = torch.randn(C, 1, 3, 3, dtype=dtype, requires_grad=True)
                impls = {"conv": lambda x, w, s=s, C=C: F.conv2d(x, w, None, s, 1, 1, C)}
                if s == 2:
                    impls["s1sub"] = lambda x, w, C=C: F.conv2d(x, w, None, 1, 1, 1, C)[:, :, ::2, ::2]
                for name, fn in impls.items():
                    key = f"{dtype_name} {fmt_name} {name}"
                    ms = ms_per_step(fn, x, w, n=4)
                    total[key] = total.get(key, 0.0) + ms
                    cells.append(f"{key} {ms:6.1f}")
        print(f"C={C:4d} H={size:2d} s={s}: " + " | ".join(cells), flush=True)
    print("sum over the shapes (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in total.items()))


if __name__ == "__main__":
    if sys.argv[1:2] == ["dtypes"]:
        dtypes()
        sys.exit()
    x = torch.randn(2, 8, 9, 9, requires_grad=True)  # the two agree before anything is timed
    w = torch.randn(8, 1, 3, 3, requires_grad=True)
    for s in (1, 2):
        ref = torch.autograd.grad(F.conv2d(x, w, None, s, 1, 1, 8).square().sum(), (x, w))
        got = torch.autograd.grad(ShiftDepthwise.apply(x, w, s).square().sum(), (x, w))
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(ref, got)), "shift != conv"
    total: dict[str, float] = {}
    print(f"ms per forward + backward, batch 128, fp32, {torch.get_num_threads()} threads")
    for C, size, s in SHAPES:
        cells = []
        for fmt_name, fmt in (("NCHW", torch.contiguous_format), ("CL", torch.channels_last)):
            x = torch.randn(128, C, size, size).contiguous(memory_format=fmt).requires_grad_()
            w = torch.randn(C, 1, 3, 3, requires_grad=True)
            impls = {"conv": lambda x, w, s=s, C=C: F.conv2d(x, w, None, s, 1, 1, C),
                     "shift": lambda x, w, s=s: ShiftDepthwise.apply(x, w, s)}
            for name, fn in impls.items():
                ms = ms_per_step(fn, x, w)
                total[f"{fmt_name} {name}"] = total.get(f"{fmt_name} {name}", 0.0) + ms
                cells.append(f"{fmt_name} {name} {ms:7.1f}")
        print(f"C={C:4d} H={size:2d} s={s}: " + " | ".join(cells), flush=True)
    print("sum over the shapes (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in total.items()))
