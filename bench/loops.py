"""The bare PyTorch loop the benchmarks compare Lightning with, over the project's own data path.

`BareLoop` trains a zoo model exactly as ZooModule would (the recipe's optimizer, parameter groups
and per-step schedule; cross-entropy; by default train.py's fast path: memory format, precision and
fused optimizer step) on the datamodule's in-memory tensors (`TensorLoader`, then
`dm.normalize`), with no logging, no metrics, no callbacks and one `.item()` per evaluation pass.

    dm = setup_data("mnist")
    loop = BareLoop(dm, "lenet5", total_steps=4 * 430)
    seconds = loop.train_epoch(epoch=0)
"""
import contextlib
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.common import data_dir
from datamodules import TensorLoader, create_datamodule
from zoo.models.registry import convolutional, create_model
from zoo.module import default_precision, resolve_recipe

_DATA: dict = {}


def setup_data(name: str, batch_size: int | None = None):
    """A datamodule with its data loaded and split (no Trainer); loaded once per process and batch
    size (CIFAR-10 takes seconds), so callers must not change it."""
    key = (name, batch_size)
    if key not in _DATA:
        dm = create_datamodule(name, data_dir=data_dir(), **({"batch_size": batch_size} if batch_size else {}))
        dm.setup("fit")
        _DATA[key] = dm
    return _DATA[key]


class BareLoop:
    def __init__(self, dm, arch: str, *, total_steps: int = 1, channels_last: bool | None = None,
                 bf16: bool | None = None, compile: str = "none", fused: bool | None = None,
                 seed: int = 42) -> None:
        # None: what train.py does by default on this CPU (channels_last for conv nets, bf16 autocast
        # where default_precision picks it, the fused optimizer step), so both sides run the same math.
        conv = convolutional(arch) and len(dm.input_shape) == 3
        channels_last = conv if channels_last is None else channels_last
        bf16 = default_precision(arch, "cpu") == "bf16-mixed" if bf16 is None else bf16
        fused = True if fused is None else fused
        self.dm, self.channels_last, self.bf16, self.fused = dm, channels_last, bf16, fused
        torch.manual_seed(seed)
        self.model = create_model(arch, list(dm.input_shape), dm.num_classes)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if compile not in ("none", "model", "step"):
            raise ValueError(f"BareLoop compile={compile!r}: use 'none', 'model' or 'step'.")
        self.forward = torch.compile(self.model) if compile == "model" else self.model
        r = resolve_recipe(arch, dm.name)  # what train.py uses for this model on this dataset
        decay = [p for p in self.model.parameters() if p.dim() > 1]
        no_decay = [p for p in self.model.parameters() if p.dim() <= 1]
        groups = [dict(params=decay, weight_decay=r["weight_decay"]), dict(params=no_decay, weight_decay=0.0)]
        if r["optimizer"] == "sgd":
            self.opt = torch.optim.SGD(groups, lr=r["lr"], momentum=0.9, nesterov=True, fused=fused)
        else:
            self.opt = torch.optim.Adam(groups, lr=r["lr"], fused=fused)
        self.sched = (torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(1, total_steps))
                      if r["scheduler"] == "cosine" else None)
        # compile="model": torch.compile(model), as --model.compile true. compile="step": the whole
        # step in compiled graphs (normalisation, forward, loss and their backward in one, the
        # optimizer update in another); only the backward call stays in Python.
        self.compiled_step = compile == "step"
        if self.compiled_step:
            self._loss = torch.compile(self._loss)
            self._update = torch.compile(self.opt.step)

    def loader(self, split: str = "train", epoch: int = 0, batch_size: int | None = None) -> TensorLoader:
        dm, train = self.dm, split == "train"
        return TensorLoader(getattr(dm, f"{split}_x"), getattr(dm, f"{split}_y"),
                            batch_size=batch_size or (dm.batch_size if train else dm.eval_batch_size),
                            shuffle=train, seed=42, epoch_fn=lambda: epoch, pad=dm.pad if train and dm.augment else 0,
                            flip=dm.flip and dm.augment and train, drop_last_small=train)

    def batches(self, batch_size: int | None = None):
        """Training batches without end, epoch after epoch (for a fixed number of steps)."""
        epoch = 0
        while True:
            yield from self.loader("train", epoch, batch_size)
            epoch += 1

    def seconds_per_step(self, steps: int, warmup: int = 2, batch_size: int | None = None) -> float:
        """Seconds per training step over `steps` steps through the data path, after `warmup`."""
        it = self.batches(batch_size)
        for _ in range(warmup):
            self.step(*next(it))
        start = time.perf_counter()
        for _ in range(steps):
            self.step(*next(it))
        return (time.perf_counter() - start) / steps

    def inputs(self, x: Tensor) -> Tensor:
        x = self.dm.normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def _loss(self, x: Tensor, y: Tensor) -> Tensor:
        with self.autocast():
            return F.cross_entropy(self.forward(self.inputs(x)), y)

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """One training step on a uint8 (or feature) batch, as Lightning's automatic optimisation does it."""
        loss = self._loss(x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self._update() if self.compiled_step else self.opt.step()
        if self.sched is not None:
            self.sched.step()
        return loss

    def train_epoch(self, epoch: int = 0, limit: int | None = None) -> float:
        """Seconds for one pass over the training split (or its first `limit` batches)."""
        self.model.train()
        start = time.perf_counter()
        for i, (x, y) in enumerate(self.loader("train", epoch)):
            if limit is not None and i >= limit:
                break
            self.step(x, y)
        return time.perf_counter() - start

    def evaluate(self, split: str = "val", batch_size: int | None = None, limit: int | None = None,
                 mode: str = "inference_mode") -> tuple[float, float]:
        """(seconds, accuracy) of one pass over `split`, computing the loss and accuracy as validation
        does; mode is inference_mode, no_grad or grad (autograd on, as without either)."""
        self.model.eval()
        context = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad,
                   "grad": contextlib.nullcontext}[mode]
        start = time.perf_counter()
        correct = torch.zeros((), dtype=torch.long)
        n = 0
        with context(), self.autocast():
            for i, (x, y) in enumerate(self.loader(split, batch_size=batch_size)):
                if limit is not None and i >= limit:
                    break
                logits = self.forward(self.inputs(x))
                F.cross_entropy(logits, y)
                correct += (logits.argmax(1) == y).sum()
                n += len(y)
        acc = correct.item() / max(1, n)
        seconds = time.perf_counter() - start
        self.model.train()
        return seconds, acc
