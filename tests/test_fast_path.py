"""The fast path train.py takes by default (measured in results/bench.md): channels_last for conv nets,
bf16-mixed where the hardware does bf16 natively, the fused optimizer step, a throttled progress bar,
and metrics accumulated per step but logged once per epoch. Each default must be visible in what a
run records, overridable, and must not break reproducibility: evaluate.py and `train.py test` use
the precision a checkpoint was trained with."""
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback

import evaluate
import train
import zoo.module
from test_image_folder import make_folder
from zoo import cli
from zoo.checkpoint import load_checkpoint
from zoo.module import ZooModule, bf16_native, default_precision, fused_adam_step, steps_directly, use_fused

FAST = ["--quiet", "true", "--trainer.enable_model_summary", "false", "--patience", "0"]


def test_conv_nets_default_to_channels_last_and_the_others_do_not():
    lenet = ZooModule("lenet5", num_classes=10, input_shape=[1, 28, 28])
    assert lenet.hparams.channels_last is True  # recorded in the checkpoint as resolved
    conv = next(m for m in lenet.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert ZooModule("mlp", num_classes=10, input_shape=[1, 28, 28]).hparams.channels_last is False
    assert ZooModule("lenet5", num_classes=10, input_shape=[1, 28, 28],
                     channels_last=False).hparams.channels_last is False


def test_default_precision_is_bf16_only_for_conv_nets_on_native_bf16(monkeypatch):
    monkeypatch.setattr(zoo.module, "bf16_native", lambda accelerator="auto": True)
    assert default_precision("resnet20") == "bf16-mixed" and default_precision("lenet5") == "bf16-mixed"
    assert default_precision("mlp") == "32-true" and default_precision("linear") == "32-true"  # bf16 made MLPs slower
    monkeypatch.setattr(zoo.module, "bf16_native", lambda accelerator="auto": False)
    assert default_precision("resnet20") == "32-true"


def test_bf16_native_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for amx, avx512_bf16 in ((False, False), (True, False), (False, True)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        assert bf16_native("cpu") == (amx or avx512_bf16)
    assert bf16_native("mps") is False


def test_optimizer_step_is_fused_except_under_16_mixed():
    model = ZooModule("mlp", num_classes=10, input_shape=[784])
    assert model.configure_optimizers().param_groups[0]["fused"] is True
    assert use_fused(model, type("T", (), {"precision": "16-mixed"})()) is None  # its scaler cannot clip fused
    assert use_fused(model, type("T", (), {"precision": "bf16-mixed"})()) is True


def test_progress_bar_redraws_at_most_every_interval(monkeypatch):
    drawn = []
    monkeypatch.setattr(cli.RichProgressBar, "on_train_batch_end",
                        lambda self, trainer, module, outputs, batch, i: drawn.append(i))
    clock = iter([100.0, 100.05, 100.2, 100.21, 100.22])
    monkeypatch.setattr(cli.time, "monotonic", lambda: next(clock))
    bar, trainer = cli.ProgressBar(interval=0.1), type("T", (), {"num_training_batches": 5})()
    for i in range(5):
        bar.on_train_batch_end(trainer, None, None, None, i)
    assert drawn == [0, 2, 4]  # 1 and 3 came too soon; the epoch's last batch always draws


def test_progress_bar_counts_optimizer_steps_not_chunks(capsys, tmp_path):
    assert train.main(["fit", "--runs_root", str(tmp_path), "--trainer.max_epochs", "1", "--trainer.logger",
                       "false", "--trainer.enable_model_summary", "false", "--steps_per_execution", "3"]) == 0
    # Moons: 4 steps an epoch (a plain run's bar shows 4/4), so K=3 makes a chunk of 3 and one
    # of 1; the bar still ends at 4/4, not at Lightning's 2/2.
    assert set(re.findall(r"Epoch 0/0 .*? (\d+/\d+) ", capsys.readouterr().out)) == {"4/4"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("shapes"))


def fit_lenet(shapes: Path, root: Path, *extra: str) -> Path:
    assert train.main(["fit", "--runs_root", str(root), *FAST,
                       "--data", "datamodules.image_folder.ImageFolderDataModule",
                       "--data.init_args.data_dir", str(shapes), "--data.init_args.batch_size", "16",
                       "--model.arch", "lenet5", "--trainer.max_epochs", "2", *extra]) == 0
    (run,) = root.glob("image_folder-*/lenet5/*")  # named after the folder
    return run


def test_a_run_records_its_precision_and_evaluation_reproduces_it(shapes, tmp_path, capsys):
    run = fit_lenet(shapes, tmp_path)
    expected = default_precision("lenet5", "auto")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["trainer"]["precision"] == expected and config["model"]["channels_last"] is True
    ckpt = torch.load(run / "best.ckpt", weights_only=True)
    assert ckpt["precision"] == expected
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["precision"] == expected
    assert f"on cpu, {expected} (" in capsys.readouterr().out  # the summary line says which precision ran
    r = evaluate.evaluate(str(run), device="cpu")
    assert r["test_acc"] == metrics["test_acc"]  # same arithmetic as fit's test: the same number
    assert r["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)
    # `train.py test` without --trainer.precision takes the checkpoint's too
    assert train.main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "best.ckpt"),
                       "--trainer.precision", "null"]) == 0
    assert f"{metrics['test_acc']}"[:6] in capsys.readouterr().out


