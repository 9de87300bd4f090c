"""The networks: one file per model family, each registering its builder names (and default
recipe) in registry.MODELS. Importing this package registers them all; it needs torch only.

    from zoo.models import create_model, profile
    model = create_model("resnet20", input_shape=(3, 32, 32), num_classes=10)
"""

from zoo.models import airbench, lenet, linear, mlp, mobilenetv2, resnet  # noqa: F401 (importing registers them)
from zoo.models.profile import profile
from zoo.models.registry import MODELS, create_model, list_models, register_model

__all__ = ["MODELS", "create_model", "list_models", "profile", "register_model"]
