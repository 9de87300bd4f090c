"""Datasets as tensors: the shared fast path behind every datamodule in the zoo.

A whole dataset lives in memory (on the GPU when training on one) as uint8 images. `TensorLoader`
batches it by indexing a seeded permutation and augments whole batches at once (random crop,
horizontal flip, or airbench's alternating flip); `TensorDataModule.on_after_batch_transfer` turns
uint8 into normalised floats on the device. No PIL, no per-sample transforms, no worker processes
(the airbench recipe: K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024).

Randomness contract (exact resume and DDP depend on it): the order of epoch e is
`randperm(N, generator seeded from (seed, e))`, identical on every rank; rank r of W takes
`perm[:N - N % W][r::W]`. Augmentation draws from a generator seeded from (seed, e, rank). The
global torch RNG is never touched, so the model's own randomness does not shift the data.
Alternating flips are drawn once per training image from (seed, FLIPS_STREAM) and inverted in odd
epochs, so they depend on (seed, image index, epoch) only: not on the rank or the batch order.

    dm = MNISTDataModule(batch_size=256); dm.setup("fit")
    for x, y in dm.train_dataloader(): ...   # x uint8 (B, 1, 28, 28); dm.normalize(x) -> float
"""
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.images import normalize
from zoo.errors import ZooError


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers, so (seed, epoch) and (seed, epoch, rank) streams are
    unrelated (plain `seed + epoch` would make seed 1 / epoch 0 replay seed 0 / epoch 1)."""
    h = 0x2545F4914F6CDD1D
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


def random_crop(x: Tensor, pad: int, generator: torch.Generator, mode: str = "zeros") -> Tensor:
    """Pad a uint8 batch (B, C, H, W) by `pad` (with zeros, or by reflection: mode "reflect") and cut
    a randomly shifted H x W window per sample, all samples at once: one `gather` over flattened
    pixels (4x faster than 4-way advanced indexing on CPU)."""
    b, c, h, w = x.shape
    wp = w + 2 * pad
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect" if mode == "reflect" else "constant").flatten(2)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    window = torch.arange(h, device=x.device)[:, None] * wp + torch.arange(w, device=x.device)  # (H, W)
    index = (dy * wp + dx)[:, None, None] + window  # (B, H, W): flat position of each output pixel
    return padded.gather(2, index.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)


def cutout(x: Tensor, size: int, generator: torch.Generator, fill: Tensor) -> Tensor:
    """Paint one size x size square per image of a uint8 batch (B, C, H, W) with `fill` (C,): the
    square's centre is uniform over the image and it is clipped at the border, as in DeVries & Taylor
    2017 ("Improved Regularization of Convolutional Neural Networks with Cutout"). Filling with the
    mean pixel makes it zero after normalisation, as theirs (applied to normalised images) was."""
    b, c, h, w = x.shape
    top = torch.randint(0, h, (b,), generator=generator).to(x.device) - size // 2
    left = torch.randint(0, w, (b,), generator=generator).to(x.device) - size // 2
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)  # (B, W)
    square = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)  # (B, 1, H, W)
    return torch.where(square, fill.to(x.device, x.dtype).view(1, c, 1, 1), x)


FLIPS_STREAM = -1  # mix_seed(seed, -1) seeds the alternating flips: no epoch is -1, so no order shares it


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror a random half of a batch (B, C, H, W) left-right."""
    mask = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return flip_where(x, mask)


