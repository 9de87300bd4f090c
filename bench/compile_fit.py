"""train.py's ResNet-20 training images/s with and without --model.compile, over a longer window
than section 4's 15 steps: `fit` on CIFAR-10 in this process, `steps` steps of batch 128 timed after
`warmup` (the compile falls in the warm-up, so the rate is the steady state; the whole fit call's
seconds, compile included, are printed beside it), rounds alternating the two so the VM's drift
hits both. A probe for issue 16, not a bench section:

    python bench/compile_fit.py [ROUNDS] [STEPS] [WARMUP]     # e.g. 3 100 5
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cifar import OURS, ours  # noqa: E402
from bench.common import med  # noqa: E402

SETUPS = {label: OURS[f"ours, {label}"] for label in ("defaults", "defaults + --model.compile true")}

if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    warmup = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    rates: dict[str, list[float]] = {label: [] for label in SETUPS}
    for r in range(rounds):
        for label, extra in SETUPS.items():
            start = time.perf_counter()
            rate = ours(extra, warmup, steps, 128)
            whole = time.perf_counter() - start
            rates[label].append(rate)
            print(f"round {r}: {label:34s} {rate:7.1f} img/s over {steps} steps; the whole fit call {whole:.1f} s",
                  flush=True)
    for label, v in rates.items():
        print(f"median {label:34s} {med(v):7.1f} img/s ({min(v):.1f}-{max(v):.1f})")
    eager, compiled = (med(v) for v in rates.values())
    print(f"speed-up of compiling: {compiled / eager:.2f}x")
