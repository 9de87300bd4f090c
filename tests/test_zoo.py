"""Tests for the model zoo: every registered model builds, runs, learns, and fails clearly.

Parametrised over `list_models()`, so a newly registered model is tested without editing this file.
Fast by default (about 25 s on 2 idle CPU cores); the heavy overfit runs are marked `slow`.
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from zoo import MODELS, ZooError, ZooModule, create_model, list_models, profile, register_model
from zoo.models import registry
from zoo.models.profile import format_count
from zoo.module import RESOLVED, resolve_hparams, resolve_recipe

SHAPES = [(1, 28, 28), (3, 32, 32), (2,)]
FLAT_MODELS = sorted(registry._FLAT_OK)
# The deeper ResNets share resnet20's code (only the depth differs): overfitting them adds
# 25-40 s to the default suite without testing anything new, so they run with -m slow.
SLOW_TO_OVERFIT = {"resnet32", "resnet44", "resnet56", "resnet110", "mobilenetv2", "airbench94"}  # airbench: 236M FLOPs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These tests run tiny batches, where a second intra-op thread gains little; when the cores are
    # shared with other jobs, two threads waiting on each other ran 10-30x slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def memorise(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> int | None:
    """Adam steps until the training-mode forward classifies the whole batch right (None: never)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        logits = model(x)
        if (logits.argmax(1) == y).all():
            return step
        optimizer.zero_grad()
        F.cross_entropy(logits, y).backward()
        optimizer.step()
    return None


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_shape_cases():
    return [pytest.param(name, shape, id=f"{name}-{'x'.join(map(str, shape))}")
            for name in list_models() for shape in SHAPES if len(shape) == 3 or name in FLAT_MODELS]


@pytest.mark.parametrize("name,shape", model_shape_cases())
def test_forward_backward_with_unusual_num_classes(name, shape):
    torch.manual_seed(0)
    model = create_model(name, shape, num_classes=7)
    logits = model(torch.randn(2, *shape))
    assert logits.shape == (2, 7)
    logits.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        if not p.requires_grad:  # frozen by design (airbench94's whitening filters, its BatchNorm scales)
            continue
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["1x28x28", "3x32x32"])
def test_initial_loss_is_near_ln_num_classes(name, shape):
    # A fresh classifier should be unsure: cross-entropy ~ ln(10) on normalised random input.
    torch.manual_seed(0)
    model = create_model(name, shape, num_classes=10)
    x, y = torch.randn(64, *shape), torch.randint(0, 10, (64,))
    with torch.no_grad():
        loss = F.cross_entropy(model(x), y).item()
    assert loss == pytest.approx(math.log(10), rel=0.15)


@pytest.mark.parametrize("name,shape,expected", [
    ("linear", (1, 28, 28), 7_850),      # 784*10 + 10
    ("mlp", (1, 28, 28), 101_770),       # 784*128 + 128 + 128*10 + 10
    ("lenet5", (1, 28, 28), 61_706),     # "about 60K" with 28x28 padded to 32x32
    ("resnet20", (3, 32, 32), 269_722),  # option A shortcuts, no parameters in them
    ("resnet56", (3, 32, 32), 853_018),
    ("mobilenetv2", (3, 32, 32), 2_236_682),  # same count as torchvision's mobilenet_v2(num_classes=10)
])
def test_exact_parameter_counts(name, shape, expected):
    assert count_params(create_model(name, shape, num_classes=10)) == expected


@pytest.mark.parametrize("name,shape,low,high", [
    ("lenet5", (1, 28, 28), 55_000, 65_000),
    ("resnet20", (3, 32, 32), 0.98 * 0.27e6, 1.02 * 0.27e6),  # He et al. 2015, Table 6
    ("resnet56", (3, 32, 32), 0.98 * 0.85e6, 1.02 * 0.85e6),
    ("mobilenetv2", (3, 32, 32), 0.98 * 2.2e6, 1.02 * 2.2e6),
])
def test_parameter_counts_match_the_papers(name, shape, low, high):
    assert low <= count_params(create_model(name, shape, num_classes=10)) <= high


