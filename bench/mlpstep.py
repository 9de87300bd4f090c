"""What autograd costs the lecture's MLP step (issue 18, goal 3): 784-128-10, batch 100, fused Adam,
on random tensors shaped like Fashion-MNIST's (no files). Six ways to take the same step, in
alternating rounds; a cell is the median (min-max) of the rounds, in microseconds per step:

- autograd: loss.backward() and opt.step(), as the bare loop (bench/loops.py) and the plain path do;
- autograd, direct Adam: the same backward, then zoo.module.fused_adam_step (a chunk before mlp_backprop);
- by hand: zoo.module.mlp_backprop (autograd's own kernels without its graph) and fused_adam_step,
  what a chunk of train.py runs now for a plain MLP;
- by hand with float32 products in bf16: the same step with oneDNN told to multiply float32 matrices in
  bf16 (torch.backends.mkldnn.matmul.fp32_precision = "bf16", what torch.set_float32_matmul_precision("medium")
  sets on a CPU; AMX on this kind of Xeon): the tensors stay float32, with no casts in Python;
- the last two in bf16-mixed (--trainer.precision bf16-mixed): autograd under CPU bf16 autocast, and
  mlp_backprop's bf16 step (the same casts and kernels by hand), each with the fused Adam step.

The float32 ways (but the one with bf16 products) end with bitwise the same weights, and so do the two
bf16 ones (checked here at the end, and in tests/test_fast_path.py).

    python bench/mlpstep.py [ROUNDS] [THREADS]   # e.g. 5 2 > results/mlpstep_avx2.txt
"""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from zoo.models.registry import create_model  # noqa: E402
from zoo.module import fused_adam_step, mlp_backprop  # noqa: E402

STEPS, BATCH = 550, 100  # one epoch of 55,000 images


def autograd(net, opt, x, y) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    opt.step()


def autograd_direct(net, opt, x, y) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    if not fused_adam_step(opt):
        opt.step()


def by_hand(net, opt, x, y) -> None:
    mlp_backprop(net.linears, x, y)
    if not fused_adam_step(opt):
        opt.step()


def by_hand_bf32(net, opt, x, y) -> None:
    # Switched on and back each step, so the other ways' rounds run without it (the switch is timed with the step).
    before = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        by_hand(net, opt, x, y)
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = before


def autograd_bf16(net, opt, x, y) -> None:
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(net(x), y)
    loss.backward()
    if not fused_adam_step(opt):
        opt.step()


def by_hand_bf16(net, opt, x, y) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as Lightning runs a bf16-mixed training step
        mlp_backprop(net.linears, x, y, torch.bfloat16)
    if not fused_adam_step(opt):
        opt.step()


def lecture_mlp() -> tuple[torch.nn.Sequential, torch.optim.Adam]:
    """The lecture's MLP, its Linear layers listed for mlp_backprop, and its fused Adam."""
    net = create_model("mlp", [1, 28, 28], 10)
    net.linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    return net, torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)


def batches(steps: int = STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` random batches shaped like Fashion-MNIST's (seed 0), and their labels."""
    torch.manual_seed(0)
    return torch.randn(steps, BATCH, 1, 28, 28), torch.randint(0, 10, (steps, BATCH))


WAYS = {"autograd": autograd, "autograd, direct Adam": autograd_direct, "by hand (train.py now)": by_hand,
        "by hand, bf16 products": by_hand_bf32, "bf16 autocast, autograd": autograd_bf16,
        "bf16 by hand (train.py)": by_hand_bf16}
BF16 = {"bf16 autocast, autograd", "bf16 by hand (train.py)"}
ROUNDED = {"by hand, bf16 products"}  # float32 tensors but bf16 products: not bitwise the other float32 ways


def main(rounds: int) -> None:
    xs, ys = batches()
    nets, opts, samples = {}, {}, {name: [] for name in WAYS}
    for name in WAYS:
        torch.manual_seed(1)
        nets[name], opts[name] = lecture_mlp()
    for _ in range(rounds):
        for name, step in WAYS.items():
            start = time.perf_counter()
            for x, y in zip(xs, ys):
                step(nets[name], opts[name], x, y)
            samples[name].append((time.perf_counter() - start) / STEPS * 1e6)
    base = statistics.median(samples["autograd"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {rounds} rounds of {STEPS} steps each")
    print(f"{'step':26s} {'us per step':>24s} {'vs autograd':>12s}")
    for name, s in samples.items():
        m = statistics.median(s)
        cell = f"{m:.0f} ({min(s):.0f}-{max(s):.0f})"
        print(f"{name:26s} {cell:>24s} {base / m:11.2f}x")
    for kind, names in (("float32", set(WAYS) - BF16 - ROUNDED), ("bf16", BF16)):
        weights = [list(nets[name].parameters()) for name in WAYS if name in names]
        same = all(torch.equal(a, b) for other in weights[1:] for a, b in zip(weights[0], other))
        print(f"the same weights after {rounds * STEPS} steps each, {kind} ways: {'yes, bitwise' if same else 'NO'}")


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else torch.get_num_threads())
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