def test_an_explicit_precision_wins(shapes, tmp_path):
    run = fit_lenet(shapes, tmp_path, "--trainer.precision", "32-true", "--model.channels_last", "false")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["trainer"]["precision"] == "32-true" and config["model"]["channels_last"] is False
    assert torch.load(run / "best.ckpt", weights_only=True)["precision"] == "32-true"
    assert evaluate.evaluate(str(run), device="cpu")["precision"] == "float32"


def test_bf16_kept_on_a_machine_that_emulates_it_says_so_and_names_the_faster_flag(tmp_path, monkeypatch, capsys):
    """A bf16 run (from an AMX CPU or a GPU) evaluated where bf16 is emulated keeps its arithmetic, so the
    numbers match, but that is many times slower: one line says so and names the fp32 flag."""
    assert train.main(["fit", "--runs_root", str(tmp_path), *MOONS_BF16]) == 0
    (run,) = tmp_path.glob("moons/mlp/*")
    assert "does not do bf16 in hardware" not in capsys.readouterr().err  # a fit chose its precision itself
    monkeypatch.setattr(zoo.module, "bf16_native", lambda accelerator="auto": False)
    r = evaluate.evaluate(str(run), device="cpu")
    err = capsys.readouterr().err
    assert "trained in bf16-mixed" in err and "pass --precision 32." in err, err
    assert r["test_acc"] == json.loads((run / "metrics.json").read_text())["test_acc"]  # still the run's arithmetic
    evaluate.evaluate(str(run), device="cpu", precision="32")  # asked for fp32: nothing to say
    assert "does not do bf16" not in capsys.readouterr().err
    assert train.main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "best.ckpt"),
                       "--trainer.precision", "null"]) == 0
    assert "pass --trainer.precision 32-true." in capsys.readouterr().err
    monkeypatch.setattr(zoo.module, "bf16_native", lambda accelerator="auto": True)
    evaluate.evaluate(str(run), device="cpu")
    assert "does not do bf16" not in capsys.readouterr().err


def test_evaluate_refuses_an_unknown_precision(tiny_moons_run):
    with pytest.raises(cli.ZooError, match="fp8"):
        evaluate.evaluate(str(tiny_moons_run), precision="fp8")


def fake_compiles(monkeypatch, fail: bool = False) -> list:
    """torch.compile recorded (the eager backend: same plumbing, no C++ compiler run), or failing at
    its first call as inductor does without a compiler."""
    compiled = []

    def fake_compile(module, **kwargs):
        compiled.append(kwargs)
        if fail:
            def broken(*args):
                raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\n(a long inductor trace)")
            return broken
        return torch._dynamo.optimize("eager")(module)

    monkeypatch.setattr(torch, "compile", fake_compile)
    return compiled


def test_compile_option_trains_and_keeps_plain_checkpoint_keys(tmp_path, monkeypatch):
    compiled = fake_compiles(monkeypatch)
    assert train.main(["fit", "--runs_root", str(tmp_path), *FAST, "--data", "moons", "--trainer.max_epochs", "2",
                       "--model.compile", "true"]) == 0
    assert len(compiled) == 1  # once per run, on the first training step
    # Static shapes: the epoch's smaller last batch gets its own graph instead of a slower dynamic one
    # for every batch after it (results/cifar10_conv/compile_epochs_xeon.txt).
    assert compiled == [{"dynamic": False}]
    (run,) = tmp_path.glob("moons/mlp/*")
    ckpt = torch.load(run / "best.ckpt", weights_only=True)
    assert all(k.startswith("model.") and "_orig_mod" not in k for k in ckpt["state_dict"])
    assert (evaluate.evaluate(str(run), device="cpu")["test_acc"]
            == json.loads((run / "metrics.json").read_text())["test_acc"])


MOONS_BF16 = [*FAST, "--data", "moons", "--trainer.max_epochs", "2", "--trainer.precision", "bf16-mixed"]


@pytest.mark.parametrize("amx", [True, False])
def test_compile_by_default_only_for_long_bf16_resnet_fits_on_amx(monkeypatch, amx):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu, long = torch.device("cpu"), zoo.module.COMPILE_MIN_STEPS
    assert zoo.module.compile_by_default("resnet20", "bf16-mixed", cpu, long) is amx
    assert zoo.module.compile_by_default("resnet56", "bf16-true", cpu, float("inf")) is amx  # max_epochs -1
    for arch, precision, device, steps in [("mlp", "bf16-mixed", cpu, long), ("mobilenetv2", "bf16-mixed", cpu, long),
                                           ("resnet20", "32-true", cpu, long), ("resnet20", "16-mixed", cpu, long),
                                           ("resnet20", "bf16-mixed", torch.device("cuda"), long),
                                           ("resnet20", "bf16-mixed", cpu, long - 1)]:
        assert not zoo.module.compile_by_default(arch, precision, device, steps), (arch, precision, device, steps)


@pytest.mark.parametrize("decides", [True, False])
def test_an_unset_compile_follows_compile_by_default(tmp_path, monkeypatch, capsys, decides):
    compiled, asked = fake_compiles(monkeypatch), []

    def rule(*args):
        asked.append(args)
        return decides

    monkeypatch.setattr(zoo.module, "compile_by_default", rule)
    assert train.main(["fit", "--runs_root", str(tmp_path), *MOONS_BF16]) == 0
    (run,) = tmp_path.glob("moons/mlp/*")
    (arch, precision, device, steps), = asked  # once per fit, with what the fit really uses
    assert (arch, precision, device.type) == ("mlp", "bf16-mixed", "cpu")
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    assert steps == ckpt["global_step"]  # the whole fit's optimizer steps, as the schedule plans them
    assert len(compiled) == int(decides)
    assert json.loads((run / "metrics.json").read_text())["compiled"] is decides
    out = capsys.readouterr().out
    assert ("torch.compile: on, the default" in out) is decides and ("--model.compile false" in out) is decides
    # Asked for either way, the option wins over the rule and the rule is not consulted.
    asked.clear()
    assert train.main(["fit", "--runs_root", str(tmp_path / "off"), *MOONS_BF16, "--model.compile", "false"]) == 0
    assert asked == [] and len(compiled) == int(decides)