def flip_where(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror left-right the images of a batch (B, C, H, W) whose entry in the bool mask (B,) is True."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of uint8 images (N, C, H, W) on the 0..1 scale, exact in float64.
    A 256-bin histogram per channel avoids a float64 copy of the data (345 MB for MNIST); counting
    the uint8 values as they are, a channel of a few thousand images at a time, keeps the
    temporaries small and is 4-5x faster than widening them to int64 first (bench/hotpath.py)."""
    c = x.shape[1]
    counts = torch.zeros(c, 256, dtype=torch.int64)
    for chunk in x.cpu().split(4096):
        for k in range(c):
            counts[k] += torch.bincount(chunk[:, k].flatten(), minlength=256)
    counts = counts.double()
    values = torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum(1)
    mean = (counts * values).sum(1) / n
    var = (counts * values**2).sum(1) / n - mean**2
    return mean.float(), var.clamp_min(0).sqrt().float()


def missing_data_error(dataset: str, directory: Path, names: list[str]) -> ZooError:
    """The error for absent dataset files: what was expected where, and the three ways to fix it."""
    missing = [n for n in names if not (directory / n).is_file()]
    return ZooError(
        f"{dataset} data not found: expected the files {', '.join(names)} in {directory} "
        f"(missing: {', '.join(missing)}). Fix: set --data.data_dir (or the ZOO_DATA environment "
        f"variable) to a folder that holds them, or pass --data.download true on a machine with "
        f"internet access to fetch them into data_dir with torchvision; project developers run "
        f"`make data`."
    )


class TensorLoader:
    """An iterable of (x, y) batches over in-memory tensors: a seeded permutation, sliced into
    batches, each batch indexed and augmented at once. Not a torch DataLoader: no workers needed.

    Args:
        x: inputs (N, C, H, W) uint8 images or (N, D) float features; may live on the GPU.
        y: int64 labels (N,), on the same device as x.
        batch_size: samples per batch (per rank).
        shuffle: a fresh permutation each epoch and equal disjoint shards per rank (training);
            False gives the natural order, every sample exactly once over all ranks (evaluation).
        seed: the base seed of the permutation and the augmentation.
        epoch_fn: returns the current epoch, read when iteration starts.
        start_fn: returns how many batches of the epoch were trained already, read when iteration
            starts (non-zero when a run resumes mid-epoch): those are skipped, so the rest of the
            epoch comes in the same order and with the same augmentation as without the stop.
        rank: this process's rank among `world_size` data-parallel processes.
        world_size: number of data-parallel processes.
        pad: random-crop padding in pixels (0: no crop).
        pad_mode: how the crop pads: "zeros" or "reflect" (mirrored edge pixels, airbench's).
        flip: random horizontal flips.
        alternate_flip: with flip, airbench's derandomised flips instead: each image's flip is drawn
            once from the seed, used in even epochs and inverted in odd ones, so any two consecutive
            epochs show every image both ways.
        drop_last_small: drop a final batch of one sample (BatchNorm cannot train on one).
        cutout: side in pixels of the square `cutout` paints over each training image (0: none),
            after the crop and flip.
        fill: (C,) uint8 colour of the cutout square (the mean pixel); zeros if None.
        chunk: yield lists of this many consecutive batches (the last list may be shorter), one per
            Lightning step, for `--steps_per_execution`; 1 yields the batches themselves. start_fn then
            counts lists.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        epoch_fn: Callable[[], int] = lambda: 0,
        start_fn: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
        pad: int = 0,
        flip: bool = False,
        alternate_flip: bool = False,
        drop_last_small: bool = False,
        pad_mode: str = "zeros",
        chunk: int = 1,
        cutout: int = 0,
        fill: Tensor | None = None,
    ) -> None:
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed, self.epoch_fn = batch_size, shuffle, seed, epoch_fn
        self.start_fn = start_fn
        self.rank, self.world_size = rank, world_size
        self.pad, self.flip, self.alternate_flip, self.drop_last_small = pad, flip, alternate_flip, drop_last_small
        self.pad_mode, self.chunk = pad_mode, chunk
        self.cutout = cutout
        self.fill = fill if fill is not None else torch.zeros(x.shape[1] if x.dim() == 4 else 1, dtype=torch.uint8)
        if flip and alternate_flip:  # one decision per image of x, indexed like x; (N,) bool
            g = torch.Generator().manual_seed(mix_seed(seed, FLIPS_STREAM))
            self.even_epoch_flips = (torch.rand(len(y), generator=g) < 0.5).to(x.device)

    def indices(self, epoch: int) -> Tensor:
        """The sample indices this rank visits in `epoch`, in order."""
        n = len(self.y)
        if not self.shuffle:
            return torch.arange(n)[self.rank :: self.world_size]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
        # Like DistributedSampler(drop_last=True): equal shard lengths keep DDP ranks in lockstep.
        return perm[: n - n % self.world_size][self.rank :: self.world_size]

    def _num_samples(self) -> int:
        n = len(self.y)
        if self.shuffle:
            return (n - n % self.world_size) // self.world_size
        return len(range(self.rank, n, self.world_size))

    def steps(self) -> int:
        """Batches per epoch (optimizer steps, whatever the chunk)."""
        n = self._num_samples()
        if self.drop_last_small and n % self.batch_size == 1:
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.steps() / self.chunk)

    def __iter__(self) -> Iterator:
        batches = self._batches(self.start_fn() * self.chunk)
        if self.chunk == 1:
            yield from batches
            return
        group = []
        for batch in batches:
            group.append(batch)
            if len(group) == self.chunk:
                yield group
                group = []
        if group:
            yield group

    def _batches(self, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epoch_fn()
        order = self.indices(epoch).to(self.x.device)
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, self.rank, 1))
        for i, batch in enumerate(order[: self.steps() * self.batch_size].split(self.batch_size)):
            if i < start and not (self.pad or self.flip or self.cutout):
                continue  # trained before a mid-epoch stop (and no random draws to replay)
            # index_select, not x[batch]: the same gather, ~6x cheaper per call on CPU (advanced indexing's
            # overhead was ~0.1 ms of a ~1.5 ms MLP step).
            x = self.x.index_select(0, batch)
            if self.pad:
                x = random_crop(x, self.pad, g, self.pad_mode)
            if self.flip and self.alternate_flip:
                x = flip_where(x, self.even_epoch_flips.index_select(0, batch) ^ (epoch % 2 == 1))
            elif self.flip:
                x = random_flip(x, g)
            if self.cutout:
                x = cutout(x, self.cutout, g, self.fill)
            if i >= start:
                yield x, self.y.index_select(0, batch)

    def first(self) -> tuple[Tensor, Tensor]:
        """The current epoch's first batch as iteration yields it, alone (not its whole chunk)."""
        return next(self._batches(0))

    # Lightning asks loaders for these to resume mid-epoch. This one needs nothing saved: its order
    # and augmentation follow from (seed, epoch, rank), and its position comes from start_fn, which
    # TensorDataModule reads from the trainer's restored progress (exact; a loader-side count would
    # be one ahead, because Lightning fetches the next batch before the current one trains).
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


