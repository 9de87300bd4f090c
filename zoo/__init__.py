"""lightning-zoo's models: build any registered network by name, and measure what it costs.

    from zoo import create_model, list_models, profile
    model = create_model("mlp", input_shape=(1, 28, 28), num_classes=10, hidden=[256])
    print(list_models(), profile(model, (1, 28, 28))["params"])
"""

from zoo import linear, lenet, mlp, mobilenetv2, resnet  # noqa: F401 (registers the models)
from zoo.errors import ZooError
from zoo.profile import profile
from zoo.registry import MODELS, create_model, list_models, register_model

__all__ = ["MODELS", "ZooError", "create_model", "list_models", "profile", "register_model"]
from zoo.module import ZooModule  # noqa: E402 (after the registry it uses)


def create(name: str, input_shape=None, num_classes: int | None = None, pretrained: str | None = None, **options):
    """The one door into the zoo: a new `name` network for this input shape and class count, or,
    with pretrained=DATASET, the shipped network trained on that dataset (`create("lenet5",
    pretrained="mnist")`; weights checked by sha256 and loaded with weights_only=True)."""
    if pretrained:
        from zoo.pretrained import load_pretrained

        return load_pretrained(name, pretrained).model.eval()
    if input_shape is None or num_classes is None:
        raise ZooError("create(name) needs input_shape and num_classes for a new model (or pretrained=DATASET).")
    return create_model(name, input_shape, num_classes, **options)


__all__ += ["ZooModule", "create"]