def test_a_failed_compile_stops_the_run_with_a_clear_message(tmp_path, monkeypatch, capsys):
    compiled = fake_compiles(monkeypatch, fail=True)
    assert train.main(["fit", "--runs_root", str(tmp_path), *MOONS_BF16, "--model.compile", "true"]) != 0
    err = capsys.readouterr().err
    assert "--model.compile true: torch.compile failed" in err and "--model.compile false" in err, err
    assert "Traceback" not in err and "a long inductor trace" not in err, err
    assert len(compiled) == 1
    assert not any(tmp_path.rglob("*.ckpt"))  # it failed at the first step: nothing trained to keep


def test_a_failed_default_compile_trains_on_without_it(tmp_path, monkeypatch, capsys):
    compiled = fake_compiles(monkeypatch, fail=True)
    monkeypatch.setattr(zoo.module, "compile_by_default", lambda *args: True)
    assert train.main(["fit", "--runs_root", str(tmp_path), *MOONS_BF16]) == 0  # not asked for: no reason to stop
    err = capsys.readouterr().err
    assert "note: torch.compile failed" in err and "trains without it" in err and "Traceback" not in err, err
    assert len(compiled) == 1  # tried once, then eager for the rest of the fit
    (run,) = tmp_path.glob("moons/mlp/*")
    assert json.loads((run / "metrics.json").read_text())["compiled"] is False


