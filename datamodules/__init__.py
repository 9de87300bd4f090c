"""The zoo's datasets, one datamodule per file, all built on the tensor fast path in `tensor.py`.

Registered names: moons, mnist, fashion_mnist, cifar10, and image_folder (your own images:
one subfolder per class).

    from datamodules import create_datamodule
    dm = create_datamodule("cifar10", batch_size=256)

The datamodules are LightningDataModules, so they import Lightning (seconds). They are loaded when
first asked for, not when this package is: `datamodules.images`, what inference needs (decoding,
resizing, normalisation), then works with torch alone.
"""
import importlib

from zoo.errors import ZooError

# name -> (module, class): a new dataset is one file and one line here. DATAMODULES, built from
# this on first use, is the registry the code reads (a class added to it at run time counts too).
REGISTRY = {
    "moons": ("datamodules.moons", "MoonsDataModule"),
    "mnist": ("datamodules.mnist", "MNISTDataModule"),
    "fashion_mnist": ("datamodules.fashion_mnist", "FashionMNISTDataModule"),
    "cifar10": ("datamodules.cifar10", "CIFAR10DataModule"),
    "image_folder": ("datamodules.image_folder", "ImageFolderDataModule"),
}
CLASSES = {cls: module for module, cls in REGISTRY.values()} | {
    "TensorDataModule": "datamodules.tensor", "TensorLoader": "datamodules.tensor"}


def __getattr__(name: str):
    # Lazy for start-up time (see above): `from datamodules import DATAMODULES` imports them all.
    if name in globals():  # already loaded (called from the functions below)
        return globals()[name]
    if name == "DATAMODULES":
        value = {key: getattr(importlib.import_module(module), cls) for key, (module, cls) in REGISTRY.items()}
    elif name in CLASSES:
        value = getattr(importlib.import_module(CLASSES[name]), name)
    else:
        raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
    globals()[name] = value
    return value


def list_datasets() -> list[str]:
    """The registered dataset names."""
    return list(__getattr__("DATAMODULES"))


def get_datamodule_class(name: str):
    """The datamodule class registered as `name`; an unknown name raises a ZooError listing them."""
    registered = __getattr__("DATAMODULES")  # the dict itself, so classes added to it at run time count
    if name not in registered:
        raise ZooError(f"Unknown dataset {name!r}. Available datasets: {', '.join(registered)}. "
                       f"Fix: pass one of these names.")
    return registered[name]


def registered_name(class_name: str) -> str | None:
    """The registry name of a datamodule class given by its name ("CIFAR10DataModule" -> "cifar10")."""
    return next((key for key, cls in __getattr__("DATAMODULES").items() if cls.__name__ == class_name), None)


def create_datamodule(name: str, **kwargs):
    """Build the datamodule registered as `name` with its keyword options (batch_size=..., ...)."""
    return get_datamodule_class(name)(**kwargs)


__all__ = [
    "CIFAR10DataModule", "DATAMODULES", "FashionMNISTDataModule", "ImageFolderDataModule", "MNISTDataModule",
    "MoonsDataModule", "TensorDataModule", "TensorLoader", "create_datamodule", "get_datamodule_class", "list_datasets",
    "registered_name",
]
