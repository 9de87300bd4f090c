"""Multi-layer perceptron: Linear-ReLU(-Dropout) blocks on the flattened input, then a linear head.

The fully connected network of the lectures (Rumelhart, Hinton & Williams 1986 for backprop through
it). Registers `mlp` (takes flat features too), with the default recipe (Adam at 1e-3, no schedule:
zoo.models.registry.DEFAULT_RECIPE). The default, one hidden layer of 128, is
784-128-10 = 101,770 parameters on MNIST; hidden=[10, 10] on two-moons is the lecture's MLP(10, 10).

    model = create_model("mlp", input_shape=(2,), num_classes=2, hidden=[10, 10])
"""

import math
from collections.abc import Sequence

from torch import nn

from zoo.errors import ZooError
from zoo.models.registry import register_model


@register_model("mlp", flat_ok=True)
def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int] = (128,),
        dropout: float = 0.0) -> nn.Module:
    """Args:
        hidden: width of each hidden layer, input side first; [] gives the linear model.
        dropout: probability of zeroing a hidden unit during training (0 turns dropout off).
    """
    if isinstance(hidden, (str, bytes)) or not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ZooError(f"mlp option hidden={hidden!r} must be a list of positive layer widths, e.g. [128] or [10, 10].")
    if not 0.0 <= dropout < 1.0:
        raise ZooError(f"mlp option dropout={dropout!r} must be a probability in [0, 1); use 0 to turn it off.")
    layers: list[nn.Module] = [nn.Flatten()]  # (B, *input_shape) -> (B, prod(input_shape))
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
