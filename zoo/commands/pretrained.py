"""Shipping trained models: weights files and their manifest, written from checkpoints.

A weights file is a checkpoint cut down to what inference needs (zoo/weights.py loads them):
the model's hyperparameters, its state_dict (float16 where that keeps the accuracy), the
dataset's name, options and normalisation. results/weights/manifest.json lists the shipped files,
each with its preprocessing (`pretrained_cfg`, read from the file by `python -m zoo.commands.pretrained cfg`):

    [{"model": "lenet5", "dataset": "mnist", "file": "lenet5_mnist.pt", "test_acc": 0.9912,
      "sha256": "...", "dtype": "float16", "bytes": 124000, "command": "python train.py fit ...",
      "pretrained_cfg": {"input_shape": [1, 28, 28], "color": "grayscale", "mean": [0.1307], ...}}]

    save_pretrained("checkpoints/mnist/lenet5/<run>/best.ckpt", "results/weights",
                    command="python train.py fit --data mnist --model.arch lenet5", half=True)
    python -m zoo.commands.pretrained            # ship the best run of every committed table row
"""

import io
import json
import os
from pathlib import Path

import torch

from zoo.checkpoint import atomic_write_bytes, fits, load_checkpoint
from zoo.commands.compare import read_json, tested_checkpoint
from zoo.commands.evaluate import evaluate
from zoo.errors import ZooError
from zoo.weights import MANIFEST, WEIGHTS_DIR, pretrained_cfg, pretrained_path, read_manifest, sha256


def save_pretrained(ckpt_path: str | os.PathLike, out_dir: str | os.PathLike, command: str, half: bool = False,
                    manifest: str | os.PathLike | None = None, data_dir: str | None = None) -> dict:
    """Write the weights file of a checkpoint into out_dir, measure its test accuracy with
    evaluate.py (on CPU, from the file itself, so the manifest's number is what users reproduce)
    and add or replace its entry in the manifest (default out_dir/manifest.json). Returns the entry."""
    ckpt = load_checkpoint(ckpt_path)
    arch, data = ckpt["hyper_parameters"]["arch"], ckpt.get("data_name")
    if not data:
        raise ZooError(f"{ckpt_path} does not say which dataset it was trained on; retrain it with train.py.")
    cast = (lambda t: t.half() if t.dtype == torch.float32 else t) if half else (lambda t: t)
    weights = {
        "hyper_parameters": ckpt["hyper_parameters"],
        "state_dict": {k: cast(v).clone() for k, v in ckpt["state_dict"].items()},  # clone: no shared storage
        "data_name": data,
        # data_dir is a path on the training machine: evaluate takes --data_dir instead
        "datamodule_hyper_parameters": {k: v for k, v in ckpt.get("datamodule_hyper_parameters", {}).items()
                                        if k != "data_dir"},
    }
    for key, value in ckpt.items():  # the datamodule's state (mean/std), under its class's name
        if key.endswith("DataModule") and isinstance(value, dict):
            weights[key] = value
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{arch}_{data}.pt"
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    result = evaluate(str(path), data_dir=data_dir, device="cpu")  # what users run to check the number
    manifest = Path(manifest) if manifest is not None else out_dir / "manifest.json"
    entry = {
        "model": arch, "dataset": data, "file": os.path.relpath(path, manifest.parent),
        "test_acc": result["test_acc"], "sha256": sha256(path), "dtype": "float16" if half else "float32",
        "bytes": path.stat().st_size, "command": command, "pretrained_cfg": pretrained_cfg(weights),
    }
    entries = read_manifest(manifest) if manifest.is_file() else []
    entries = [e for e in entries if (e["model"], e["dataset"]) != (arch, data)] + [entry]
    entries.sort(key=lambda e: (e["dataset"], e["model"]))
    atomic_write_bytes(manifest, (json.dumps(entries, indent=2) + "\n").encode())
    return entry


CLEAR_MARGIN = 0.02  # a shipped network beats its dataset's linear model by at least this much test accuracy


def ranked(m: object) -> bool:
    """A metrics.json with what best_runs ranks by."""
    return (isinstance(m, dict) and isinstance(m.get("data"), str) and isinstance(m.get("model"), str)
            and isinstance(m.get("monitor") or "", str)
            and fits(m.get("best_score"), float | None))


def best_runs(results: str | os.PathLike = "results") -> dict[tuple[str, str], tuple[float, dict, Path]]:
    """Per (dataset, model), the committed run with the best validation score: {key: (score, metrics,
    run folder)}. Only runs that chose their checkpoint on validation compete: one trained on every
    training example (--data.val_size 0) chose it on its training loss, a number that says nothing
    about unseen images and cannot be ranked against a validation accuracy."""
    best: dict[tuple[str, str], tuple[float, dict, Path]] = {}
    for path in sorted(Path(results).glob("*/runs/*/*/seed*/metrics.json")):
        m = read_json(path, ranked, "the metrics of a run: data, model, monitor, best_score",
                      f"delete {path.parent} (a results copy)")
        monitor = m.get("monitor") or ""
        if m.get("best_score") is None or not monitor.startswith("val/"):
            continue
        score = -m["best_score"] if "loss" in monitor else m["best_score"]
        key = (m["data"], m["model"])
        if key not in best or score > best[key][0]:
            best[key] = (score, m, path.parent)
    return best


