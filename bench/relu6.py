"""MobileNetV2's training step with zoo.models.mobilenetv2.ReLU6 (in place, no copy) against autograd's
own in-place nn.ReLU6 (a clone of each input per step), two networks in one process, alternating rounds
of 8 steps, with the page faults each step caused (fresh allocations the clones need). Issue 16:

    python bench/relu6.py [ROUNDS] > results/cifar10_conv/relu6_xeon.txt

`fit STEPS [ROUNDS]` instead times whole `train.py fit` runs of STEPS steps, one process per fit, alternating
the two ReLU6s (fit_seconds from each run's metrics.json; validation off, the test pass not counted):

    python bench/relu6.py fit 100 2 > results/cifar10_conv/relu6_fit_xeon.txt
"""
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.convsteps import autograd_relu6  # noqa: E402
from bench.loops import BareLoop, setup_data  # noqa: E402

USAGE = "usage: python bench/relu6.py [ROUNDS]  |  python bench/relu6.py fit STEPS [ROUNDS]   (positive whole numbers)"
# a train.py fit with autograd's ReLU6 put back before the model is built (conv_bn_relu6 reads the name)
FIT = ("import sys, torch, zoo.models.mobilenetv2 as m\n"
       "if sys.argv[1] == 'autograd': m.ReLU6 = torch.nn.ReLU6\n"
       "import train\nsys.exit(train.main(sys.argv[2:]))")


def fit_seconds(variant: str, steps: int) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        subprocess.run([sys.executable, "-c", FIT, variant, "fit", "--data", "cifar10", "--model.arch", "mobilenetv2",
                        "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
                        "--trainer.limit_test_batches", "1", "--monitor", "train/loss", "--patience", "0",
                        "--run_dir", run_dir, "--quiet", "true"],
                       cwd=ROOT, check=True, capture_output=True)
        return json.loads((Path(run_dir) / "metrics.json").read_text())["fit_seconds"]


def fits(steps: int, rounds: int) -> None:
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: python bench/relu6.py fit {steps} {rounds}; "
          f"train.py fit --data cifar10 --model.arch mobilenetv2 (its defaults), {steps} steps of batch 128",
          flush=True)
    seconds: dict[str, list[float]] = {"ours": [], "autograd": []}
    for r in range(rounds):
        for name in seconds:
            seconds[name].append(fit_seconds(name, steps))
            print(f"round {r}  {name:8s}  fit {seconds[name][-1]:6.1f} s  {steps * 128 / seconds[name][-1]:6.1f} img/s",
                  flush=True)
    for name, v in seconds.items():
        print(f"{name:8s} median {steps * 128 / statistics.median(v):6.1f} img/s over the fit")


if __name__ == "__main__":
    fit = sys.argv[1:2] == ["fit"]
    numbers = sys.argv[2:] if fit else sys.argv[1:]
    if not all(n.isdigit() and int(n) > 0 for n in numbers) or len(numbers) > 1 + fit or (fit and not numbers):
        sys.exit(USAGE)
    if fit:
        fits(int(numbers[0]), int(numbers[1]) if len(numbers) > 1 else 2)
        sys.exit()
    rounds = int(numbers[0]) if numbers else 5
    dm = setup_data("cifar10", batch_size=128)
    loops = {"ours": BareLoop(dm, "mobilenetv2"), "autograd": BareLoop(dm, "mobilenetv2")}
    autograd_relu6(loops["autograd"].model)  # autograd's hardtanh_, as before
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: python bench/relu6.py {rounds}; MobileNetV2, "
          f"batch 128, {torch.get_num_threads()} threads, bf16={loops['ours'].bf16}, channels_last", flush=True)
    for loop in loops.values():
        loop.seconds_per_step(1, warmup=1)
    speeds: dict[str, list[float]] = {k: [] for k in loops}
    for r in range(rounds):
        for name, loop in loops.items():
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            speeds[name].append(128 / loop.seconds_per_step(8, warmup=0))
            faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 8
            print(f"round {r}  {name:8s}  {speeds[name][-1]:6.1f} img/s  {faults:6.0f} page faults/step", flush=True)
    for name, v in speeds.items():
        print(f"{name:8s} median {statistics.median(v):6.1f} img/s ({min(v):.1f}-{max(v):.1f})")
    print(f"ours / autograd: {statistics.median(speeds['ours']) / statistics.median(speeds['autograd']):.2f}x")
