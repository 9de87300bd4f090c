"""Trust: a checkpoint or manifest is data, an output file is whole or untouched, bad input is one paragraph.

Each test calls an entry point in-process as a user would (train.main(["export", ...]),
train.main(["predict", ...]), evaluate.main([...])) and checks the exit status, the one-paragraph
message on stderr and, for outputs, that a file already there keeps its sha256. Crafted checkpoints
are the tiny moons run's best.ckpt, loaded, changed and saved again."""
import contextlib
import errno
import hashlib
import io
import json
import os
import resource
import shutil
import time
from pathlib import Path

import pytest
import torch

import evaluate
import train
import zoo.commands.export
import zoo.weights
from conftest import require_data
from datamodules.mnist import MNISTDataModule
from zoo import ZooModule

HAS_ONNX = all(__import__("importlib").util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
ONNX = pytest.param("onnx", marks=pytest.mark.skipif(not HAS_ONNX, reason="pip install -e .[export]"))
FORMATS = ["pt2", "torchscript", ONNX]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_paragraph(err: str) -> str:
    """stderr of a refused command: a single 'error: ...' line, no traceback, paths as text."""
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert "Traceback" not in err and "b'" not in err, err
    return err


@pytest.fixture
def ckpt(tiny_moons_run) -> Path:
    return tiny_moons_run / "best.ckpt"


@pytest.fixture
def points(tmp_path) -> Path:
    path = tmp_path / "points.csv"
    path.write_text("0.5,-0.2\n")
    return path


def craft(ckpt: Path, out: Path, change) -> Path:
    """A copy of a real checkpoint with `change(dict)` applied: what an edited or foreign file looks like."""
    c = torch.load(ckpt, weights_only=True)
    change(c)
    torch.save(c, out)
    return out


def run(command: str, path: Path, tmp_path: Path, points: Path, *extra: str) -> int:
    """One of the three commands that take a checkpoint, on `path`."""
    if command == "evaluate":
        return evaluate.main([str(path), "--png", "false", *extra])
    if command == "predict":
        return train.main(["predict", "--checkpoint", str(path), "--inputs", str(points), *extra])
    return train.main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "model.pt"), *extra])


