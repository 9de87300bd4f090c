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

__all__ += ["ZooModule"]
