"""zoo/models/airbench.py: airbench94's shape, cost and whitening layer, its data-dependent
initialisation through a real fit (from the training split, reproducible, kept on resume), and its
recipe: parameter groups, the command line it puts together, one epoch of it and TTA evaluation."""

import pytest
import torch
import yaml

import train
from conftest import require_data
from zoo import cli
from zoo.checkpoint import load_checkpoint
from zoo.models import create_model, profile
from zoo.module import ZooModule, optimizer_groups


def test_shape_parameters_and_flops_are_the_papers():
    model = create_model("airbench94", (3, 32, 32), num_classes=10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == 1_972_792  # the paper's ~1.97M
    assert profile(model, (3, 32, 32))["flops"] == 236_294_720  # 236M forward FLOPs per image
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "whiten.weight" in frozen and all(n.endswith("weight") for n in frozen)  # + the BatchNorm scales


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Images whose neighbouring pixels and channels are correlated, as in photos."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 34, 34, generator=g)
    x = (x[:, :, 1:, :] + x[:, :, :-1, :])[:, :, :, 1:] + (x[:, :, 1:, :] + x[:, :, :-1, :])[:, :, :, :-1]
    return x[:, :, :32, :32] + 0.5 * x.mean(1, keepdim=True)[:, :, :32, :32]


def test_whitened_patches_have_identity_covariance():
    model = create_model("airbench94", (3, 32, 32), num_classes=10)
    x = smooth_images(200, seed=0)
    model.init_from_data(x, eps=1e-9)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(x, model.whiten.weight)[:, :12]  # the 12 whitened directions
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = flat.T @ flat / len(flat)
    assert torch.allclose(covariance, torch.eye(12), atol=2e-3)
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12]) and bool(model.data_initialised)
    again = create_model("airbench94", (3, 32, 32), num_classes=10)
    again.init_from_data(x, eps=1e-9)
    assert torch.equal(again.whiten.weight, model.whiten.weight)


def test_a_fit_initialises_it_from_the_training_split_reproducibly_and_a_resume_keeps_it(tmp_path):
    require_data("cifar10")
    tiny = ["--data", "cifar10", "--model", "airbench94", "--quiet", "true", "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
            "--trainer.limit_test_batches", "1", "--data.batch_size", "32", "--data.eval_batch_size", "32",
            "--trainer.precision", "32-true",
            "--model.scheduler", "none"]  # a resume to 2 epochs: no schedule planned for 1
    weights = []
    for i in range(2):
        assert train.main(["fit", *tiny, "--runs_root", str(tmp_path / str(i))]) == 0
        (ckpt,) = (tmp_path / str(i)).glob("cifar10/airbench94/*/last.ckpt")
        state = load_checkpoint(ckpt)["state_dict"]
        assert bool(state["model.data_initialised"])
        weights.append(state["model.whiten.weight"])
    assert torch.equal(weights[0], weights[1])  # same seed, same split: the same filters
    fresh = create_model("airbench94", (3, 32, 32), num_classes=10)
    assert not torch.allclose(fresh.whiten.weight, weights[0])  # set from data, not the random init
    run = ckpt.parent
    assert train.main(["fit", "--config", str(run / "config.yaml"), "--ckpt_path", str(run), *tiny[4:],
                       "--runs_root", str(tmp_path / "1"), "--trainer.max_epochs", "2"]) == 0
    after = load_checkpoint(run / "last.ckpt")["state_dict"]["model.whiten.weight"]
    assert torch.equal(after, weights[1])  # frozen, restored, not recomputed


def test_batchnorm_head_and_parameter_groups_are_the_papers():
    model = create_model("airbench94", (3, 32, 32), num_classes=10)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and all(m.momentum == 0.4 and m.eps == 1e-12 for m in norms)  # keeps 0.6 of the old
    with torch.no_grad():  # the default head init and the 1/9 scale: a near-uniform first guess (loss ~ ln 10)
        loss = torch.nn.functional.cross_entropy(model(smooth_images(64, seed=1)), torch.randint(0, 10, (64,)))
    assert abs(loss.item() - 2.303) < 0.2, loss
    biases, whiten_bias, others = optimizer_groups(model, lr=1.5, weight_decay=0.0013305)
    assert {id(p) for p in biases["params"]} == {id(m.bias) for m in norms}
    assert biases["lr"] == 96.0 and biases["lr"] * biases["weight_decay"] == pytest.approx(1.5 * 0.0013305)
    assert whiten_bias["params"] == [model.whiten.bias] and whiten_bias["train_epochs"] == 3
    grouped = [id(p) for g in (biases, whiten_bias, others) for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)  # each once