@contextlib.contextmanager
def memory_cap(extra_gb: int = 4):
    """Address space capped at what the process uses now plus extra_gb: building a 160 GB model for
    real fails at once instead of swapping the machine (Linux)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (used + (extra_gb << 30), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# --- 1. export is atomic: --out is the old file or the complete, checked new one ----------------
@pytest.fixture
def previous(tmp_path) -> Path:
    """An earlier export at --out, alone in its folder."""
    out = tmp_path / "out" / "model.pt"
    out.parent.mkdir()
    out.write_bytes(b"an earlier export that works")
    return out


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def truncating_save(real_save):
    """torch.jit.save or torch.export.save on a disk that fills up: writes the first bytes where it
    is told, then fails."""
    def save(module, f, **kwargs):
        buffer = io.BytesIO()
        real_save(module, buffer, **kwargs)
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(buffer.getvalue()[:100])
        else:
            f.write(buffer.getvalue()[:100])
        full_disk()
    return save


@pytest.mark.parametrize("fmt,where", [("pt2", "fsync"), ("pt2", "save"), ("torchscript", "fsync"),
                                       ("torchscript", "save"), pytest.param("onnx", "fsync", marks=ONNX.marks)])
def test_export_on_a_full_disk_leaves_out_untouched(ckpt, previous, fmt, where, monkeypatch, capsys):
    before = sha256(previous)
    if where == "fsync":  # delayed allocation: the full disk shows when the data is flushed
        monkeypatch.setattr(os, "fsync", full_disk)
    else:  # the exporter's own writer fails half-way
        module = torch.export if fmt == "pt2" else torch.jit
        monkeypatch.setattr(module, "save", truncating_save(module.save))
    rc = train.main(["export", "--checkpoint", str(ckpt), "--format", fmt, "--out", str(previous)])
    assert sha256(previous) == before
    assert list(previous.parent.iterdir()) == [previous]  # no temp file left behind
    err = one_paragraph(capsys.readouterr().err)
    assert rc != 0 and str(previous) in err and "No space left on device" in err


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_that_fails_its_check_leaves_out_untouched(ckpt, previous, fmt, monkeypatch, capsys):
    before = sha256(previous)
    wrong = lambda path, x: torch.full((len(x), 2), 1e3)  # noqa: E731 (a file that computes something else)
    monkeypatch.setattr(zoo.commands.export, f"run_{fmt}", wrong)
    rc = train.main(["export", "--checkpoint", str(ckpt), "--format", fmt, "--out", str(previous)])
    assert sha256(previous) == before
    assert list(previous.parent.iterdir()) == [previous]
    err = one_paragraph(capsys.readouterr().err)
    assert rc == 2 and "failed its check" in err and str(previous) in err


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*deprecated:FutureWarning")
def test_export_writes_a_complete_file_over_the_old_one(ckpt, previous, capsys):
    assert train.main(["export", "--checkpoint", str(ckpt), "--out", str(previous)]) == 0
    assert torch.jit.load(str(previous))(torch.zeros(3, 2)).shape == (3, 2)
    assert list(previous.parent.iterdir()) == [previous]


@pytest.mark.parametrize("where", ["folder", "missing folder", "read-only"])
def test_export_to_a_place_it_cannot_write(ckpt, tmp_path, where, capsys):
    if where == "read-only" and not Path("/sys").is_dir():
        pytest.skip("needs Linux's /sys (read-only, even for root)")
    out = {"folder": tmp_path, "missing folder": tmp_path / "no" / "m.pt", "read-only": Path("/sys/m.pt")}[where]
    assert train.main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    assert str(out) in one_paragraph(capsys.readouterr().err)
    assert not (tmp_path / "no").exists()


# --- 2. a checkpoint decides its model, not what we download, create or allocate --------------
@pytest.fixture
def mnist_ckpt(tmp_path) -> Path:
    """A linear MNIST checkpoint whose datamodule options say: download, into this folder."""
    model = ZooModule("linear", num_classes=10, input_shape=[1, 28, 28])
    path = tmp_path / "linear_mnist.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict(), "data_name": "mnist",
                "datamodule_hyper_parameters": {"data_dir": str(tmp_path / "planted"), "download": True},
                "MNISTDataModule": {"mean": [0.1307], "std": [0.3081]}}, path)
    return path


@pytest.fixture
def downloads(monkeypatch) -> list:
    """Every download attempt, recorded; it creates the folder as torchvision would, without the network."""
    calls = []

    def fetch(self):
        calls.append(self.data_dir)
        (self.data_dir / "MNIST" / "raw").mkdir(parents=True)
    monkeypatch.setattr(MNISTDataModule, "fetch", fetch)
    return calls


def test_checkpoint_cannot_make_evaluate_download_or_create_folders(mnist_ckpt, tmp_path, downloads, capsys):
    assert evaluate.main([str(mnist_ckpt), "--png", "false"]) == 2
    err = one_paragraph(capsys.readouterr().err)
    assert "not found" in err and str(tmp_path / "planted") in err  # its data_dir is only read
    assert downloads == [] and not (tmp_path / "planted").exists()


def test_users_data_dir_wins_over_the_checkpoints(mnist_ckpt, tmp_path, downloads, capsys):
    data = require_data("mnist")
    assert evaluate.main([str(mnist_ckpt), "--png", "false", "--data_dir", str(data)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert downloads == [] and not (tmp_path / "planted").exists()


def set_hp(**values):
    return lambda c: c["hyper_parameters"].update(values)


def drop_hp(key):
    return lambda c: c["hyper_parameters"].pop(key)


BAD_CHECKPOINTS = {  # name: (change, what the message must name, the commands it breaks today)
    "huge mlp": (set_hp(input_shape=[200000], hidden=[200000]), "40,000,600,002 parameters",
                 ["evaluate", "predict", "export"]),
    "huge input": (set_hp(input_shape=[1, 100000, 100000]), "10,000,000,000 numbers per input",
                   ["evaluate", "predict", "export"]),
    "unknown key": (set_hp(run_this="rm -rf /"), "unknown hyperparameter 'run_this'",
                    ["evaluate", "predict", "export"]),
    "missing key": (drop_hp("num_classes"), "lacks the hyperparameter 'num_classes'",
                    ["evaluate", "predict", "export"]),
    "wrong type": (set_hp(input_shape="2"), "'input_shape' is '2' (str), but must be list[int]",
                   ["evaluate", "predict", "export"]),
    "impossible value": (set_hp(dropout=5.0), "'dropout' is 5.0 (float), but must be float with v>=0 and v<1",
                         ["evaluate", "predict", "export"]),
    "weights of another arch": (  # a linear model's state_dict under hyperparameters that say mlp
        lambda c: c.update(state_dict=ZooModule("linear", num_classes=2, input_shape=[2]).state_dict()),
        "do not fit its model (mlp", ["evaluate", "predict", "export"]),
    "data_name not a name": (lambda c: c.update(data_name=["moons"]), "'data_name' is ['moons']",
                             ["evaluate", "predict", "export"]),
    "mean of another shape": (lambda c: c["MoonsDataModule"].update(mean=[0.0, 0.0, 0.0]), "MoonsDataModule['mean']",
                              ["evaluate", "predict"]),
    "std of zero": (lambda c: c["MoonsDataModule"].update(std=[1.0, 0.0]), "every std must be a positive finite",
                    ["evaluate", "predict"]),
    "infinite mean": (lambda c: c["MoonsDataModule"].update(mean=[0.0, float("inf")]), "every mean must be a finite",
                      ["evaluate", "predict"]),
    "unknown datamodule option": (lambda c: c["datamodule_hyper_parameters"].update(shell="x"),
                                  "unknown datamodule option 'shell'", ["evaluate"]),
}
CASES = [(name, command) for name, (_, _, commands) in BAD_CHECKPOINTS.items() for command in commands]


@pytest.mark.parametrize("name,command", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_bad_checkpoint_is_one_paragraph(ckpt, tmp_path, points, name, command, capsys):
    change, says, _ = BAD_CHECKPOINTS[name]
    bad = craft(ckpt, tmp_path / "bad.ckpt", change)
    start = time.perf_counter()
    with memory_cap():  # refused before anything big is allocated
        rc = run(command, bad, tmp_path, points)
    err = one_paragraph(capsys.readouterr().err)
    assert rc == 2 and says in err and str(bad) in err
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "model.pt").exists()


def test_debug_shows_the_traceback(ckpt, tmp_path, points, capsys):
    bad = craft(ckpt, tmp_path / "bad.ckpt", drop_hp("num_classes"))
    assert train.main(["export", "--checkpoint", str(bad), "--out", str(tmp_path / "m.pt"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


# --- 3. other bad input: manifests, devices, output paths ---------------------------------------
BAD_MANIFESTS = {
    "a dict": {"mlp": {"dataset": "moons", "file": "mlp_moons.pt"}},
    "a list of strings": ["mlp_moons.pt"],
    "no sha256": [{"model": "mlp", "dataset": "moons", "file": "mlp_moons.pt"}],
    "no dataset": [{"model": "mlp", "file": "mlp_moons.pt", "sha256": "0" * 64}],
}


@pytest.mark.parametrize("command", ["predict", "export"])
@pytest.mark.parametrize("manifest", list(BAD_MANIFESTS))
def test_broken_manifest_is_one_paragraph(manifest, command, tmp_path, points, monkeypatch, capsys):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(BAD_MANIFESTS[manifest]))
    monkeypatch.setattr(zoo.weights, "MANIFEST", path)
    args = ["--inputs", str(points)] if command == "predict" else ["--out", str(tmp_path / "m.pt")]
    assert train.main([command, "--pretrained", "moons", *args]) == 2
    err = one_paragraph(capsys.readouterr().err)
    assert str(path) in err and "git checkout" in err


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "bogus"])
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_device_this_machine_lacks(ckpt, tmp_path, points, command, device, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert run(command, ckpt, tmp_path, points, "--device", device) == 2
    err = one_paragraph(capsys.readouterr().err)
    assert f"--device {device}" in err.replace("'", "") and "cpu" in err


def test_evaluate_json_into_a_missing_folder_is_refused_up_front(ckpt, tmp_path, capsys):
    out = tmp_path / "missing" / "out.json"
    assert evaluate.main([str(ckpt), "--png", "false", "--json", str(out)]) == 2
    captured = capsys.readouterr()
    assert str(out.parent) in one_paragraph(captured.err) and captured.out == ""  # nothing evaluated
    assert not out.parent.exists()


def test_evaluate_json_on_a_full_disk_keeps_the_old_file(ckpt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out" / "eval.json"
    out.parent.mkdir()
    out.write_text('{"test_acc": 0.9}')
    before = sha256(out)
    monkeypatch.setattr(os, "fsync", full_disk)
    assert evaluate.main([str(ckpt), "--png", "false", "--json", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(out) in err and "No space left" in err and "Traceback" not in err
    assert sha256(out) == before and list(out.parent.iterdir()) == [out]


@pytest.mark.parametrize("flag", ["--csv", "--json"])
def test_predict_output_into_a_missing_folder_is_refused_up_front(ckpt, tmp_path, points, flag, capsys):
    out = tmp_path / "missing" / "p.out"
    assert train.main(["predict", "--checkpoint", str(ckpt), "--inputs", str(points), flag, str(out)]) == 2
    captured = capsys.readouterr()
    assert str(out.parent) in one_paragraph(captured.err) and captured.out == ""
    assert not out.parent.exists()


def moments(edit):
    """A change to the first parameter's saved Adam state."""
    return lambda c: edit(c["optimizer_states"][0]["state"][0])