def global_seed() -> int:
    """The seed `seed_everything` published (LightningCLI's --seed_everything), else 42."""
    return int(os.environ.get("PL_GLOBAL_SEED", 42))


class LazyChunk(Sequence):
    """A chunk of batches (--steps_per_execution) finished one batch at a time, as its step takes it,
    as a bare loop does. Normalising a whole chunk up front (20 MB of fresh float inputs per MNIST
    chunk of 50 x 128 images) made the MNIST MLP's epoch 1.21x a bare loop's at 2 threads; this way
    0.88-1.09x (README, issue 18's tables; the cause, cache or fresh pages, was not pinned down)."""

    def __init__(self, batches: list, finish: Callable) -> None:
        self.batches, self.finish = batches, finish

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        return self.finish(self.batches[i])


class TensorDataModule(L.LightningDataModule):
    """Base of the zoo's datamodules: loads a dataset once into tensors, carves a seeded
    validation split out of the official training split (the test split stays untouched), and
    serves `TensorLoader`s. Subclasses set the class attributes below and implement `load()`.

    Args:
        data_dir: folder holding the dataset files; None uses $ZOO_DATA, else ./data.
        batch_size: training batch size (per GPU/process).
        eval_batch_size: batch size for validation and test (no gradients, so larger is fine).
        val_size: training examples held out for validation: a count (5000), or a float in [0, 1)
            for a fraction of the official training split (0.1); 0: no validation. None uses the
            dataset's default (5,000 for mnist, fashion_mnist and cifar10, else 0.1).
        split_seed: seed of the train/validation split; None uses the global seed
            (--seed_everything), else 42. The training order always follows the global seed.
        augment: random crop/flip for training; None uses the dataset's default.
        translate: with augment, the random-crop padding in pixels: images shift by up to this many
            pixels each way (0: no crop). None uses the dataset's default (4 for cifar10, 2 for
            mnist and fashion_mnist).
        pad_mode: how the random crop pads the image: zeros (black after normalisation's shift, the
            usual CIFAR recipe) or reflect (mirrored edge pixels, airbench's).
        alternate_flip: with augment, on a dataset that flips (cifar10, fashion_mnist), flip each
            training image by one decision drawn once from the seed, inverted every other epoch, so
            any two consecutive epochs show it both ways (airbench's derandomised flip) instead of a
            fresh random half each epoch.
        cutout: with augment, on image data, paint a square of this many pixels a side, centred
            anywhere in the image and filled with the mean pixel, over each training image (DeVries &
            Taylor 2017's cutout; 16 is theirs for CIFAR-10); 0: none.
        train_fraction: train on only this fraction (0, 1] of the training split, for quick runs
            and data-scaling studies.
        download: fetch missing files with torchvision (needs internet; writes into data_dir).
    """

    name: str = ""
    num_classes: int = 0
    input_shape: tuple[int, ...] = ()
    class_names: list[str] = []
    pad: int = 0  # random-crop padding used when augmenting
    flip: bool = False  # horizontal flips when augmenting (never for digits)
    augment_default: bool = False
    val_size_default: int | float = 0.1  # a fraction: fits any size of dataset
    exact_test: int | None = None  # the first N test images have the original pixels; None: all do

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int | float | None = None,  # not float alone: the CLI must keep 5000 an int (a count)
        split_seed: int | None = None,
        augment: bool | None = None,
        translate: int | None = None,
        pad_mode: Literal["zeros", "reflect"] = "zeros",
        alternate_flip: bool = False,
        cutout: int = 0,
        train_fraction: float = 1.0,
        download: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = Path(data_dir or os.environ.get("ZOO_DATA") or "data")
        self.batch_size, self.eval_batch_size, self.val_size = batch_size, eval_batch_size, val_size
        self.split_seed, self.train_fraction, self.download = split_seed, train_fraction, download
        self.augment = self.augment_default if augment is None else augment
        self.translate, self.alternate_flip, self.pad_mode = translate, alternate_flip, pad_mode
        self.cutout = cutout
        self.mean: Tensor | None = None  # (C,) from the training split, or restored from a checkpoint
        self.std: Tensor | None = None
        self.train_x: Tensor | None = None  # set by setup(); see also train_indices / val_indices
        # Training batches per Lightning step: set by train.py's --steps_per_execution (zoo.run), not an
        # option of the data (the checkpoint records it with the model's state).
        self.steps_per_execution = 1

    # --- what a dataset provides ------------------------------------------------------------
    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return (train images uint8 (N, C, H, W), train labels int64, test images, test labels)."""
        raise NotImplementedError

    def files(self) -> list[Path]:
        """The files `load()` reads, so `prepare_data` knows whether to download."""
        return []

    def fetch(self) -> None:
        """Download the dataset into data_dir (only called with download=True)."""

    def val_count(self, n_train: int) -> int:
        """How many of the n_train official training examples become the validation split."""
        size = self.val_size_default if self.val_size is None else self.val_size
        if isinstance(size, float):  # a fraction; an int is a count (bool is neither)
            if not 0 <= size < 1:
                raise ZooError(f"{self.name}: val_size {size} is neither a fraction in [0, 1) nor a whole number "
                               f"of examples. Fix: pass e.g. --data.val_size 0.1 (a tenth) or --data.val_size 500.")
            return round(size * n_train)
        return size

    def label_source(self, split: str, index: int) -> str:
        """Where label `index` of the official `split` ('train' or 'test') comes from, for error messages."""
        return f"label {index} of the {split} split"

    # --- Lightning hooks ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Lightning runs this on one process per node before setup(), so downloads never race.
        if self.download and not all(p.is_file() for p in self.files()):
            self.fetch()

    def setup(self, stage: str | None = None) -> None:
        if self.train_x is not None:
            return  # loaded already: fit then test must not reload or re-split
        if self.trainer is None:
            self.prepare_data()  # used without a Trainer (tests, scripts): nobody else calls it
        x, y, self.test_x, self.test_y = self.load()
        self._check_labels("train", y)
        self._check_labels("test", self.test_y)
        n = len(y)
        n_val = self.val_count(n)
        n_train = max(1, round(self.train_fraction * (n - n_val)))
        self._check_options(n, n_val, n_train)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.resolved_split_seed))
        self.val_indices = perm[:n_val]  # indices into the official training set
        self.train_indices = perm[n_val:][:n_train]
        # index_select: the same rows as x[indices], 2-3x faster for a whole split (bench/hotpath.py)
        self.train_x, self.train_y = x.index_select(0, self.train_indices), y.index_select(0, self.train_indices)
        self.val_x, self.val_y = x.index_select(0, self.val_indices), y.index_select(0, self.val_indices)
        del x, y  # the unsplit copy goes before the statistics' temporaries come (peak memory)
        if self.mean is None:  # a checkpoint's statistics (load_state_dict) take precedence
            if self.train_x.dtype == torch.uint8:
                self.mean, self.std = channel_stats(self.train_x)
            else:  # flat float features (moons) are used as they are
                self.mean, self.std = torch.zeros(self.train_x.shape[1]), torch.ones(self.train_x.shape[1])

    def train_dataloader(self) -> TensorLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> TensorLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> TensorLoader:
        return self._loader("test", shuffle=False)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        # A chunk (--steps_per_execution) is a list of (x, y) pairs, which TensorLoader makes where the
        # data lives: when that is the device already, there is nothing to move, and Lightning's walk
        # over the 100 tensors of a 50-batch chunk costs time to find that out (results/fitstep_avx2_ab.txt).
        def on_device(pair) -> bool:
            return isinstance(pair, tuple) and all(isinstance(t, Tensor) and t.device == device for t in pair)

        if isinstance(batch, list) and all(on_device(pair) for pair in batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # Runs on the device, after Lightning moved the batch: uint8 -> normalised float there.
        if isinstance(batch, Tensor):  # predict on bare inputs
            return self.normalize(batch)
        if isinstance(batch, list):  # a chunk of batches (--steps_per_execution)
            return LazyChunk(batch, lambda b: self.on_after_batch_transfer(b, dataloader_idx))
        x, *rest = batch
        return (self.normalize(x), *rest)

    def state_dict(self) -> dict[str, list]:
        # Lightning stores this in checkpoints, so evaluate/predict normalise exactly like training,
        # and name the classes without this class or the data (predict needs neither Lightning nor files).
        stats = {} if self.mean is None else {"mean": self.mean.tolist(), "std": self.std.tolist()}
        return {**stats, "class_names": list(self.class_names)} if self.class_names else stats

    def load_state_dict(self, state_dict: dict[str, list[float]]) -> None:
        if "mean" in state_dict:
            self.mean, self.std = torch.tensor(state_dict["mean"]), torch.tensor(state_dict["std"])

    def _check_labels(self, split: str, y: Tensor) -> None:
        """Labels must be int64 class indices in [0, num_classes): a damaged label file is named here,
        not met later as an index error inside the loss (or, for test labels, after training)."""
        if y.dtype != torch.int64:
            raise ZooError(f"{self.name}: load() gave {split} labels of dtype {y.dtype}; they must be int64 class "
                           f"indices. Fix: return torch.int64 labels from load().")
        k = self.num_classes
        if len(y) and not (0 <= y.min() and y.max() < k):  # whole-tensor reductions: fast on 60,000 labels
            i = int(((y < 0) | (y >= k)).nonzero()[0])
            raise ZooError(f"{self.name}: {self.label_source(split, i)} is {int(y[i])}, outside the {k} classes "
                           f"0..{k - 1}: the file is damaged or not {self.name}'s. Fix: delete it and fetch it again "
                           f"(--data.download true, or `make data`).")

    def _check_options(self, n: int, n_val: int, n_train: int) -> None:
        """Reject impossible split and batch options with a ZooError naming the fix."""
        if not 0 <= n_val < n:
            raise ZooError(
                f"{self.name}: the validation split must hold between 0 and {n - 1} of the {n} "
                f"training examples, got {n_val}. Fix: choose a smaller --data.val_size, or a fraction "
                f"such as 0.1 (--data.val_fraction for moons and image_folder)."
            )
        if not 0 < self.train_fraction <= 1:
            raise ZooError(
                f"{self.name}: train_fraction must be in (0, 1], got {self.train_fraction}. "
                f"Fix: pass e.g. --data.train_fraction 0.1 to train on a tenth of the data."
            )
        for what, size in (("batch_size", self.batch_size), ("eval_batch_size", self.eval_batch_size)):
            if size < 1:
                raise ZooError(f"{self.name}: {what} must be positive, got {size}. Fix: pass e.g. --data.{what} 128.")
        t = self.translate
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 0):
            raise ZooError(
                f"{self.name}: translate is the random-crop padding in pixels, so it must be a whole number "
                f">= 0, got {t!r}. Fix: pass e.g. --data.translate 2, --data.translate 0 for no crop, or leave "
                f"--data.translate out for {self.name}'s default ({self.pad})."
            )
        side = min(self.input_shape[1:], default=0) if len(self.input_shape) == 3 else 0
        if t is not None and side and t >= side:
            raise ZooError(f"{self.name}: translate {t} would shift the {side}-pixel images out of view (crops of "
                           f"nothing but padding). Fix: pass a few pixels, e.g. --data.translate 2, or leave it out "
                           f"for {self.name}'s default ({self.pad}).")
        # A flag that would change nothing is refused: it is a wrong flag, or augment was forgotten.
        if self.alternate_flip and not self.flip:
            raise ZooError(f"{self.name}: alternate_flip changes how training images are flipped, but {self.name} "
                           f"images are never flipped, so it would have no effect. Fix: drop --data.alternate_flip.")
        if self.alternate_flip and not self.augment:
            raise ZooError(f"{self.name}: alternate_flip changes how training images are flipped, but augmentation "
                           f"is off, so it would have no effect. Fix: drop --data.alternate_flip, or turn "
                           f"augmentation on with --data.augment true.")
        c = self.cutout
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise ZooError(f"{self.name}: cutout is the side of the blanked square in pixels, so it must be a whole "
                           f"number >= 0, got {c!r}. Fix: pass e.g. --data.cutout 16, or 0 for none.")
        if c and len(self.input_shape) != 3:
            raise ZooError(f"{self.name}: cutout blanks a square of each training image, but {self.name}'s inputs "
                           f"are not images. Fix: drop --data.cutout.")
        if c and not self.augment:
            raise ZooError(f"{self.name}: cutout blanks a square of each training image, but augmentation is off, so "
                           f"it would have no effect. Fix: drop --data.cutout, or turn augmentation on with "
                           f"--data.augment true.")
        if c > max(self.input_shape[1:], default=0):
            raise ZooError(f"{self.name}: cutout {c} is larger than the {self.input_shape[1]}x{self.input_shape[2]} "
                           f"images: it would blank most of every one. Fix: pass a smaller --data.cutout, e.g. "
                           f"{max(1, self.input_shape[-1] // 2)}.")
        if self.batch_size > n_train:
            raise ZooError(
                f"{self.name}: batch_size {self.batch_size} is larger than the training split "
                f"({n_train} examples). Fix: lower --data.batch_size, or train on more data "
                f"(--data.train_fraction up to 1; --data.n_samples for moons)."
            )

    # --- helpers ----------------------------------------------------------------------------
    @property
    def resolved_split_seed(self) -> int:
        return global_seed() if self.split_seed is None else self.split_seed

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 images (B, C, H, W) -> float32, scaled to 0..1 and standardised per channel.
        Float inputs (flat features) pass through unchanged."""
        if x.dtype != torch.uint8:
            return x
        if self.mean.device != x.device:  # move once, not every batch
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return normalize(x, self.mean, self.std)  # the one copy, shared with inference

    def _loader(self, split: str, shuffle: bool) -> TensorLoader:
        self.setup()
        rank, world_size = 0, 1
        if self.trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
            device = self.trainer.strategy.root_device
            if device.type != "cpu" and getattr(self, f"{split}_x").device != device:
                # The whole split moves to the accelerator once; batches are then indexed there.
                setattr(self, f"{split}_x", getattr(self, f"{split}_x").to(device))
                setattr(self, f"{split}_y", getattr(self, f"{split}_y").to(device))
        augment = shuffle and self.augment
        return TensorLoader(
            getattr(self, f"{split}_x"),
            getattr(self, f"{split}_y"),
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            seed=global_seed(),
            epoch_fn=self._current_epoch,
            start_fn=self._batches_done if shuffle else (lambda: 0),
            rank=rank,
            world_size=world_size,
            pad=(self.pad if self.translate is None else self.translate) if augment else 0,
            flip=self.flip and augment,
            alternate_flip=self.alternate_flip,
            drop_last_small=shuffle,
            pad_mode=self.pad_mode,
            chunk=self.steps_per_execution if shuffle else 1,
            cutout=self.cutout if augment else 0,
            # the mean pixel, 0 after normalisation; a checkpoint's statistics may be on the accelerator
            fill=(self.mean.cpu() * 255).round().to(torch.uint8) if self.cutout and augment else None,
        )

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one training epoch on this rank (batches, not chunks of them)."""
        return self._loader("train", shuffle=True).steps()

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _batches_done(self) -> int:
        """Training batches of the current epoch already trained: 0, except in a run resumed from a
        mid-epoch checkpoint (Ctrl-C, SIGTERM), where Lightning has restored its progress counter."""
        fit_loop = getattr(self.trainer, "fit_loop", None)
        return fit_loop.epoch_loop.batch_progress.current.completed if fit_loop is not None else 0

    def describe(self) -> str:
        """One line: name, split sizes, input shape, number of classes."""
        self.setup()
        return (
            f"{self.name}: {len(self.train_y):,} train / {len(self.val_y):,} val / "
            f"{len(self.test_y):,} test, input {tuple(self.input_shape)}, {self.num_classes} classes"
            + (", augmented" if self.augment else "") + (f", cutout {self.cutout}" if self.cutout else "")
        )
