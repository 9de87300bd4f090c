"""train.py's ResNet-20 training images/s with and without --model.compile, over a longer window
than section 4's 15 steps: `fit` on CIFAR-10 in this process, `steps` steps of batch 128 timed after
`warmup` (the compile falls in the warm-up; its seconds are printed apart), rounds alternating the
two so the VM's drift hits both. A probe for issue 16, not a bench section:

    python bench/compile_fit.py [ROUNDS] [STEPS] [WARMUP]     # e.g. 3 100 5
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cifar import ours  # noqa: E402
from bench.common import med  # noqa: E402

if __name__ == "__main__":
    rounds, steps, warmup = (int(a) for a in (sys.argv[1:4] + ["3", "100", "5"][len(sys.argv[1:4]):]))
    rates: dict[str, list[float]] = {"defaults": [], "defaults + --model.compile true": []}
    for r in range(rounds):
        for label, extra in (("defaults", []), ("defaults + --model.compile true", ["--model.compile", "true"])):
            start = time.perf_counter()
            rate = ours(extra, warmup, steps, 128)
            whole = time.perf_counter() - start
            rates[label].append(rate)
            print(f"round {r}: {label:34s} {rate:7.1f} img/s over {steps} steps; the whole fit call {whole:.1f} s",
                  flush=True)
    for label, v in rates.items():
        print(f"median {label:34s} {med(v):7.1f} img/s ({min(v):.1f}-{max(v):.1f})")
    print(f"speed-up of compiling: {med(rates['defaults + --model.compile true']) / med(rates['defaults']):.2f}x")
