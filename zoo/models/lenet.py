"""LeNet-5: two conv + pool stages and three fully connected layers, the classic digit recogniser.

LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document recognition" (1998).
Registers `lenet5`. Layout as in the paper: conv 6@5x5, pool, conv 16@5x5, pool, FC 120-84-classes.
The paper fed 32x32 images (28x28 MNIST digits centred in a 32x32 field), so a side shorter than 32
is zero-padded up to 32 by the first conv; MNIST then has 61,706 parameters ("about 60K").
We use ReLU and 2x2 max pooling, the modern choice, rather than the paper's scaled tanh and
trainable average-pooling "subsampling": ReLU does not saturate, so it trains well with default
optimiser settings, and it is what people mean by LeNet-5 today. C3 connects to all six S2 maps
(the paper's sparse connection table only saved 1998's compute), and the head is a plain linear
layer in place of the paper's RBF units.

    model = create_model("lenet5", input_shape=(1, 28, 28), num_classes=10)
"""

from torch import Tensor, nn

from zoo.models.registry import register_model


class LeNet5(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        channels, height, width = input_shape
        # Pad each side so that the padded image is at least 32 pixels, as in the paper.
        pad_h, pad_w = max(0, (33 - height) // 2), max(0, (33 - width) // 2)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, kernel_size=5, padding=(pad_h, pad_w)), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2),
        )
        # Spatial size after conv5 -> pool2 -> conv5 -> pool2; 5x5 for 32x32 (and padded 28x28) input.
        out_h = ((height + 2 * pad_h - 4) // 2 - 4) // 2
        out_w = ((width + 2 * pad_w - 4) // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 16, out_h, out_w) -> (B, 16 * out_h * out_w)
            nn.Linear(16 * out_h * out_w, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@register_model("lenet5", recipe=dict(optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="cosine"))
def lenet5(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return LeNet5(input_shape, num_classes)