def test_the_recipe_reaches_the_command_line_and_the_users_flags_win(capsys):
    hp = ZooModule("airbench94", 10, [3, 32, 32]).hparams
    assert (hp.optimizer, hp.lr, hp.momentum, hp.label_smoothing, hp.scheduler, hp.lookahead) == (
        "sgd", 1.5, 0.85, 0.2, "triangle", True)
    assert train.main(["fit", "--data", "cifar10", "--model", "airbench94", "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["data"]["init_args"]["batch_size"] == 1024 and config["trainer"]["max_epochs"] == 10
    assert config["data"]["init_args"]["translate"] == 2 and config["data"]["init_args"]["alternate_flip"] is True
    assert config["data"]["init_args"]["pad_mode"] == "reflect"
    assert config["model"]["lookahead"] is True and config["model"]["momentum"] == 0.85
    assert train.main(["fit", "--data", "cifar10", "--model", "airbench94", "--data.batch_size", "64",
                       "--trainer.max_epochs", "3", "--data.alternate_flip", "false", "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["data"]["init_args"]["batch_size"] == 64 and config["trainer"]["max_epochs"] == 3
    assert config["data"]["init_args"]["alternate_flip"] is False
    # Digits neither flip nor augment by default: the data options stay out, the schedule stays in.
    assert train.main(["fit", "--data", "mnist", "--model", "airbench94", "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["data"]["init_args"]["batch_size"] == 1024 and config["data"]["init_args"]["alternate_flip"] is False
    assert train.main(["fit", "--data", "cifar10", "--model", "resnet20", "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)  # other models: the dataset's recipe, as before
    assert config["data"]["init_args"]["batch_size"] == 128 and config["trainer"]["max_epochs"] == 30


def test_the_recipe_applies_when_the_model_is_named_only_in_a_config_file(capsys, tmp_path):
    full = tmp_path / "full.yaml"  # a config naming both the model and the datamodule by class path
    full.write_text("model:\n  arch: airbench94\ndata:\n  class_path: datamodules.cifar10.CIFAR10DataModule\n")
    assert train.main(["fit", "--config", str(full), "--print_config"]) == 0  # end to end, once
    config = yaml.safe_load(capsys.readouterr().out)
    data = config["data"]["init_args"]
    assert (data["batch_size"], config["trainer"]["max_epochs"], data["translate"], data["alternate_flip"]) == (
        1024, 10, 2, True)
    # The parts, without the parser: which model and which registered dataset a command line names.
    model_only = tmp_path / "model.yaml"  # jsonargparse's --model FILE: the model's options at the top
    model_only.write_text("arch: airbench94\n")
    named = cli.named_model_and_data
    assert named(["fit", "--data", "cifar10", "--model", str(model_only)]) == ("airbench94", None)
    assert named(["fit", f"--config={full}", "--model.arch", "resnet20"]) == ("resnet20", "cifar10")  # the last wins
    assert named(["fit", "--model.arch=resnet20", "--config", str(full)]) == ("airbench94", "cifar10")
    assert named(["--data.class_path", "datamodules.cifar10.CIFAR10DataModule"]) == (None, "cifar10")
    assert named(["--data", "CIFAR10DataModule", "--data", "my.Unknown"]) == (None, "cifar10")
    assert "--data.init_args.alternate_flip" in cli.model_recipe_flags("airbench94", "cifar10")
    # The user's own values win, in the file or after it: the recipe's flags go before both.
    mine = tmp_path / "mine.yaml"
    mine.write_text("model:\n  arch: airbench94\ndata:\n  class_path: datamodules.cifar10.CIFAR10DataModule\n"
                    "  init_args:\n    batch_size: 256\n")
    args = cli.expand_data_shorthand(["fit", "--config", str(mine)])
    assert args[:3] == ["fit", "--data.init_args.batch_size", "1024"] and args[-2:] == ["--config", str(mine)]
    # Files that name nothing usable name no model: the parser (or check_config_files) reports them.
    for text in ("- a list\n", "model: 3\n", "model:\n  arch: [x]\n", "model:\n  init_args: 3\n", "data: [1]\n"):
        odd = tmp_path / "odd.yaml"
        odd.write_text(text)
        assert named(["--config", str(odd)]) == (None, None)
    assert named(["fit", "--config", str(tmp_path / "absent.yaml")]) == (None, None)


def test_one_epoch_of_the_full_recipe_on_a_subset(tmp_path):
    require_data("cifar10")
    assert train.main(["fit", "--data", "cifar10", "--model", "airbench94", "--quiet", "true",
                       "--data.train_fraction", "0.005", "--data.batch_size", "100", "--trainer.max_epochs", "1",
                       "--data.eval_batch_size", "100", "--trainer.limit_val_batches", "1",
                       "--trainer.limit_test_batches", "1", "--trainer.precision", "32-true",
                       "--runs_root", str(tmp_path)]) == 0
    (run,) = tmp_path.glob("cifar10/airbench94/*")
    ckpt = load_checkpoint(run / "last.ckpt")
    assert ckpt["hyper_parameters"]["lookahead"] and ckpt["global_step"] == 3  # 225 images: batches of 100, 100, 25
    net = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    assert all(torch.equal(net[k], v) for k, v in ckpt["lookahead"]["slow"].items())  # ended on the slow weights
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["init_args"]["alternate_flip"] is True and config["model"]["scheduler"] == "triangle"
