"""Model cost: parameters, forward FLOPs, checkpoint size and (optionally) CPU latency and throughput.

FLOPs come from torch.utils.flop_counter.FlopCounterMode, which counts a multiply-add as 2 FLOPs
and counts only matmuls and convolutions (bias adds, BatchNorm, activations and pooling are free).
`macs` = flops // 2 is the number papers usually call "FLOPs" (e.g. 41M for ResNet-20 on CIFAR).
`format_count` turns these numbers into table entries.

    stats = profile(create_model("resnet20", (3, 32, 32), 10), (3, 32, 32), latency=True)
"""

import copy
import io
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def profile(model: nn.Module, input_shape: Sequence[int], latency: bool = False, repeats: int = 20) -> dict:
    """Cost of `model` on one input of shape `input_shape` (no batch dimension).

    Returns params, trainable_params, flops (forward, per sample, 2 per multiply-add), macs
    (= flops // 2, what papers call FLOPs) and checkpoint_bytes (the saved state_dict). With
    latency=True also latency_ms_b1 and latency_ms_b256 (median CPU forward time in eval mode)
    and throughput_b256 (images/s at batch 256), timed with the current torch.get_num_threads();
    after one warm-up call it times up to `repeats` forwards, stopping at 3 once they pass 2 s.
    """
    # Work on a CPU copy in eval mode (dropout off, BatchNorm on running stats); the caller's model,
    # its device and its train/eval flag stay as they were.
    model = copy.deepcopy(model).cpu().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, *input_shape))
    flops = counter.get_total_flops()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    stats = {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "flops": flops,
        "macs": flops // 2,
        "checkpoint_bytes": buffer.getbuffer().nbytes,
    }
    if latency:
        stats["latency_ms_b1"] = _median_ms(model, torch.randn(1, *input_shape), repeats)
        stats["latency_ms_b256"] = _median_ms(model, torch.randn(256, *input_shape), repeats)
        stats["throughput_b256"] = 256 * 1000 / stats["latency_ms_b256"]
    return stats


def _median_ms(model: nn.Module, x: torch.Tensor, repeats: int, budget_s: float = 2.0) -> float:
    """Median forward time in ms; takes fewer repeats (at least 3) when one forward is slow."""
    times = []
    with torch.inference_mode():
        model(x)  # warm-up: the first call allocates memory and picks kernels
        while len(times) < max(3, repeats) and not (len(times) >= 3 and sum(times) > budget_s):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def format_count(n: float) -> str:
    """Short human form for tables: 7850 -> '7.85K', 101770 -> '101.8K', 2236682 -> '2.24M'."""
    value, unit = float(n), ""
    for bigger in ("K", "M", "G", "T"):
        if abs(value) < 999.95:  # anything larger would print as "1000.0" of this unit
            break
        value, unit = value / 1000, bigger
    if not unit:
        return str(n) if isinstance(n, int) else f"{n:.3g}"
    return f"{value:.2f}{unit}" if abs(value) < 9.995 else f"{value:.1f}{unit}"