BAD_OPTIMIZER_STATES = {  # name: (change, what the message must name)
    "moment of another shape": (moments(lambda s: s.update(exp_avg=torch.zeros(3))), "'exp_avg' of parameter 0 is [3]"),
    "moment of one number": (moments(lambda s: s.update(exp_avg_sq=torch.zeros(1))), "'exp_avg_sq' of parameter 0"),
    "step not a tensor": (moments(lambda s: s.update(step=[1, 2])), "'step' of parameter 0 is list"),
    "state not a dict": (lambda c: c["optimizer_states"][0]["state"].update({0: [1]}),
                         "state of parameter 0 is a list"),
    "a group too many": (lambda c: c["optimizer_states"][0]["param_groups"].append({"params": [99]}),
                         "parameter groups of"),
    "state of no parameter": (lambda c: c["optimizer_states"][0]["state"].update({99: {}}), "no group holds"),
    "two optimizers": (lambda c: c["optimizer_states"].append({}), "not the one optimizer's state"),
}


@pytest.mark.parametrize("name", list(BAD_OPTIMIZER_STATES))
def test_a_resume_refuses_optimizer_state_that_does_not_fit(tiny_moons_run, tmp_path, name, capsys):
    """torch's optimizers take saved moments as they are, and the fused Adam kernel wrote past a
    mis-shaped one: the resume died of a segfault or heap corruption at its first step."""
    change, says = BAD_OPTIMIZER_STATES[name]
    run_dir = tmp_path / "runs" / "moons" / "mlp" / tiny_moons_run.name
    shutil.copytree(tiny_moons_run, run_dir, ignore=shutil.ignore_patterns(".lock"))
    bad = craft(run_dir / "last.ckpt", run_dir / "last.ckpt", change)
    before = {p.name: sha256(p) for p in run_dir.iterdir() if p.is_file()}
    rc = train.main(["fit", "--runs_root", str(tmp_path / "runs"), "--quiet", "true", "--data", "moons",
                     "--trainer.max_epochs", "5", "--ckpt_path", str(bad)])
    err = one_paragraph(capsys.readouterr().err)
    assert rc == 2 and says in err and "optimizer state does not fit" in err and str(bad) in err
    assert {p.name: sha256(p) for p in run_dir.iterdir() if p.is_file()} == before  # nothing written
