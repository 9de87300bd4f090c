"""evaluate.py's options beyond the plain test (zoo/commands/evaluate.py): the accuracy on the test
images with original pixels (a datamodule's `exact_test`: the first 1,017 of the rebuilt CIFAR-10),
computed in the same pass, and `--tta flip`, the mean softmax of each image and its mirror. Shipped
checkpoints (results/weights/) stand in for trained runs: the linear model on CIFAR-10 evaluates in
seconds, and two-moons needs no data files."""

import json

import pytest
import torch
import torch.nn.functional as F

import evaluate
from conftest import require_data
from datamodules.moons import MoonsDataModule
from zoo.checkpoint import load_checkpoint, network_from_checkpoint
from zoo.commands.evaluate import rebuild_datamodule
from zoo.errors import ZooError
from zoo.module import ZooModule
from zoo.weights import MANIFEST, read_manifest

ENTRIES = {(e["model"], e["dataset"]): e for e in read_manifest(MANIFEST)} if MANIFEST.is_file() else {}
MOONS = MANIFEST.parent / "mlp_moons.pt"


@pytest.fixture(scope="module")
def cifar() -> dict:
    """The shipped linear CIFAR-10 model, its bare network and its datamodule, for manual computations."""
    require_data("cifar10")
    path = MANIFEST.parent / ENTRIES[("linear", "cifar10")]["file"]
    ckpt = load_checkpoint(path)
    return {"path": path, "net": network_from_checkpoint(ckpt), "dm": rebuild_datamodule(ckpt)}


@pytest.fixture(scope="module")
def plain(cifar) -> dict:
    return evaluate.evaluate(str(cifar["path"]), device="cpu")


def log_probs(cifar: dict, mirror: bool) -> torch.Tensor:
    """By hand: log-softmax over the whole test set, in the evaluation's batches; with `mirror`, the
    log of the mean softmax of each image and its mirror."""
    dm, out = cifar["dm"], []
    with torch.no_grad():
        for x in dm.test_x.split(dm.eval_batch_size):
            x = dm.normalize(x)
            p = cifar["net"](x).softmax(-1)
            out.append(((p + cifar["net"](x.flip(-1)).softmax(-1)) / 2 if mirror else p).log())
    return torch.cat(out)


def test_tta_none_gives_exactly_the_plain_numbers(cifar, plain, tmp_path):
    assert plain["tta"] == "none" and plain["test_acc"] == ENTRIES[("linear", "cifar10")]["test_acc"]
    out = tmp_path / "r.json"
    assert evaluate.main([str(cifar["path"]), "--tta", "none", "--device", "cpu", "--png", "false",
                          "--json", str(out)]) == 0
    assert json.loads(out.read_text()) == plain


def test_exact_subset_is_the_accuracy_on_the_first_1017_test_images(cifar, plain):
    correct = log_probs(cifar, mirror=False).argmax(1) == cifar["dm"].test_y
    assert plain["n_exact"] == 1017 and plain["test_acc_exact"] == int(correct[:1017].sum()) / 1017
    assert int(correct.sum()) == round(plain["test_acc"] * plain["n"])  # same predictions as the headline
    text = evaluate.report(plain)
    assert f"original-pixel test images (first 1017): acc {plain['test_acc_exact']:.4f}" in text
    assert "no test-time augmentation" in text


def test_tta_flip_differs_from_none_only_through_the_mirror(cifar, plain):
    r = evaluate.evaluate(str(cifar["path"]), device="cpu", tta="flip")
    lp, y = log_probs(cifar, mirror=True), cifar["dm"].test_y
    correct = lp.argmax(1) == y
    assert r["tta"] == "flip" and r["n"] == plain["n"] and r["test_acc"] != plain["test_acc"]
    assert round(r["test_acc"] * r["n"]) == int(correct.sum())
    assert r["test_acc_exact"] == int(correct[:1017].sum()) / 1017  # the subset uses the mirror too
    assert r["test_loss"] == pytest.approx(F.nll_loss(lp, y).item(), rel=1e-5)
    cm = torch.zeros(10, 10, dtype=torch.long).index_put_((y, lp.argmax(1)), torch.tensor(1), accumulate=True)
    assert r["confusion_matrix"] == cm.tolist()
    assert "tta flip" in evaluate.report(r)


