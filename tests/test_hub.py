"""hubconf.py: torch.hub.load(<repo>, name, source="local", ...) is zoo.create(name, ...), with one
entry point per registered model; the examples of docs/using-models.md's "Use a pretrained model"
(torch.hub, zoo.create, zoo.transforms) run as written."""
import importlib.util
import re

import pytest
import torch

import zoo
from conftest import REPO


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_one_entry_point_per_registered_model():
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    # torch.hub offers a hubconf's public callables (torch.hub.list's rule)
    offered = sorted(f for f in dir(hubconf) if callable(getattr(hubconf, f)) and not f.startswith("_"))
    assert offered == zoo.list_models()
    assert "ResNets for CIFAR-10" in hubconf.resnet20.__doc__  # torch.hub.help shows it


@pytest.mark.parametrize("name,dataset", [("lenet5", "mnist"), ("resnet20", "cifar10")])
def test_hub_load_pretrained_is_zoo_create(name, dataset):
    model = torch.hub.load(str(REPO), name, source="local", pretrained=dataset)
    same = zoo.create(name, pretrained=dataset)
    assert type(model) is type(same) and not model.training and same_weights(model, same)
    assert model.pretrained_cfg == same.pretrained_cfg
    x = torch.randint(0, 256, (2, *model.pretrained_cfg["input_shape"]), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model(torch.stack([zoo.transforms(model)(image) for image in x])),
                           same(torch.stack([zoo.transforms(same)(image) for image in x])))


def test_hub_load_new_model_is_zoo_create():
    torch.manual_seed(0)
    model = torch.hub.load(str(REPO), "mlp", source="local", input_shape=(2,), num_classes=3, hidden=[8])
    torch.manual_seed(0)
    assert same_weights(model, zoo.create("mlp", input_shape=(2,), num_classes=3, hidden=[8]))
    assert model(torch.zeros(4, 2)).shape == (4, 3)


def test_docs_examples_run(monkeypatch, capsys):
    text = (REPO / "docs" / "using-models.md").read_text()
    section = text.split("## Use a pretrained model")[1].split("\n## ")[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert any("torch.hub.load" in b for b in blocks) and any("zoo.transforms" in b for b in blocks)
    monkeypatch.chdir(REPO)  # the examples run from the repository root
    for block in blocks:
        exec(compile(block, "docs/using-models.md", "exec"), {})
        printed = capsys.readouterr().out.splitlines()
        if "torch.hub.load" in block:  # it prints the predicted class
            assert printed[-1] in zoo.create("resnet20", pretrained="cifar10").pretrained_cfg["class_names"]
        if "zoo.list_pretrained()[:2]" in block:
            assert printed[0] == str(zoo.list_pretrained()[:2])
