"""`python evaluate.py`: a checkpoint in; test metrics, per-class accuracy and the confusion matrix out.

The model and the datamodule are rebuilt from the checkpoint alone (it stores the model's
hyperparameters, the dataset name and its normalisation), so no config is needed; the data
directory can be overridden. The test set runs through Lightning's Trainer.test with the metrics
fit uses (ZooModule's torchmetrics: accuracy, loss, the confusion matrix), in the arithmetic the
run was trained with, so the numbers are fit's. Checkpoints are loaded with weights_only=True: a
file that would run code when unpickled is refused. A checkpoint never makes evaluate download
data or create folders: the data directory it names is only read (--data_dir wins over it), its
download option is ignored.

Where the datamodule says only its first N test images have the original pixels (`exact_test`: the
project's rebuilt CIFAR-10), the accuracy on those N is reported too, from the same pass. `--tta flip`
predicts from each test image and its mirror (`flip_translate`: also two 1-pixel shifts and their
mirrors, airbench94's); every number then uses it, and the report says so.
"""

import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Literal, get_args

import torch
from jsonargparse import ArgumentError

from datamodules import get_datamodule_class
from zoo.checkpoint import atomic_write_bytes, check_args, check_output, load_checkpoint, resolve_checkpoint
from zoo.errors import ZooError, command_parser, one_paragraph
from zoo.weights import pick_device

# Lightning (Trainer, ZooModule, the pictures) is imported inside evaluate() and main(), when a
# checkpoint is evaluated: `evaluate.py --help` and a mistyped option answer without it (issue 18's start-up).

PRECISIONS = ("auto", "32", "32-true", "bf16-mixed", "16-mixed")
# Test-time augmentation: none; the mean softmax of image and mirror; or also of two 1-pixel shifts
# and their mirrors (airbench94's). zoo.module.ZooModule._tta says how the views are weighted.
TTA = Literal["none", "flip", "flip_translate"]


def rebuild_datamodule(ckpt: dict, data_dir: str | None = None, path: str | Path = "the checkpoint"):
    """The datamodule exactly as the model was trained with it, from the checkpoint's contents."""
    hp = ckpt["hyper_parameters"]
    data_name = ckpt.get("data_name")
    if data_name is None:
        raise ZooError("The checkpoint does not say which dataset it was trained on (written by an old "
                       "version?). Evaluate it with: python train.py test --config <run>/config.yaml "
                       "--ckpt_path <checkpoint>.")
    cls = get_datamodule_class(data_name)
    dm_hparams = ckpt.get("datamodule_hyper_parameters", {})
    if not isinstance(dm_hparams, dict):
        raise ZooError(f"{path}: datamodule_hyper_parameters is not a dict of options. Use best.ckpt or last.ckpt "
                       f"of a run written by train.py fit.")
    check_args(cls.__init__, dm_hparams, path, "datamodule option")
    # The file decides how the test set looks, never what we download or create: no download, and
    # its data_dir (a path on the training machine) is only read, the user's --data_dir wins.
    dm_hparams = {k: v for k, v in dm_hparams.items() if not k.startswith("_") and k != "download"}
    if data_dir is not None:
        dm_hparams["data_dir"] = data_dir
    dm = cls(**dm_hparams)
    if list(dm.input_shape) != list(hp["input_shape"]) or dm.num_classes != hp["num_classes"]:
        raise ZooError(f"The data ({data_name}: input {list(dm.input_shape)}, {dm.num_classes} classes) does not fit "
                       f"the model ({hp['arch']}: input {hp['input_shape']}, {hp['num_classes']} classes).")
    state = ckpt.get(type(dm).__qualname__)
    if state:  # normalise with the statistics the model was trained with (they win over setup's)
        dm.load_state_dict(state)
    dm.setup("test")
    return dm


