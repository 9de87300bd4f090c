"""Reliability and security: the bad-input matrix (README's table, one test per row), crash-safe
checkpoints, exact resume after kill -9, NaN losses, signals, and checkpoints that cannot run code.

Bad inputs run in-process through `train.main`; kills and signals need real processes. Tests run as
root, where permission bits do not stop writes, so read-only and full disks are simulated by making
the write path raise OSError(EROFS / ENOSPC).
"""

import csv
import errno
import json
import os
import pickle
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

import evaluate
import train
import zoo.run
from conftest import REPO, data_root, require_data
from zoo import checkpoint as zoo_checkpoint

FAST = ["--quiet", "true"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory) -> Path:
    """A finished linear-on-moons run: the 'checkpoint of another model' in the matrix."""
    root = tmp_path_factory.mktemp("linear")
    assert train.main(["fit", "--runs_root", str(root), *FAST, "--data", "moons", "--model.arch", "linear",
                       "--trainer.max_epochs", "2"]) == 0
    (run,) = root.glob("moons/linear/*")
    return run


def write_bad_data(tmp: Path, kind: str) -> Path:
    """A copy of the MNIST data root with one file broken in the given way."""
    require_data("mnist")
    raw = tmp / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (data_root() / "MNIST" / "raw").iterdir():
        (raw / f.name).symlink_to(f.resolve())
    target = raw / "train-images-idx3-ubyte"
    data = target.read_bytes()
    target.unlink()
    if kind == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif kind == "corrupted":
        target.write_bytes(b"\x00\x00\x08\x01" + data[4:])  # a label file's magic on the image file
    elif kind == "wrong_shape":  # a valid IDX file of 32x32 images, not MNIST's 28x28
        target.write_bytes(struct.pack(">IIII", 2051, 10, 32, 32) + bytes(10 * 32 * 32))
    return tmp / "data"