def build_from_results(results: str | os.PathLike = "results", out_dir: str | os.PathLike = WEIGHTS_DIR,
                       budget_bytes: int = 30_000_000, only: str | None = None) -> list[dict]:
    """Ship the best checkpoint of every row of the committed comparison tables: per (dataset,
    model), the seed with the best validation score (never chosen by test accuracy), as float16
    when that keeps the test accuracy within 0.1 point of the run's, else float32. Rows whose
    checkpoints are gone (a clean clone has only metrics.json) are skipped, and so are networks that
    do not beat their dataset's linear model by CLEAR_MARGIN (a download that guesses helps no one)
    and files that would take the set past `budget_bytes`; all are printed. `only` ("cifar10/resnet20,...")
    reships just those rows, and leaves the other entries as they are (each re-evaluation costs a test pass)."""
    best = best_runs(results)
    if only:
        keep = {tuple(name.split("/", 1)) for name in only.split(",")}
        unknown = keep - set(best)
        if unknown:
            raise ZooError(f"No committed run for {', '.join('/'.join(k) for k in sorted(unknown))} under {results}: "
                           f"name rows as DATASET/MODEL among {', '.join('/'.join(k) for k in sorted(best))}.")
        best = {k: v for k, v in best.items() if k in keep or k[1] == "linear"}  # linear: the margin rule's bar
    entries, used = [], 0
    manifest = Path(out_dir) / "manifest.json"
    if only and manifest.is_file():  # the entries kept as they are count against the budget too
        used = sum(e["bytes"] for e in read_manifest(manifest) if (e["dataset"], e["model"]) not in keep)
    linear = {data: m["test_acc"] for (data, model), (_, m, _) in best.items() if model == "linear"}
    for (data, model), (_, m, run) in sorted(best.items(), key=lambda kv: kv[1][1]["params"]):
        if only and (data, model) not in keep:
            continue
        if model != "linear" and data in linear and not m["test_acc"] > linear[data] + CLEAR_MARGIN:
            print(f"skip {model} on {data}: test acc {m['test_acc']:.4f} does not beat linear ({linear[data]:.4f}) "
                  f"by {CLEAR_MARGIN:.0%}")
            remove_entry(model, data, out_dir)
            continue
        ckpt = tested_checkpoint(m)
        if ckpt is None:
            print(f"skip {model} on {data}: its checkpoint {m.get('best_ckpt')} is not here, nor in its run "
                  f"directory {m.get('run_dir')} (train it with the table's command)")
            continue
        command = f"python train.py fit --config {run / 'config.yaml'}"
        entry = save_pretrained(ckpt, out_dir, command, half=True)
        if abs(entry["test_acc"] - m["test_acc"]) > 0.001:  # half precision costs accuracy: keep float32
            entry = save_pretrained(ckpt, out_dir, command, half=False)
        if used + entry["bytes"] > budget_bytes:
            print(f"skip {model} on {data}: {entry['bytes']:,} bytes would pass the {budget_bytes:,}-byte budget")
            remove_entry(model, data, out_dir)
            continue
        used += entry["bytes"]
        entries.append(entry)
        print(f"{model} on {data}: {entry['dtype']}, {entry['bytes']:,} bytes, test acc {entry['test_acc']:.4f} "
              f"(run: {m['test_acc']:.4f})")
    return entries


def remove_entry(model: str, dataset: str, out_dir: str | os.PathLike = WEIGHTS_DIR) -> None:
    """Take a weights file and its manifest entry out again."""
    manifest = Path(out_dir) / "manifest.json"
    entries = read_manifest(manifest)
    for e in entries:
        if (e["model"], e["dataset"]) == (model, dataset):
            (manifest.parent / e["file"]).unlink(missing_ok=True)
    kept = [e for e in entries if (e["model"], e["dataset"]) != (model, dataset)]
    atomic_write_bytes(manifest, (json.dumps(kept, indent=2) + "\n").encode())


def write_cfgs(manifest: str | os.PathLike | None = None) -> list[dict]:
    """Set each manifest entry's pretrained_cfg to what its weights file holds (sha256-checked; the
    files are not touched), so the manifest's preprocessing is read from the weights, never typed."""
    path = Path(manifest or MANIFEST)
    entries = read_manifest(path)
    for e in entries:
        e["pretrained_cfg"] = pretrained_cfg(load_checkpoint(pretrained_path(e["model"], e["dataset"], path)))
    atomic_write_bytes(path, (json.dumps(entries, indent=2) + "\n").encode())
    return entries


# python -m zoo.commands.pretrained [RESULTS_DIR [OUT_DIR [DATASET/MODEL,...]]]
# python -m zoo.commands.pretrained cfg [MANIFEST]
if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["cfg"]:
        write_cfgs(*sys.argv[2:3])
    else:
        build_from_results(*sys.argv[1:3], only=sys.argv[3] if len(sys.argv) > 3 else None)
