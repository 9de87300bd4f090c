"""The fast path train.py takes by default (measured in results/bench.md): channels_last for conv nets,
bf16-mixed where the hardware does bf16 natively, the fused optimizer step, a throttled progress bar,
and metrics accumulated per step but logged once per epoch. Each default must be visible in what a
run records, overridable, and must not break reproducibility: evaluate.py and `train.py test` use
the precision a checkpoint was trained with."""
import json
from pathlib import Path

import pytest
import torch
import yaml

import evaluate
import train
import zoo.module
from test_image_folder import make_folder
from zoo import cli
from zoo.module import ZooModule, bf16_native, default_precision, use_fused

FAST = ["--quiet", "true", "--trainer.enable_model_summary", "false", "--patience", "0"]


def test_conv_nets_default_to_channels_last_and_the_others_do_not():
    lenet = ZooModule("lenet5", num_classes=10, input_shape=[1, 28, 28])
    assert lenet.hparams.channels_last is True  # recorded in the checkpoint as resolved
    conv = next(m for m in lenet.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert ZooModule("mlp", num_classes=10, input_shape=[1, 28, 28]).hparams.channels_last is False
    assert ZooModule("lenet5", num_classes=10, input_shape=[1, 28, 28],
                     channels_last=False).hparams.channels_last is False


def test_default_precision_is_bf16_only_for_conv_nets_on_native_bf16(monkeypatch):
    monkeypatch.setattr(zoo.module, "bf16_native", lambda accelerator="auto": True)
    assert default_precision("resnet20") == "bf16-mixed" and default_precision("lenet5") == "bf16-mixed"
    assert default_precision("mlp") == "32-true" and default_precision("linear") == "32-true"  # bf16 made MLPs slower
    monkeypatch.setattr(zoo.module, "bf16_native", lambda accelerator="auto": False)
    assert default_precision("resnet20") == "32-true"


def test_bf16_native_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for amx, avx512_bf16 in ((False, False), (True, False), (False, True)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        assert bf16_native("cpu") == (amx or avx512_bf16)
    assert bf16_native("mps") is False


def test_optimizer_step_is_fused_except_under_16_mixed():
    model = ZooModule("mlp", num_classes=10, input_shape=[784])
    assert model.configure_optimizers().param_groups[0]["fused"] is True
    assert use_fused(model, type("T", (), {"precision": "16-mixed"})()) is None  # its scaler cannot clip fused
    assert use_fused(model, type("T", (), {"precision": "bf16-mixed"})()) is True


def test_progress_bar_redraws_at_most_every_interval(monkeypatch):
    drawn = []
    monkeypatch.setattr(cli.RichProgressBar, "on_train_batch_end",
                        lambda self, trainer, module, outputs, batch, i: drawn.append(i))
    clock = iter([100.0, 100.05, 100.2, 100.21, 100.22])
    monkeypatch.setattr(cli.time, "monotonic", lambda: next(clock))
    bar, trainer = cli.ProgressBar(interval=0.1), type("T", (), {"num_training_batches": 5})()
    for i in range(5):
        bar.on_train_batch_end(trainer, None, None, None, i)
    assert drawn == [0, 2, 4]  # 1 and 3 came too soon; the epoch's last batch always draws


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("shapes"))


def fit_lenet(shapes: Path, root: Path, *extra: str) -> Path:
    assert train.main(["fit", "--runs_root", str(root), *FAST,
                       "--data", "datamodules.image_folder.ImageFolderDataModule",
                       "--data.init_args.data_dir", str(shapes), "--data.init_args.batch_size", "16",
                       "--model.arch", "lenet5", "--trainer.max_epochs", "2", *extra]) == 0
    (run,) = root.glob("image_folder-*/lenet5/*")  # named after the folder
    return run


def test_a_run_records_its_precision_and_evaluation_reproduces_it(shapes, tmp_path, capsys):
    run = fit_lenet(shapes, tmp_path)
    expected = default_precision("lenet5", "auto")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["trainer"]["precision"] == expected and config["model"]["channels_last"] is True
    ckpt = torch.load(run / "best.ckpt", weights_only=True)
    assert ckpt["precision"] == expected
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["precision"] == expected
    assert f"on cpu, {expected} (" in capsys.readouterr().out  # the summary line says which precision ran
    r = evaluate.evaluate(str(run), device="cpu")
    assert r["test_acc"] == metrics["test_acc"]  # same arithmetic as fit's test: the same number
    assert r["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)
    # `train.py test` without --trainer.precision takes the checkpoint's too
    assert train.main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "best.ckpt"),
                       "--trainer.precision", "null"]) == 0
    assert f"{metrics['test_acc']}"[:6] in capsys.readouterr().out


def test_an_explicit_precision_wins(shapes, tmp_path):
    run = fit_lenet(shapes, tmp_path, "--trainer.precision", "32-true", "--model.channels_last", "false")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["trainer"]["precision"] == "32-true" and config["model"]["channels_last"] is False
    assert torch.load(run / "best.ckpt", weights_only=True)["precision"] == "32-true"
    assert evaluate.evaluate(str(run), device="cpu")["precision"] == "float32"


def test_evaluate_refuses_an_unknown_precision(tiny_moons_run):
    with pytest.raises(cli.ZooError, match="fp8"):
        evaluate.evaluate(str(tiny_moons_run), precision="fp8")


def test_compile_option_trains_and_keeps_plain_checkpoint_keys(tmp_path, monkeypatch):
    compiled = []

    def fake_compile(module, **kwargs):  # the eager backend: same plumbing, no C++ compiler run
        compiled.append(module)
        return torch._dynamo.optimize("eager")(module)

    monkeypatch.setattr(torch, "compile", fake_compile)
    assert train.main(["fit", "--runs_root", str(tmp_path), *FAST, "--data", "moons", "--trainer.max_epochs", "2",
                       "--model.compile", "true"]) == 0
    assert len(compiled) == 1  # once per run, on the first training step
    (run,) = tmp_path.glob("moons/mlp/*")
    ckpt = torch.load(run / "best.ckpt", weights_only=True)
    assert all(k.startswith("model.") and "_orig_mod" not in k for k in ckpt["state_dict"])
    assert (evaluate.evaluate(str(run), device="cpu")["test_acc"]
            == json.loads((run / "metrics.json").read_text())["test_acc"])


def test_threads_option_sets_torch_and_the_workers_environment(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # restored after the test
    assert train.main(["fit", "--runs_root", str(tmp_path), *FAST, "--data", "moons", "--trainer.max_epochs", "1",
                       "--threads", "3"]) == 0
    assert calls == [3]
    import os
    assert os.environ["OMP_NUM_THREADS"] == "3"