# (name, arguments, words the message must contain). {tmp}, {run}, {data} are filled in per case.
CASES = [
    ("unknown model", ["fit", "--model.arch", "resnet9000"], ["resnet9000", "lenet5", "mobilenetv2"]),
    ("unknown dataset", ["fit", "--data", "imagenet"], ["imagenet", "fashion_mnist", "cifar10"]),
    ("conv model on two-moons", ["fit", "--data", "moons", "--model.arch", "resnet20"], ["resnet20", "linear", "mlp"]),
    ("missing data directory", ["fit", "--data", "mnist", "--data.init_args.data_dir", "{tmp}/nowhere"],
     ["nowhere", "train-images-idx3-ubyte", "ZOO_DATA"]),
    ("truncated data file", ["fit", "--data", "mnist", "--data.init_args.data_dir", "{data:truncated}"],
     ["train-images-idx3-ubyte", "truncated"]),
    ("corrupted data file", ["fit", "--data", "mnist", "--data.init_args.data_dir", "{data:corrupted}"],
     ["train-images-idx3-ubyte", "magic"]),
    ("wrong-shaped data", ["fit", "--data", "mnist", "--data.init_args.data_dir", "{data:wrong_shape}"],
     ["train-images-idx3-ubyte", "shape"]),
    ("batch size zero", ["fit", "--data", "moons", "--data.init_args.batch_size", "0"], ["batch_size", "positive"]),
    ("batch size above dataset size", ["fit", "--data", "moons", "--data.init_args.batch_size", "5000"],
     ["batch_size", "larger than the training split"]),
    ("negative learning rate", ["fit", "--data", "moons", "--model.lr", "-0.1"], ["--model.lr -0.1", "v>0"]),
    ("zero epochs", ["fit", "--data", "moons", "--trainer.max_epochs", "0"], ["max_epochs", "at least 1"]),
    ("negative translation", ["fit", "--data", "mnist", "--data.init_args.translate", "-1"],
     ["translate", "--data.translate 2"]),
    ("translation beyond the image", ["fit", "--data", "mnist", "--data.init_args.translate", "100000"],
     ["translate 100000", "28-pixel images out of view", "--data.translate 2"]),
    ("alternating flip on digits", ["fit", "--data", "mnist", "--data.init_args.alternate_flip", "true"],
     ["alternate_flip", "never flipped", "no effect"]),
    ("unknown padding mode", ["fit", "--data", "mnist", "--data.init_args.pad_mode", "wrap"], ["wrap", "reflect"]),
    ("cutout without augmentation", ["fit", "--data", "mnist", "--data.init_args.cutout", "8"],
     ["cutout", "augmentation is off", "--data.augment true"]),
    ("cutout larger than the images", ["fit", "--data", "mnist", "--data.init_args.augment", "true",
                                       "--data.init_args.cutout", "40"], ["cutout 40", "larger than the 28x28"]),
    ("EMA decay of 1 or more", ["fit", "--data", "moons", "--ema", "1.5"], ["--ema 1.5", "v<1"]),
    ("unknown optimizer", ["fit", "--data", "moons", "--model.optimizer", "rmsprop"], ["rmsprop", "adamw"]),
    ("unknown scheduler", ["fit", "--data", "moons", "--model.scheduler", "cyclic"], ["cyclic", "onecycle"]),
    ("config with an unknown key", ["fit", "--config", "{tmp}/unknown_key.yaml"], ["colour"]),
    ("config with a YAML syntax error", ["fit", "--config", "{tmp}/broken.yaml"], ["broken.yaml"]),
    ("checkpoint path that does not exist", ["fit", "--data", "moons", "--ckpt_path", "{tmp}/none.ckpt"],
     ["not found", "none.ckpt"]),
    ("nothing to resume", ["fit", "--data", "moons", "--ckpt_path", "last"], ["no run", "to resume"]),
    ("truncated checkpoint",
     ["test", "--data", "moons", "--model.arch", "linear", "--ckpt_path", "{tmp}/truncated.ckpt"],
     ["truncated", "truncated.ckpt"]),
    ("file that is not a checkpoint", ["test", "--data", "moons", "--ckpt_path", "{tmp}/notes.ckpt"],
     ["notes.ckpt", "not a PyTorch checkpoint"]),
    ("checkpoint of another model to resume", ["fit", "--data", "moons", "--model.arch", "mlp", "--ckpt_path", "{run}"],
     ["linear", "mlp", "config.yaml"]),
    ("checkpoint evaluated on data of another shape", ["test", "--data", "mnist", "--model.arch", "linear",
                                                       "--ckpt_path", "{run}/best.ckpt"], ["moons", "mnist"]),
    ("read-only output directory", ["fit", "--data", "moons", "{inject:EROFS}"], ["Read-only", "--runs_root"]),
    ("accelerator gpu without a GPU", ["fit", "--data", "moons", "--trainer.accelerator", "gpu"],
     ["no usable CUDA GPU", "auto"]),
    ("accelerator mps without MPS", ["fit", "--data", "moons", "--trainer.accelerator", "mps"], ["MPS", "auto"]),
    ("more devices than available", ["fit", "--data", "moons", "--trainer.accelerator", "cpu",
                                     "--trainer.devices", "512"], ["512", "CPU cores"]),
    ("zero devices", ["fit", "--data", "moons", "--trainer.devices", "0"], ["--trainer.devices 0", "auto"]),
    ("zero accumulated batches", ["fit", "--data", "moons", "--trainer.accumulate_grad_batches", "0"],
     ["--trainer.accumulate_grad_batches 0", "at least 1"]),
    ("zero validation interval", ["fit", "--data", "moons", "--trainer.val_check_interval", "0"],
     ["--trainer.val_check_interval 0", "(0, 1]"]),
    ("validation every 0 epochs", ["fit", "--data", "moons", "--trainer.check_val_every_n_epoch", "0"],
     ["--trainer.check_val_every_n_epoch 0", "at least 1"]),
    ("minimum epochs above the maximum", ["fit", "--data", "moons", "--trainer.min_epochs", "5",
                                          "--trainer.max_epochs", "2"], ["--trainer.min_epochs 5", "max_epochs 2"]),
    ("negative gradient clipping", ["fit", "--data", "moons", "--trainer.gradient_clip_val", "-1"],
     ["--trainer.gradient_clip_val -1", "reverse the gradients"]),
    ("a dataset option the dataset does not take", ["fit", "--data", "moons", "--data.cutout", "8"],
     ["--data.cutout", "MoonsDataModule takes no option 'cutout'", "--data.help"]),
    ("negative patience", ["fit", "--data", "moons", "--patience", "-1"], ["--patience -1", "v>=0"]),
    ("negative thread count", ["fit", "--data", "moons", "--threads", "-2"], ["--threads -2", "v>=0"]),
    ("unknown evaluation precision", ["evaluate", "{run}", "--precision", "fp8"], ["fp8", "bf16-mixed"]),
    ("LightningCLI's own optimizer flags", ["fit", "--data", "moons", "--optimizer", "SGD", "--optimizer.lr", "0.5"],
     ["--optimizer", "--model.optimizer"]),
    ("negative seed", ["fit", "--data", "moons", "--seed_everything", "-1"], ["seed", "4294967295"]),
    ("seed above numpy's range", ["fit", "--data", "moons", "--seed_everything", str(2**70)], ["seed", "4294967295"]),
    ("negative SGD momentum", ["fit", "--data", "moons", "--model.optimizer", "sgd", "--model.momentum", "-1"],
     ["--model.momentum -1", "v>=0 and v<1"]),
    ("schedule without an end",
     ["fit", "--data", "moons", "--model.scheduler", "onecycle", "--trainer.max_epochs", "-1"],
     ["onecycle", "max_steps", "--model.scheduler none"]),
    ("unsupported accelerator", ["fit", "--data", "moons", "--trainer.accelerator", "tpu"], ["tpu", "auto"]),
    ("monitored metric that does not exist", ["fit", "--data", "moons", "--monitor", "val/accuracy"],
     ["val/accuracy", "val/acc", "train/loss"]),
    ("validation switched off while monitoring it", ["fit", "--data", "moons", "--trainer.limit_val_batches", "0"],
     ["limit_val_batches", "--monitor train/loss"]),
    ("empty validation split while monitoring it", ["fit", "--data", "moons", "--data.init_args.val_fraction", "0"],
     ["validation split is empty", "--monitor train/loss"]),
    ("no training batches", ["fit", "--data", "moons", "--trainer.limit_train_batches", "0"],
     ["limit_train_batches", "trains nothing"]),
    ("--run_dir of an existing run", ["fit", "--data", "moons", "--run_dir", "{run}"],
     ["already holds a run", "--ckpt_path"]),
    ("pretrained weights of another input shape", ["fit", "--data", "moons", "--model.pretrained", "mnist"],
     ["pretrained mlp for mnist", "takes input [1, 28, 28] with 10 classes", "[2] and 2", "drop --model.pretrained"]),
    ("teacher of another input shape", ["fit", "--data", "moons", "--model.teacher",
                                        str(REPO / "results/weights/mlp_mnist.pt")],
     ["teacher", "mlp_mnist.pt", "takes input [1, 28, 28] with 10 classes", "[2] and 2"]),
]


