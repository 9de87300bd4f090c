"""Data files are data, never code, and bad data is one clear paragraph, never a traceback.

Each case runs the CLI in-process (`train.main`) as a user would, on tiny data crafted in tmp_path:
CIFAR-10 pickles that would run code or hold the wrong things, label files with labels outside the
classes, image folders nothing can be trained on, and nonsense two-moons options.
"""
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

import train
from conftest import data_root, require_data
from datamodules.cifar10 import CLASSES, FILES

META = {"num_cases_per_batch": 10000, "label_names": CLASSES, "num_vis": 3072}


def fit(tmp_path: Path, capsys, *args: str) -> tuple[int, str]:
    """`train.py fit ARGS` for one epoch: (exit status, stderr)."""
    rc = train.main(["fit", *args, "--runs_root", str(tmp_path / "runs"), "--quiet", "true",
                     "--trainer.max_epochs", "1"])
    return rc, capsys.readouterr().err


def assert_one_paragraph(rc: int, err: str, *words: str) -> None:
    """Non-zero exit, no traceback, one `error:` line that holds every word."""
    assert rc != 0 and "Traceback" not in err and "Given value" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    for word in words:
        assert word in line, f"{word!r} not in: {line}"


# --- CIFAR-10: pickles that would run code --------------------------------------------------------
class Payload:
    """Unpickling this calls `fn(*args)`: here it creates a marker file (a stand-in for anything worse)."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


PAYLOADS = {  # three ways a pickle names code to run
    "os.system": lambda marker: Payload(os.system, f"touch '{marker}'"),
    "builtins.exec": lambda marker: Payload(exec, f"open({str(marker)!r}, 'w').close()"),
    "pathlib.Path.touch": lambda marker: Payload(Path.touch, marker),
}


def cifar_root(tmp_path: Path, **files: object) -> Path:
    """A data root whose cifar-10-batches-py/ holds the given objects pickled (name=object) and a valid
    batches.meta; the other files exist but are never reached (their content would not unpickle)."""
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in FILES:
        (folder / name).write_bytes(b"never read")
    for name, obj in {"batches.meta": META, **files}.items():
        (folder / name).write_bytes(pickle.dumps(obj, protocol=4))  # numpy arrays as _reconstruct + bytes
    return tmp_path / "data"


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("file", ["batches.meta", "data_batch_1"])
def test_cifar_pickle_that_would_run_code_is_refused_by_fit_and_doctor(file, payload, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = {**META, "x": PAYLOADS[payload](marker)} if file == "batches.meta" else {"data": PAYLOADS[payload](marker)}
    root = cifar_root(tmp_path, **{file: evil})
    rc, err = fit(tmp_path, capsys, "--data", "cifar10", "--data.init_args.data_dir", str(root))
    assert_one_paragraph(rc, err, file, "not a CIFAR-10 pickle", "make data")
    assert train.main(["doctor", "--data_dir", str(root)]) != 0
    out = capsys.readouterr().out
    assert "not a CIFAR-10 pickle" in out and file in out, out
    assert not marker.exists()  # the payload never ran
    with open(root / "cifar-10-batches-py" / file, "rb") as f:  # (proof the file is armed: plain pickle runs it)
        pickle.load(f)
    assert marker.exists()


# --- CIFAR-10: pickles of the wrong shape ------------------------------------------------------------
@pytest.mark.parametrize("meta", [list(CLASSES), 7, np.array(CLASSES), {"label_names": np.array(CLASSES)}],
                         ids=["list", "int", "array", "dict-of-array"])
def test_cifar_meta_of_the_wrong_type_is_named(meta, tmp_path, capsys):
    rc, err = fit(tmp_path, capsys, "--data", "cifar10", "--data.init_args.data_dir", str(cifar_root(tmp_path, **{
        "batches.meta": meta})))
    assert_one_paragraph(rc, err, "batches.meta", "is not CIFAR-10's", "make data")


def test_cifar_labels_that_are_not_integers_are_named(tmp_path, capsys):
    batch = {"data": np.zeros((10_000, 3072), np.uint8), "labels": ["cat"] * 10_000}
    rc, err = fit(tmp_path, capsys, "--data", "cifar10", "--data.init_args.data_dir",
                  str(cifar_root(tmp_path, data_batch_1=batch)))
    assert_one_paragraph(rc, err, "data_batch_1", "does not hold a CIFAR-10 batch", "make data")


def test_cifar_label_out_of_range_names_the_batch_file(tmp_path, capsys):
    require_data("cifar10")
    real = data_root() / "cifar-10-batches-py"
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in FILES:
        (folder / name).symlink_to((real / name).resolve())
    with open(real / "data_batch_3", "rb") as f:
        batch = pickle.load(f, encoding="latin1")  # (the real file: safe to load)
    batch["labels"][1234] = 10
    (folder / "data_batch_3").unlink()
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=4))
    rc, err = fit(tmp_path, capsys, "--data", "cifar10", "--data.init_args.data_dir", str(tmp_path / "data"))
    assert_one_paragraph(rc, err, "label 1234 of", "data_batch_3 is 10", "outside the 10 classes", "make data")


# --- MNIST: label files with labels outside the classes, a header claiming a huge size -------------
def mnist_root(tmp_path: Path, name: str, edit) -> Path:
    """A copy of the MNIST data root (symlinks) whose file `name` is a copy changed by edit(bytearray)."""
    require_data("mnist")
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (data_root() / "MNIST" / "raw").iterdir():
        (raw / f.name).symlink_to(f.resolve())
    data = bytearray((raw / name).read_bytes())
    edit(data)
    (raw / name).unlink()
    (raw / name).write_bytes(data)
    return tmp_path / "data"


@pytest.mark.parametrize("name", ["train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"])
def test_mnist_label_out_of_range_is_named_before_training(name, tmp_path, capsys):
    def poison(data: bytearray) -> None:
        data[8 + 777] = 255  # after the 8-byte header: label 777 becomes 255

    root = mnist_root(tmp_path, name, poison)
    rc, err = fit(tmp_path, capsys, "--data", "mnist", "--data.init_args.data_dir", str(root))
    assert_one_paragraph(rc, err, "mnist", f"label 777 of {root / 'MNIST' / 'raw' / name} is 255",
                         "outside the 10 classes", "make data")
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # stopped before training, not after it


def test_mnist_header_claiming_a_huge_size_is_named(tmp_path, capsys):
    def huge(data: bytearray) -> None:
        data[4:8] = struct.pack(">I", 2**32 - 1)  # 4 billion images

    root = mnist_root(tmp_path, "train-images-idx3-ubyte", huge)
    rc, err = fit(tmp_path, capsys, "--data", "mnist", "--data.init_args.data_dir", str(root))
    assert_one_paragraph(rc, err, "train-images-idx3-ubyte", "shape (4294967295, 28, 28)", "make data")


# --- image folders nothing can be trained on -----------------------------------------------------
@pytest.mark.parametrize("make, words", [
    (lambda root: None, ["is not a folder", "--data.data_dir"]),
    (lambda root: root.mkdir(), ["holds 0 class folder(s)", "at least 2"]),
    (lambda root: (root / "cat").mkdir(parents=True), ["holds 1 class folder(s) (cat)", "at least 2"]),
], ids=["missing", "empty", "one-class"])
def test_image_folder_that_cannot_be_trained_on_is_one_paragraph(make, words, tmp_path, capsys):
    root = tmp_path / "images"
    make(root)
    rc, err = fit(tmp_path, capsys, "--data", "image_folder", "--data.init_args.data_dir", str(root))
    assert_one_paragraph(rc, err, "image_folder", *words)


@pytest.mark.parametrize("args, words", [
    ([], ["needs the folder of your images", "--data.data_dir"]),
    (["--data.init_args.channels", "2"], ["channels must be 1", "got 2"]),
], ids=["no-folder", "channels-2"])
def test_image_folder_bad_options_are_one_paragraph(args, words, tmp_path, capsys):
    for name in ("cat", "dog"):
        (tmp_path / "images" / name).mkdir(parents=True)
    folder = ["--data.init_args.data_dir", str(tmp_path / "images")] if args else []
    rc, err = fit(tmp_path, capsys, "--data", "image_folder", *folder, *args)
    assert_one_paragraph(rc, err, "image_folder", *words)


# --- two-moons options that make no data set ----------------------------------------------------
@pytest.mark.parametrize("option, value, words", [
    ("n_samples", "0", ["n_samples must be from 2", "got 0"]),
    ("n_samples", "1", ["n_samples must be from 2", "got 1"]),
    ("n_samples", "-5", ["n_samples must be from 2", "got -5"]),
    ("n_samples", "1000000000000", ["to 10,000,000", "got 1,000,000,000,000"]),  # was 16 TB of points
    ("n_samples", "20", ["larger than the training split", "--data.n_samples"]),
    ("noise", "-0.1", ["noise", ">= 0", "got -0.1"]),
])
def test_moons_nonsense_options_are_one_paragraph(option, value, words, tmp_path, capsys):
    rc, err = fit(tmp_path, capsys, "--data", "moons", f"--data.init_args.{option}", value)
    assert_one_paragraph(rc, err, "moons", *words)

