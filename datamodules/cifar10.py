"""CIFAR-10 (Krizhevsky, 2009): 32x32 colour images in 10 classes, as in-memory uint8 tensors.

Reads the python pickles of <data_dir>/cifar-10-batches-py/ directly (no torchvision md5 check,
so the project's rebuilt offline copy loads too), with an unpickler that imports nothing but
numpy's array constructors: a pickle is a program, and a crafted one must not run. 45,000 train
/ 5,000 val (carved from the official 50,000) / 10,000 test; 3x32x32. Augmentation on by default:
random crop with 4 px padding plus horizontal flips, the standard ResNet-on-CIFAR recipe;
augment=False turns it off. Registered as 'cifar10'.

    python train.py fit --data cifar10 --model resnet20
"""
import pickle
import reprlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from datamodules.tensor import TensorDataModule, missing_data_error
from zoo.errors import ZooError

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
FILES = TRAIN_BATCHES + ["test_batch", "batches.meta"]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# What CIFAR-10's pickles hold besides dicts, lists, strings and numbers: numpy arrays. Nothing else
# may be imported while unpickling, so a crafted file cannot run code (plain pickle.load would).
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),  # what the official files name
    ("numpy._core.multiarray", "_reconstruct"),  # the same function, as numpy 2 names it when re-pickling
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
FIX = "Fix: delete it and fetch it again (--data.download true, or `make data`)."


class Refused(pickle.UnpicklingError):
    """A pickle asked for a global outside ALLOWED_GLOBALS."""


class CIFARUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ALLOWED_GLOBALS:
            raise Refused(f"{module}.{name}")
        return super().find_class(module, name)


def read_pickle(path: Path) -> object:
    """Unpickle one CIFAR file (Python-2 pickles: latin1 gives str keys) with only numpy's array
    constructors allowed; a damaged or crafted file is a ZooError."""
    try:
        with open(path, "rb") as f:
            return CIFARUnpickler(f, encoding="latin1").load()
    except Refused as e:
        raise ZooError(f"{path} is not a CIFAR-10 pickle: it asks to import {e}, which CIFAR-10 files never "
                       f"do (refused without running it: unpickling it could run any code). {FIX}") from None
    except Exception as e:  # truncation surfaces as EOFError, UnpicklingError, ValueError, ...
        raise ZooError(f"{path} is truncated or corrupted and cannot be unpickled ({type(e).__name__}: {e}). "
                       f"{FIX}") from e


def read_batch(path: Path) -> tuple[Tensor, Tensor]:
    """One batch file as (images uint8 (10000, 3, 32, 32), labels int64 (10000,))."""
    d = read_pickle(path)
    data, labels = (d.get("data"), d.get("labels")) if isinstance(d, dict) else (None, None)
    try:
        labels = np.asarray(labels)
    except (ValueError, TypeError):  # e.g. ragged nested lists
        labels = None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape == (10_000, 3072)
            and labels is not None and labels.dtype.kind in "iu" and labels.shape == (10_000,)):
        raise ZooError(f"{path} does not hold a CIFAR-10 batch (expected 'data' uint8 (10000, 3072) and 10000 "
                       f"integer 'labels'). {FIX}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # each row is one image, CHW order
    return images, torch.from_numpy(labels.astype(np.int64))


class CIFAR10DataModule(TensorDataModule):
    """CIFAR-10: 45,000 train / 5,000 val / 10,000 test, 3x32x32, 10 classes; crop+flip augmentation."""

    name = "cifar10"
    num_classes = 10
    input_shape = (3, 32, 32)
    class_names = CLASSES
    pad = 4
    flip = True
    augment_default = True
    val_size_default = 5000  # the usual 45,000 / 5,000 split; committed results depend on it
    # The project's offline copy is rebuilt (../shared/data/README.md, "CIFAR-10"): only images 0..1016
    # of each batch file kept their original pixels, the rest are quality-75 JPEG decodes. evaluate.py
    # also reports accuracy on these 1,017 test images, the figure comparable with published ones.
    exact_test = 1017

    def files(self) -> list[Path]:
        return [self.data_dir / "cifar-10-batches-py" / name for name in FILES]

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        directory = self.data_dir / "cifar-10-batches-py"
        if not all(p.is_file() for p in self.files()):
            raise missing_data_error(self.name, directory, FILES)
        meta = read_pickle(directory / "batches.meta")
        names = meta.get("label_names") if isinstance(meta, dict) else None
        if not (isinstance(names, list) and names == CLASSES):  # (a numpy array would compare elementwise)
            found = (f"its label_names are {reprlib.repr(names)}" if isinstance(meta, dict)
                     else f"it holds an object of type {type(meta).__name__}, not a dict")
            raise ZooError(f"{directory / 'batches.meta'} is not CIFAR-10's: {found}; expected the label_names "
                           f"{CLASSES}. Fix: delete the folder and fetch CIFAR-10 again "
                           f"(--data.download true, or `make data`).")
        train = [read_batch(directory / name) for name in TRAIN_BATCHES]
        test_x, test_y = read_batch(directory / "test_batch")
        return torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), test_x, test_y

    def label_source(self, split: str, index: int) -> str:
        name = TRAIN_BATCHES[index // 10_000] if split == "train" else "test_batch"  # 10,000 per batch file
        return f"label {index % 10_000} of {self.data_dir / 'cifar-10-batches-py' / name}"

    def fetch(self) -> None:
        import torchvision  # only needed for downloading

        torchvision.datasets.CIFAR10(str(self.data_dir), download=True)
