"""airbench94: the network of Keller Jordan's CIFAR-10 speedrun, written from its description.

K. Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (2024, arXiv 2404.00498). A 2x2
convolution that whitens the image's 2x2 patches (24 channels: the 12 eigenvectors of the training
set's patch covariance, scaled by 1/sqrt(eigenvalue), and their negatives), then three groups of
conv3x3 - maxpool2 - BN - GELU - conv3x3 - BN - GELU with 64, 256 and 256 channels, a 3x3 max-pool
and a linear layer (PyTorch's default initialisation) scaled by 1/9. BatchNorm has no learned scale (its
bias is learned) and running statistics that keep 0.6 of the old value (PyTorch's momentum 0.4).
1.97M parameters, 236M forward FLOPs per image.

The whitening layer is set from data, not trained: `init_from_data(x)` computes it from training
images (the caller passes them; ZooModule does at the start of a fit from the training split), and a
buffer records that it was done, so a resumed run keeps the saved weights instead of recomputing them.

    model = create_model("airbench94", input_shape=(3, 32, 32), num_classes=10)
    model.init_from_data(train_images[:5000])     # normalised float (N, 3, 32, 32)
"""

import torch
from torch import Tensor, nn

from zoo.models.registry import register_model

WIDTHS = (64, 256, 256)
WHITEN_KERNEL = 2
BIAS_LR_SCALE = 64.0  # BatchNorm biases learn 64x faster
WHITEN_BIAS_EPOCHS = 3


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm without a learned scale (weight fixed at 1), as the paper's network has it."""

    def __init__(self, channels: int, momentum: float = 0.4, eps: float = 1e-12):
        super().__init__(channels, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


class Conv(nn.Conv2d):
    """3x3 'same' convolution without bias, its first in_channels filters started as the identity (dirac)."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__(channels_in, channels_out, 3, padding="same", bias=False)
        with torch.no_grad():
            nn.init.dirac_(self.weight[:channels_in])


class ConvGroup(nn.Module):
    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv1, self.pool = Conv(channels_in, channels_out), nn.MaxPool2d(2)
        self.norm1, self.conv2, self.norm2 = BatchNorm(channels_out), Conv(channels_out, channels_out), BatchNorm(
            channels_out)
        self.activ = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class AirBench(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...] = WIDTHS, scale: float = 1 / 9):
        super().__init__()
        whiten_width = 2 * in_channels * WHITEN_KERNEL**2
        self.whiten = nn.Conv2d(in_channels, whiten_width, WHITEN_KERNEL, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set from data, never trained
        nn.init.zeros_(self.whiten.bias)
        self.register_buffer("data_initialised", torch.zeros((), dtype=torch.bool))  # resume keeps it
        groups, channels = [], whiten_width
        for width in widths:
            groups.append(ConvGroup(channels, width))
            channels = width
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)  # the paper's MaxPool2d(3) on its 3x3 map, for any image size
        # PyTorch's default init and the 1/9 scale, as airbench94.py. (Later variants rescale the head
        # to unit std and divide by 256 instead: about the same logits. Unit std with 1/9 is 28x too large.)
        self.head = nn.Linear(channels, num_classes, bias=False)
        self.scale = scale

    @torch.no_grad()
    def init_from_data(self, x: Tensor, eps: float = 5e-4) -> None:
        """Whitening filters from images x (N, C, H, W), normalised as in training: the eigenvectors
        of the covariance of all 2x2 patches, each divided by the square root of its eigenvalue (+eps),
        and their negatives (so that GELU keeps both signs)."""
        k = WHITEN_KERNEL
        c = x.shape[1]
        patches = x.float().unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())  # float64: a stable split of near-ties
        eigenvalues, eigenvectors = eigenvalues.flip(0).float(), eigenvectors.T.flip(0).float()  # largest first
        filters = (eigenvectors / (eigenvalues + eps).sqrt()[:, None]).reshape(-1, c, k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))
        self.data_initialised.fill_(True)

    def optimizer_groups(self) -> list[dict]:
        """The paper's parameter groups: BatchNorm biases at 64x the learning rate with the weight decay
        divided by 64 (so the decay each step takes stays the same: decoupled from the lr), the whitening
        bias trained for the first 3 epochs only, the other weights as given."""
        norm_biases = [p for m in self.modules() if isinstance(m, BatchNorm) for p in (m.bias,)]
        others = [p for n, p in self.named_parameters() if p.requires_grad and "norm" not in n and n != "whiten.bias"]
        return [dict(params=norm_biases, lr_scale=BIAS_LR_SCALE, weight_decay_scale=1 / BIAS_LR_SCALE),
                dict(params=[self.whiten.bias], train_epochs=WHITEN_BIAS_EPOCHS),
                dict(params=others)]

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.gelu(self.whiten(x))
        x = self.pool(self.groups(x)).flatten(1)
        return self.head(x) * self.scale


# The paper's recipe (airbench94.py's hyperparameters), for this project's mean-reduced loss: the paper sums
# the loss over a batch of 1024 and uses lr 11.5 / (1024 (1 + 1/(1 - 0.85))) = 0.001465, i.e. lr 1.5 on
# the mean; its weight decay, 0.0153 per 1024 examples and decoupled, is a decay of 0.0019957 of the
# weights per step at peak: 0.0019957 / 1.5 = 0.0013305 as SGD's (coupled) weight_decay. Nesterov
# momentum 0.85, label smoothing 0.2, the triangle schedule, Lookahead; 10 epochs (the paper: 9.9) of
# batch 1024 with 2-pixel translation (reflection padding) and the alternating flip. Test-time
# augmentation (mirror and translate) is an evaluation option: evaluate.py --tta flip_translate.
RECIPE = dict(optimizer="sgd", lr=1.5, weight_decay=0.0013305, momentum=0.85, label_smoothing=0.2,
              scheduler="triangle", lookahead=True, batch_size=1024, max_epochs=10,
              data=dict(translate=2, pad_mode="reflect", alternate_flip=True))


@register_model("airbench94", recipe=RECIPE)
def airbench94(input_shape, num_classes):
    return AirBench(input_shape[0], num_classes)
