"""Linear classifier: one nn.Linear on the flattened input, the baseline every other model must beat.

Multinomial logistic regression (softmax regression), the lecture's linear-classifier baseline:
784*10 + 10 = 7,850 parameters on MNIST. Registers `linear` (takes flat features too), with the
default recipe (Adam at 1e-3, no schedule: zoo.models.registry.DEFAULT_RECIPE).

    model = create_model("linear", input_shape=(1, 28, 28), num_classes=10)
"""

import math

from torch import nn

from zoo.models.registry import register_model


@register_model("linear", flat_ok=True)
def linear(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """One affine map from the flattened input (B, prod(input_shape)) to the logits (B, num_classes)."""
    fc = nn.Linear(math.prod(input_shape), num_classes)
    # Start from zero: the loss is convex, so nothing is lost, and the first loss is exactly ln(C).
    # PyTorch's default init gives 3,072 correlated CIFAR pixels logits large enough to start 15%
    # above ln(10), which the recipe's first check rightly flags.
    nn.init.zeros_(fc.weight)
    nn.init.zeros_(fc.bias)
    return nn.Sequential(nn.Flatten(), fc)
