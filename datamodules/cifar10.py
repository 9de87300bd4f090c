"""CIFAR-10 (Krizhevsky, 2009): 32x32 colour images in 10 classes, as in-memory uint8 tensors.

Reads the python pickles of <data_dir>/cifar-10-batches-py/ directly (no torchvision md5 check,
so the project's rebuilt offline copy loads too). 45,000 train / 5,000 val (carved from the
official 50,000) / 10,000 test; 3x32x32. Augmentation on by default: random crop with 4 px
padding plus horizontal flips, the standard ResNet-on-CIFAR recipe; augment=False turns it off.
Registered as 'cifar10'.

    python train.py fit --data cifar10 --model resnet20
"""
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from datamodules.tensor import TensorDataModule, missing_data_error
from zoo.errors import ZooError

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
FILES = TRAIN_BATCHES + ["test_batch", "batches.meta"]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def read_pickle(path: Path) -> dict:
    """Unpickle one CIFAR file (Python-2 pickles: latin1 gives str keys); a damaged file is a ZooError."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:  # truncation surfaces as EOFError, UnpicklingError, ValueError, ...
        raise ZooError(
            f"{path} is truncated or corrupted and cannot be unpickled ({type(e).__name__}: {e}). "
            f"Fix: delete it and fetch it again (--data.download true, or `make data`)."
        ) from e


def read_batch(path: Path) -> tuple[Tensor, Tensor]:
    """One batch file as (images uint8 (10000, 3, 32, 32), labels int64 (10000,))."""
    d = read_pickle(path)
    data, labels = (d.get("data"), d.get("labels")) if isinstance(d, dict) else (None, None)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape == (10_000, 3072)
            and labels is not None and len(labels) == 10_000):
        raise ZooError(
            f"{path} does not hold a CIFAR-10 batch (expected 'data' uint8 (10000, 3072) and 10000 "
            f"'labels'). Fix: delete it and fetch it again (--data.download true, or `make data`)."
        )
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # each row is one image, CHW order
    return images, torch.tensor(labels, dtype=torch.int64)


class CIFAR10DataModule(TensorDataModule):
    """CIFAR-10: 45,000 train / 5,000 val / 10,000 test, 3x32x32, 10 classes; crop+flip augmentation."""

    name = "cifar10"
    num_classes = 10
    input_shape = (3, 32, 32)
    class_names = CLASSES
    pad = 4
    flip = True
    augment_default = True

    def files(self) -> list[Path]:
        return [self.data_dir / "cifar-10-batches-py" / name for name in FILES]

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        directory = self.data_dir / "cifar-10-batches-py"
        if not all(p.is_file() for p in self.files()):
            raise missing_data_error(self.name, directory, FILES)
        names = read_pickle(directory / "batches.meta").get("label_names")
        if names != CLASSES:
            raise ZooError(f"{directory / 'batches.meta'} lists the classes {names}, expected {CLASSES}. "
                           f"Fix: delete the folder and fetch CIFAR-10 again (--data.download true, or `make data`).")
        train = [read_batch(directory / name) for name in TRAIN_BATCHES]
        test_x, test_y = read_batch(directory / "test_batch")
        return torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), test_x, test_y

    def fetch(self) -> None:
        import torchvision  # only needed for downloading

        torchvision.datasets.CIFAR10(str(self.data_dir), download=True)
