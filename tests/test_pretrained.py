"""The shipped weights (results/weights/): each manifest entry's test accuracy is reproduced
exactly from the file, by evaluate.py and by the CLI's --model.pretrained; each entry's
pretrained_cfg is what its file holds (and `python -m zoo.commands.pretrained cfg` writes the manifest
byte for byte); zoo.create loads them by name with that cfg, and zoo.list_pretrained lists them."""

import json

import pytest
import torch

import evaluate
import train
import zoo
from conftest import require_data
from zoo.checkpoint import load_checkpoint
from zoo.commands.pretrained import CLEAR_MARGIN, best_runs, build_from_results, write_cfgs
from zoo.errors import ZooError
from zoo.weights import MANIFEST, pretrained_cfg, pretrained_path, read_manifest

ENTRIES = read_manifest(MANIFEST) if MANIFEST.is_file() else []
CHEAP = [e for e in ENTRIES if e["model"] in ("linear", "mlp", "lenet5")]


def test_weights_are_shipped_within_budget():
    assert ENTRIES, "results/weights/manifest.json is missing: run `python -m zoo.commands.pretrained`"
    assert sum((MANIFEST.parent / e["file"]).stat().st_size for e in ENTRIES) <= 30_000_000
    for e in ENTRIES:
        assert {"model", "dataset", "test_acc", "sha256", "command", "dtype"} <= set(e)


# every shipped file; the conv nets on CIFAR-10 take minutes on a CPU, so those are `slow`
@pytest.mark.parametrize("entry", [pytest.param(e, marks=() if e in CHEAP else pytest.mark.slow) for e in ENTRIES],
                         ids=[f"{e['model']}-{e['dataset']}" for e in ENTRIES])
def test_evaluate_reproduces_the_manifest_exactly(entry):
    if entry["dataset"] != "moons":
        require_data(entry["dataset"])
    r = evaluate.evaluate(str(MANIFEST.parent / entry["file"]), device="cpu")
    assert r["test_acc"] == entry["test_acc"]


@pytest.mark.parametrize("entry", CHEAP[:2], ids=[f"{e['model']}-{e['dataset']}" for e in CHEAP[:2]])
def test_cli_pretrained_option_tests_the_shipped_weights(entry, capsys):
    if entry["dataset"] != "moons":
        require_data(entry["dataset"])
    # The run's own config: same seed, so the same training split and normalisation statistics.
    config = entry["command"].split("--config ")[1]
    rc = train.main(["test", "--config", config, "--model.pretrained", entry["dataset"], "--quiet", "true"])
    assert rc == 0
    assert f"{entry['test_acc']}"[:6] in capsys.readouterr().out


def test_create_by_name_with_pretrained_weights():
    e = CHEAP[0]
    model = zoo.create(e["model"], pretrained=e["dataset"])
    assert isinstance(model, torch.nn.Module) and not model.training
    ckpt = torch.load(MANIFEST.parent / e["file"], weights_only=True)
    shape = ckpt["hyper_parameters"]["input_shape"]
    assert model(torch.zeros(3, *shape)).shape == (3, ckpt["hyper_parameters"]["num_classes"])


def test_manifest_cfg_is_what_the_weights_hold():
    for e in ENTRIES:
        ckpt = load_checkpoint(pretrained_path(e["model"], e["dataset"]))  # sha256-checked: files unchanged
        assert e["pretrained_cfg"] == pretrained_cfg(ckpt), e["file"]
        state = next(v for k, v in ckpt.items() if k.endswith("DataModule"))
        assert e["pretrained_cfg"]["mean"] == state["mean"] and e["pretrained_cfg"]["input_shape"] == \
            ckpt["hyper_parameters"]["input_shape"]


def test_cfg_command_writes_the_committed_manifest(tmp_path):
    """The cfgs are computed, not typed: from the entries without them, the command writes the
    committed manifest byte for byte."""
    for e in ENTRIES:
        (tmp_path / e["file"]).symlink_to(MANIFEST.parent / e["file"])
    bare = [{k: v for k, v in e.items() if k != "pretrained_cfg"} for e in ENTRIES]
    (tmp_path / "manifest.json").write_text(json.dumps(bare, indent=2) + "\n")
    write_cfgs(tmp_path / "manifest.json")  # python -m zoo.commands.pretrained cfg MANIFEST
    assert (tmp_path / "manifest.json").read_bytes() == MANIFEST.read_bytes()


def test_list_pretrained_and_create_carry_the_cfg():
    assert zoo.list_pretrained() == sorted((e["model"], e["dataset"]) for e in ENTRIES)
    assert ("lenet5", "mnist") in zoo.list_pretrained()
    for e in ENTRIES:
        model = zoo.create(e["model"], pretrained=e["dataset"])
        assert model.pretrained_cfg == e["pretrained_cfg"] and not model.training


