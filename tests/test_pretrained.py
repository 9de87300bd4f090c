"""The shipped weights (results/weights/): each manifest entry's test accuracy is reproduced
exactly from the file, by evaluate.py and by the CLI's --model.pretrained, and zoo.create loads them
by name."""

import json

import pytest
import torch

import evaluate
import train
import zoo
from conftest import require_data
from zoo.pretrained import MANIFEST, read_manifest

ENTRIES = read_manifest(MANIFEST) if MANIFEST.is_file() else []
CHEAP = [e for e in ENTRIES if e["model"] in ("linear", "mlp", "lenet5")]


def test_weights_are_shipped_within_budget():
    assert ENTRIES, "results/weights/manifest.json is missing: run `python -m zoo.pretrained`"
    assert sum((MANIFEST.parent / e["file"]).stat().st_size for e in ENTRIES) <= 30_000_000
    for e in ENTRIES:
        assert {"model", "dataset", "test_acc", "sha256", "command", "dtype"} <= set(e)


@pytest.mark.parametrize("entry", CHEAP, ids=[f"{e['model']}-{e['dataset']}" for e in CHEAP])
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


def test_tampered_weights_are_refused(tmp_path, monkeypatch):
    import zoo.pretrained as pretrained

    e = CHEAP[0]
    bad = tmp_path / e["file"]
    bad.write_bytes((MANIFEST.parent / e["file"]).read_bytes()[:-10] + b"0123456789")
    (tmp_path / "manifest.json").write_text(json.dumps([e]))
    with pytest.raises(zoo.ZooError, match="sha256"):
        pretrained.load_pretrained(e["model"], e["dataset"], manifest=tmp_path / "manifest.json")
