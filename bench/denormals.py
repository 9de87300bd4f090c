"""Subnormal floats in a real fit (issue 18): the lecture's Fashion-MNIST MLP (`train.py fit`, 4 epochs,
--quiet, in this process), timing the training chunks, mlp_backprop and the fused Adam step inside it,
with IEEE subnormals (torch's default) and with them flushed to zero (torch.set_flush_denormal(True)),
in alternating rounds. Confident predictions give softmax probabilities below float32's normal range
(~1.2e-38), and arithmetic on such values is slow on x86 CPUs. A probe, not a train.py option (yet):
flushing changes the weights in their last bits, so it would need its own decision and tests.

    python bench/denormals.py [ROUNDS]   # e.g. 2 > results/denormals_avx2.txt (needs ./data, or $ZOO_DATA)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import zoo.module  # noqa: E402
from bench.common import med, spread, timed_lecture_fit  # noqa: E402

TIMED = {"chunk": (zoo.module.ZooModule, "_train_chunk"), "mlp_backprop": (zoo.module, "mlp_backprop"),
         "fused Adam": (zoo.module, "fused_adam_step")}


def fit(flush: bool) -> dict[str, float]:
    torch.set_flush_denormal(flush)
    try:
        return timed_lecture_fit(TIMED)[0]
    finally:
        torch.set_flush_denormal(False)


def main(rounds: int) -> None:
    samples = {flush: [] for flush in (False, True)}
    for _ in range(rounds):
        for flush in samples:
            samples[flush].append(fit(flush))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {rounds} fits each, 2,200 steps per fit")
    print(f"{'seconds per fit':18s} {'subnormals (default)':>22s} {'flushed to zero':>22s} {'ratio':>6s}")
    for name in TIMED:
        cells = [[s[name] for s in samples[flush]] for flush in (False, True)]
        text = [spread(c, 3) for c in cells]
        ratio = med(cells[0]) / med(cells[1])
        print(f"{name:18s} {text[0]:>22s} {text[1]:>22s} {ratio:5.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