def test_create_pretrained_refuses_what_the_weights_do_not_fit():
    with pytest.raises(zoo.ZooError, match="is num_classes=10, not num_classes=5"):
        zoo.create("lenet5", pretrained="mnist", num_classes=5)
    assert zoo.create("lenet5", pretrained="mnist", input_shape=(1, 28, 28)).pretrained_cfg["color"] == "grayscale"
    with pytest.raises(zoo.ZooError, match="no pretrained_cfg"):
        zoo.transforms(zoo.create("lenet5", input_shape=(1, 28, 28), num_classes=10))


def test_tampered_weights_are_refused(tmp_path, monkeypatch):
    e = CHEAP[0]
    bad = tmp_path / e["file"]
    bad.write_bytes((MANIFEST.parent / e["file"]).read_bytes()[:-10] + b"0123456789")
    (tmp_path / "manifest.json").write_text(json.dumps([e]))
    with pytest.raises(zoo.ZooError, match="sha256"):
        zoo.weights.load_pretrained(e["model"], e["dataset"], manifest=tmp_path / "manifest.json")


def test_nothing_is_shipped_that_does_not_clearly_beat_the_linear_baseline():
    # A shipped network must beat linear on its dataset by a clear margin, or users would download a
    # model that guesses (MobileNetV2 at 10% on CIFAR-10 once was); build_from_results skips such rows.
    linear = {e["dataset"]: e["test_acc"] for e in ENTRIES if e["model"] == "linear"}
    for e in ENTRIES:
        if e["model"] != "linear" and e["dataset"] in linear:
            assert e["test_acc"] > linear[e["dataset"]] + CLEAR_MARGIN, (e["model"], e["dataset"], e["test_acc"])


def test_shipped_runs_are_chosen_on_validation_only(tmp_path):
    # The seed with the best validation score ships; a run trained without a validation split (its
    # checkpoint chosen on the training loss) never outranks one, whatever its numbers.
    def run(folder, seed, monitor, score):
        d = tmp_path / folder / "runs" / "cifar10" / "resnet20" / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"data": "cifar10", "model": "resnet20", "monitor": monitor,
                                                    "best_score": score, "test_acc": 0.5}))
        return d

    run("a", 0, "val/acc", 0.90)
    chosen = run("a", 1, "val/acc", 0.92)
    run("b", 0, "train/acc", 0.99)  # (the old selection ranked this first)
    run("c", 0, "train/loss", 0.01)
    best = best_runs(tmp_path)
    assert list(best) == [("cifar10", "resnet20")]
    assert best["cifar10", "resnet20"][2] == chosen


def test_a_damaged_results_metrics_file_is_named(tmp_path):
    d = tmp_path / "t" / "runs" / "cifar10" / "resnet20" / "seed0"
    d.mkdir(parents=True)
    for text, words in (("{not json", "cannot be read as JSON"), ('{"data": "cifar10", "model": "resnet20", '
                                                                  '"monitor": "val/acc", "best_score": "0.9"}',
                                                                  "is not what compare writes there")):
        (d / "metrics.json").write_text(text)
        with pytest.raises(ZooError, match=words):
            best_runs(tmp_path)


def test_reshipping_named_rows_refuses_an_unknown_one(tmp_path):
    d = tmp_path / "t" / "runs" / "cifar10" / "resnet20" / "seed0"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"data": "cifar10", "model": "resnet20", "monitor": "val/acc",
                                                "best_score": 0.9, "test_acc": 0.9}))
    with pytest.raises(ZooError, match="No committed run for cifar10/resnet56.*cifar10/resnet20"):
        build_from_results(tmp_path, tmp_path / "weights", only="cifar10/resnet56")


def test_weights_ship_from_a_clone_in_another_directory(tiny_moons_run, tmp_path, monkeypatch):
    """metrics.json names the tested checkpoint by absolute path (the committed runs say /work/main/...);
    in a clone elsewhere the run's own directory, run_dir relative to the project root, holds it."""
    import shutil

    project = tmp_path / "clone"
    run = project / "checkpoints" / "moons" / "mlp" / "seed0"
    shutil.copytree(tiny_moons_run, run)
    metrics = json.loads((tiny_moons_run / "metrics.json").read_text())
    metrics.update(best_ckpt="/elsewhere/checkpoints/moons/mlp/seed0/best.ckpt",
                   run_dir="checkpoints/moons/mlp/seed0")
    copy = project / "results" / "moons" / "runs" / "moons" / "mlp" / "seed0"
    copy.mkdir(parents=True)
    (copy / "metrics.json").write_text(json.dumps(metrics))
    shutil.copyfile(tiny_moons_run / "config.yaml", copy / "config.yaml")
    monkeypatch.chdir(project)
    (entry,) = build_from_results("results", "weights")
    assert entry["model"] == "mlp" and entry["test_acc"] == pytest.approx(metrics["test_acc"], abs=0.001)
    metrics["run_dir"] = "checkpoints/gone"
    (copy / "metrics.json").write_text(json.dumps(metrics))
    assert build_from_results("results", "weights2") == []  # not here at all: skipped, and said so
