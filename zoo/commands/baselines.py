"""The baselines of every comparison table: the majority class and k-nearest neighbours on pixels.

Majority class predicts the most frequent training label: the floor any model has to clear.
k-NN (Cover & Hart, 1967; the lecture's "nearest neighbour, 3% error" MNIST row) keeps the whole
training split and labels an input by a vote of its k closest training inputs. k and the distance
(euclidean or cosine, on pixels scaled to 0..1) are chosen on the validation split; the test split is
then classified once. No training and no randomness, so one run is the whole story.

    dm = create_datamodule("mnist"); dm.setup("fit")
    print(majority(dm.train_y, dm.test_y)["test_acc"], knn_baseline(dm)["test_acc"])
"""

import statistics
import time

import torch
from torch import Tensor

KS = (1, 3, 5, 7, 9)
METRICS = ("euclidean", "cosine")


def features(x: Tensor) -> Tensor:
    """Inputs as float32 rows (N, D): uint8 images are flattened and scaled to 0..1, features kept."""
    x = x.cpu().flatten(1)
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def build_index(train: Tensor, metric: str) -> tuple[Tensor, Tensor]:
    """Training rows (N, D) prepared for `metric`, and an offset (N,) such that
    score = query @ rows.T - offset ranks the rows, larger is closer.

    Cosine: unit rows, no offset. Euclidean: |q - t|^2 = |q|^2 - 2 (q.t - |t|^2 / 2), and |q|^2 is the
    same for every row, so q.t - |t|^2 / 2 ranks them. Either way a search is one matmul.
    """
    if metric == "cosine":
        return torch.nn.functional.normalize(train, dim=1), torch.zeros(len(train))
    if metric == "euclidean":
        return train, (train * train).sum(1) / 2
    raise ValueError(f"unknown distance {metric!r}; use one of {METRICS}")


def nearest(index: tuple[Tensor, Tensor], queries: Tensor, k: int, metric: str, chunk: int = 256) -> Tensor:
    """Indices (Q, k) of the k training rows closest to each query row, nearest first. Queries go
    in chunks so the (chunk, N) score matrix stays small (256 x 55,000 floats = 56 MB)."""
    rows, offset = index
    if metric == "cosine":
        queries = torch.nn.functional.normalize(queries, dim=1)
    k = min(k, len(rows))
    out = [(q @ rows.T - offset).topk(k, dim=1).indices for q in queries.split(chunk)]  # (B, N) -> (B, k)
    return torch.cat(out) if out else torch.empty(0, k, dtype=torch.long)


def vote(neighbour_labels: Tensor, k: int, num_classes: int) -> Tensor:
    """Majority vote of the first k neighbours (Q, K); a tie goes to the class of the nearer neighbour."""
    labels = neighbour_labels[:, :k]
    # Each vote weighs 1 plus a small bonus that shrinks with rank: counts decide, rank breaks ties.
    weight = 1 + 1e-3 * torch.arange(k, 0, -1, dtype=torch.float32) / k
    scores = torch.zeros(len(labels), num_classes).scatter_add_(1, labels, weight.expand_as(labels).contiguous())
    return scores.argmax(1)


def knn(
    train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, test_x: Tensor, test_y: Tensor,
    num_classes: int, ks: tuple[int, ...] = KS, metrics: tuple[str, ...] = METRICS,
) -> dict:
    """k-NN with k and distance chosen on (val_x, val_y), then evaluated once on the test split.

    Returns k, metric, val_acc (the chosen setting), val_grid ({"euclidean/3": acc, ...}), test_acc,
    the measured CPU cost (latency_ms_b1: median time to classify one input; throughput: inputs/s when
    classifying the whole test split in chunks) and its size (stored_values = N x D numbers kept,
    flops = 2 N D per query for the distance matmul).
    """
    train, val, test = features(train_x), features(val_x), features(test_x)
    train_y, val_y, test_y = train_y.cpu(), val_y.cpu(), test_y.cpu()
    grid = {}
    for metric in metrics if len(val) else ():  # no validation split: fall back to 1-NN, euclidean
        # (V, max k) neighbour labels: one search serves every k
        labels = train_y[nearest(build_index(train, metric), val, max(ks), metric)]
        for k in ks:
            grid[f"{metric}/{k}"] = (vote(labels, k, num_classes) == val_y).float().mean().item()
    # Ties go to the first setting: euclidean before cosine, smaller k before larger.
    best = max(grid, key=lambda key: (grid[key], -list(grid).index(key))) if grid else "euclidean/1"
    metric, k = best.split("/")[0], int(best.split("/")[1])

    start = time.perf_counter()
    index = build_index(train, metric)
    pred = vote(train_y[nearest(index, test, k, metric)], k, num_classes)
    seconds = time.perf_counter() - start
    singles = []
    for q in test[:20].split(1):  # one input at a time, like a model's batch-1 latency
        t = time.perf_counter()
        vote(train_y[nearest(index, q, k, metric)], k, num_classes)
        singles.append(time.perf_counter() - t)
    return {
        "k": k, "metric": metric, "val_acc": grid.get(best), "val_grid": grid,
        "test_acc": (pred == test_y).float().mean().item(),
        "latency_ms_b1": statistics.median(singles) * 1000 if singles else 0.0,
        "throughput": len(test) / seconds if seconds > 0 else 0.0,
        "stored_values": train.numel(), "flops": 2 * train.numel(),
        "n_train": len(train), "n_val": len(val), "n_test": len(test),
    }


def majority(train_y: Tensor, test_y: Tensor) -> dict:
    """Always predict the most frequent training label (the smallest one on a tie)."""
    counts = torch.bincount(train_y.cpu())
    label = int(counts.argmax())
    return {"label": label, "test_acc": (test_y.cpu() == label).float().mean().item(), "n_test": len(test_y)}


def knn_baseline(dm) -> dict:
    """k-NN on a set-up datamodule's train / validation / test splits."""
    return knn(dm.train_x, dm.train_y, dm.val_x, dm.val_y, dm.test_x, dm.test_y, dm.num_classes)
