"""The zoo's datasets, one datamodule per file, all built on the tensor fast path in `tensor.py`.

Registered names: moons, mnist, fashion_mnist, cifar10, and image_folder (your own images:
one subfolder per class).

    from datamodules import create_datamodule
    dm = create_datamodule("cifar10", batch_size=256)
"""
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.fashion_mnist import FashionMNISTDataModule
from datamodules.image_folder import ImageFolderDataModule
from datamodules.mnist import MNISTDataModule
from datamodules.moons import MoonsDataModule
from datamodules.tensor import TensorDataModule, TensorLoader
from zoo.errors import ZooError

DATAMODULES: dict[str, type[TensorDataModule]] = {
    "moons": MoonsDataModule,
    "mnist": MNISTDataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "image_folder": ImageFolderDataModule,
}


def list_datasets() -> list[str]:
    """The registered dataset names."""
    return list(DATAMODULES)


def get_datamodule_class(name: str) -> type[TensorDataModule]:
    """The datamodule class registered as `name`; an unknown name raises a ZooError listing them."""
    if name not in DATAMODULES:
        raise ZooError(f"Unknown dataset {name!r}. Available datasets: {', '.join(DATAMODULES)}. "
                       f"Fix: pass one of these names.")
    return DATAMODULES[name]


def create_datamodule(name: str, **kwargs) -> TensorDataModule:
    """Build the datamodule registered as `name` with its keyword options (batch_size=..., ...)."""
    return get_datamodule_class(name)(**kwargs)


__all__ = [
    "CIFAR10DataModule", "DATAMODULES", "FashionMNISTDataModule", "ImageFolderDataModule", "MNISTDataModule",
    "MoonsDataModule", "TensorDataModule", "TensorLoader", "create_datamodule", "get_datamodule_class", "list_datasets",
]
