"""Callbacks that time a Lightning run from the inside, for the benchmarks.

They only read the clock, so the run they watch does the same work as without them. Pass them on
the command line like any callback (the repository root must be importable, as it is for
`python train.py` started in the root):

    python train.py fit --data mnist --trainer.callbacks+=bench.clocks.EpochClock
"""
import json
import time
from pathlib import Path

from lightning.pytorch import Callback


class EpochClock(Callback):
    """Per training epoch: seconds of the training batches (`train`), of validation (`val`) and of the
    whole epoch from its start to the next one's, checkpoints and logging included (`total`).
    With `save=True` rank 0 also writes them to <default_root_dir>/epoch_clock.json, for runs in
    another process."""

    def __init__(self, save: bool = False) -> None:
        self.save = save
        self.epochs: list[dict[str, float]] = []
        self.profile: dict[str, list[float]] = {}
        self._start = self._val_start = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        now = time.perf_counter()
        self._close(now)
        self._start, self._val_start = now, None
        self.epochs.append({"train": 0.0, "val": 0.0, "total": 0.0})

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self._start is not None:
            self._val_start = time.perf_counter()
            self.epochs[-1]["train"] = self._val_start - self._start

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self._val_start is not None:
            self.epochs[-1]["val"] = time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._val_start is None:  # no validation this epoch: the batches were all of it
            self.epochs[-1]["train"] = time.perf_counter() - self._start

    def on_train_end(self, trainer, pl_module) -> None:
        self._close(time.perf_counter())
        # Lightning's SimpleProfiler (--trainer.profiler simple), as it stood when fit ended (before test).
        self.profile = {k: list(v) for k, v in getattr(trainer.profiler, "recorded_durations", {}).items()}
        if self.save and trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / "epoch_clock.json"
            path.write_text(json.dumps(self.epochs))

    def _close(self, now: float) -> None:
        if self._start is not None and self.epochs and not self.epochs[-1]["total"]:
            self.epochs[-1]["total"] = now - self._start


class SavingEpochClock(EpochClock):
    """EpochClock that writes epoch_clock.json (for runs in a subprocess, DDP included)."""

    def __init__(self) -> None:
        super().__init__(save=True)


class StepClock(Callback):
    """Seconds for training batches `warmup` .. the last one of the first epoch (data loading,
    forward, backward and optimizer step), so a fixed number of steps can be timed after warm-up."""

    def __init__(self, warmup: int = 3) -> None:
        self.warmup = warmup
        self.steps = 0
        self.seconds = 0.0
        self._start = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == self.warmup and trainer.current_epoch == 0:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._start is not None and trainer.current_epoch == 0:
            self.seconds = time.perf_counter() - self._start
            self.steps = batch_idx + 1 - self.warmup


class EpochProfile(Callback):
    """cProfile of the training epochs after the first (validation included; setup, warm-up and the
    final test excluded): `stats` is a pstats.Stats once fit ends."""

    def __init__(self) -> None:
        import cProfile

        self.profiler = cProfile.Profile()
        self.stats = None
        self.epochs = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch >= 1:
            self.profiler.enable()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch >= 1:
            self.profiler.disable()
            self.epochs += 1

    def on_train_end(self, trainer, pl_module) -> None:
        import pstats

        self.stats = pstats.Stats(self.profiler) if self.epochs else None
