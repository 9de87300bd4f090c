"""What a chunk of optimizer steps costs per Lightning step (issue 18, goal 4): the epoch of
`train.py fit --quiet` on MNIST against the bare loop over the same tensors, for chunk sizes
(--steps_per_execution) and with the chunk's steps sent through Lightning's own per-step dispatch
(manual_backward and the LightningOptimizer's step, patched in this process) instead of stepped
directly, as train.py does by default. Rounds alternate the variants; epoch 0 of each run is dropped.

    python bench/chunks.py [ROUNDS] [THREADS] [ARCH] [MORE]   # e.g. 3 1 mlp 100,430 > results/chunks_mlp.txt

MORE: further chunk sizes, stepped directly (430 = a whole MNIST epoch in one chunk).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import zoo.module  # noqa: E402
from bench.common import load, med, spread  # noqa: E402
from bench.loops import setup_data  # noqa: E402
from bench.overhead import bare, ours  # noqa: E402

# name -> (--steps_per_execution, step directly)
VARIANTS = {"1 (plain path)": ("1", True), "10, through Lightning's dispatch": ("10", False),
            "10, stepped directly": ("10", True), "50, stepped directly (default)": ("50", True)}


def run(rounds: int, arch: str, epochs: int = 4, quick: bool = False,
        more: tuple[str, ...] = ()) -> dict[str, list[float]]:
    dm = setup_data("mnist")
    direct = zoo.module.steps_directly
    variants = {**VARIANTS, **{f"{k}, stepped directly": (k, True) for k in more}}
    out: dict[str, list[float]] = {"bare loop": [], **{name: [] for name in variants}}
    for _ in range(rounds):
        out["bare loop"] += [e["total"] for e in bare(dm, arch, epochs, quick)[1:]]
        for name, (k, directly) in variants.items():
            zoo.module.steps_directly = direct if directly else (lambda trainer: False)
            try:
                out[name] += [e["total"] for e in ours(arch, epochs, quick, extra=("--steps_per_execution", k))[0][1:]]
            finally:
                zoo.module.steps_directly = direct
    return out


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    arch = sys.argv[3] if len(sys.argv) > 3 else "mlp"
    start_load = load()
    times = run(rounds, arch, more=tuple(sys.argv[4].split(",")) if len(sys.argv) > 4 else ())
    base = med(times["bare loop"])
    print(f"{arch} on MNIST, whole epoch (training + validation) in s, median (min-max) of {rounds} rounds x 3 "
          f"epochs, {torch.get_num_threads()} thread(s); load average {start_load:.2f} at the start, "
          f"{load():.2f} at the end")
    print("| chunk (--steps_per_execution) | epoch s | vs bare loop |\n|---|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {spread(t, 3)} | {med(t) / base:.2f}x |")
