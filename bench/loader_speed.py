"""Loader speed: seconds per pass over each training split, no model, batch size 128.

Ours: `TensorLoader` (index a permutation of in-memory uint8 tensors, whole-batch crop/flip) plus
the datamodule's normalisation. Theirs: torchvision's Dataset + DataLoader with the usual
per-sample transforms (ToTensor + Normalize; for CIFAR-10 first RandomCrop(32, padding=4) +
RandomHorizontalFlip), num_workers 0 and 2. Both sides shuffle the same 55,000 / 45,000 training
images, produce normalised float batches and touch every batch (a sum), so the work is the same.

    python bench/loader_speed.py            # full passes; writes results/loader_speed.md
    python bench/loader_speed.py --quick    # 50 batches per loader, extrapolated; prints only
"""
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, installed or not

import torch  # noqa: E402
import torchvision  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from datamodules import create_datamodule  # noqa: E402

BATCH_SIZE = 128
QUICK_BATCHES = 50
# One intra-op thread on both sides (DataLoader workers use one each anyway): batch-sized ops gain
# little from more, and on a busy machine spin-waiting OpenMP threads make them up to 100x slower.
torch.set_num_threads(1)


class OfflineCIFAR10(torchvision.datasets.CIFAR10):
    def _check_integrity(self) -> bool:  # the offline copy is rebuilt, so its md5 differs (see data README)
        return True


def seconds_per_pass(batches, normalize, limit: int | None, total: int) -> float:
    """Time one pass (or `limit` batches, extrapolated to `total`) producing normalised floats."""
    start = time.perf_counter()
    n = 0
    for x, _ in batches:
        normalize(x).sum().item()  # force the work, as a training step would
        n += 1
        if limit and n >= limit:
            break
    return (time.perf_counter() - start) * total / n


def torchvision_dataset(name: str, root: str, mean: list[float], std: list[float]):
    transforms = [T.ToTensor(), T.Normalize(mean, std)]
    if name == "cifar10":
        transforms = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] + transforms
        return OfflineCIFAR10(root, train=True, transform=T.Compose(transforms))
    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST}[name]
    return cls(root, train=True, transform=T.Compose(transforms))


def bench(name: str, quick: bool) -> dict[str, float]:
    """Best-of-N seconds per pass for ours and for torchvision with 0 and 2 workers. The minimum,
    not the mean: on a shared machine other processes only ever make a pass slower."""
    data_dir = os.environ.get("ZOO_DATA", str(REPO / "data"))
    dm = create_datamodule(name, data_dir=data_dir, batch_size=BATCH_SIZE)  # default augmentation: CIFAR-10 crop+flip
    dm.setup("fit")
    loader = dm.train_dataloader()
    limit = QUICK_BATCHES if quick else None
    row = {"ours": min(seconds_per_pass(loader, dm.normalize, limit, len(loader)) for _ in range(1 if quick else 5))}
    dataset = Subset(torchvision_dataset(name, data_dir, dm.mean.tolist(), dm.std.tolist()), dm.train_indices.tolist())
    for workers in (0, 2):
        tv = DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers)
        # each pass starts its workers afresh, as every epoch does by default
        row[f"w{workers}"] = min(seconds_per_pass(tv, lambda x: x, limit, len(tv)) for _ in range(1 if quick else 2))
    return row


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} (threads: {torch.get_num_threads()}), "
            f"torchvision {torchvision.__version__}, Python {platform.python_version()}")


def main(quick: bool) -> None:
    load_before = os.getloadavg()[0]  # other work on the machine slows both sides: record it
    rows = ["| dataset | ours s/pass | torchvision w0 s/pass | torchvision w2 s/pass | speed-up |",
            "|---|---:|---:|---:|---:|"]
    for name in ("mnist", "fashion_mnist", "cifar10"):
        r = bench(name, quick)
        rows.append(f"| {name} | {r['ours']:.3f} | {r['w0']:.2f} | {r['w2']:.2f} "
                    f"| {min(r['w0'], r['w2']) / r['ours']:.0f}x |")
        print(rows[-1], flush=True)
    command = "python bench/loader_speed.py" + (" --quick" if quick else "")
    load_after = os.getloadavg()[0]
    busy = max(load_before, load_after) > 0.5 * (os.cpu_count() or 1)
    report = "\n".join([
        "# Loader speed: seconds per pass over the training split (no model)",
        "",
        *rows,
        "",
        f"Batch size {BATCH_SIZE}, shuffled, normalised float batches; CIFAR-10 with random crop (pad 4) + flip, "
        "MNIST/Fashion-MNIST without augmentation (the defaults). One torch thread per process. "
        "Ours: `TensorLoader` + `normalize` on CPU, "
        "best of 5 passes. torchvision: `DataLoader` over the same training split with per-sample transforms, "
        "`num_workers` 0 or 2, best of 2 passes (worker start-up included, as each epoch pays it by default). "
        "Speed-up: the faster torchvision column divided by ours."
        + (f" Quick run: {QUICK_BATCHES} batches per loader, extrapolated to a pass." if quick else ""),
        "",
        f"Machine: {machine()}. 1-min load average before/after: {load_before:.2f}/{load_after:.2f}"
        + (" (other work shared the CPUs: absolute times are inflated, the speed-ups less so)" if busy else "")
        + f". Date: {date.today()}.",
        "",
        f"Command: `{command}`",
        "",
    ])
    print()
    print(report)
    if not quick:
        out = REPO / "results" / "loader_speed.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text(report)
        print(f"wrote {out}")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