def test_mlp_options():
    moons = create_model("mlp", (2,), num_classes=2, hidden=[10, 10])  # the lecture's MLP(10, 10)
    assert count_params(moons) == (2 * 10 + 10) + (10 * 10 + 10) + (10 * 2 + 2)
    # None means "use the default", as the CLI passes unset options.
    assert count_params(create_model("mlp", (1, 28, 28), 10, hidden=None, dropout=None)) == 101_770
    with pytest.raises(ZooError, match="dropout"):
        create_model("mlp", (2,), 2, dropout=1.5)


def test_mobilenetv2_width_shrinks_the_model():
    assert count_params(create_model("mobilenetv2", (3, 32, 32), 10, width=0.5)) < 1.0e6


def test_mobilenetv2_strided_depthwise_layers_compute_in_fp32():
    # oneDNN's bf16 strided depthwise kernel is 5-40x slower than its fp32 one on the CPU, so these
    # three layers compute in fp32 under bf16 autocast and with bf16 weights, as plain convolutions.
    from zoo.models.mobilenetv2 import StridedDepthwiseConv2d

    model = create_model("mobilenetv2", (3, 32, 32), 10)
    strided = [m for m in model.modules() if isinstance(m, StridedDepthwiseConv2d)]
    assert [(m.in_channels, m.groups, m.stride) for m in strided] == [(c, c, (2, 2)) for c in (144, 192, 576)]
    conv = strided[0]
    plain = torch.nn.Conv2d(144, 144, 3, 2, 1, groups=144, bias=False)
    plain.load_state_dict(conv.state_dict())  # the same parameter names: old checkpoints load
    x = torch.randn(2, 144, 8, 8).contiguous(memory_format=torch.channels_last)
    assert torch.equal(conv(x), plain(x))  # fp32, no autocast: the plain convolution
    assert torch.equal(conv.double()(x.double()), plain.double()(x.double()))  # 64-true keeps fp64
    conv.float(), plain.float()
    xb = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_bf16 = conv(xb), plain(xb)
    fp32 = plain(xb.detach().float())
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, fp32.bfloat16())  # fp32 arithmetic, rounded once at the end
    assert not torch.equal(y_bf16, y)  # what the plain layer computes under autocast differs
    y.float().square().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and xb.grad.dtype == torch.bfloat16
    assert torch.isfinite(xb.grad).all() and xb.grad.abs().sum() > 0
    conv.bfloat16()  # bf16-true: bf16 weights, no autocast
    xd = xb.detach()
    assert torch.equal(conv(xd), F.conv2d(xd.float(), conv.weight.float(), None, 2, 1, 1, 144).bfloat16())


def test_mobilenetv2_relu6_trains_in_place_without_copying_its_input():
    # Autograd's in-place hardtanh_ clones its input for the backward; ours keeps the output instead.
    from zoo.models.mobilenetv2 import ReLU6

    def clones(module):
        h = torch.randn(2, 8, 4, 4).requires_grad_() * 8  # a non-leaf, like BatchNorm's output
        with torch.profiler.profile() as prof:
            y = module(h)
        return y, sum(e.count for e in prof.key_averages() if e.key in ("aten::clone", "aten::copy_"))

    assert clones(torch.nn.ReLU6(inplace=True))[1] > 0
    y, n = clones(ReLU6(inplace=True))
    assert n == 0 and y.grad_fn is not None and "ReLU6InPlace" in type(y.grad_fn).__name__
    model = create_model("mobilenetv2", (3, 32, 32), 10)
    assert sum(type(m) is ReLU6 and m.inplace for m in model.modules()) == 35


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mobilenetv2_relu6_gradient_is_autograds_bit_for_bit(dtype):
    from zoo.models.mobilenetv2 import ReLU6

    # the edges: exactly 0 and 6 pass no gradient (hardtanh_backward's rule), below/above clamp
    x = torch.tensor([-3.0, -0.0, 0.0, 0.25, 2.5, 5.5, 6.0, 6.5, 100.0], dtype=dtype)
    x = torch.cat([x, torch.randn(991, dtype=dtype) * 5])
    g = torch.randn_like(x)
    results = []
    for module in (ReLU6(inplace=True), torch.nn.ReLU6(inplace=True), torch.nn.ReLU6()):
        leaf = x.clone().requires_grad_()
        y = module(leaf * 1)
        y.backward(g)
        results.append((y.detach(), leaf.grad))
    for y, grad in results[1:]:
        assert torch.equal(results[0][0], y) and torch.equal(results[0][1], grad)
    assert results[0][1][:9].tolist() == [0, 0, 0, g[3].item(), g[4].item(), g[5].item(), 0, 0, 0]


