"""Your own images: one subfolder per class, turned into the same uint8 tensor dataset as the
built-in ones, so every zoo model trains on it unchanged. Registered as 'image_folder'.

    my_images/cat/*.jpg, my_images/dog/*.png, ...            # a test split is carved out (fixed seed)
    my_images/train/cat/..., my_images/test/cat/..., ...     # or your own train/ and test/ split

Each image is decoded once with PIL, converted to grayscale or RGB (`channels`), resized to
`image_size` x `image_size` and kept as uint8 (N, C, H, W); transparent pixels become white.
Classes are the sorted subfolder names. Validation is carved from the training part (seeded, as
for the built-in datasets) and mean/std come from the training split. `load_image` (datamodules/images.py) is
the one conversion used both here and by `train.py predict`, so predictions see what training saw.
Runs are named after the folder (checkpoints/image_folder-my_images/<model>/), so unrelated
folders never share a run directory or a `--ckpt_path last`.

    python train.py fit --data image_folder --data.data_dir my_images --model lenet5
"""
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch import Tensor

from datamodules.images import IMAGE_EXTENSIONS, list_images, load_image
from datamodules.tensor import TensorDataModule
from zoo.errors import ZooError

TEST_SPLIT_SEED = 0  # the carved test split never changes with --seed_everything: results stay comparable


