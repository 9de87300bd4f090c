"""MobileNetV2 for 32x32 images: inverted residual blocks with linear bottlenecks.

Sandler, Howard, Zhu, Zhmoginov & Chen, "MobileNetV2: Inverted Residuals and Linear Bottlenecks"
(CVPR 2018). Registers `mobilenetv2`. The ImageNet network downsamples 32x, which would leave a
32x32 image at 1x1 after stage 4; like the usual CIFAR ports we use a stride-1 stem and stride 1 in
the second stage, so it downsamples 8x (32x32 -> 4x4). The layer table, the 1280-channel last conv,
dropout 0.2 and the width multiplier (channels rounded to multiples of 8) follow the paper and
torchvision: 2,236,682 parameters at width 1.0 for 10 classes on RGB input, as torchvision's.

    model = create_model("mobilenetv2", input_shape=(3, 32, 32), num_classes=10, width=0.5)
"""

import torch
from torch import Tensor, nn

from zoo.errors import ZooError
from zoo.models.registry import register_model

# t: expansion factor, c: output channels, n: blocks, s: stride of the first block.
# Strides 1, 1, 2, 2, 1, 2, 1 (the paper has 1, 2, 2, 2, 1, 2, 1 and a stride-2 stem).
CONFIG = [
    # t, c, n, s
    [1, 16, 1, 1],
    [6, 24, 2, 1],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def round8(channels: float) -> int:
    """Nearest multiple of 8 (hardware-friendly), never below 8 nor more than 10% below `channels`."""
    rounded = max(8, int(channels + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * channels else rounded


class StridedDepthwiseConv2d(nn.Conv2d):
    """A strided depthwise convolution that computes in fp32 on the CPU where it would compute in bf16
    or fp16 (under autocast, or with half-precision weights), and hands back its input's dtype.
    oneDNN's bf16 kernel for it is 5-40x slower than its fp32 one here
    (results/cifar10_mobilenetv2/depthwise_bf16.txt): 0.4 s of a 1 s bf16 training step at batch 128
    went to these three layers. Same parameters, same function; only their arithmetic is finer."""

    def forward(self, x: Tensor) -> Tensor:
        autocast = x.dtype == torch.float32 and torch.is_autocast_enabled("cpu")
        if x.device.type != "cpu" or not (x.dtype in (torch.bfloat16, torch.float16) or autocast):
            return super().forward(x)  # fp32 or fp64 already, or a GPU: the plain convolution
        bias = None if self.bias is None else self.bias.float()
        with torch.autocast("cpu", enabled=False):
            return self._conv_forward(x.float(), self.weight.float(), bias).to(x.dtype)


class _ReLU6InPlace(torch.autograd.Function):
    """ReLU6 in place whose backward reads the output: ReLU6's gradient passes where 0 < x < 6, and
    there x == ReLU6(x), while where x was clamped the output sits on 0 or 6 and is masked the same.
    Autograd's own in-place hardtanh_ instead saves a clone of its input, one full pass over each of
    these activations per step (the largest tensors of the network: 38 MB in bf16 at batch 128)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = torch.nn.functional.hardtanh_(x, 0.0, 6.0)
        ctx.mark_dirty(out)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, out, 0.0, 6.0)


class ReLU6(nn.ReLU6):
    """nn.ReLU6 that trains in place without a copy (_ReLU6InPlace); the same numbers, bit for bit.
    Evaluation, export, torch.compile and out-of-place use are plain nn.ReLU6."""

    def forward(self, x: Tensor) -> Tensor:
        if (self.inplace and x.requires_grad and torch.is_grad_enabled()
                and not torch.jit.is_scripting() and not torch.compiler.is_compiling()):
            return _ReLU6InPlace.apply(x)
        return super().forward(x)


def conv_bn_relu6(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    depthwise_strided = groups == c_in == c_out and c_in > 1 and stride > 1
    return nn.Sequential(
        (StridedDepthwiseConv2d if depthwise_strided else nn.Conv2d)(
            c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 project; no ReLU after the projection (linear bottleneck)."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        layers = [conv_bn_relu6(c_in, hidden, 1)] if expand != 1 else []
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0, dropout: float = 0.2):
        super().__init__()
        c_in = round8(32 * width)
        layers: list[nn.Module] = [conv_bn_relu6(in_channels, c_in, 3, stride=1)]
        for t, c, n, s in CONFIG:
            c_out = round8(c * width)
            for i in range(n):
                layers.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        last = round8(1280 * max(1.0, width))  # the paper keeps 1280 for width < 1
        layers.append(conv_bn_relu6(c_in, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)  # near-uniform first prediction
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x)).flatten(1)  # (B, last, 1, 1) -> (B, last)
        return self.classifier(x)


@register_model("mobilenetv2", recipe=dict(optimizer="sgd", lr=0.05, weight_decay=4e-5, scheduler="cosine"))
def mobilenetv2(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0,
                dropout: float = 0.2) -> nn.Module:
    """Args:
        width: width multiplier; every layer's channels are scaled by it (rounded to multiples of 8).
        dropout: dropout probability before the classifier.
    """
    if not width > 0:
        raise ZooError(f"mobilenetv2 option width={width!r} must be a positive multiplier, e.g. 0.5, 1.0 or 1.4.")
    if not 0.0 <= dropout < 1.0:
        raise ZooError(f"mobilenetv2 option dropout={dropout!r} must be a probability in [0, 1).")
    return MobileNetV2(input_shape[0], num_classes, width, dropout)
