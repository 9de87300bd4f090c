"""zoo/insight.py: sanity checks, TensorBoard and W&B pictures, the decision boundary and the LR finder,
read back from the files real runs write (tensorboard's reader, `wandb leet inspect`, PIL)."""

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import wandb_log
from conftest import require_data
from datamodules import MoonsDataModule
from test_train import FAST, fit
from zoo import ZooModule, insight


def events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    return acc


def assert_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory) -> tuple[Path, str]:
    """LeNet-5 on MNIST for 10 steps with every picture switched on; returns (run, stdout)."""
    require_data("mnist")
    os.environ["WANDB_MODE"] = "offline"
    os.environ.pop("WANDB_API_KEY", None)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run = fit(tmp_path_factory.mktemp("runs"), "--data", "mnist", "--model.arch", "lenet5",
                  "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "5", "--trainer.limit_val_batches", "2",
                  "--wandb", "true", "--histograms", "1", "--log_graph", "true", "--embedding", "true",
                  "--overfit_batch", "true")
    return run, out.getvalue()


def test_tensorboard_holds_images_histograms_graph_and_hparams(mnist_run):
    run, _ = mnist_run
    acc = events(run)
    tags = acc.Tags()
    assert {"samples/train", "test/confusion_matrix"} <= set(tags["images"])
    sample = acc.Images("samples/train")[0]
    assert sample.step == 0 and sample.width > 400 and sample.height > 200
    histograms = set(tags["histograms"])
    assert "weights/classifier.5.weight" in histograms and "grads/classifier.5.weight" in histograms
    assert len(acc.Histograms("grads/features.0.weight")) == 2  # every epoch with --histograms 1
    assert tags["graph"]
    assert {f"test/acc_class/{d}" for d in range(10)} <= set(tags["scalars"])
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(acc.PluginTagToContent("hparams"))
    # the projector: 1000 test images' penultimate features (84 for LeNet-5), labels and a sprite
    assert "test_features" in (run / "projector_config.pbtxt").read_text()
    (tensors,) = run.glob("*/test_features/tensors.tsv")
    rows = tensors.read_text().splitlines()
    assert len(rows) == insight.EMBEDDING_SAMPLES and len(rows[0].split("\t")) == 84
    assert len((tensors.parent / "metadata.tsv").read_text().split()) == insight.EMBEDDING_SAMPLES
    assert_png(tensors.parent / "sprite.png")


def test_wandb_offline_run_holds_the_media(mnist_run):
    run, _ = mnist_run
    (log,) = run.glob("wandb/offline-run-*/run-*.wandb")
    _, final, history = wandb_log.summary(log)
    for key in ("samples/train", "test/confusion_matrix"):
        (row,) = [r for r in history if f"{key}._type" in r]
        assert row[f"{key}._type"] == "images/separated"
        (name,) = row[f"{key}.filenames"]
        assert_png(log.parent / "files" / name)  # the image file W&B will upload
    assert final["test/acc_class/0"] == pytest.approx(events(run).Scalars("test/acc_class/0")[-1].value)


def test_confusion_matrix_png_and_overfit_report(mnist_run):
    run, out = mnist_run
    width, height = assert_png(run / "confusion_matrix.png")
    assert width > 500 and height > 400
    assert "overfit one batch: 100% of 128 examples after" in out


def test_samples_picture_shows_each_image_with_its_label():
    x = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    picture = insight.samples_picture(x, torch.arange(40) % 10, [f"class {k}" for k in range(10)])
    # 4 rows x 8 columns of 28-pixel images with 2-pixel gaps, 3x larger, under an 18-pixel title
    assert picture.dtype == np.uint8 and picture.shape == (18 + 122 * 3, 242 * 3, 3)
    yellow = (picture[..., 0] > 200) & (picture[..., 1] > 200) & (picture[..., 2] < 80)  # grey images never are
    for i in range(32):
        r, c = divmod(i, 8)
        top, left = 18 + (r * 30 + 2) * 3, (c * 30 + 2) * 3
        assert yellow[top: top + 20, left: left + 60].any(), i  # its label, at the top left
        # its bottom right pixel, where no label is: the image's own, 3x3 pixels large
        assert (picture[top + 81: top + 84, left + 81: left + 84] == int(x[i, 0, 27, 27])).all(), i