def test_mobilenetv2_training_steps_match_plain_relu6_bit_for_bit():
    # Two bf16-mixed SGD steps of the whole network with our ReLU6 and with nn.ReLU6: same weights.
    models = []
    for plain in (False, True):
        torch.manual_seed(0)
        model = create_model("mobilenetv2", (3, 32, 32), 10, width=0.5).to(memory_format=torch.channels_last)
        for m in model.modules() if plain else []:
            if isinstance(m, torch.nn.ReLU6):
                m.__class__ = torch.nn.ReLU6
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        torch.manual_seed(1)
        for _ in range(2):
            x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), torch.arange(8) % 10)
            opt.zero_grad()
            loss.backward()
            opt.step()
        models.append(model)
    ours, plain = (dict(m.state_dict()) for m in models)
    assert all(torch.equal(ours[k], plain[k]) for k in ours)
    models[0].eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*torch.jit.trace", FutureWarning)  # as zoo's export does
        traced = torch.jit.trace(models[0], x)  # export traces the evaluation path: plain hardtanh
        assert torch.equal(traced(x), models[0](x))


def test_conv_model_on_flat_input_names_the_flat_models():
    with pytest.raises(ZooError, match="image input") as err:
        create_model("resnet20", (2,), num_classes=2)
    assert "linear" in str(err.value) and "mlp" in str(err.value)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ZooError, match="resnet20") as err:
        create_model("resnet21", (3, 32, 32), 10)
    assert all(name in str(err.value) for name in list_models())


def test_unknown_option_lists_the_options():
    with pytest.raises(ZooError, match="model 'lenet5' has no option 'hidden'"):
        create_model("lenet5", (1, 28, 28), 10, hidden=[64])
    with pytest.raises(ZooError, match="hidden, dropout"):
        create_model("mlp", (2,), 2, width=2.0)


@pytest.mark.parametrize("shape,num_classes", [((), 10), ((0, 28, 28), 10), ((1, 28.0, 28), 10),
                                               ((1, 28, 28), 1), ((1, 28, 28), 2.5)])
def test_bad_shape_or_num_classes(shape, num_classes):
    with pytest.raises(ZooError):
        create_model("lenet5", shape, num_classes)


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry's dicts as copies, so that what a test registers goes away with it."""
    monkeypatch.setattr(registry, "MODELS", dict(MODELS))
    monkeypatch.setattr(registry, "RECIPES", dict(registry.RECIPES))
    monkeypatch.setattr(registry, "_FLAT_OK", set(registry._FLAT_OK))


def test_register_model(scratch_registry):
    @register_model("tiny", flat_ok=True)
    def tiny(input_shape, num_classes, bias: bool = True):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), num_classes, bias))

    assert "tiny" in list_models() and list_models() == sorted(list_models())
    assert create_model("tiny", (2,), 3, bias=False)(torch.randn(4, 2)).shape == (4, 3)
    with pytest.raises(ZooError, match="twice"):
        register_model("tiny")(tiny)


# --- recipes: declared where a model is registered, resolved in one place ------------------------

# What every model trained with before recipes moved from a table in zoo/module.py to the model
# files (computed from that code, then written down): the move must change nothing.
# name: (optimizer, lr, weight_decay, scheduler, channels_last, the builder's options filled in)
TODAY = {
    "linear": ("adam", 1e-3, 0.0, "none", False, {}),
    "mlp": ("adam", 1e-3, 0.0, "none", False, {"hidden": [128], "dropout": 0.0}),
    "lenet5": ("adam", 1e-3, 0.0, "cosine", True, {}),
    **{f"resnet{depth}": ("sgd", 0.1, 5e-4, "cosine", True, {}) for depth in (20, 32, 44, 56, 110)},
    "mobilenetv2": ("sgd", 0.05, 4e-5, "cosine", True, {"dropout": 0.2, "width": 1.0}),
}
# What each configs/<dataset>.yaml adds (`train.py fit --data D --model M --print_config` agreed for
# every pair). moons.yaml sets no batch size: MoonsDataModule's default, 32, applies.
DATASET_YAML = {
    "moons": dict(lr=0.01, batch_size=None, max_epochs=150),
    "mnist": dict(batch_size=128, max_epochs=15),
    "fashion_mnist": dict(batch_size=100, max_epochs=15),
    "cifar10": dict(batch_size=128, max_epochs=30),
}


