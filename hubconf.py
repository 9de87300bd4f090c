"""torch.hub entry points: one per registered model, each the same as zoo.create(name, ...).

    model = torch.hub.load("path/to/lightning-zoo", "resnet20", source="local", pretrained="cifar10")
    model = torch.hub.load("path/to/lightning-zoo", "mlp", source="local", input_shape=(2,), num_classes=2)

pretrained=DATASET gives the shipped weights (zoo.list_pretrained() lists the (model, dataset)
pairs), in eval mode, with their preprocessing in model.pretrained_cfg and zoo.transforms(model);
without it, a new network for input_shape and num_classes (and the model's own options).
tests/test_hub.py checks that the names below are exactly the registered ones.
"""

import collections.abc
import sys

from torch import nn

import zoo

dependencies = ["torch", "lightning", "torchmetrics", "numpy", "PIL"]


# torch.hub offers every public callable here as a model: helpers are private, imports are modules.
def _entry(name: str) -> collections.abc.Callable[..., nn.Module]:
    def load(pretrained: str | None = None, **kwargs) -> nn.Module:
        return zoo.create(name, pretrained=pretrained, **kwargs)

    # torch.hub.help(repo, name) shows this: the model file's first line, and how to call it
    summary = sys.modules[zoo.MODELS[name].__module__].__doc__.splitlines()[0]
    load.__doc__ = (f"{summary}\n\nThe same as zoo.create({name!r}, ...): pretrained=DATASET, or input_shape and "
                     "num_classes.")
    load.__name__ = name
    return load


linear = _entry("linear")
mlp = _entry("mlp")
lenet5 = _entry("lenet5")
resnet20 = _entry("resnet20")
resnet32 = _entry("resnet32")
resnet44 = _entry("resnet44")
resnet56 = _entry("resnet56")
resnet110 = _entry("resnet110")
mobilenetv2 = _entry("mobilenetv2")
airbench94 = _entry("airbench94")