def test_threads_option_sets_torch_and_the_workers_environment(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # restored after the test
    assert train.main(["fit", "--runs_root", str(tmp_path), *FAST, "--data", "moons", "--trainer.max_epochs", "1",
                       "--threads", "3"]) == 0
    assert calls == [3]
    import os
    assert os.environ["OMP_NUM_THREADS"] == "3"


# --steps_per_execution: K optimizer steps per Lightning step, each one the plain path's step.

SPE = ["--data", "moons", "--model.hidden", "[32,32]", "--model.dropout", "0.2", "--model.lookahead", "true",
       "--model.scheduler", "triangle", "--quiet", "true", "--trainer.max_epochs", "3", "--patience", "0"]


def fit_moons(root: Path, *extra: str) -> Path:
    assert train.main(["fit", *SPE, "--runs_root", str(root), *extra]) == 0
    (run,) = root.glob("moons/mlp/*")
    return run


def same_training(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for key, value in (a.get("lookahead") or {"slow": {}})["slow"].items():
        assert torch.equal(value, b["lookahead"]["slow"][key]), key
    assert a["optimizer_states"][0]["param_groups"][0]["lr"] == b["optimizer_states"][0]["param_groups"][0]["lr"]


@pytest.fixture(scope="module")
def plain_moons(tmp_path_factory) -> Path:
    return fit_moons(tmp_path_factory.mktemp("plain"), "--steps_per_execution", "1")


def test_several_steps_per_lightning_step_train_the_same_weights(plain_moons, tmp_path):
    # 4 steps an epoch in chunks of 3: a full chunk and a short one, with dropout, a per-step schedule
    # and Lookahead, all stepped inside the chunk as the plain path steps them.
    run = fit_moons(tmp_path, "--steps_per_execution", "3")
    a, b = load_checkpoint(plain_moons / "last.ckpt"), load_checkpoint(run / "last.ckpt")
    assert (a["steps_per_execution"], b["steps_per_execution"], b["global_step"]) == (1, 3, 12)
    same_training(a, b)
    for key, slow in b["lookahead"]["slow"].items():  # the fit's length was right: it ended on the slow weights
        assert torch.equal(b["state_dict"][f"model.{key}"], slow), key
    history = [(plain_moons / "history.csv").read_text(), (run / "history.csv").read_text()]
    assert [[row.split(",")[3:5] for row in h.splitlines()] for h in history][0] == \
        [[row.split(",")[3:5] for row in h.splitlines()] for h in history][1]  # val loss and accuracy
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (plain_moons, run))
    assert ma["test_acc"] == mb["test_acc"]


class StepHooks(Callback):
    """Records the per-step hooks a fit calls, in order, with the step count each one sees."""
    seen: list[tuple] = []

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        StepHooks.seen.append(("before_backward", trainer.global_step, loss.requires_grad))

    def on_after_backward(self, trainer, pl_module) -> None:
        StepHooks.seen.append(("after_backward", trainer.global_step))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = all(p.grad is not None for p in pl_module.parameters())
        StepHooks.seen.append(("before_optimizer_step", trainer.global_step, type(optimizer).__name__, grads))


def test_chunks_step_directly_and_call_the_hooks_a_callback_listens_to(plain_moons, tmp_path, monkeypatch):
    hooks = ["--trainer.callbacks+=test_fast_path.StepHooks"]
    seen = []
    for k in ("1", "3"):
        StepHooks.seen = []
        fit_moons(tmp_path / k, "--steps_per_execution", k, *hooks)
        seen.append(StepHooks.seen)
    assert len(seen[0]) == 3 * 12 and seen[0] == seen[1]  # every step's three hooks, as the plain path calls them
    assert seen[0][-1] == ("before_optimizer_step", 11, "Adam", True)
    # With no listener (the defaults), a chunk calls neither manual_backward nor a per-step hook.
    dispatched = []
    real = zoo.module.call._call_callback_hooks
    monkeypatch.setattr(zoo.module.call, "_call_callback_hooks",
                        lambda trainer, name, *a, **k: dispatched.append(name) or real(trainer, name, *a, **k))
    monkeypatch.setattr(ZooModule, "manual_backward", lambda self, loss: pytest.fail("manual_backward called"))
    direct = []  # fused_adam_step's answers: the first step creates Adam's state through opt.step()
    monkeypatch.setattr(zoo.module, "fused_adam_step", lambda opt: direct.append(fused_adam_step(opt)) or direct[-1])
    run = fit_moons(tmp_path / "quiet", "--steps_per_execution", "3")
    assert not set(dispatched) & set(zoo.module.STEP_HOOKS), dispatched
    assert direct == [False] + [True] * 11
    same_training(load_checkpoint(plain_moons / "last.ckpt"), load_checkpoint(run / "last.ckpt"))


def test_steps_directly_only_where_the_backward_and_step_are_plain():
    from lightning.pytorch.plugins.precision import MixedPrecision, Precision
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    def trainer(plugin, strategy=None, module=None):
        strategy = strategy or SingleDeviceStrategy("cpu")
        module = module or ZooModule("mlp", num_classes=2, input_shape=[2])
        return type("T", (), {"precision_plugin": plugin, "strategy": strategy, "lightning_module": module})()

    assert steps_directly(trainer(Precision()))
    assert steps_directly(trainer(MixedPrecision("bf16-mixed", "cpu")))
    scaled = MixedPrecision("bf16-mixed", "cpu")
    scaled.scaler = object()  # 16-mixed's gradient scaler: its backward and step are not the plain ones
    assert not steps_directly(trainer(scaled))
    assert not steps_directly(trainer(Precision(), strategy=DDPStrategy()))

    class OwnBackward(ZooModule):
        def backward(self, loss, *args, **kwargs):
            loss.backward()

    assert not steps_directly(trainer(Precision(), module=OwnBackward("mlp", num_classes=2, input_shape=[2])))


def adam_pair(kind, shared: bool = False, **options):
    """Two identical MLPs, each with its own optimizer of `kind`: two groups (their own lr and weight
    decay, or with shared=True the same ones, as train.py's default groups have without weight decay),
    a cosine schedule."""
    torch.manual_seed(0)
    nets = [zoo.module.create_model("mlp", [1, 8, 8], 10) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    second = dict(weight_decay=0.05) if shared else dict(weight_decay=0.0, lr=3e-3)
    opts = [kind([dict(params=list(n.parameters())[:2], weight_decay=0.05),
                  dict(params=list(n.parameters())[2:], **second)], lr=1e-3, **options) for n in nets]
    return nets, opts, [torch.optim.lr_scheduler.CosineAnnealingLR(o, 10) for o in opts]


def backward(net, x, y):
    torch.nn.functional.cross_entropy(net(x), y).backward()


@pytest.mark.parametrize("shared", [False, True], ids=["own hyperparameters", "shared hyperparameters"])
@pytest.mark.parametrize("kind", [torch.optim.Adam, torch.optim.AdamW])
def test_the_direct_fused_adam_step_is_torchs_step(kind, shared, monkeypatch):
    """Bitwise torch's step, in one kernel call for groups that share every hyperparameter, one per group otherwise."""
    nets, opts, scheds = adam_pair(kind, shared, fused=True)
    name = "_fused_adamw_" if kind is torch.optim.AdamW else "_fused_adam_"
    calls, kernel = [], getattr(torch, name)
    answers = []  # the first is False: no state yet, which opt.step() creates
    for _ in range(10):
        x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            backward(net, x, y)
        opts[0].step()
        with monkeypatch.context() as m:
            m.setattr(torch, name, lambda *a, **k: calls.append(len(a[0])) or kernel(*a, **k))
            answers.append(fused_adam_step(opts[1]))
        if not answers[-1]:
            opts[1].step()
        for s in scheds:
            s.step()
    assert answers == [False] + [True] * 9
    assert calls == ([4] if shared else [2, 2]) * 9  # tensors per kernel call: the MLP's 2 weights and 2 biases
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters()))
    states = [o.state_dict()["state"] for o in opts]
    assert all(torch.equal(states[0][i][k], states[1][i][k])
               for i in states[0] for k in ("step", "exp_avg", "exp_avg_sq"))


@pytest.mark.parametrize("case", ["sgd", "foreach", "amsgrad", "hook", "tensor lr", "state without moments"])
def test_the_direct_fused_adam_step_leaves_other_optimizers_to_torch(case):
    kind = torch.optim.SGD if case == "sgd" else torch.optim.Adam
    options = {"foreach": dict(foreach=True), "amsgrad": dict(fused=True, amsgrad=True)}.get(case, dict(fused=True))
    (net, _), (opt, _), _ = adam_pair(kind, **options)
    backward(net, torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))
    opt.step()  # the state exists
    if case == "hook":
        opt.register_step_post_hook(lambda *a: None)
    if case == "tensor lr":
        opt.param_groups[0]["lr"] = torch.tensor(1e-3)
    if case == "state without moments":  # e.g. another optimizer's state in a checkpoint
        opt.state[next(net.parameters())] = {"momentum_buffer": torch.zeros(1)}
    before = [p.clone() for p in net.parameters()]
    assert not fused_adam_step(opt)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # nothing was done