UNCHANGED = dict(momentum=0.9, label_smoothing=0.0, lookahead=False)  # recipe keys added later: as before


def test_the_table_names_registered_models():
    assert set(TODAY) <= set(list_models())


@pytest.mark.parametrize("name", sorted(TODAY))
def test_every_model_resolves_to_the_recipe_it_always_had(name):
    optimizer, lr, weight_decay, scheduler, channels_last, options = TODAY[name]
    recipe = dict(optimizer=optimizer, lr=lr, weight_decay=weight_decay, scheduler=scheduler, **UNCHANGED)
    assert registry.RECIPES[name] == recipe
    assert resolve_recipe(name) == {**recipe, "batch_size": None, "max_epochs": None}
    for data, from_yaml in DATASET_YAML.items():
        assert resolve_recipe(name, data) == {**recipe, "batch_size": None, "max_epochs": None, **from_yaml}, data
    assert resolve_hparams({"arch": name}) == {"arch": name, **recipe, "channels_last": channels_last, **options}
    # What a checkpoint and config.yaml record: the same values.
    hp = ZooModule(name, num_classes=10, input_shape=[3, 32, 32]).hparams
    assert {k: hp[k] for k in RESOLVED} == {"hidden": None, "dropout": None, "width": None, **recipe,
                                           "channels_last": channels_last, **options}


def test_a_model_registered_without_a_recipe_gets_the_default(scratch_registry):
    register_model("tiny")(lambda input_shape, num_classes: torch.nn.Flatten())
    register_model("tiny_sgd", recipe=dict(optimizer="sgd", lr=0.1))(lambda input_shape, num_classes: None)
    assert registry.DEFAULT_RECIPE == dict(optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="none", **UNCHANGED)
    assert registry.RECIPES["tiny"] == registry.DEFAULT_RECIPE
    assert registry.RECIPES["tiny_sgd"] == dict(optimizer="sgd", lr=0.1, weight_decay=0.0, scheduler="none",
                                                **UNCHANGED)


@pytest.mark.parametrize("recipe,match", [
    (dict(lr=0.1, sheduler="cosine"), "unknown recipe key.*'sheduler'"),
    (dict(optimiser="sgd"), "unknown recipe key.*'optimiser'.*optimizer, lr, weight_decay, scheduler"),
    (dict(optimizer="lion"), "optimizer one of sgd, adam, adamw"),
    (dict(scheduler="cosin"), "scheduler one of none, cosine"),
    (dict(lr=0), "lr > 0"), (dict(lr="0.1"), "lr > 0"), (dict(weight_decay=-1e-4), "weight_decay >= 0"),
])
def test_a_bad_recipe_fails_at_registration(scratch_registry, recipe, match):
    with pytest.raises(ZooError, match=match):
        register_model("typo", recipe=recipe)  # before any builder: what a model file does at import
    assert "typo" not in registry.MODELS and "typo" not in registry.RECIPES


def test_resolve_recipe_order_given_then_dataset_then_model():
    assert resolve_recipe("resnet20", "moons", lr=0.5, batch_size=None)["lr"] == 0.5  # given beats moons.yaml
    assert resolve_recipe("resnet20", "moons", lr=None)["lr"] == 0.01  # None: not given
    assert resolve_recipe("resnet20", "cifar10", max_epochs=3)["max_epochs"] == 3
    assert resolve_recipe("mlp", "docs.examples.digits.DigitsDataModule") == resolve_recipe("mlp")  # no YAML
    with pytest.raises(ZooError, match="no recipe key nesterov"):
        resolve_recipe("mlp", nesterov=True)
    # A model's own batch size and epochs (airbench94's) beat the dataset's; the command line beats both.
    assert resolve_recipe("airbench94", "cifar10")["batch_size"] == 1024
    assert resolve_recipe("airbench94", "cifar10", batch_size=64)["batch_size"] == 64


