"""Benchmark 6: peak resident memory of a training run, per dataset.

Each run is a fresh `train.py fit` process (each dataset with its usual model, 5 training steps,
2 validation and 2 test batches: the whole dataset is still loaded and split, and the steps reach
the steady state of memory); the peak of its anonymous resident memory (RssAnon: heap and tensors,
polled from /proc while it runs) minus that of a process that only imports the libraries a run uses
(torch, Lightning, torchmetrics, TensorBoard, matplotlib, scikit-learn, the zoo and the datamodules).
Anonymous memory, because the total resident set (VmHWM, shown too) also counts the pages of the
mapped library files (torch's CUDA libraries alone are gigabytes), which the kernel keeps or drops
with the machine's page cache: that part moved by more than 100 MiB between runs of the same code.
Budget: 2x the dataset's raw uint8 size (all images of the train and test files, one byte per value)
plus the model's needs: weights, gradients and optimizer state (fp32), plus the activations a training
step keeps for backward at the training batch size (the outputs of all layers), or the two largest
consecutive layer outputs at the evaluation batch size when that is more.
"""

import torch
import torch.nn.functional as F

from bench.common import PY, Section, body, check, run_processes, tmpdir
from bench.loops import setup_data
from zoo.models.registry import create_model
from zoo.module import resolve_recipe

# The libraries a training run imports, the lazy ones included: train.py imports the training path (zoo.cli:
# Lightning, torchmetrics, torchvision) only for training commands, so it is named here; then the pictures,
# TensorBoard and moons' sklearn (contourpy: its decision-boundary picture). tests/test_bench.py checks
# that a fit imports no other package.
BASELINE = ("import train, zoo.cli, matplotlib.pyplot, contourpy, torch.utils.tensorboard, sklearn.datasets, "
            "sklearn.model_selection")
RUNS = {"moons": "mlp", "mnist": "lenet5", "fashion_mnist": "mlp", "cifar10": "resnet20"}  # dataset -> model
LIMITS = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "5", "--trainer.limit_val_batches", "2",
          "--trainer.limit_test_batches", "2", "--patience", "0", "--quiet", "true"]


def raw_bytes(dm) -> int:
    """Bytes of all the dataset's inputs as stored: uint8 images, or float32 features (moons)."""
    tensors = [dm.train_x, dm.val_x, dm.test_x]
    return sum(t.numel() * t.element_size() for t in tensors)


def model_needs(arch: str, dm) -> tuple[int, int, int]:
    """(weights + gradients + optimizer state, training activations, evaluation activations) in bytes."""
    model = create_model(arch, list(dm.input_shape), dm.num_classes)
    params = sum(p.numel() for p in model.parameters()) * 4
    states = 1 if resolve_recipe(arch, dm.name)["optimizer"] == "sgd" else 2  # momentum; Adam's two moments
    outputs: list[int] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o.numel() * 4)) for m in leaves]
    x = torch.randn(dm.batch_size, *dm.input_shape)
    F.cross_entropy(model(x), torch.zeros(dm.batch_size, dtype=torch.long)).backward()
    train_act = sum(outputs) + x.numel() * 4
    outputs.clear()
    with torch.inference_mode():
        model.eval()(torch.randn(1, *dm.input_shape))
    for h in hooks:
        h.remove()
    per_sample = max(a + b for a, b in zip(outputs, outputs[1:])) if len(outputs) > 1 else outputs[0]
    eval_act = per_sample * dm.eval_batch_size
    return params * (2 + states), train_act, eval_act


def run(quick: bool) -> Section:
    runs = {"mnist": "lenet5"} if quick else RUNS
    limits = LIMITS if not quick else [*LIMITS[:2], "--trainer.limit_train_batches", "2", *LIMITS[4:]]
    with tmpdir() as tmp:  # all at once in a smoke test; one after another when measuring
        cmds = [[PY, "-c", BASELINE]] * (1 if quick else 2)
        cmds += [[PY, "train.py", "fit", "--data", d, "--model.arch", a, *limits, "--runs_root", f"{tmp}/{d}"]
                 for d, a in runs.items()]
        procs = [check(p, " ".join(c[1:4])) for p, c in zip(run_processes(cmds, parallel=quick), cmds)]
    baseline = min(p.maxanon_mb for p in procs[:len(procs) - len(runs)])
    baseline_rss = min(p.maxrss_mb for p in procs[:len(procs) - len(runs)])
    rows, worst = [], 0.0
    for (dataset, arch), p in zip(runs.items(), procs[-len(runs):]):
        dm = setup_data(dataset)
        raw = raw_bytes(dm) / 2**20
        weights, train_act, eval_act = (b / 2**20 for b in model_needs(arch, dm))
        budget = 2 * raw + weights + max(train_act, eval_act)
        above = p.maxanon_mb - baseline
        if dataset != "moons":  # moons has no data to speak of: its row is the fixed cost of a run
            worst = max(worst, above / budget)
        rows.append([dataset, arch, f"{p.maxrss_mb:.0f}", f"{p.maxanon_mb:.0f}", f"{above:.0f}", f"{raw:.1f}",
                     f"{weights:.1f}", f"{train_act:.1f} / {eval_act:.1f}", f"{budget:.0f}", f"{above / budget:.2f}"])
    s = Section("6. Memory: peak resident memory of a training run")
    s.text(body(__doc__))
    s.text(f"Baseline (`python -c '{BASELINE}'`): {baseline:.0f} MiB anonymous ({baseline_rss:.0f} MiB peak RSS). "
           "Moons has almost no data: its row "
           "is the fixed cost of a run (Lightning's trainer, loggers, checkpoints, the final test), so the goal is "
           "judged on the image datasets.")
    s.table(["dataset", "model", "peak RSS MiB", "peak anonymous MiB", "anonymous above baseline MiB", "raw data MiB",
             "weights+grads+opt MiB", "activations train / eval MiB", "budget MiB", "above / budget"], rows)
    s.goal("6. peak anonymous memory above the import baseline / (2x raw data + model needs), worst image dataset",
           f"{worst:.2f}", "<= 1", worst <= 1)
    return s
