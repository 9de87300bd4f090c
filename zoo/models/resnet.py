"""ResNets for CIFAR-10: a 3x3 stem and three stages of BasicBlocks with 16, 32 and 64 channels.

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition" (2015, arXiv 1512.03385),
section 4.2: depth 6n+2, stride 2 at the start of stages 2 and 3, global average pooling and one
linear layer. Shortcuts are option A (parameter-free: strided subsampling and zero-padded channels),
so ResNet-20 has 0.27M parameters and ResNet-56 0.85M, as in the paper's Table 6.
Registers `resnet20`, `resnet32`, `resnet44`, `resnet56`, `resnet110`. Any number of input channels
and any image size (AdaptiveAvgPool2d), so the same network runs on MNIST and CIFAR-10.

    model = create_model("resnet20", input_shape=(3, 32, 32), num_classes=10)
"""

import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.registry import register_model

# How every depth trains unless told otherwise: SGD with Nesterov momentum at lr 0.1, weight decay
# 5e-4 and a cosine schedule, the usual ResNet-on-CIFAR recipe.
RECIPE = dict(optimizer="sgd", lr=0.1, weight_decay=5e-4, scheduler="cosine")


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus an identity (option A) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.extra_channels = stride, planes - in_planes

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride == 1 and self.extra_channels == 0:
            return x
        # Option A: keep every other pixel (matching the strided conv's ceil(H/2) output) and append
        # zero channels, half before and half after, so the shortcut adds no parameters.
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))  # (B, planes, H', W')

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, depth: int, in_channels: int, num_classes: int):
        super().__init__()
        assert (depth - 2) % 6 == 0, "CIFAR ResNets have depth 6n+2"
        n = (depth - 2) // 6
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        ]
        in_planes = 16
        for planes, stride in [(16, 1), (32, 2), (64, 2)]:
            for i in range(n):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # He et al. 2015b
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                # Small head weights so the initial prediction is near uniform (loss near ln(classes)).
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x)).flatten(1)  # (B, 64, 1, 1) -> (B, 64)
        return self.classifier(x)


@register_model("resnet20", recipe=RECIPE)
def resnet20(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return ResNet(20, input_shape[0], num_classes)


@register_model("resnet32", recipe=RECIPE)
def resnet32(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return ResNet(32, input_shape[0], num_classes)


@register_model("resnet44", recipe=RECIPE)
def resnet44(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return ResNet(44, input_shape[0], num_classes)


@register_model("resnet56", recipe=RECIPE)
def resnet56(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return ResNet(56, input_shape[0], num_classes)


@register_model("resnet110", recipe=RECIPE)
def resnet110(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return ResNet(110, input_shape[0], num_classes)