def test_profile_counts_and_leaves_the_model_alone():
    model = create_model("linear", (1, 28, 28), num_classes=10)
    stats = profile(model, (1, 28, 28))
    # FlopCounterMode counts the matmul only, 2 FLOPs per multiply-add; the bias add is not counted.
    assert stats["flops"] == 2 * 784 * 10
    assert stats["macs"] == stats["flops"] // 2
    assert stats["params"] == stats["trainable_params"] == 7_850
    assert 7_850 * 4 < stats["checkpoint_bytes"] < 7_850 * 4 + 4_096  # float32 weights + pickle overhead
    assert "latency_ms_b1" not in stats
    assert model.training  # profiled a copy in eval mode


def test_profile_conv_flops_and_latency():
    stats = profile(create_model("lenet5", (1, 28, 28), 10), (1, 28, 28), latency=True, repeats=3)
    # conv1 6@28x28x25, conv2 16@10x10x150, FC 400*120 + 120*84 + 84*10 multiply-adds.
    assert stats["macs"] == 6 * 28 * 28 * 25 + 16 * 10 * 10 * 150 + 400 * 120 + 120 * 84 + 84 * 10
    assert {"latency_ms_b1", "latency_ms_b256", "throughput_b256"} <= stats.keys()
    assert stats["latency_ms_b1"] > 0 and stats["throughput_b256"] > 0


def test_format_count():
    assert format_count(7_850) == "7.85K"
    assert format_count(101_770) == "101.8K"
    assert format_count(2_236_682) == "2.24M"
    assert format_count(12_345_678) == "12.3M"
    assert format_count(999) == "999"
    assert format_count(999_960) == "1.00M"  # not "1000.0K"


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow) if name in SLOW_TO_OVERFIT else name for name in list_models()
])
def test_overfits_one_batch_of_random_labels(name):
    # Memorising 32 random images with random labels proves that gradients reach every layer and the
    # model has capacity. Accuracy is read from the training-mode forward (BatchNorm on batch
    # statistics), the number a training loop logs as train/acc.
    torch.manual_seed(0)
    model = create_model(name, (1, 28, 28), num_classes=10)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    if memorise(model, x, y, steps=200) is None:
        pytest.fail(f"{name} did not reach 100% training accuracy on one batch in 200 Adam steps")


# The recipe's first two checks on real data: every model starts near ln(C) on a real, normalised
# batch and memorises 32 real examples (MNIST for 1x28x28, CIFAR-10 for 3x32x32).
@pytest.fixture(scope="module")
def real_batches() -> dict:
    from conftest import require_data
    from datamodules import create_datamodule

    batches = {}
    for name in ("mnist", "cifar10"):
        require_data(name)
        dm = create_datamodule(name, augment=False)
        dm.setup("fit")
        x, y = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
        batches[tuple(dm.input_shape)] = (x[:32], y[:32])
    return batches


REAL_CASES = [pytest.param(n, s, marks=pytest.mark.slow) if n in SLOW_TO_OVERFIT else (n, s)
              for n in list_models() for s in [(1, 28, 28), (3, 32, 32)]]


@pytest.mark.parametrize("name, shape", REAL_CASES)
def test_real_batch_initial_loss_and_overfit(name, shape, real_batches):
    torch.manual_seed(0)
    x, y = real_batches[shape]
    model = create_model(name, shape, num_classes=10)
    with torch.no_grad():
        model.train()  # BatchNorm on batch statistics, as in the first training step
        loss = F.cross_entropy(model(x), y).item()
    assert abs(loss - math.log(10)) < 0.15 * math.log(10), f"{name}: initial loss {loss:.3f} vs ln 10"
    if memorise(model, x, y, steps=300) is None:
        pytest.fail(f"{name} did not reach 100% training accuracy on 32 real examples in 300 Adam steps")
