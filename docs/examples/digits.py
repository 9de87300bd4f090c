"""scikit-learn's handwritten digits as a zoo dataset: the worked example of docs/using-models.md.

1,797 greyscale 8x8 digits (the UCI "Optical Recognition of Handwritten Digits" test set, E. Alpaydin
and C. Kaynak, 1998) with 17 grey levels 0..16, shipped inside scikit-learn: no download, no
data_dir. The data has no official test split, so a fixed, stratified 20% is held out (the same
360 images every run); TensorDataModule carves validation from the other 1,437 (val_size, a tenth
by default) and computes mean/std from the training split.

    python train.py fit --data docs.examples.digits.DigitsDataModule --model lenet5
"""
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor

from datamodules.tensor import TensorDataModule


class DigitsDataModule(TensorDataModule):
    """scikit-learn's digits: 1,437 train+val / 360 test, 1x8x8, 10 classes."""

    name = "digits"  # the run directories are checkpoints/digits/<model>/
    num_classes = 10
    input_shape = (1, 8, 8)
    class_names = [str(d) for d in range(10)]
    pad, flip = 1, False  # --data.augment true shifts by up to a pixel; a mirrored digit is no digit

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        digits = load_digits()  # images (1797, 8, 8) float64 in 0..16, target (1797,)
        x = torch.from_numpy(np.rint(digits.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)  # (N, 1, 8, 8)
        y = torch.from_numpy(digits.target.astype(np.int64))
        train, test = train_test_split(np.arange(len(y)), test_size=0.2, stratify=digits.target, random_state=0)
        train, test = torch.from_numpy(train), torch.from_numpy(test)
        return x[train], y[train], x[test], y[test]
