"""lightning-zoo's models: build any registered network by name, load the shipped weights, and
measure what it costs.

    import zoo
    model = zoo.create("mlp", input_shape=(1, 28, 28), num_classes=10, hidden=[256])
    model = zoo.create("lenet5", pretrained="mnist")   # shipped weights; zoo.list_pretrained() lists them
    logits = model(zoo.transforms(model)(Image.open("digit.png"))[None])
    print(zoo.list_models(), zoo.profile(model, (1, 28, 28))["params"])
"""

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from zoo import weights
from zoo.checkpoint import network_from_checkpoint
from zoo.errors import ZooError
from zoo.models import MODELS, create_model, list_models, profile, register_model

__all__ = ["MODELS", "ZooError", "create_model", "list_models", "profile", "register_model"]


def __getattr__(name: str):
    # ZooModule needs Lightning: imported when first asked for, so that the networks and the
    # shipped weights (zoo.models, zoo.create) load with torch alone.
    if name == "ZooModule":
        from zoo.module import ZooModule

        return ZooModule
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def create(name: str, input_shape: Sequence[int] | None = None, num_classes: int | None = None,
           pretrained: str | None = None, **options) -> nn.Module:
    """The one door into the zoo: a new `name` network for this input shape and class count, or,
    with pretrained=DATASET, the shipped network trained on that dataset (`create("lenet5",
    pretrained="mnist")`; weights checked by sha256 and loaded with weights_only=True), in eval
    mode, its preprocessing in `model.pretrained_cfg` (timm's name) for `transforms(model)`."""
    if not pretrained:
        if input_shape is None or num_classes is None:
            raise ZooError("create(name) needs input_shape and num_classes for a new model (or pretrained=DATASET).")
        return create_model(name, input_shape, num_classes, **options)
    ckpt = weights.load_pretrained_checkpoint(name, pretrained)
    hp = ckpt["hyper_parameters"]
    asked = {"input_shape": None if input_shape is None else list(input_shape), "num_classes": num_classes,
             **options}
    other = {k: v for k, v in asked.items() if v is not None and v != hp.get(k)}
    if other:  # the shipped weights fit one network only: say so rather than ignore the arguments
        raise ZooError(f"The pretrained {name} for {pretrained} is {', '.join(f'{k}={hp.get(k)}' for k in other)}, "
                       f"not {', '.join(f'{k}={v}' for k, v in other.items())}. Fix: drop these arguments, or "
                       f"build a new model without pretrained= and train it.")
    model = network_from_checkpoint(ckpt)
    model.pretrained_cfg = weights.pretrained_cfg(ckpt)
    return model


def transforms(model: nn.Module | dict, invert: bool = False) -> Callable[..., Tensor]:
    """The preprocessing of a pretrained model (or of a pretrained_cfg dict), as timm's
    create_transform(**resolve_data_config(model=model)): a callable that turns a PIL image or a
    uint8 (C, H, W) tensor into the model's float32 (C, H, W) input, with the very code of
    `train.py predict`. invert=True: black-on-white drawings for MNIST's white-on-black digits."""
    cfg = model if isinstance(model, dict) else getattr(model, "pretrained_cfg", None)
    if cfg is None:
        raise ZooError("This model has no pretrained_cfg, so its preprocessing is unknown. Fix: create it with "
                       "zoo.create(name, pretrained=DATASET), or pass the cfg of its checkpoint: "
                       "zoo.transforms(zoo.weights.pretrained_cfg(ckpt)).")
    return weights.Transform(cfg, invert)


def list_pretrained() -> list[tuple[str, str]]:
    """The shipped weights as (model, dataset) pairs, each one zoo.create(model, pretrained=dataset),
    e.g. ("lenet5", "mnist"); read from results/weights/manifest.json."""
    return sorted((e["model"], e["dataset"]) for e in weights.read_manifest())


__all__ += ["ZooModule", "create", "list_pretrained", "transforms"]
