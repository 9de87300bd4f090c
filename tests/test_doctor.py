"""zoo/commands/doctor.py: the environment report on this machine, and what it says when things are missing."""

import struct

import numpy as np
import torch

import train
from conftest import REPO, require_data
from datamodules import DATAMODULES, TensorDataModule
from zoo.commands import doctor


def test_report_on_this_machine(capsys):
    data = require_data("mnist")
    assert train.main(["doctor", "--data_dir", str(data)]) == 0  # wired into train.py as a subcommand
    out = capsys.readouterr().out
    for word in (torch.__version__, "lightning", "torchmetrics", "tensorboard", "wandb", "torchvision",
                 "cpu", "forward/backward ok", "threads", "moons", "mnist", "60,000 train", "offline",
                 "Ready to train"):
        assert word in out, word


def test_missing_data_directory_says_which_and_how_to_fix(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert doctor.main(["--data_dir", str(missing)]) == 0  # moons still trains: a warning, not a failure
    out = capsys.readouterr().out
    assert "warning data_dir: create it with `make data`" in out
    for name in ("mnist", "fashion_mnist", "cifar10"):
        assert f"warning {name}: {name} data not found" in out  # the datamodule's own message ...
    assert "--data.download true" in out and "ZOO_DATA" in out  # ... with its fixes
    assert doctor.main(["--data_dir", str(missing), "--require_data", "true"]) == 1
    assert "Not ready" in capsys.readouterr().out


def test_corrupted_dataset_fails(tmp_path, capsys):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(struct.pack(">IIII", 2051, 60_000, 28, 28) + bytes(100))  # cut short
    assert doctor.main(["--data_dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL mnist:" in out and "truncated" in out and "fetch it again" in out


def test_missing_required_package_fails_with_the_fix(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(doctor, "PACKAGES", [*doctor.PACKAGES, ("no_such_package_zoo", "no-such-package-zoo", None)])
    assert doctor.main(["--data_dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL no_such_package_zoo:" in out and "pip install -e ." in out


def test_wandb_mode_follows_train_py(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert doctor.wandb_mode()[0] == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert doctor.wandb_mode()[0] == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert doctor.wandb_mode()[0] == "offline"


class PointsDataModule(TensorDataModule):
    """A datamodule of one's own that reads a file from data_dir without declaring it in files()."""

    name, num_classes, input_shape, class_names = "points", 2, (2,), ["a", "b"]

    def load(self) -> tuple[torch.Tensor, ...]:
        xy = torch.tensor(np.loadtxt(self.data_dir / "points.csv", delimiter=","), dtype=torch.float32)
        return xy[:, :2], xy[:, 2].long(), xy[:, :2], xy[:, 2].long()


def test_datasets_of_ones_own_are_described_by_what_they_load(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("COLUMNS", "300")  # one table row per line, not folded
    from docs.examples.digits import DigitsDataModule

    monkeypatch.setitem(DATAMODULES, "digits", DigitsDataModule)  # registered, as the docs describe
    monkeypatch.setitem(DATAMODULES, "points", PointsDataModule)
    assert doctor.main(["--data_dir", str(tmp_path)]) == 0  # a missing file is a warning, as for mnist
    out = capsys.readouterr().out
    assert "generated in memory" not in out  # what the doctor once said of every dataset without files()
    assert "1,437 train / 360 test, input (1, 8, 8)" in out and "lists no files to download" in out
    assert "warning points: FileNotFoundError" in out and "points.csv" in out
    (tmp_path / "points.csv").write_text("0,0,0\n1,1,1\n")
    assert doctor.main(["--data_dir", str(tmp_path)]) == 0
    assert "2 train / 2 test, input (2,)" in capsys.readouterr().out


def test_os_torch_and_cpu_come_from_torchs_collect_env(monkeypatch, tmp_path, capsys):
    from torch.utils import collect_env

    real = collect_env.get_env_info()
    fake = real._replace(os="ZooOS 1.0", torch_version="9.9.9+zoo", cuda_compiled_version="99.9",
                         cpu_info="Architecture: x86_64\nModel name:   Zoo Test CPU 9000\nCPU(s): 2")
    monkeypatch.setattr(collect_env, "get_env_info", lambda: fake)
    monkeypatch.setenv("COLUMNS", "300")  # one table row per line, not folded
    assert doctor.main(["--data_dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = {name: next(line for line in lines if f" {name} " in line) for name in ("os", "torch build", "cpu")}
    assert "ZooOS 1.0" in row["os"]
    assert "9.9.9+zoo, built with CUDA 99.9" in row["torch build"]
    assert "Zoo Test CPU 9000, " in row["cpu"] and "usable cores" in row["cpu"]


def test_cpu_name_reads_lscpu_and_windows_and_falls_back(monkeypatch):
    assert doctor.cpu_name("Architecture:  x86_64\nModel name:    AMD EPYC 7B13\nCPU(s): 8") == "AMD EPYC 7B13"
    assert doctor.cpu_name("Name: Intel(R) Core(TM) i7-9700\nManufacturer: GenuineIntel") == "Intel(R) Core(TM) i7-9700"
    monkeypatch.setattr(doctor.platform, "system", lambda: "Linux")
    monkeypatch.setattr(doctor.platform, "processor", lambda: "")
    assert doctor.cpu_name("/bin/sh: 1: lscpu: not found") == doctor.platform.machine()  # no lscpu: platform's guess
