"""The model registry: one dict from a lowercase name to a builder, and `create_model`, the one door in.

A builder is `builder(input_shape, num_classes, **its_own_options) -> nn.Module`; the module maps
float input of shape (B, *input_shape) to logits (B, num_classes). `flat_ok=True` marks builders that
also take flat feature vectors such as two-moons' input_shape=(2,); the others need (C, H, W).
`recipe=dict(...)` is the model's default training recipe (optimizer, lr, weight_decay, scheduler,
momentum, label_smoothing, lookahead); keys left out, or no recipe at all, take DEFAULT_RECIPE (Adam
at 1e-3, no schedule). The batch size and epochs are the dataset's, in configs/<dataset>.yaml, unless
the recipe declares its own (RUN_KEYS: a speedrun's schedule is part of the model's recipe), with the
datamodule options it trains with; zoo.module.resolve_recipe puts them together.

    @register_model("resnet20", recipe=dict(optimizer="sgd", lr=0.1, weight_decay=5e-4, scheduler="cosine"))
    def resnet20(input_shape, num_classes): ...

    model = create_model("resnet20", input_shape=(3, 32, 32), num_classes=10)
"""

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from jsonargparse.typing import NonNegativeFloat, PositiveFloat, restricted_number_type
from torch import nn

from zoo.errors import ZooError

# Choices and ranges as types: jsonargparse checks them on the command line and lists them in
# --help, and zoo.checkpoint checks a checkpoint's values against the same types.
Optimizer = Literal["sgd", "adam", "adamw"]
Scheduler = Literal["none", "cosine", "onecycle", "step", "triangle"]
Fraction = restricted_number_type("Fraction", float, [(">=", 0), ("<", 1)])  # [0, 1): dropout, momentum, ...
OPTIMIZERS, SCHEDULERS = get_args(Optimizer), get_args(Scheduler)
# What a model trains with when its registration names no recipe: the small nets are happy with
# Adam at 1e-3 and no schedule (the lecture's setting).
DEFAULT_RECIPE = dict(optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="none", momentum=0.9, label_smoothing=0.0,
                      lookahead=False)
# What a recipe may declare beyond the optimizer: the batch size and epochs it was tuned for, and
# datamodule options ({"translate": 2, "alternate_flip": True}); these beat the dataset's config.
RUN_KEYS = ("batch_size", "max_epochs", "data")

MODELS: dict[str, Callable[..., nn.Module]] = {}
RECIPES: dict[str, dict] = {}  # name -> its full default recipe (DEFAULT_RECIPE's keys, and RUN_KEYS it declares)
_FLAT_OK: set[str] = set()


def register_model(name: str, flat_ok: bool = False, recipe: dict | None = None) -> Callable[[Callable], Callable]:
    """Decorator that files a builder under `name` (the name used on the command line and in tables),
    with its default training recipe (keys left out take DEFAULT_RECIPE's)."""
    recipe = full_recipe(name, recipe or {})  # checked here, at import: a misspelt key fails at once

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ZooError(f"model name '{name}' is registered twice; give the second builder another name.")
        MODELS[name] = builder
        RECIPES[name] = recipe
        if flat_ok:
            _FLAT_OK.add(name)
        return builder

    return decorator


def full_recipe(name: str, recipe: dict) -> dict:
    """`recipe` over DEFAULT_RECIPE, if every key is a recipe's and every value one training accepts."""
    unknown = [key for key in recipe if key not in (*DEFAULT_RECIPE, *RUN_KEYS)]
    if unknown:
        raise ZooError(f"model '{name}': unknown recipe key(s) {', '.join(map(repr, unknown))}; a recipe takes "
                       f"{', '.join((*DEFAULT_RECIPE, *RUN_KEYS))}.")
    r = {**DEFAULT_RECIPE, **recipe}
    numbers = all(isinstance(r[k], (int, float)) and not isinstance(r[k], bool)
                  for k in ("lr", "weight_decay", "momentum", "label_smoothing"))
    counts = all(isinstance(r.get(k, 1), int) and not isinstance(r.get(k, 1), bool) and r.get(k, 1) > 0
                 for k in ("batch_size", "max_epochs"))
    if not (r["optimizer"] in OPTIMIZERS and r["scheduler"] in SCHEDULERS and numbers and r["lr"] > 0
            and r["weight_decay"] >= 0 and 0 <= r["momentum"] < 1 and 0 <= r["label_smoothing"] < 1
            and isinstance(r["lookahead"], bool) and counts and isinstance(r.get("data", {}), dict)):
        raise ZooError(f"model '{name}': recipe {recipe} is not one training accepts: optimizer one of "
                       f"{', '.join(OPTIMIZERS)}, scheduler one of {', '.join(SCHEDULERS)}, lr > 0, weight_decay >= 0, "
                       f"momentum and label_smoothing in [0, 1), lookahead a bool, batch_size and max_epochs positive "
                       f"integers, data a dict of datamodule options.")
    return r


