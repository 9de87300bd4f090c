"""What the small pieces on a small model's training path cost (issue 18, goal 3), each against the
way it was done before: the lecture's MLP (784-128-10, batch 100, Adam) on tensors shaped like
Fashion-MNIST's, random data, no files. Rounds alternate the variants; a cell is the median (min-max).

    python bench/hotpath.py [ROUNDS] [THREADS]   # e.g. 5 1 > results/hotpath.txt

- gather: one epoch's batches (550 x 100 of 55,000 uint8 images) by `x[batch]` (advanced indexing,
  the loader before commit 037d576) and by `x.index_select(0, batch)` (the loader now);
- optimizer step: Adam(fused=True) over the MLP's two parameter groups, by `opt.step()` (what a
  chunk did before commit ec32352, and what the bare loop and the plain path do) and by
  `zoo.module.fused_adam_step` (a chunk now), against the kernel calls alone;
- sample picture: the 32 labelled images drawn at train start, with matplotlib (as before commit
  9f284b3, kept below as the reference) and with PIL (`zoo.insight.samples_picture`, now);
- the split: a fit's training split taken from the official training set (60,000 MNIST-shaped
  images, a permutation's last 55,000), by `x[indices]` (before) and by `x.index_select(0, indices)`
  (`TensorDataModule.setup`, now);
- channel statistics: the training split's per-channel mean and std (at every fit's setup; MNIST's
  and CIFAR-10's shapes), by a histogram of the values widened to int64 (before, kept below) and
  by counting the uint8 values per channel (`datamodules.tensor.channel_stats`, now).
"""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import load  # noqa: E402
from datamodules.tensor import channel_stats  # noqa: E402
from zoo.insight import figure_rgb, new_figure, samples_picture  # noqa: E402
from zoo.models.registry import create_model  # noqa: E402
from zoo.module import fused_adam_step  # noqa: E402

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def samples_matplotlib(x: torch.Tensor, y: torch.Tensor, cols: int = 8) -> np.ndarray:
    """The sample picture as zoo.insight drew it before commit 9f284b3 (matplotlib, one text per label)."""
    from torchvision.utils import make_grid

    x, y = x[: 4 * cols], y[: 4 * cols]
    h, w = x.shape[2:]
    grid = make_grid(x, nrow=cols, padding=2).permute(1, 2, 0).numpy()
    width = 1.1 * cols
    height = width * grid.shape[0] / grid.shape[1]
    fig = new_figure(width, height + 0.3)
    ax = fig.add_axes((0, 0, 1, height / (height + 0.3)))
    ax.imshow(grid, interpolation="nearest")
    for i, label in enumerate(y.tolist()):
        r, c = divmod(i, cols)
        ax.text(c * (w + 2) + 3, r * (h + 2) + 3, NAMES[label], color="yellow", fontsize=7, va="top",
                bbox=dict(facecolor="black", alpha=0.6, pad=1, linewidth=0))
    ax.set_axis_off()
    fig.suptitle("first training batch after augmentation, with labels", fontsize=9, y=0.99)
    return figure_rgb(fig)


def channel_stats_int64(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """channel_stats before: each chunk widened to int64 with a channel offset, one bincount."""
    c = x.shape[1]
    offset = torch.arange(c).view(1, c, 1, 1) * 256
    counts = torch.zeros(c * 256, dtype=torch.float64)
    for chunk in x.split(1024):
        counts += torch.bincount((chunk.long() + offset).flatten(), minlength=c * 256).double()
    counts, values = counts.view(c, 256), torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum(1)
    mean = (counts * values).sum(1) / n
    return mean.float(), ((counts * values**2).sum(1) / n - mean**2).clamp_min(0).sqrt().float()


def variants() -> dict[str, tuple[str, callable]]:
    """name -> (unit, a function that does the measured work once and returns its count of units)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (55_000, 1, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (55_000,), generator=g)
    batches = torch.randperm(55_000, generator=g).split(100)

    def by_indexing():
        for b in batches:
            x[b], y[b]
        return len(batches)

    def by_index_select():
        for b in batches:
            x.index_select(0, b), y.index_select(0, b)
        return len(batches)

    net = create_model("mlp", [1, 28, 28], 10)
    params = list(net.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    groups = [dict(params=[p for p in params if p.dim() > 1]), dict(params=[p for p in params if p.dim() <= 1])]
    opt = torch.optim.Adam(groups, lr=1e-3, fused=True)
    opt.step()  # the state exists, as after a run's first step
    steps = 500

    def torch_step():
        for _ in range(steps):
            opt.step()
        return steps

    def direct_step():
        for _ in range(steps):
            assert fused_adam_step(opt)
        return steps

    def kernels_alone():
        calls = []
        for group in opt.param_groups:
            ps = group["params"]
            states = [opt.state[p] for p in ps]
            tensors = [ps, [p.grad for p in ps], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]]
            calls.append(([s["step"] for s in states], tensors))
        with torch.no_grad():
            for _ in range(steps):
                for state_steps, tensors in calls:
                    torch._foreach_add_(state_steps, 1)
                    torch._fused_adam_(*tensors, [], state_steps, amsgrad=False, lr=1e-3, beta1=0.9, beta2=0.999,
                                       weight_decay=0.0, eps=1e-8, maximize=False)
        return steps

    images, labels = x[:100], y[:100]
    cifar = torch.randint(0, 256, (45_000, 3, 32, 32), dtype=torch.uint8, generator=g)
    full = torch.randint(0, 256, (60_000, 1, 28, 28), dtype=torch.uint8, generator=g)
    split = torch.randperm(60_000, generator=g)[5_000:]
    stats = {"the split: x[indices]": ("ms per split", lambda: full[split] is not None),
             "the split: index_select": ("ms per split", lambda: full.index_select(0, split) is not None)}
    stats |= {f"channel statistics, {name}: {how}": ("ms per split", lambda f=f, d=d: f(d) is not None)
             for name, d in [("MNIST-shaped", x), ("CIFAR-10-shaped", cifar)]
             for how, f in [("int64 histogram", channel_stats_int64),
                            ("uint8 per channel (channel_stats)", channel_stats)]}
    return {
        "gather: x[batch], y[batch]": ("us per batch", by_indexing),
        "gather: index_select": ("us per batch", by_index_select),
        "Adam step: opt.step()": ("us per step", torch_step),
        "Adam step: fused_adam_step(opt)": ("us per step", direct_step),
        "Adam step: the kernel calls alone": ("us per step", kernels_alone),
        "sample picture: matplotlib": ("ms per picture", lambda: samples_matplotlib(images, labels) is not None),
        "sample picture: PIL (samples_picture)": ("ms per picture",
                                                  lambda: samples_picture(images, labels, NAMES) is not None),
        **stats,
    }


def main(rounds: int) -> None:
    start_load = load()
    work = variants()
    for _, f in work.values():  # warm-up: first calls, imports (matplotlib, PIL's font)
        f()
    times: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(rounds):
        for name, (unit, f) in work.items():
            t = time.perf_counter()
            n = f()
            times[name].append((time.perf_counter() - t) / n * (1e3 if unit.startswith("ms") else 1e6))
    print(f"Hot-path pieces, median (min-max) of {rounds} rounds, {torch.get_num_threads()} thread(s); "
          f"load average {start_load:.2f} at the start, {load():.2f} at the end")
    print("| what | unit | time |\n|---|---|---:|")
    for name, (unit, _) in work.items():
        t = times[name]
        print(f"| {name} | {unit} | {statistics.median(t):.1f} ({min(t):.1f}-{max(t):.1f}) |")


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
