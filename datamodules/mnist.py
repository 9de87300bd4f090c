"""MNIST handwritten digits (LeCun et al., 1998) as in-memory uint8 tensors.

Reads the four raw IDX files that torchvision downloads (<data_dir>/MNIST/raw/) with numpy;
`read_idx` is shared with Fashion-MNIST, which uses the same format. 55,000 train / 5,000 val
(carved from the official 60,000 training images) / 10,000 test; 1x28x28; augmentation off by
default (augment=True: random crop with 2 px padding, no flips for digits). Registered as 'mnist'.

    python train.py fit --data mnist --model lenet5
"""
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from datamodules.tensor import TensorDataModule, missing_data_error
from zoo.errors import ZooError

IDX_FILES = [
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
]


def read_idx(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Read an uncompressed IDX file of uint8 data with the expected shape: magic 2051 for
    (N, rows, cols) images, 2049 for (N,) labels. A wrong magic, shape or size is a ZooError."""
    magic = 2049 if len(shape) == 1 else 2051
    header = 4 + 4 * len(shape)  # big-endian magic, then one uint32 per dimension
    fix = "Fix: delete it and fetch it again (--data.download true, or `make data`)."
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(header)
    if len(head) < header:
        raise ZooError(f"{path} is truncated or corrupted: {size} bytes, shorter than its "
                       f"{header}-byte IDX header. {fix}")
    got_magic, *got_shape = struct.unpack(f">{1 + len(shape)}I", head)
    if got_magic != magic:
        kind = "label" if magic == 2049 else "image"
        raise ZooError(f"{path} is corrupted: not an IDX {kind} file (magic number {got_magic}, "
                       f"expected {magic}). {fix}")
    if tuple(got_shape) != shape:
        raise ZooError(f"{path} is corrupted: shape {tuple(got_shape)}, expected {shape}. {fix}")
    if size != header + int(np.prod(shape)):
        raise ZooError(
            f"{path} is truncated or corrupted: {size:,} bytes, expected "
            f"{header + int(np.prod(shape)):,} for shape {shape}. {fix}"
        )
    # Straight into one writable array: no bytes object and no copy beside it (peak memory).
    return np.fromfile(path, dtype=np.uint8, offset=header).reshape(shape)


def load_idx_dataset(dataset: str, directory: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four MNIST-format files in `directory` as (train x (N, 1, 28, 28), train y, test x, test y)."""
    if not all((directory / name).is_file() for name in IDX_FILES):
        raise missing_data_error(dataset, directory, IDX_FILES)
    arrays = []
    for split, n in (("train", 60_000), ("t10k", 10_000)):
        images = read_idx(directory / f"{split}-images-idx3-ubyte", (n, 28, 28))
        labels = read_idx(directory / f"{split}-labels-idx1-ubyte", (n,))
        arrays += [torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))]
    return tuple(arrays)


class MNISTDataModule(TensorDataModule):
    """MNIST digits: 55,000 train / 5,000 val / 10,000 test, 1x28x28, 10 classes."""

    name = "mnist"
    num_classes = 10
    input_shape = (1, 28, 28)
    class_names = [str(d) for d in range(10)]
    pad = 2
    flip = False  # a mirrored 2 or 5 is not a digit
    augment_default = False
    val_size_default = 5000  # the usual 55,000 / 5,000 split; committed results depend on it
    folder = "MNIST"  # torchvision's layout: <data_dir>/MNIST/raw/

    def files(self) -> list[Path]:
        return [self.data_dir / self.folder / "raw" / name for name in IDX_FILES]

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return load_idx_dataset(self.name, self.data_dir / self.folder / "raw")

    def label_source(self, split: str, index: int) -> str:
        name = "train-labels-idx1-ubyte" if split == "train" else "t10k-labels-idx1-ubyte"
        return f"label {index} of {self.data_dir / self.folder / 'raw' / name}"

    def fetch(self) -> None:
        import torchvision  # only needed for downloading

        for train in (True, False):
            torchvision.datasets.MNIST(str(self.data_dir), train=train, download=True)