def physical_memory() -> int | None:
    """This machine's RAM in bytes, where the OS says (Linux, macOS); None elsewhere."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class folder_fact(cached_property):
    """A cached_property that reads, on the class itself, as TensorDataModule's 'not known yet' value
    (0, []), which `doctor` and the registry tests look at without a folder."""

    def __get__(self, instance: object, owner: type | None = None) -> object:
        return getattr(TensorDataModule, self.attrname) if instance is None else super().__get__(instance, owner)


class ImageFolderDataModule(TensorDataModule):
    """Images in one subfolder per class; num_classes, class_names and input_shape come from the folder.

    Args:
        data_dir: the folder: one subfolder per class, or train/ and test/ each holding them.
        image_size: images are resized to image_size x image_size (28 like MNIST, 32 like CIFAR-10).
        channels: 1 (grayscale) or 3 (RGB).
        test_fraction: without train/ and test/ folders, this fraction of each class is held out
            as the test split (always the same images: fixed seed).
        val_fraction: fraction of the training part held out for validation.
        batch_size: training batch size.
        eval_batch_size: batch size for validation and test.
        split_seed: seed of the train/validation split; None uses the global seed, else 42.
        augment: random crop (padding image_size // 8) for training.
        flip: with augment, also mirror images left-right (not for text or digits).
        translate, pad_mode, alternate_flip, cutout: as for every dataset (TensorDataModule): the crop's
            padding (default image_size // 8), zeros or reflect padding, airbench's alternating flip,
            the side of cutout's square.
        train_fraction: train on only this fraction (0, 1] of the training split.
    """

    name = "image_folder"

    def __init__(
        self,
        data_dir: str | None = None,
        image_size: int = 32,
        channels: int = 3,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        split_seed: int | None = None,
        augment: bool = False,
        flip: bool = False,
        translate: int | None = None,
        pad_mode: Literal["zeros", "reflect"] = "zeros",
        alternate_flip: bool = False,
        cutout: int = 0,
        train_fraction: float = 1.0,
    ) -> None:
        super().__init__(data_dir=data_dir, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         split_seed=split_seed, augment=augment, translate=translate, pad_mode=pad_mode,
                         alternate_flip=alternate_flip, cutout=cutout, train_fraction=train_fraction)
        self.save_hyperparameters(ignore=["val_size", "download"])  # only the options this class takes
        self.image_size, self.channels = image_size, channels
        self.test_fraction, self.val_fraction = test_fraction, val_fraction
        self.pad, self.flip = image_size // 8, flip
        self.presplit = (self.data_dir / "train").is_dir() and (self.data_dir / "test").is_dir()
        self.input_shape = (channels, image_size, image_size)

    # Found in the folder on first use, not in __init__: the CLI reads num_classes right after building
    # this object (to link it to the model), and an error raised then reaches the user as one paragraph,
    # while jsonargparse wraps one raised in __init__ in a 70-line traceback.
    @folder_fact
    def class_names(self) -> list[str]:
        self._check_options_and_folder()
        where = self.data_dir / "train" if self.presplit else self.data_dir
        names = class_folders(where)
        if len(names) < 2:
            raise ZooError(f"image_folder: {where} holds {len(names)} class folder(s) ({', '.join(names) or 'none'}); "
                           f"a classifier needs at least 2. Fix: put each class's images in its own subfolder, "
                           f"e.g. {where}/cat/ and {where}/dog/.")
        return names

    @folder_fact
    def num_classes(self) -> int:
        return len(self.class_names)

    def _check_options_and_folder(self) -> None:
        if not self.hparams.data_dir:
            raise ZooError("image_folder needs the folder of your images: pass --data.data_dir DIR "
                           "(one subfolder per class, e.g. DIR/cat/*.jpg, DIR/dog/*.jpg).")
        if self.channels not in (1, 3):
            raise ZooError(f"image_folder: channels must be 1 (grayscale) or 3 (RGB), got {self.channels}. "
                           f"Fix: pass --data.channels 1 or 3.")
        if self.image_size < 8:
            raise ZooError(f"image_folder: image_size {self.image_size} is too small for the conv nets; "
                           f"pass --data.image_size 28 or 32.")
        if not 0 < self.test_fraction < 1 or not 0 <= self.val_fraction < 1:
            raise ZooError(f"image_folder: test_fraction must be in (0, 1) and val_fraction in [0, 1), got "
                           f"{self.test_fraction} and {self.val_fraction}. Fix: e.g. --data.test_fraction 0.2.")
        if not self.data_dir.is_dir():
            raise ZooError(f"image_folder: {self.data_dir} is not a folder. Fix: pass --data.data_dir DIR, "
                           f"where DIR holds one subfolder of images per class.")

    def val_count(self, n_train: int) -> int:
        return round(self.val_fraction * n_train)

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self.presplit:
            extra = sorted(set(class_folders(self.data_dir / "test")) - set(self.class_names))
            if extra:
                raise ZooError(f"image_folder: {self.data_dir / 'test'} has class folders that train/ lacks: "
                               f"{', '.join(extra)}. Fix: give train/ and test/ the same class subfolders.")
            train_files, train_y = self._files(self.data_dir / "train")
            test_files, test_y = self._files(self.data_dir / "test", allow_empty=True)
        else:
            files, y = self._files(self.data_dir)
            train_files, train_y, test_files, test_y = self._carve_test(files, y)
        if not test_files:
            raise ZooError(f"image_folder: the test split of {self.data_dir} is empty. Fix: add images to "
                           f"test/, or raise --data.test_fraction.")
        # Every image is held in memory as uint8, and loading briefly holds about three copies: check
        # before decoding, not after minutes of it (--data.image_size 4000 on a folder of photos).
        n, ram = len(train_files) + len(test_files), physical_memory()
        need = 3 * n * self.channels * self.image_size ** 2
        if ram and need > ram:
            raise ZooError(f"image_folder: {n:,} images of {self.channels}x{self.image_size}x{self.image_size} "
                           f"pixels need ~{need / 1e9:.1f} GB of memory to load (they are kept as uint8 tensors), "
                           f"more than this machine's {ram / 1e9:.1f} GB. Fix: a smaller --data.image_size (the zoo's "
                           f"nets are built for 28-32) or fewer images.")
        x_train, y_train = self._read(train_files, train_y)
        x_test, y_test = self._read(test_files, test_y)
        return x_train, y_train, x_test, y_test

    def load_state_dict(self, state_dict: dict) -> None:
        names = state_dict.get("class_names")
        if names is not None and list(names) != list(self.class_names):
            raise ZooError(f"image_folder: the checkpoint was trained on the classes {names}, but {self.data_dir} "
                           f"holds {self.class_names}. Fix: point --data_dir at the folder it was trained on.")
        super().load_state_dict(state_dict)

    # --- helpers ----------------------------------------------------------------------------
    def _files(self, folder: Path, allow_empty: bool = False) -> tuple[list[Path], list[int]]:
        files, labels, empty = [], [], []
        for label, name in enumerate(self.class_names):
            found = list_images(folder / name) if (folder / name).is_dir() else []
            empty += [name] if not found else []
            files += found
            labels += [label] * len(found)
        if empty and not allow_empty:
            raise ZooError(f"image_folder: no images in {', '.join(str(folder / n) for n in empty)} (looked for "
                           f"{', '.join(IMAGE_EXTENSIONS)}). Fix: add images there or remove the empty folders.")
        return files, labels

    def _carve_test(self, files: list[Path], labels: list[int]) -> tuple[list, list, list, list]:
        """Hold out test_fraction of each class (at least one image), the same images every run."""
        g = torch.Generator().manual_seed(TEST_SPLIT_SEED)
        train_f, train_y, test_f, test_y = [], [], [], []
        for label in range(self.num_classes):
            mine = [f for f, y in zip(files, labels) if y == label]
            if len(mine) < 2:
                raise ZooError(f"image_folder: class '{self.class_names[label]}' has {len(mine)} image; at least 2 "
                               f"are needed (one to train on, one to test). Fix: add images to "
                               f"{self.data_dir / self.class_names[label]}.")
            order = torch.randperm(len(mine), generator=g).tolist()
            n_test = min(len(mine) - 1, max(1, round(self.test_fraction * len(mine))))
            test_f += [mine[i] for i in order[:n_test]]
            train_f += [mine[i] for i in order[n_test:]]
            test_y += [label] * n_test
            train_y += [label] * (len(mine) - n_test)
        return train_f, train_y, test_f, test_y

    def _read(self, files: list[Path], labels: list[int]) -> tuple[Tensor, Tensor]:
        size = (self.image_size, self.image_size)

        def read(path: Path) -> Tensor | str:
            try:
                return load_image(path, self.channels, size)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                return f"{path}: {type(e).__name__}: {e}"

        # PIL decodes outside the GIL, so threads overlap the decoding of many small files.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            images = list(pool.map(read, files))
        bad = [r for r in images if isinstance(r, str)]
        if bad:  # a few broken files should not stop training on thousands of good ones
            print(f"image_folder: skipped {len(bad)} unreadable file(s): " + "; ".join(bad[:5])
                  + (" ..." if len(bad) > 5 else ""), file=sys.stderr)
        keep = [i for i, r in enumerate(images) if not isinstance(r, str)]
        if not keep:
            raise ZooError(f"image_folder: none of the {len(files)} image files under {self.data_dir} could be read "
                           f"(first: {bad[0]}). Fix: check that they are PNG or JPEG images.")
        x = torch.stack([images[i] for i in keep])  # (N, C, H, W) uint8
        return x, torch.tensor([labels[i] for i in keep], dtype=torch.int64)