def convolutional(name: str) -> bool:
    """Whether a model needs images: the conv nets, for which channels_last and bf16 pay off."""
    return name in MODELS and name not in _FLAT_OK


def list_models() -> list[str]:
    return sorted(MODELS)


def check_model_name(name: str) -> None:
    """Refuse a name no model is registered under (train.py checks before it names a run directory
    after it: `--model.arch ../../x` must not make directories anywhere)."""
    if name not in MODELS:
        raise ZooError(f"unknown model '{name}'. Pick one of the registered models: {', '.join(list_models())}.")


def create_model(name: str, input_shape: Sequence[int], num_classes: int, **options) -> nn.Module:
    """Build model `name` for inputs of shape (B, *input_shape); options set to None take the default."""
    check_model_name(name)
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else ()
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ZooError(f"input_shape {input_shape!r} is not a shape: give positive integers without the "
                       "batch dimension, e.g. (1, 28, 28) for MNIST or (2,) for two-moons.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ZooError(f"num_classes={num_classes!r} is not a classification problem: give an integer >= 2.")
    if len(shape) != 3 and name not in _FLAT_OK:
        raise ZooError(f"model '{name}' needs image input (C, H, W) but got input_shape={shape}. Use an image "
                       f"dataset, or a model that takes flat features: {', '.join(sorted(_FLAT_OK))}.")
    builder = MODELS[name]
    accepted = list(inspect.signature(builder).parameters)[2:]  # after (input_shape, num_classes)
    options = {key: value for key, value in options.items() if value is not None}
    for key in options:
        if key not in accepted:
            raise ZooError(f"model '{name}' has no option '{key}'; its options are: "
                           f"{', '.join(accepted) or '(none)'}. Remove it or pick one of those.")
    return builder(shape, num_classes, **options)


@dataclass
class HParams:
    """The hyperparameters a zoo model is trained and rebuilt from, as checkpoints record them:
    exactly the arguments of zoo.module.ZooModule (tests/test_layout.py pins that they agree; their
    meaning is documented there). They live here too so that a checkpoint can be checked, and its
    network rebuilt, with torch alone (`predict` and `export` need no Lightning)."""

    arch: str = "mlp"
    num_classes: int = 2
    input_shape: list[int] = field(default_factory=lambda: [2])
    hidden: list[int] | None = None
    dropout: Fraction | None = None
    width: PositiveFloat | None = None
    optimizer: Optimizer | None = None
    lr: PositiveFloat | None = None
    weight_decay: NonNegativeFloat | None = None
    momentum: Fraction | None = None
    scheduler: Scheduler | None = None
    label_smoothing: Fraction | None = None
    lookahead: bool | None = None
    channels_last: bool | None = None
    pretrained: str | None = None
    compile: bool | None = None
    teacher: str | None = None
    distill_weight: Fraction | None = None
    distill_temperature: PositiveFloat | None = None


def network_options(hp: dict) -> dict:
    """The options of hyperparameters `hp` that shape the network (what create_model takes)."""
    return dict(hidden=hp.get("hidden"), dropout=hp.get("dropout"), width=hp.get("width"))


def optimizer_groups(net: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """The optimizer's parameter groups. A network may declare its own with `optimizer_groups()`: a list
    of dicts with `params` and optionally `lr_scale` (x lr), `weight_decay_scale` (x weight_decay) and
    `train_epochs` (trained for that many epochs, then frozen): airbench94 gives its BatchNorm biases 64x
    the learning rate. Otherwise: no weight decay on biases and norm parameters (the usual practice; it
    helps short schedules)."""
    declared = getattr(net, "optimizer_groups", None)
    if declared is None:
        params = [p for p in net.parameters() if p.requires_grad]
        return [dict(params=[p for p in params if p.dim() > 1], lr=lr, weight_decay=weight_decay),
                dict(params=[p for p in params if p.dim() <= 1], lr=lr, weight_decay=0.0)]
    groups = []
    for spec in declared():
        unknown = set(spec) - {"params", "lr_scale", "weight_decay_scale", "train_epochs"}
        if unknown:
            raise ZooError(f"{type(net).__name__}.optimizer_groups(): unknown key(s) {', '.join(sorted(unknown))}; a "
                           f"group takes params, lr_scale, weight_decay_scale and train_epochs.")
        groups.append(dict(params=list(spec["params"]), lr=lr * spec.get("lr_scale", 1.0),
                           weight_decay=weight_decay * spec.get("weight_decay_scale", 1.0),
                           train_epochs=spec.get("train_epochs")))
    return groups