def test_a_chunked_run_interrupted_mid_epoch_resumes_exactly(plain_moons, tmp_path, capsys):
    rc = train.main(["fit", *SPE, "--runs_root", str(tmp_path), "--steps_per_execution", "3",
                     "--trainer.callbacks+=test_module.SigintAt", "--trainer.callbacks.step", "7"])
    (run,) = tmp_path.glob("moons/mlp/*")
    assert rc != 0 and load_checkpoint(run / "last.ckpt")["global_step"] == 7  # one chunk into epoch 1
    # A resume keeps the run's steps per Lightning step: another is refused before anything is written.
    before = (run / "last.ckpt").read_bytes()
    for other in (["--steps_per_execution", "2"], ["--steps_per_execution", "1"]):
        assert train.main(["fit", *SPE, "--runs_root", str(tmp_path), "--ckpt_path", "last", *other]) != 0
        err = capsys.readouterr().err
        assert "--steps_per_execution 3" in err and "Traceback" not in err, err
    assert (run / "last.ckpt").read_bytes() == before
    assert train.main(["fit", *SPE, "--runs_root", str(tmp_path), "--ckpt_path", "last"]) == 0  # 3, from the file
    same_training(load_checkpoint(plain_moons / "last.ckpt"), load_checkpoint(run / "last.ckpt"))


# Plain MLPs (the lecture's nets): a chunk trains them with zoo.module.mlp_backprop, not autograd.

NO_DROPOUT = ["--model.dropout", "0"]  # after SPE, whose dropout would send a chunk to autograd