def test_init_loss_check_warns_on_a_misinitialised_model(capsys):
    dm = MoonsDataModule()
    torch.manual_seed(0)  # the initialisation must not depend on the tests that ran before
    model = ZooModule("mlp", 2, [2], hidden=[10, 10])
    # The callback inside a real (one-step) fit, as train.py runs it.
    trainer = Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, callbacks=[insight.SanityCheck()])
    trainer.fit(model, datamodule=dm)
    assert trainer.callbacks[0].warning is None and "initial loss" in capsys.readouterr().out

    with torch.no_grad():
        model.model[-1].weight.mul_(100)  # logits 100x too large: confidently wrong from the start
    x, y = next(iter(dm.train_dataloader()))
    check = insight.SanityCheck()
    check.check_init_loss(model, x, y, 2)
    err = capsys.readouterr().err
    assert check.loss > 3 * 0.693 and err.startswith("warning: initial loss") and "far above ln(2) = 0.693" in err
    assert err.count("\n") == 1  # one line


def test_init_loss_check_changes_nothing():
    """BatchNorm's running statistics and the global RNG are as they were: training is unaffected."""
    model = ZooModule("resnet20", 10, [3, 32, 32], dropout=None)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    rng = torch.get_rng_state()
    loss, warning = insight.init_loss_check(model, x, y, 10)
    assert warning is None and abs(loss - 2.303) < 0.5
    assert torch.equal(torch.get_rng_state(), rng) and not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_checks_and_pictures_do_not_change_training(tmp_path):
    common = ["--data", "moons", "--model.dropout", "0.2", "--patience", "0", "--trainer.max_epochs", "3"]
    on = fit(tmp_path / "on", *common, "--overfit_batch", "true", "--histograms", "1", "--log_graph", "true")
    off = fit(tmp_path / "off", *common, "--sanity", "false")
    a = torch.load(on / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(off / "last.ckpt", weights_only=True)["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_moons_decision_boundary_and_lr_finder_with_resume(tmp_path):
    common = ["--data", "moons", "--lr_find", "true", "--patience", "0"]
    run = fit(tmp_path, *common, "--trainer.max_epochs", "2")
    for name in ("decision_boundary.png", "lr_find.png", "confusion_matrix.png"):
        assert_png(run / name)
    assert {"test/decision_boundary", "lr_find", "test/confusion_matrix"} <= set(events(run).Tags()["images"])
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    found = ckpt["callbacks"]["LRFinder"]["lr"]
    assert found != 0.01 and ckpt["hyper_parameters"]["lr"] == found  # trained with the suggestion (not the config's)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(found)

    # Resuming neither searches again nor forgets the rate it found.
    stamp = (run / "lr_find.png").stat().st_mtime_ns
    assert fit_resume(tmp_path, *common, "--trainer.max_epochs", "3") == run
    assert (run / "lr_find.png").stat().st_mtime_ns == stamp
    assert len(events(run).Images("lr_find")) == 1
    assert torch.load(run / "last.ckpt", weights_only=True)["hyper_parameters"]["lr"] == found


def fit_resume(tmp: Path, *args: str) -> Path:
    import train

    assert train.main(["fit", "--runs_root", str(tmp), *FAST, *args, "--ckpt_path", "last"]) == 0
    (run,) = tmp.glob("*/*/*")
    return run


def test_decision_boundary_png_reusable(tmp_path):
    dm = MoonsDataModule()
    dm.setup("fit")
    image = insight.decision_boundary_png(ZooModule("linear", 2, [2]), dm, tmp_path / "boundary.png")
    assert image.shape[2] == 3 and assert_png(tmp_path / "boundary.png") == (image.shape[1], image.shape[0])


def test_one_confusion_and_one_boundary_picture_for_every_caller(monkeypatch, tmp_path):
    """fit's TestPictures, evaluate.py and compare draw with insight's two functions, not their own."""
    import yaml

    import evaluate
    from zoo.commands import compare

    calls = []

    def spy(name):
        original = getattr(insight, name)

        def wrapper(*args, **kwargs):
            calls.append((name, args, kwargs))
            return original(*args, **kwargs)
        monkeypatch.setattr(insight, name, wrapper)

    spy("confusion_figure")
    spy("decision_boundary_png")
    run = fit(tmp_path / "runs", "--data", "moons", "--trainer.max_epochs", "1")
    assert [name for name, _, _ in calls] == ["confusion_figure", "decision_boundary_png"]
    assert_png(run / "confusion_matrix.png")
    assert_png(run / "decision_boundary.png")

    calls.clear()
    assert evaluate.main([str(run)]) == 0
    assert [name for name, _, _ in calls] == ["confusion_figure"]
    assert_png(run / "best_confusion.png")

    calls.clear()
    config = yaml.safe_load((run / "config.yaml").read_text())
    compare.plot_boundary(run / "best.ckpt", "moons", config, tmp_path / "moons_boundary_mlp.png")
    ((name, args, _),) = calls
    assert name == "decision_boundary_png" and args[-1] == f" (best checkpoint, seed {config['seed_everything']})"
    assert_png(tmp_path / "moons_boundary_mlp.png")