@pytest.mark.parametrize("name, args, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, args, words, tmp_path, linear_run, monkeypatch, capsys):
    (tmp_path / "unknown_key.yaml").write_text("model:\n  arch: mlp\n  colour: red\n")
    (tmp_path / "broken.yaml").write_text("model:\n  arch: [mlp\n")
    (tmp_path / "truncated.ckpt").write_bytes((linear_run / "best.ckpt").read_bytes()[:2000])
    (tmp_path / "notes.ckpt").write_text("these are my notes, not weights\n")
    filled = []
    for a in args:
        if a.startswith("{data:"):
            a = str(write_bad_data(tmp_path, a[6:-1]))
        elif a.startswith("{inject:"):  # the write path fails as a read-only disk would
            def fail(path, data, code=getattr(errno, a[8:-1])):
                raise OSError(code, os.strerror(code), str(path))
            monkeypatch.setattr(zoo.run, "atomic_write_bytes", fail)
            continue
        filled.append(a.replace("{tmp}", str(tmp_path)).replace("{run}", str(linear_run)))
    runs = tmp_path / "runs"
    if filled[0] == "evaluate":
        rc = evaluate.main(filled[1:])
    else:
        rc = train.main([*filled, "--runs_root", str(runs), *FAST])
    err = capsys.readouterr().err
    assert rc != 0, f"{name}: exit status 0"
    assert "Traceback" not in err, err
    assert "error:" in err.lower(), err
    for word in words:
        assert word.lower() in err.lower(), f"{name}: {word!r} not in: {err}"
    # Nothing half-written: a failed run leaves no run directory (or only one holding a checkpoint).
    assert all(any(d.glob("*.ckpt")) for d in runs.glob("*/*/*")), list(runs.glob("*/*/*"))
    # ... nor the empty folders above one (--runs_root itself, the dataset's and the model's)
    assert not [d for d in [runs, *runs.rglob("*")] if d.is_dir() and not any(d.iterdir())], list(runs.rglob("*"))


def test_bad_input_table_in_readme_lists_every_case():
    readme = (REPO / "README.md").read_text()
    for name, _, _ in CASES:
        assert name in readme, f"README's bad-input table lacks: {name}"


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert train.main(["fit", "--data", "moons", "--model.lr", "-1", "--debug", "--runs_root", str(tmp_path)]) == 2
    assert "Traceback" in capsys.readouterr().err


# --- faults --------------------------------------------------------------------------------------

def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    io = zoo.run.AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "v": 1}, path)

    def crash(fd):  # the process dies (or the disk fills) after half the bytes are written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "v": 2}, path)
    assert torch.load(path, weights_only=True)["v"] == 1  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_disk_full_while_saving_is_a_clear_error(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = zoo_checkpoint.atomic_write_bytes

    def fill_up(path, data):
        calls["n"] += 1
        if calls["n"] > 4:  # the first epochs save fine, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(zoo_checkpoint, "atomic_write_bytes", fill_up)
    rc = train.main(["fit", "--data", "moons", "--runs_root", str(tmp_path), *FAST, "--trainer.max_epochs", "10",
                     "--patience", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and "No space left on device" in err and "Traceback" not in err, err
    (run,) = tmp_path.glob("moons/mlp/*")
    assert zoo_checkpoint.load_checkpoint(run / "last.ckpt")["epoch"] >= 0  # earlier checkpoints intact


def test_nan_loss_stops_with_step_and_hint(tmp_path, monkeypatch, capsys):
    from zoo import ZooModule

    real = ZooModule.forward

    def poisoned(self, x):  # training step 21 (epoch 5 of 4 steps each) produces NaN logits
        out = real(self, x)
        return out * float("nan") if self.training and self.global_step == 21 else out

    monkeypatch.setattr(ZooModule, "forward", poisoned)
    rc = train.main(["fit", "--data", "moons", "--runs_root", str(tmp_path), *FAST, "--trainer.max_epochs", "10",
                     "--patience", "0"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "nan" in err and "step 21" in err and "learning rate" in err, err
    (run,) = tmp_path.glob("moons/mlp/*")
    assert zoo_checkpoint.load_checkpoint(run / "last.ckpt")["epoch"] == 4  # the last good epoch is kept


def test_nan_in_the_first_epoch_claims_no_checkpoint(tmp_path, monkeypatch, capsys):
    from zoo import ZooModule

    real = ZooModule.forward
    monkeypatch.setattr(ZooModule, "forward",
                        lambda self, x: real(self, x) * (float("nan") if self.training and self.global_step == 2
                                                         else 1))
    rc = train.main(["fit", "--data", "moons", "--runs_root", str(tmp_path), *FAST, "--trainer.max_epochs", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and "step 2" in err, err
    assert "no checkpoint was saved" in err and "is kept" not in err, err
    assert not list(tmp_path.glob("moons/mlp/*")), "a run without a checkpoint leaves no directory"


def test_any_failure_before_the_first_checkpoint_removes_the_run(tmp_path, monkeypatch):
    from zoo import ZooModule

    def bug(self, batch, batch_idx):
        raise RuntimeError("a bug, not a user mistake")

    monkeypatch.setattr(ZooModule, "training_step", bug)
    with pytest.raises(RuntimeError, match="a bug"):  # a bug keeps its traceback ...
        train.main(["fit", "--data", "moons", "--runs_root", str(tmp_path), *FAST])
    assert not list(tmp_path.glob("moons/mlp/*"))  # ... but leaves no half-made run behind


def test_write_error_names_the_file_as_text(tmp_path, monkeypatch, capsys):
    def full(path, data):  # torch reports the file name as bytes
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fsencode(str(path)))

    monkeypatch.setattr(zoo_checkpoint, "atomic_write_bytes", full)
    rc = train.main(["fit", "--data", "moons", "--runs_root", str(tmp_path), *FAST, "--trainer.max_epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "No space left" in err, err
    assert "b'" not in err and ("last.ckpt" in err or "best.ckpt" in err), err


def test_wandb_without_network_falls_back_to_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # a key, but the server cannot be reached
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "10")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    rc = train.main(["fit", "--data", "moons", "--runs_root", str(tmp_path), *FAST, "--trainer.max_epochs", "2",
                     "--wandb", "true"])
    assert rc == 0
    (run,) = tmp_path.glob("moons/mlp/*")
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert "offline" in capsys.readouterr().err.lower()


# --- kill -9 and signals (separate processes) ----------------------------------------------------

# Batch 8 (~480 steps an epoch): the 12 epochs last about a second even on a fast CPU, where at the default
# batch 32 they took 0.3 s and a signal sent after the first checkpoint could land after training.
KILL_ARGS = ["--data", "moons", "--data.init_args.n_samples", "6000", "--data.init_args.batch_size", "8",
             "--model.dropout", "0.1",
             "--model.scheduler", "cosine", "--trainer.max_epochs", "12", "--patience", "0", *FAST]


def start(root: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), "fit", "--runs_root", str(root), *KILL_ARGS,
                             *extra], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def last_epoch(root: Path) -> int:
    """The epoch of the run's last.ckpt, -1 before the first (the file is replaced atomically)."""
    ckpts = list(root.glob("moons/mlp/*/last.ckpt"))
    return torch.load(ckpts[0], weights_only=True)["epoch"] if ckpts else -1


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """The uninterrupted run that killed, interrupted and resumed runs must end up equal to."""
    root = tmp_path_factory.mktemp("reference")
    assert train.main(["fit", "--runs_root", str(root), *KILL_ARGS]) == 0
    (ref,) = root.glob("moons/mlp/*")
    return ref


def assert_same_run(ref: Path, run: Path) -> None:
    """Bit-identical final weights, and the same best score and test accuracy."""
    a = torch.load(ref / "last.ckpt", weights_only=True)
    b = torch.load(run / "last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (ref, run))
    assert (ma["test_acc"], ma["best_score"]) == (mb["test_acc"], mb["best_score"])


def test_kill9_at_random_points_then_resume_is_exact(tmp_path, reference_run):
    ref = reference_run
    root, rng, epochs_seen = tmp_path / "killed", random.Random(1234), []
    # Kill points are drawn in training progress, not seconds, so the test means the same on a
    # fast and a loaded machine: after random epochs, at a random moment inside the next one.
    targets = sorted(rng.sample(range(0, 9), 2))
    for k, target in enumerate(targets):  # each kill hits a new process resuming the last
        proc = start(root, *(["--ckpt_path", "last"] if k else []))
        end = time.time() + 120
        while last_epoch(root) < target and proc.poll() is None and time.time() < end:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        assert proc.poll() is None, "the run ended before it was killed"
        proc.kill()  # SIGKILL: no handler runs, no cleanup
        proc.wait()
        epoch = last_epoch(root)  # always a whole file
        assert epoch >= target and (not epochs_seen or epoch >= epochs_seen[-1])  # no completed epoch lost
        epochs_seen.append(epoch)
    (run,) = root.glob("moons/mlp/*")
    assert train.main(["fit", "--runs_root", str(root), *KILL_ARGS, "--ckpt_path", "last"]) == 0
    assert_same_run(ref, run)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_last_and_resumes_exactly(tmp_path, sig, reference_run):
    # Half an epoch after the first checkpoint, as the reference run timed it on this machine: inside
    # epoch 1 on a slow CPU and on a fast one (a fixed delay landed in the test after training there).
    # The median epoch, not epoch 1, which can hold a one-off pause longer than the rest of the run.
    rows = list(csv.DictReader((reference_run / "history.csv").open()))
    seconds = [float(r["seconds"]) for r in rows]
    half_epoch = statistics.median(b - a for a, b in zip(seconds, seconds[1:])) / 2
    proc = start(tmp_path)
    end = time.time() + 120
    while not list(tmp_path.glob("moons/mlp/*/last.ckpt")) and time.time() < end:
        time.sleep(0.01)
    time.sleep(half_epoch)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    (run,) = tmp_path.glob("moons/mlp/*")
    assert "Interrupted: progress saved" in err, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert "weights_only" not in err, err[-2000:]  # no torch/Lightning warning about the save
    ckpt = zoo_checkpoint.load_checkpoint(run / "last.ckpt")
    assert not (run / "metrics.json").exists()
    batches = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"]
    assert train.main(["fit", "--runs_root", str(tmp_path), *KILL_ARGS, "--ckpt_path", "last"]) == 0
    assert_same_run(reference_run, run)  # also when stopped mid-epoch (batches > 0 here):
    print(f"stopped after {batches} batches of epoch {ckpt['epoch']}")  # -s shows where it stopped


def test_an_interrupt_while_testing_keeps_the_fits_last_checkpoint(tmp_path, monkeypatch, capsys):
    from zoo import ZooModule

    def interrupted(self, batch, batch_idx):
        raise KeyboardInterrupt  # Ctrl-C during the test that follows training

    monkeypatch.setattr(ZooModule, "test_step", interrupted)
    rc = train.main(["fit", "--data", "moons", "--runs_root", str(tmp_path), *FAST, "--trainer.max_epochs", "3"])
    err = capsys.readouterr().err
    assert rc != 0 and "Interrupted while testing" in err and "progress saved" not in err, err[-2000:]
    (run,) = tmp_path.glob("moons/mlp/*")
    assert zoo_checkpoint.load_checkpoint(run / "last.ckpt")["epoch"] == 2  # the fit's last epoch, not a later state


# --- security: checkpoints are data, not code ----------------------------------------------------

class Payload:
    """Unpickling this runs code: it creates a file (a stand-in for anything worse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_that_would_run_code_is_refused(tmp_path, linear_run, capsys):
    marker = tmp_path / "pwned"
    ckpt = torch.load(linear_run / "best.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["evil"] = Payload(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)  # a real zip checkpoint whose pickle calls Path.touch when loaded
    assert evaluate.main([str(evil)]) == 2
    err = capsys.readouterr().err
    assert "Refused to load" in err and "pickled class or code" in err and "Unsupported global" in err
    assert train.main(["test", "--config", str(linear_run / "config.yaml"), "--ckpt_path", str(evil), *FAST]) == 2
    assert train.main(["fit", "--config", str(linear_run / "config.yaml"), "--ckpt_path", str(evil),
                       "--runs_root", str(tmp_path), *FAST]) == 2
    assert not marker.exists()  # the payload never ran
    with pytest.raises(pickle.UnpicklingError):  # (proof the file is armed: plain pickle would run it)
        torch.load(evil, weights_only=True)


def test_checkpoint_with_overwritten_bytes_is_called_damaged(tmp_path, linear_run, capsys):
    """A few bytes overwritten in the pickle stop torch's safe loader just as a payload does; the
    message must say the file is damaged, not that it holds code."""
    damaged = tmp_path / "damaged.ckpt"
    data = bytearray((linear_run / "best.ckpt").read_bytes())
    with zipfile.ZipFile(linear_run / "best.ckpt") as z:
        at = next(i for i in z.infolist() if i.filename.endswith("data.pkl")).header_offset
    name_len, extra_len = struct.unpack("<HH", data[at + 26:at + 30])  # the zip entry's local header
    start = at + 30 + name_len + extra_len  # the stored (uncompressed) pickle
    assert data[start] == 0x80  # PROTO: this is the pickle's first byte
    data[start + 2] = 0xD4  # no pickle opcode has this value
    damaged.write_bytes(bytes(data))
    assert evaluate.main([str(damaged)]) == 2
    err = capsys.readouterr().err
    assert "is damaged" in err and "Unsupported operand 212" in err and "pickled class" not in err


def test_every_written_checkpoint_loads_weights_only(linear_run):
    for path in linear_run.glob("*.ckpt"):
        ckpt = torch.load(path, weights_only=True)
        assert set(ckpt["hyper_parameters"]) >= {"arch", "num_classes", "input_shape"}
    shutil.rmtree(linear_run / "wandb", ignore_errors=True)
