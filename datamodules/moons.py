"""Two interleaving half-moons (scikit-learn's make_moons): the zoo's 2-feature toy problem.

The data are exactly the lecture's: make_moons(n_samples, noise, random_state=42), then
train_test_split(test_size=0.3, random_state=42), so n_samples=200 gives 140 train / 60 test
and test accuracies compare with the lecture's MLP(10, 10) (0.979 train / 0.950 test). Unlike
the lecture, a validation split (val_fraction of the 140, 14 by default) is carved out of the
training part, so models train on 126 points; pass val_fraction 0 to train on all 140.
Features stay float32 and unnormalised (they are already about zero-mean, unit-scale).
Registered as 'moons'.

    python train.py fit --data moons --model mlp
"""
import math

import torch
from torch import Tensor

from datamodules.tensor import TensorDataModule
from zoo.errors import ZooError

MAX_SAMPLES = 10_000_000  # sklearn generates float64 points, then splits and copies them: ~1 GB at most


class MoonsDataModule(TensorDataModule):
    """Two-moons: 2 float features, 2 classes, generated in memory (no files).

    Args:
        n_samples: points generated in total (70% train+val, 30% test).
        noise: standard deviation of the Gaussian noise added to the moons.
        batch_size: training batch size.
        eval_batch_size: batch size for validation and test.
        val_fraction: fraction of the training part held out for validation (0: none).
        split_seed: seed of the train/validation split; None uses the global seed
            (--seed_everything), else 42. The train/test split is always random_state=42.
        train_fraction: train on only this fraction (0, 1] of the training split.
        data_dir: ignored (moons needs no files); accepted so all datamodules share options.
    """

    name = "moons"
    num_classes = 2
    input_shape = (2,)
    class_names = ["0", "1"]

    def __init__(
        self,
        n_samples: int = 200,
        noise: float = 0.2,
        batch_size: int = 32,
        eval_batch_size: int = 1000,
        val_fraction: float = 0.1,
        split_seed: int | None = None,
        train_fraction: float = 1.0,
        data_dir: str | None = None,
    ) -> None:
        super().__init__(
            data_dir=data_dir, batch_size=batch_size, eval_batch_size=eval_batch_size,
            split_seed=split_seed, augment=False, train_fraction=train_fraction,
        )
        # The base saved its own options too; drop those moons does not take.
        self.save_hyperparameters(ignore=["val_size", "augment", "download", "translate", "pad_mode", "alternate_flip",
                                          "cutout"])
        self.n_samples, self.noise, self.val_fraction = n_samples, noise, val_fraction

    def val_count(self, n_train: int) -> int:
        return round(self.val_fraction * n_train)

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from sklearn.datasets import make_moons  # imported here: sklearn is slow to import
        from sklearn.model_selection import train_test_split

        # Checked here, not in __init__: the CLI would wrap an error raised there in a long traceback.
        if not 2 <= self.n_samples <= MAX_SAMPLES:  # a test point (30%, rounded up) and one to train on
            raise ZooError(f"moons: n_samples must be from 2 (one test point and one to train on) to {MAX_SAMPLES:,} "
                           f"(~1 GB in memory), got {self.n_samples:,}. Fix: pass e.g. --data.n_samples 200 (the "
                           f"default).")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ZooError(f"moons: noise is the standard deviation of the noise added to the points, so it must be "
                           f"a finite number >= 0, got {self.noise}. Fix: pass e.g. --data.noise 0.2 (the default).")
        x, y = make_moons(self.n_samples, noise=self.noise, random_state=42)
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=42)
        return (
            torch.tensor(x_train, dtype=torch.float32), torch.tensor(y_train, dtype=torch.int64),
            torch.tensor(x_test, dtype=torch.float32), torch.tensor(y_test, dtype=torch.int64),
        )
