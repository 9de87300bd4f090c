"""`train.py export`: torch.export (.pt2), TorchScript and ONNX files that give the checkpoint's outputs on a batch.

Each exported file is loaded back on its own (torch.export.load, torch.jit.load, onnxruntime) and
run on batches of sizes other than the one it was exported with (the batch axis is dynamic); the
preprocessing config stored in it is read back. The ONNX tests skip only where onnxruntime is not
installed (pip install -e .[export])."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import train
import zoo.commands.export
from zoo import ZooModule
from zoo.commands.export import export
from zoo.weights import pretrained_cfg

STATS = {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}


@pytest.fixture(scope="module")
def moons_ckpt(tiny_moons_run) -> Path:
    return tiny_moons_run / "best.ckpt"


@pytest.fixture(scope="module")
def resnet_ckpt(tmp_path_factory) -> Path:
    """A ResNet-20 saved like a CIFAR-10 checkpoint, with BatchNorm statistics that are not the
    defaults, so eval-mode export is actually tested."""
    torch.manual_seed(0)
    model = ZooModule("resnet20", num_classes=10, input_shape=[3, 32, 32])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "resnet20.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict(),
                "data_name": "cifar10", "CIFAR10DataModule": STATS}, path)
    return path


def checkpoint_outputs(path: Path, x: torch.Tensor) -> torch.Tensor:
    ckpt = torch.load(path, weights_only=True)
    model = ZooModule(**ckpt["hyper_parameters"])
    model.load_state_dict(ckpt["state_dict"])
    with torch.no_grad():
        return model.eval()(x)


def batch(path: Path, n: int = 5) -> torch.Tensor:
    shape = torch.load(path, weights_only=True)["hyper_parameters"]["input_shape"]
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("which", ["moons_ckpt", "resnet_ckpt"])
def test_pt2_matches_checkpoint_at_two_batch_sizes(which, request, tmp_path, capsys):
    ckpt = request.getfixturevalue(which)
    out = tmp_path / "model.pt2"
    assert train.main(["export", "--ckpt_path", str(ckpt), "--out", str(out)]) == 0  # format from the suffix
    printed = capsys.readouterr().out
    assert "(pt2)" in printed and "check  OK" in printed
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]
    files = {"zoo.json": ""}
    program = torch.export.load(out, extra_files=files)
    for n in (1, 5):  # exported with a batch of 4
        x = batch(ckpt, n)
        with torch.no_grad():
            assert (program.module()(x) - checkpoint_outputs(ckpt, x)).abs().max() < 1e-4
    meta = json.loads(files["zoo.json"])
    cfg = pretrained_cfg(torch.load(ckpt, weights_only=True))
    assert {k: meta[k] for k in cfg} == cfg
    if which == "resnet_ckpt":
        assert meta["mean"] == STATS["mean"] and meta["color"] == "rgb" and meta["class_names"][0] == "airplane"


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*deprecated:FutureWarning")
@pytest.mark.parametrize("which", ["moons_ckpt", "resnet_ckpt"])
def test_torchscript_matches_checkpoint(which, request, tmp_path, capsys):
    ckpt = request.getfixturevalue(which)
    out = tmp_path / "model.pt"
    assert train.main(["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(out)]) == 0
    assert "check  OK" in capsys.readouterr().out
    files = {"zoo.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=files)
    x = batch(ckpt)
    with torch.no_grad():
        assert (loaded(x) - checkpoint_outputs(ckpt, x)).abs().max() < 1e-4
    meta = json.loads(files["zoo.json"])
    assert meta["input_shape"] == torch.load(ckpt, weights_only=True)["hyper_parameters"]["input_shape"]


@pytest.mark.parametrize("which", ["moons_ckpt", "resnet_ckpt"])
def test_onnx_matches_checkpoint(which, request, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    ckpt = request.getfixturevalue(which)
    out = tmp_path / "model.onnx"
    assert train.main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    assert "check  OK" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # one file, no external data
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = batch(ckpt)
    for x in (x, x[:1]):  # the batch axis is dynamic, down to one input
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        assert (got - checkpoint_outputs(ckpt, x)).abs().max() < 1e-4
    meta = json.loads(session.get_modelmeta().custom_metadata_map["zoo"])
    if which == "resnet_ckpt":
        assert meta["mean"] == STATS["mean"] and meta["class_names"][0] == "airplane"


def test_without_onnx_packages_the_message_names_the_extra(resnet_ckpt, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(zoo.commands.export.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    assert train.main(["export", "--checkpoint", str(resnet_ckpt), "--format", "onnx",
                       "--out", str(tmp_path / "m.onnx")]) == 2
    assert "pip install -e .[export]" in capsys.readouterr().err


def test_without_onnxruntime_the_check_is_skipped_with_a_note(moons_ckpt, tmp_path, monkeypatch, capsys):
    if importlib.util.find_spec("onnxscript") is None:
        pytest.skip("onnxscript is not installed: ONNX export itself is unavailable")
    real = importlib.util.find_spec
    monkeypatch.setattr(zoo.commands.export.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert train.main(["export", "--checkpoint", str(moons_ckpt), "--format", "onnx",
                       "--out", str(tmp_path / "m.onnx")]) == 0
    assert "check  skipped" in capsys.readouterr().out and (tmp_path / "m.onnx").is_file()


def test_bad_format_and_path_are_clear_errors(moons_ckpt, tmp_path, capsys):
    assert train.main(["export", "--checkpoint", str(moons_ckpt), "--format", "tflite",
                       "--out", str(tmp_path / "m")]) == 2
    assert "--format tflite: not a valid value; it must be one of 'pt2', 'torchscript', 'onnx'" in \
        capsys.readouterr().err
    assert train.main(["export", "--checkpoint", str(moons_ckpt), "--out", str(tmp_path / "no" / "m.pt")]) == 2
    assert "existing folder" in capsys.readouterr().err
    # A file named for one format never holds another; an explicit --format that agrees is fine.
    assert train.main(["export", "--checkpoint", str(moons_ckpt), "--format", "torchscript",
                       "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--format torchscript but --out" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()
    assert train.main(["export", "--checkpoint", str(moons_ckpt), "--format", "pt2",
                       "--out", str(tmp_path / "m.pt2")]) == 0


def test_export_function_reports_the_check(moons_ckpt, tmp_path):
    r = export(torch.load(moons_ckpt, weights_only=True), "torchscript", tmp_path / "m.pt")
    assert r["max_abs_diff"] < 1e-4 and r["metadata"]["class_names"] == ["0", "1"]
