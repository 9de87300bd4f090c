"""Where a fit's training time goes (issue 18, goal 3): the lecture's Fashion-MNIST MLP (`train.py fit`,
4 epochs, --quiet, the defaults, in this process) with timers around the pieces of its training path,
beside the same step timed alone (bench/mlpstep.py's 'by hand': mlp_backprop and the fused Adam step
on tensors already in memory). Rounds alternate a fit and the step alone; a cell is the median
(min-max) of the rounds, in seconds per fit and in microseconds per training step (2,200 a fit).

Timed pieces nest: a chunk's time includes its steps', the Lightning steps' include the chunks', and
each 'rest' row is its parent less the rows above it. A Lightning step is, to within a few
microseconds, its chunk, the fetch of the next chunk and the batch-transfer hooks. 'Validation' is
Lightning's end-of-step work, which runs the validation pass after each epoch's last step; the
checkpoints are saved in the epoch-end hooks; 'rest of the loop' holds those hooks' other work and
the start-of-training hooks (the sample picture); 'before the loop' is fit_seconds less the fit loop
(the sanity check).

    python bench/fitstep.py [ROUNDS] [THREADS]   # e.g. 3 2 > results/fitstep_avx2.txt (needs ./data, or $ZOO_DATA)
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from lightning.pytorch import LightningModule, Trainer  # noqa: E402
from lightning.pytorch.loops import fetchers, fit_loop, training_epoch_loop  # noqa: E402

import zoo.module  # noqa: E402
from bench.common import spread, timed_lecture_fit  # noqa: E402
from bench.mlpstep import batches, by_hand, lecture_mlp  # noqa: E402
from datamodules.tensor import LazyChunk  # noqa: E402

STEPS = 2200  # 4 epochs of 550 batches of 100 (55,000 training images)
TIMED = {
    "fit loop": (fit_loop._FitLoop, "run"),
    "Lightning steps": (training_epoch_loop._TrainingEpochLoop, "advance"),
    "chunks": (zoo.module.ZooModule, "_train_chunk"),
    "mlp_backprop": (zoo.module, "mlp_backprop"),
    "fused Adam": (zoo.module, "fused_adam_step"),
    "normalisation": (LazyChunk, "__getitem__"),
    "fetch": (fetchers._PrefetchDataFetcher, "__next__"),
    "batch transfer": (LightningModule, "_apply_batch_transfer_handler"),
    "epoch ends": (training_epoch_loop._TrainingEpochLoop, "on_advance_end"),
    "checkpoint saves": (Trainer, "save_checkpoint"),
}
# (row, indent, how to get its seconds from one fit's timings)
ROWS = [
    ("fit_seconds (metrics.json)", 0, lambda t: t["fit_seconds"]),
    ("before the loop", 1, lambda t: t["fit_seconds"] - t["fit loop"]),
    ("fit loop", 1, lambda t: t["fit loop"]),
    ("Lightning steps (44 chunks of 50)", 2, lambda t: t["Lightning steps"]),
    ("chunks (ZooModule._train_chunk)", 3, lambda t: t["chunks"]),
    ("mlp_backprop", 4, lambda t: t["mlp_backprop"]),
    ("fused Adam", 4, lambda t: t["fused Adam"]),
    ("normalisation", 4, lambda t: t["normalisation"]),
    ("rest of the chunk (reseeds, metrics, NaN check)", 4,
     lambda t: t["chunks"] - t["mlp_backprop"] - t["fused Adam"] - t["normalisation"]),
    ("fetching the next chunk", 3, lambda t: t["fetch"]),
    ("its batch transfer hooks", 3, lambda t: t["batch transfer"]),
    ("validation (in the epochs' last steps)", 2, lambda t: t["epoch ends"]),
    ("checkpoint saves (in the epoch-end hooks)", 2, lambda t: t["checkpoint saves"]),
    ("rest of the loop", 2, lambda t: t["fit loop"] - t["Lightning steps"] - t["epoch ends"] - t["checkpoint saves"]),
]


def fit(epochs: int = 4) -> dict[str, float]:
    spent, metrics = timed_lecture_fit(TIMED, epochs)
    return {**spent, "fit_seconds": metrics["fit_seconds"]}


def step_alone(steps: int = 550) -> float:
    """Seconds per step of mlp_backprop + fused Adam on in-memory tensors (bench/mlpstep.py's by hand)."""
    xs, ys = batches(steps)
    net, opt = lecture_mlp()
    by_hand(net, opt, xs[0], ys[0])  # Adam's state, as a fit's first step makes it
    start = time.perf_counter()
    for x, y in zip(xs, ys):
        by_hand(net, opt, x, y)
    return (time.perf_counter() - start) / steps


def main(rounds: int) -> None:
    fits, alone = [], []
    for _ in range(rounds):
        fits.append(fit())
        alone.append(step_alone())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {rounds} fits of {STEPS:,} steps, "
          f"each followed by {550} steps alone")
    alone_name = "the step alone (mlp_backprop + fused Adam)"
    w = max(len(alone_name), *(2 * indent + len(name) for name, indent, _ in ROWS))
    print(f"{'':{w}s} {'s per fit':>22s} {'us per step':>22s}")
    for name, indent, value in ROWS:
        seconds = [value(t) for t in fits]
        print(f"{'  ' * indent + name:{w}s} {spread(seconds, 3):>22s} {spread(seconds, 0, 1e6 / STEPS):>22s}")
    print(f"{alone_name:{w}s} {'':>22s} {spread(alone, 0, 1e6):>22s}")


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else torch.get_num_threads())
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
