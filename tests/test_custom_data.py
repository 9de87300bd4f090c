"""A dataset of your own, as docs/using-models.md shows it: the worked example docs/examples/digits.py
(scikit-learn's digits, offline) is the file the docs print, loads like the built-in datasets, and
the docs' commands train a zoo model on it through the real CLI exactly as written. Also the
`--model NAME` shorthand those commands use."""
import json
import re
import shlex

import pytest
import torch

import train
from conftest import REPO
from zoo import cli

DOCS = REPO / "docs" / "using-models.md"
EXAMPLE = REPO / "docs" / "examples" / "digits.py"
FAST = ["--quiet", "true", "--threads", "1", "--trainer.max_epochs", "1", "--patience", "0"]


@pytest.fixture(autouse=True)
def repo_on_path(monkeypatch):
    """The docs run `python train.py` from the repository root, which puts it on sys.path; so do we
    (plain `pytest` does not), for the class path docs.examples.digits.DigitsDataModule."""
    monkeypatch.syspath_prepend(str(REPO))


def digits_commands() -> list[list[str]]:
    """The docs' `python train.py ...` lines that use the example, as argument lists."""
    lines = re.findall(r"^python train\.py (.*docs\.examples\.digits.*)$", DOCS.read_text(), re.M)
    return [shlex.split(line, comments=True) for line in lines]


def test_the_docs_print_the_example_file_as_it_is():
    code = EXAMPLE.read_text()
    assert code[code.index("import numpy"):] in DOCS.read_text()  # the docs cannot drift from the file
    assert "SVHN" not in DOCS.read_text() and "        ...\n" not in code


def test_digits_load_as_uint8_images_with_a_tenth_for_validation():
    from docs.examples.digits import DigitsDataModule

    dm = DigitsDataModule()
    dm.setup()
    assert (len(dm.train_y), len(dm.val_y), len(dm.test_y)) == (1293, 144, 360)  # 0.1 of 1,437: no 5,000
    assert dm.train_x.dtype == torch.uint8 and dm.train_x.shape[1:] == (1, 8, 8) and dm.train_y.dtype == torch.int64
    assert int(dm.train_x.max()) == 255 and len(torch.cat([dm.train_x, dm.test_x]).unique()) == 17  # 0..16 scaled
    assert dm.test_y.bincount().tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]  # stratified, fixed
    assert torch.equal(DigitsDataModule().load()[3], dm.test_y)  # the same test images every run


def test_the_docs_commands_train_a_zoo_model_through_the_cli(tmp_path, capsys):
    commands = digits_commands()
    assert len(commands) == 4, commands
    for args in commands:
        if "--data.help" in args:
            with pytest.raises(SystemExit):  # jsonargparse prints the help and exits, also in-process
                cli.cli_main(args)
            assert "--data.val_size" in capsys.readouterr().out
            continue
        resume = "--ckpt_path" in args  # one more epoch on the newest run, in that run's directory
        extra = ["--trainer.max_epochs", "2"] if resume else []
        assert train.main([*args, "--runs_root", str(tmp_path), *FAST, *extra]) == 0, capsys.readouterr().err
    runs = sorted(p.parent.parent.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/*/*/metrics.json"))
    assert runs == ["digits/lenet5", "digits/mlp"]  # named after the class's `name`; the resume added none
    (mlp,) = tmp_path.glob("digits/mlp/*/metrics.json")
    metrics = json.loads(mlp.read_text())
    assert metrics["epochs"] == 2 and metrics["test_acc"] > 0.3  # resumed: epoch 2 after epoch 1
    config = (mlp.parent / "config.yaml").read_text()
    assert "docs.examples.digits.DigitsDataModule" in config and "arch: mlp" in config


@pytest.mark.parametrize("args, expected", [
    (["fit", "--model", "lenet5"], ["fit", "--model.arch", "lenet5"]),
    (["test", "--config", "c.yaml", "--model=resnet20"], ["test", "--config", "c.yaml", "--model.arch", "resnet20"]),
    (["validate", "--model", "mlp", "--model.hidden", "[8]"],
     ["validate", "--model.arch", "mlp", "--model.hidden", "[8]"]),
    (["fit", "--model", "model.yaml"], ["fit", "--model", "model.yaml"]),  # LightningCLI's --model CONFIG
    (["predict", "--model", "lenet5"], ["predict", "--model", "lenet5"]),  # predict/export take --model themselves
    (["fit", "--data.help", "mnist"], ["fit", "--data.help", "datamodules.mnist.MNISTDataModule"]),
])
def test_model_and_data_help_shorthands(args, expected):
    assert cli.expand_name_shorthand(args) == expected


def test_model_shorthand_reaches_the_model(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.cli_main(["fit", "--data", "mnist", "--model", "lenet5", "--print_config"])
    assert "arch: lenet5" in capsys.readouterr().out
    assert train.main(["fit", "--model", "nosuchnet", "--runs_root", str(tmp_path), "--quiet", "true"]) == 2
    assert "unknown model 'nosuchnet'" in capsys.readouterr().err  # the registry's error, before any training