def evaluate(path: str, data_dir: str | None = None, device: str = "auto", precision: str = "auto",
             tta: TTA = "none") -> dict:
    """Test loss and accuracy, per-class accuracy, confusion matrix and most-confused pairs; the
    accuracy on the test images with original pixels where the data has such a subset."""
    if precision not in PRECISIONS:
        raise ZooError(f"Unknown --precision {precision!r}. Choose one of: {', '.join(PRECISIONS)}.")
    if tta not in get_args(TTA):
        raise ZooError(f"Unknown --tta {tta!r}. Choose one of: {', '.join(get_args(TTA))}.")
    dev = pick_device(device)
    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    shape = ckpt["hyper_parameters"]["input_shape"]
    if tta != "none" and len(shape) != 3:
        raise ZooError(f"{ckpt_path}: --tta {tta} mirrors images left to right, but this model takes flat features "
                       f"(input {list(shape)}, {ckpt.get('data_name')}), which have no mirror image. Fix: evaluate "
                       f"it without --tta (or --tta none).")
    from lightning.pytorch import Trainer  # here, not at the top: start-up (see the note there)

    from zoo.module import ZooModule, emulated_bf16_note, keep_freed_memory, largest_block

    model = ZooModule.from_checkpoint(ckpt)
    dm = rebuild_datamodule(ckpt, data_dir, ckpt_path)
    keep_freed_memory(largest_block(model.model, shape, getattr(dm, "eval_batch_size", 0)))
    model.tta = tta
    # The test loader is unshuffled and runs on one device here, so test_correct is in test-set order.
    model.keep_test_correct = dm.exact_test is not None
    # The arithmetic the run was tested with (bf16 autocast for conv nets on bf16 hardware), so the
    # numbers match fit's; `--precision 32` evaluates in full precision instead.
    chosen = (ckpt.get("precision") or "32-true") if precision == "auto" else precision
    chosen = "32-true" if chosen == "32" or dev.type not in ("cpu", "cuda") else chosen  # MPS: partial autocast
    if precision == "auto" and (note := emulated_bf16_note(chosen, dev.type, "--precision 32")):
        print(note, file=sys.stderr, flush=True)
    trainer = Trainer(accelerator=dev.type, devices=[dev.index] if dev.index is not None else 1, precision=chosen,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # not Lightning's notes on the devices it found
    try:
        metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    finally:
        lightning_log.setLevel(level)
    k = dm.num_classes
    cm = model.test_confusion.compute().cpu()  # (true, predicted)
    per_class = (cm.diag() / cm.sum(1).clamp(min=1)).tolist()
    off = cm.clone().fill_diagonal_(0)
    pairs = []
    for idx in off.flatten().argsort(descending=True, stable=True)[:5].tolist():
        t, p = divmod(idx, k)
        if off[t, p] > 0:
            pairs.append({"true": dm.class_names[t], "predicted": dm.class_names[p], "count": int(off[t, p])})
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(chosen)
    acc_exact, n_exact = model.exact_test_accuracy(dm.exact_test) if dm.exact_test is not None else (None, None)
    return {
        "checkpoint": str(ckpt_path), "model": ckpt["hyper_parameters"]["arch"], "data": ckpt["data_name"],
        "test_acc": metrics["test/acc"], "test_loss": metrics["test/loss"], "n": int(cm.sum()),
        "precision": str(dtype or "float32"), "tta": tta, "test_acc_exact": acc_exact, "n_exact": n_exact,
        "class_names": list(dm.class_names), "per_class_acc": per_class,
        "confusion_matrix": cm.tolist(), "most_confused": pairs,
    }


TTA_NOTE = {"none": "no test-time augmentation", "flip": "tta flip: mean softmax of each image and its mirror",
            "flip_translate": "tta flip_translate: mean softmax over image, mirror and two 1-px shifts of each"}


def report(r: dict) -> str:
    """The numbers as text a person reads."""
    names, cm = r["class_names"], r["confusion_matrix"]
    width = max(6, max(len(s) for s in names))
    lines = [f"{r['model']} on {r['data']} ({r['checkpoint']})",
             f"test accuracy {r['test_acc']:.4f}   test loss {r['test_loss']:.4f}   ({r['n']} images, "
             f"{r['precision'].replace('torch.', '')}, {TTA_NOTE[r['tta']]})"]
    if r["n_exact"]:
        lines.append(f"original-pixel test images (first {r['n_exact']}): acc {r['test_acc_exact']:.4f}   "
                     f"(noisier, but comparable with published numbers)")
    lines += ["", "per-class accuracy:"]
    lines += [f"  {name:<{width}} {acc:.4f}" for name, acc in zip(names, r["per_class_acc"])]
    lines += ["", "confusion matrix (rows: true class, columns: predicted):",
              " " * (width + 2) + " ".join(f"{i:>6}" for i in range(len(names)))]
    lines += [f"  {name:<{width}}" + " ".join(f"{v:>6}" for v in row) for name, row in zip(names, cm)]
    lines += ["", "most confused (true -> predicted):"]
    lines += [f"  {p['true']} -> {p['predicted']}: {p['count']}" for p in r["most_confused"]] or ["  none"]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> int:
    parser = command_parser("evaluate.py", __doc__.split("\n")[0].split(": ", 1)[1])
    parser.add_argument("checkpoints", nargs="+", help="Checkpoint files or run directories.")
    parser.add_argument("--data_dir", type=str | None, default=None, help="Override the data directory.")
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or mps.")
    parser.add_argument("--precision", type=Literal[PRECISIONS], default="auto",
                        help="auto (as the run was trained: bf16-mixed, 16-mixed or 32), bf16-mixed, 16-mixed or 32.")
    parser.add_argument("--tta", type=TTA, default="none",
                        help="Test-time augmentation: none; flip (average the softmax of each image and its "
                             "left-right mirror); or flip_translate (also two 1-pixel shifts and their mirrors, "
                             "airbench94's). Images only. Every number then uses it, and the report says so.")
    parser.add_argument("--json", type=str | None, default=None, help="Also write all numbers to this JSON file.")
    parser.add_argument("--png", type=bool, default=True, help="Save confusion_matrix.png beside each checkpoint.")
    parser.add_argument("--debug", type=bool, default=False, help="Show tracebacks.")
    try:
        cfg = parser.parse_args(args)
    except ArgumentError as e:  # a value outside an option's type, in one sentence
        print(f"error: {one_paragraph(str(e))}\n(see python evaluate.py --help)", file=sys.stderr)
        return 2
    try:
        if cfg.json:
            check_output(cfg.json, "--json")  # before evaluating, not after
        results = [evaluate(p, cfg.data_dir, cfg.device, cfg.precision, cfg.tta) for p in cfg.checkpoints]
    except ZooError as e:
        if cfg.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        print(report(r) + "\n")
        if cfg.png:
            png = Path(r["checkpoint"]).with_name(Path(r["checkpoint"]).stem + "_confusion.png")
            try:
                title = f"{r['model']} on {r['data']}: test acc {r['test_acc']:.4f}"  # as fit titles it
                title += f", tta {r['tta']}" if r["tta"] != "none" else ""
                from zoo import insight  # matplotlib and Lightning: only when there is a picture to draw

                insight.confusion_figure(torch.tensor(r["confusion_matrix"]), r["class_names"], title).savefig(png)
                print(f"confusion matrix image: {png}\n")
            except OSError as e:
                print(f"warning: could not write {png}: {e.strerror or e}", file=sys.stderr)
    if len(results) > 1:
        # "exact px": accuracy on the original-pixel test images, where the data has such a subset
        print(f"{'model':<14}{'data':<15}{'test acc':>9}{'exact px':>9}  {'tta':<14} checkpoint")
        for r in results:
            exact = f"{r['test_acc_exact']:>9.4f}" if r["n_exact"] else f"{'-':>9}"
            print(f"{r['model']:<14}{r['data']:<15}{r['test_acc']:>9.4f}{exact}  {r['tta']:<14} {r['checkpoint']}")
    if cfg.json:
        try:
            atomic_write_bytes(cfg.json, json.dumps(results if len(results) > 1 else results[0], indent=2).encode())
        except OSError as e:  # a full disk or a read-only folder: the numbers are printed above
            print(f"error: cannot write {cfg.json}: {e.strerror or e}; it is as it was before. Fix: free some "
                  f"space or choose a writable --json path.", file=sys.stderr)
            return 1
    return 0