def counting_backprop(monkeypatch) -> list:
    calls = []
    real = zoo.module.mlp_backprop
    monkeypatch.setattr(zoo.module, "mlp_backprop", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.fixture(scope="module")
def plain_mlp_moons(tmp_path_factory) -> Path:
    return fit_moons(tmp_path_factory.mktemp("plain_mlp"), *NO_DROPOUT, "--steps_per_execution", "1")


@pytest.mark.parametrize("shape, hidden, dtype", [
    ((1, 28, 28), [128], torch.float32), ((2,), [10, 10], torch.float32), ((3, 8, 8), [], torch.float32),
    ((5,), [7, 6, 4], torch.float64)])
def test_mlp_backprop_is_autograds_loss_logits_and_gradients_bitwise(shape, hidden, dtype):
    from zoo.models.registry import create_model
    torch.manual_seed(0)
    nets = [create_model("mlp", list(shape), 10, hidden=hidden).to(dtype) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    for _ in range(3):
        x, y = torch.randn(33, *shape, dtype=dtype), torch.randint(0, 10, (33,))
        logits = nets[0](x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        by_hand = zoo.module.mlp_backprop([m for m in nets[1] if isinstance(m, torch.nn.Linear)], x, y)
        assert torch.equal(by_hand[0], logits) and torch.equal(by_hand[1], loss)
        assert not by_hand[1].requires_grad
        for a, b in zip(nets[0].parameters(), nets[1].parameters()):
            assert torch.equal(a.grad, b.grad) and b.grad.is_contiguous()
            with torch.no_grad():  # a step, so the next batch sees other weights
                a -= 0.1 * a.grad
                b -= 0.1 * b.grad
            a.grad = b.grad = None


@pytest.mark.parametrize("shape, hidden", [((1, 28, 28), [128]), ((2,), [10, 10]), ((3, 8, 8), [])])
def test_mlp_backprop_in_bf16_is_autograds_under_bf16_autocast_bitwise(shape, hidden):
    from zoo.models.registry import create_model
    torch.manual_seed(0)
    nets = [create_model("mlp", list(shape), 10, hidden=hidden) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    for _ in range(3):
        x, y = torch.randn(33, *shape), torch.randint(0, 10, (33,))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as Lightning's bf16-mixed runs a training step
            logits = nets[0](x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            by_hand = zoo.module.mlp_backprop([m for m in nets[1] if isinstance(m, torch.nn.Linear)], x, y,
                                              torch.bfloat16)
        loss.backward()
        assert logits.dtype == by_hand[0].dtype == torch.bfloat16 and by_hand[1].dtype == torch.float32
        assert torch.equal(by_hand[0], logits) and torch.equal(by_hand[1], loss)
        for a, b in zip(nets[0].parameters(), nets[1].parameters()):
            assert b.grad.dtype == torch.float32 and torch.equal(a.grad, b.grad) and b.grad.is_contiguous()
            with torch.no_grad():
                a -= 0.1 * a.grad
                b -= 0.1 * b.grad
            a.grad = b.grad = None


def test_plain_mlps_train_by_hand_in_bf16_mixed_to_the_autograd_paths_weights(tmp_path, monkeypatch):
    bf16 = ["--trainer.precision", "bf16-mixed"]
    plain = fit_moons(tmp_path / "plain", *NO_DROPOUT, *bf16, "--steps_per_execution", "1")
    calls = counting_backprop(monkeypatch)
    run = fit_moons(tmp_path / "chunks", *NO_DROPOUT, *bf16, "--steps_per_execution", "3")
    assert len(calls) == 12
    a, b = load_checkpoint(plain / "last.ckpt"), load_checkpoint(run / "last.ckpt")
    assert a["state_dict"]["model.1.weight"].dtype == torch.float32
    same_training(a, b)


def test_plain_mlps_train_by_hand_in_chunks_to_the_same_weights(plain_mlp_moons, tmp_path, monkeypatch):
    calls = counting_backprop(monkeypatch)
    run = fit_moons(tmp_path, *NO_DROPOUT, "--steps_per_execution", "3")
    assert len(calls) == 12  # every step of the 3 epochs (the plain run's fixture made none)
    a, b = load_checkpoint(plain_mlp_moons / "last.ckpt"), load_checkpoint(run / "last.ckpt")
    same_training(a, b)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (plain_mlp_moons, run))
    assert ma["test_acc"] == mb["test_acc"] and ma["test_loss"] == mb["test_loss"]


@pytest.mark.parametrize("optimizer", [["--model.optimizer", "sgd", "--model.lr", "0.05"],
                                       ["--model.optimizer", "adamw", "--model.weight_decay", "0.01"]])
def test_by_hand_gradients_step_any_optimizer_to_the_plain_paths_weights(tmp_path, monkeypatch, optimizer):
    # SGD steps through torch.optim (fused_adam_step declines it); AdamW through the direct fused kernel.
    plain = fit_moons(tmp_path / "plain", *NO_DROPOUT, *optimizer, "--steps_per_execution", "1")
    calls = counting_backprop(monkeypatch)
    run = fit_moons(tmp_path / "chunks", *NO_DROPOUT, *optimizer, "--steps_per_execution", "3")
    assert len(calls) == 12
    same_training(load_checkpoint(plain / "last.ckpt"), load_checkpoint(run / "last.ckpt"))


def test_a_by_hand_run_interrupted_mid_epoch_resumes_exactly(plain_mlp_moons, tmp_path, monkeypatch):
    calls = counting_backprop(monkeypatch)
    args = ["fit", *SPE, *NO_DROPOUT, "--runs_root", str(tmp_path), "--steps_per_execution", "3"]
    assert train.main([*args, "--trainer.callbacks+=test_module.SigintAt", "--trainer.callbacks.step", "7"]) != 0
    (run,) = tmp_path.glob("moons/mlp/*")
    assert load_checkpoint(run / "last.ckpt")["global_step"] == 7
    assert train.main([*args, "--ckpt_path", "last"]) == 0
    assert len(calls) == 12
    same_training(load_checkpoint(plain_mlp_moons / "last.ckpt"), load_checkpoint(run / "last.ckpt"))


def test_nan_stop_names_the_step_on_the_by_hand_path(tmp_path, monkeypatch, capsys):
    calls, real = [], zoo.module.mlp_backprop

    def poisoned(linears, x, y, low=None):  # the 5th step's loss is not finite
        logits, loss = real(linears, x, y, low)
        return logits, loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(zoo.module, "mlp_backprop", lambda *a: calls.append(1) or poisoned(*a))
    assert train.main(["fit", *SPE, *NO_DROPOUT, "--runs_root", str(tmp_path), "--steps_per_execution", "3"]) != 0
    err = capsys.readouterr().err
    assert "The training loss became nan at epoch 1, step 4" in err and "Traceback" not in err, err


def test_only_plain_mlps_in_full_precision_or_bf16_autocast_are_trained_by_hand(monkeypatch):
    def linears(arch="mlp", listened=(), **kw):
        return ZooModule(arch, num_classes=3, input_shape=[1, 4, 4], **kw)._backprop_by_hand(set(listened))

    assert [m.in_features for m in linears()] == [16, 128]
    assert [m.in_features for m in linears(hidden=[5, 6])] == [16, 5, 6]
    assert [m.out_features for m in linears("linear")] == [3]
    assert linears(dropout=0.1) is None and linears(label_smoothing=0.1) is None and linears(compile=True) is None
    assert linears("lenet5") is None
    assert linears(listened=["on_after_backward"]) is None and linears(listened=["on_before_backward"]) is None
    assert linears(listened=["on_before_optimizer_step"]) is not None  # called as before, after the gradients
    module = ZooModule("mlp", num_classes=3, input_shape=[1, 4, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16-mixed: mlp_backprop takes autocast's step
        assert module._backprop_by_hand(set()) is not None
    with torch.autocast("cpu", dtype=torch.float16):  # 16-mixed: not written by hand
        assert module._backprop_by_hand(set()) is None
    module.model[1].weight.requires_grad_(False)  # a frozen layer
    assert module._backprop_by_hand(set()) is None
    for hook in ("register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook"):
        module = ZooModule("mlp", num_classes=3, input_shape=[1, 4, 4])
        getattr(module.model[2], hook)(lambda *a: None)
        assert module._backprop_by_hand(set()) is None, hook
    module = ZooModule("mlp", num_classes=3, input_shape=[1, 4, 4])
    module.model[1].bias.register_hook(lambda g: g)
    assert module._backprop_by_hand(set()) is None
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert ZooModule("mlp", num_classes=3, input_shape=[1, 4, 4])._backprop_by_hand(set()) is None
    finally:
        handle.remove()
    module = ZooModule("mlp", num_classes=3, input_shape=[1, 4, 4])
    module.model[1] = torch.nn.Linear(16, 128, bias=False)
    assert module._backprop_by_hand(set()) is None
    module = ZooModule("mlp", num_classes=3, input_shape=[1, 4, 4])
    module.model[3].forward = lambda x: x
    assert module._backprop_by_hand(set()) is None

    class OwnLoss(ZooModule):  # a subclass's loss (or forward) is its own: autograd trains it
        def _train_loss(self, x, y):
            return super()._train_loss(x, y)

    assert OwnLoss("mlp", num_classes=3, input_shape=[1, 4, 4])._backprop_by_hand(set()) is None
    assert ZooModule("mlp", num_classes=3, input_shape=[1, 4, 4]).to("meta")._backprop_by_hand(set()) is None  # not CPU
    monkeypatch.setattr(ZooModule, "forward", lambda self, x: self.model(x))
    assert ZooModule("mlp", num_classes=3, input_shape=[1, 4, 4])._backprop_by_hand(set()) is None


def test_images_in_chunks_train_the_same_weights(shapes, tmp_path):
    # The image path: uint8 batches normalised after the transfer, channels_last, flips.
    a = fit_lenet(shapes, tmp_path / "a", "--data.init_args.augment", "true", "--data.init_args.flip", "true",
                  "--steps_per_execution", "1")
    b = fit_lenet(shapes, tmp_path / "b", "--data.init_args.augment", "true", "--data.init_args.flip", "true",
                  "--steps_per_execution", "4")
    same_training(load_checkpoint(a / "last.ckpt"), load_checkpoint(b / "last.ckpt"))


@pytest.mark.parametrize("flag, words", [
    (["--trainer.limit_train_batches", "2"], "limit_train_batches counts Lightning steps"),
    (["--trainer.gradient_clip_val", "1.0"], "gradient clipping needs Lightning's automatic optimization"),
    (["--trainer.accumulate_grad_batches", "2"], "accumulation needs"),
])
def test_options_that_count_lightning_steps_fall_back_with_one_line(tmp_path, capsys, flag, words):
    run = fit_moons(tmp_path, "--steps_per_execution", "3", "--trainer.max_epochs", "1", *flag)
    err = capsys.readouterr().err
    notice = [line for line in err.splitlines() if line.startswith("--steps_per_execution 3:")]
    assert len(notice) == 1 and words in notice[0] and "one step per Lightning step" in notice[0], err
    assert load_checkpoint(run / "last.ckpt")["steps_per_execution"] == 1


@pytest.mark.parametrize("step, extra", [(21, []), (23, ["--histograms", "1"])])
def test_nan_stop_names_the_step_inside_a_chunk(tmp_path, monkeypatch, capsys, step, extra):
    # 4 steps an epoch in chunks of 3; epoch 5 (from 0) starts at step 20. Step 21: the middle of its first chunk,
    # the NaN stop reads the chunk's losses at its end. Step 23: its last step, where --histograms draws the
    # gradients, all NaN then (TensorBoard refused such a histogram, which hid the NaN stop).
    real = zoo.module.ZooModule.forward

    def poisoned(self, x):
        out = real(self, x)
        return out * float("nan") if self.training and self.global_step == step else out

    monkeypatch.setattr(zoo.module.ZooModule, "forward", poisoned)
    rc = train.main(["fit", *SPE, "--runs_root", str(tmp_path), "--trainer.max_epochs", "10",
                     "--steps_per_execution", "3", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and f"step {step}" in err and "learning rate" in err, err
    (run,) = tmp_path.glob("moons/mlp/*")
    assert load_checkpoint(run / "last.ckpt")["epoch"] == 4


def test_small_steps_come_in_chunks_of_50_by_default_and_large_ones_do_not(plain_moons, tmp_path, capsys):
    run = fit_moons(tmp_path / "auto", "--trainer.max_epochs", "1")  # an MLP step: 1.2M FLOPs of forward work
    assert load_checkpoint(run / "last.ckpt")["steps_per_execution"] == 50
    assert json.loads((run / "metrics.json").read_text())["steps_per_execution"] == 50
    run = fit_moons(tmp_path / "limited", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2")
    assert load_checkpoint(run / "last.ckpt")["steps_per_execution"] == 1  # not asked for: no notice
    assert "--steps_per_execution" not in capsys.readouterr().err
    assert load_checkpoint(plain_moons / "last.ckpt")["steps_per_execution"] == 1  # asked for
    from zoo.models import create_model, profile
    from zoo.run import auto_steps_per_execution

    def auto(arch: str, shape: list[int], batch: int) -> int:
        return auto_steps_per_execution(profile(create_model(arch, shape, 10), shape)["flops"], batch)

    assert auto("mlp", [1, 28, 28], 128) == auto("lenet5", [1, 28, 28], 128) == 50
    assert auto("resnet20", [3, 32, 32], 128) == auto("airbench94", [3, 32, 32], 1024) == 1
    assert auto_steps_per_execution(0, 128) == 1  # unknown cost: the plain path


@pytest.mark.parametrize("key, value", [("steps_per_execution", "3"), ("steps_per_execution", -2),
                                        ("steps_per_execution", 2.5), ("steps_per_execution", None),
                                        ("global_step", "12")])
def test_a_damaged_steps_per_execution_in_a_checkpoint_is_refused(plain_moons, tmp_path, capsys, key, value):
    ckpt = torch.load(plain_moons / "last.ckpt", weights_only=True)
    ckpt[key] = value
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    assert train.main(["fit", *SPE, "--runs_root", str(tmp_path), "--ckpt_path", str(bad)]) != 0
    err = capsys.readouterr().err
    assert "steps_per_execution" in err and "do not edit checkpoints" in err and "Traceback" not in err, err


def test_loader_chunks_batches_and_resumes_by_chunks():
    from datamodules.tensor import TensorLoader

    x, y = torch.arange(50).float()[:, None], torch.arange(50)
    plain = list(TensorLoader(x, y, batch_size=8, shuffle=True))  # 7 batches: 6 of 8, one of 2
    chunked = TensorLoader(x, y, batch_size=8, shuffle=True, chunk=3)
    assert len(chunked) == 3 and chunked.steps() == 7
    flat = [b for chunk in chunked for b in chunk]
    assert [len(c) for c in chunked] == [3, 3, 1] and all(torch.equal(p[1], f[1]) for p, f in zip(plain, flat))
    rest = [b for chunk in TensorLoader(x, y, batch_size=8, shuffle=True, chunk=3, start_fn=lambda: 1) for b in chunk]
    assert all(torch.equal(p[1], f[1]) for p, f in zip(plain[3:], rest)) and len(rest) == 4
    # first(): the epoch's first batch alone, as iteration yields it, augmentation included
    images = torch.randint(0, 256, (50, 1, 6, 6), dtype=torch.uint8)
    for chunk in (1, 3):
        loader = TensorLoader(images, y, batch_size=8, shuffle=True, pad=2, flip=True, chunk=chunk)
        batch = next(iter(loader))
        batch = batch[0] if chunk > 1 else batch
        assert all(torch.equal(a, b) for a, b in zip(loader.first(), batch))


def test_gpu_probe_is_skipped_only_where_no_gpu_is_visible(monkeypatch):
    from zoo.module import skip_gpu_probes

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # (absent again after the test, whatever the fit set)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    skip_gpu_probes()
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # a GPU: nothing hidden
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    skip_gpu_probes()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"  # the user's own value stays
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    skip_gpu_probes()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


# A block over glibc's largest mmap threshold (32 MiB), touched, freed and taken again: how many pages fault the
# last time. Mapped anew, all of them (16,384 of 4 KiB, or 32 huge pages); kept by malloc, none (the heap takes a
# round or two to settle: the first block freed may be split by the small ones torch allocates meanwhile).
# argv[1]: the largest block keep_freed_memory is told a step allocates.
REUSE_PROBE = """
import resource, sys, torch
from zoo.module import keep_freed_memory
applied = keep_freed_memory(int(sys.argv[1]))
def touch():
    x = torch.empty(16 * 2**20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x.fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(applied, [touch() for _ in range(4)][-1])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_memory_is_kept_only_for_blocks_over_the_mmap_ceiling_and_not_over_the_users_malloc_settings():
    from zoo.module import MMAP_CEILING

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    root = Path(__file__).resolve().parents[1]

    def probe(block: int, **extra) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", REUSE_PROBE, str(block)], env={**env, **extra}, cwd=root,
                             capture_output=True, text=True, check=True).stdout.split()
        return out[0], int(out[1])

    applied, faults = probe(MMAP_CEILING + 1)
    assert applied == "True" and faults < 100, faults
    applied, faults = probe(MMAP_CEILING)  # glibc's own adaptive threshold keeps such blocks: left alone
    assert applied == "False" and faults >= 32, faults
    applied, faults = probe(2**30, MALLOC_TOP_PAD_="0")  # the user's own malloc settings stand
    assert applied == "False" and faults >= 32, faults


def test_mobilenetv2_steps_outgrow_the_mmap_ceiling_and_resnet20_steps_do_not():
    # at the recipe's batch 128, counted as fp32 as zoo.run does
    from zoo.models.registry import create_model
    from zoo.module import MMAP_CEILING, largest_block

    def step_block(arch: str) -> int:
        return largest_block(create_model(arch, (3, 32, 32), 10), (3, 32, 32), 128)

    assert step_block("mobilenetv2") == 4 * 128 * 144 * 32 * 32 > MMAP_CEILING
    assert step_block("resnet20") == 4 * 128 * 16 * 32 * 32 <= MMAP_CEILING


def test_fit_test_and_evaluate_tell_keep_freed_memory_their_largest_block(tmp_path, monkeypatch):
    # fit: the training batch's; `train.py test` and evaluate.py: the evaluation batch's
    import zoo.commands.evaluate  # noqa: F401 (imports zoo.module's names when it runs)
    import zoo.module
    import zoo.run

    calls = []
    for where in (zoo.run, cli, zoo.module):
        monkeypatch.setattr(where, "keep_freed_memory", calls.append)
        monkeypatch.setattr(where, "largest_block", lambda network, shape, batch: ("block", list(shape), batch))
    assert train.main(["fit", "--data", "moons", "--runs_root", str(tmp_path), *FAST, "--trainer.max_epochs", "1",
                       "--data.batch_size", "24", "--data.eval_batch_size", "50"]) == 0
    (run,) = tmp_path.glob("moons/mlp/*")
    assert calls == [("block", [2], 24)]
    assert train.main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "best.ckpt"),
                       "--quiet", "true"]) == 0
    assert evaluate.main([str(run / "best.ckpt")]) == 0
    assert calls == [("block", [2], 24), ("block", [2], 50), ("block", [2], 50)]


def test_a_fit_without_a_gpu_makes_the_per_step_gpu_probe_cheap(tmp_path, monkeypatch):
    # Lightning's import set PYTORCH_NVML_BASED_CUDA_CHECK=1: each torch.cuda.is_available() (Adam
    # asks every step) then re-probes NVML, unless no device is declared.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # (absent again after the test, whatever the fit set)
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: nothing to skip")
    assert os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1"
    assert train.main(["fit", "--data", "moons", "--runs_root", str(tmp_path), *FAST, "--trainer.max_epochs", "1"]) == 0
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