def test_tta_flip_translate_runs_end_to_end_and_says_so(cifar, plain, capsys):
    assert evaluate.main([str(cifar["path"]), "--tta", "flip_translate", "--device", "cpu", "--png", "false"]) == 0
    out = capsys.readouterr().out
    assert "tta flip_translate" in out and f"test accuracy {plain['test_acc']:.4f}" not in out


def test_module_flip_is_the_log_of_the_mean_softmax_and_off_by_default():
    torch.manual_seed(0)
    module = ZooModule("linear", 10, [3, 8, 8]).eval()
    for p in module.parameters():
        torch.nn.init.normal_(p)  # the linear model starts at zero, which no mirror changes
    assert module.tta == "none" and "tta" not in module.hparams  # not a hyperparameter: checkpoints unchanged
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 10, (64,))
    with torch.no_grad():
        logits = module(x)
        mean = ((logits.softmax(-1) + module(x.flip(-1)).softmax(-1)) / 2).log()
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifts = [padded[..., :8, :8], padded[..., 2:, 2:]]  # one pixel up-left, one down-right

        def p(v):
            return module(v).softmax(-1) + module(v.flip(-1)).softmax(-1)
        translated = (p(x) / 4 + (p(shifts[0]) + p(shifts[1])) / 8).log()
        for tta, expected in (("none", logits), ("flip", mean), ("flip_translate", translated)):
            module.tta, module.keep_test_correct = tta, True
            module.on_test_epoch_start()
            module.test_acc.reset()
            module.test_loss.reset()
            module.test_step((x, y), 0)
            assert torch.equal(torch.cat(module.test_correct), expected.argmax(1) == y)
            assert module.test_acc.compute() == (expected.argmax(1) == y).float().mean()
            assert module.test_loss.compute() == pytest.approx(F.cross_entropy(expected, y).item(), rel=1e-6)
    assert not torch.equal(logits.argmax(1), mean.argmax(1))  # the mirror did change some predictions
    assert not torch.equal(translated.argmax(1), mean.argmax(1))  # and the shifts some more


def test_exact_subset_works_for_any_datamodule_that_declares_one(monkeypatch):
    r = evaluate.evaluate(str(MOONS), device="cpu")
    assert r["test_acc_exact"] is None and r["n_exact"] is None  # all of moons' points are exact
    assert "original-pixel" not in evaluate.report(r)
    monkeypatch.setattr(MoonsDataModule, "exact_test", 7)
    r = evaluate.evaluate(str(MOONS), device="cpu")
    ckpt = load_checkpoint(MOONS)
    dm = rebuild_datamodule(ckpt)
    with torch.no_grad():
        correct = network_from_checkpoint(ckpt)(dm.test_x[:7]).argmax(1) == dm.test_y[:7]
    assert r["n_exact"] == 7 and r["test_acc_exact"] == int(correct.sum()) / 7
    assert r["test_acc"] == ENTRIES[("mlp", "moons")]["test_acc"]  # the headline is unchanged


def test_tta_flip_on_flat_features_is_refused_in_one_paragraph(capsys):
    assert evaluate.main([str(MOONS), "--tta", "flip", "--png", "false"]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert "--tta flip" in err and "flat features" in err and "Fix:" in err and "--tta none" in err
    assert captured.out == ""
    with pytest.raises(ZooError, match="vflip"):
        evaluate.evaluate(str(MOONS), tta="vflip")
    # the CLI's Literal refuses it while parsing, in one sentence listing the choices
    assert evaluate.main([str(MOONS), "--tta", "vflip"]) == 2
    assert "--tta vflip: not a valid value; it must be one of 'none', 'flip'" in capsys.readouterr().err
