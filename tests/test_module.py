"""zoo/module.py's training extensions that a recipe can switch on: parameter groups a network
declares (their own learning rate and weight decay, trained for the first epochs only), the triangle
schedule and Lookahead, including an exact resume with Lookahead's slow weights."""

import os
import signal

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

import train
from zoo import ZooError
from zoo.checkpoint import load_checkpoint
from zoo.module import Lookahead, Triangle, ZooModule, freeze_finished_groups, optimizer_groups


class Net(nn.Module):
    def __init__(self, groups=None):
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)
        if groups is not None:
            self.optimizer_groups = groups


def test_default_groups_leave_biases_and_norms_undecayed_and_skip_frozen_parameters():
    net = Net()
    net.conv.bias.requires_grad_(False)
    decay, no_decay = optimizer_groups(net, lr=0.1, weight_decay=0.01)
    assert {id(p) for p in decay["params"]} == {id(net.conv.weight), id(net.head.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(net.norm.weight), id(net.norm.bias), id(net.head.bias)}
    assert (decay["weight_decay"], no_decay["weight_decay"], decay["lr"]) == (0.01, 0.0, 0.1)


def test_declared_groups_scale_lr_and_decay_and_unknown_keys_are_refused():
    net = Net()
    net = Net(lambda: [dict(params=[net.norm.bias], lr_scale=64.0, weight_decay_scale=1 / 64),
                       dict(params=[net.conv.weight], train_epochs=3)])
    biases, conv = optimizer_groups(net, lr=1.5, weight_decay=0.02)
    assert biases["lr"] == 96.0 and biases["weight_decay"] == pytest.approx(0.02 / 64)
    assert biases["lr"] * biases["weight_decay"] == pytest.approx(1.5 * 0.02)  # the same decay per step
    assert conv["train_epochs"] == 3 and biases["train_epochs"] is None and conv["lr"] == 1.5
    bad = Net()
    bad.optimizer_groups = lambda: [dict(params=[], lr_mult=2)]
    with pytest.raises(ZooError, match="lr_mult"):
        optimizer_groups(bad, 0.1, 0.0)


def test_a_group_trains_for_its_epochs_then_freezes_and_sgd_leaves_it_alone():
    net = Net()
    net.optimizer_groups = lambda: [dict(params=[net.head.bias], train_epochs=2),
                                    dict(params=[p for n, p in net.named_parameters() if n != "head.bias"])]
    opt = torch.optim.SGD(optimizer_groups(net, 0.1, 0.0), lr=0.1, momentum=0.9)
    x = torch.randn(4, 3, 5, 5)
    history = []
    for epoch in range(4):
        freeze_finished_groups(opt, epoch)
        opt.zero_grad(set_to_none=True)
        net.head(net.norm(net.conv(x)).mean((2, 3)))[:, 0].sum().backward()
        opt.step()
        history.append(net.head.bias.detach().clone())
    assert not torch.equal(history[0], history[1])  # epochs 0 and 1 train it
    assert torch.equal(history[1], history[2]) and torch.equal(history[2], history[3])  # then: frozen, no momentum
    freeze_finished_groups(opt, 1)  # a resume into epoch 1 trains it again: set from the epoch alone
    assert net.head.bias.requires_grad


def test_triangle_is_airbench94s_schedule():
    t = Triangle(1000)
    assert t(0) == pytest.approx(0.2) and t(230) == pytest.approx(1.0) and t(1000) == pytest.approx(0.07)
    assert t(115) == pytest.approx(0.6) and t(615) == pytest.approx((1 + 0.07) / 2)
    assert all(t(s) <= t(s + 1) for s in range(230)) and all(t(s) >= t(s + 1) for s in range(230, 1000))


def test_lookahead_pulls_every_5_steps_and_ends_on_the_slow_weights():
    net = nn.Linear(3, 2)
    la = Lookahead(net)
    start = net.weight.detach().clone()
    for step in range(1, 5):
        net.weight.data += 1.0  # the optimizer's steps
        la.step(net, step, total=12)
        assert torch.allclose(net.weight, start + step)  # no pull before step 5
    net.weight.data += 1.0
    la.step(net, 5, total=12)
    keep = 0.95**5 * (5 / 12) ** 3
    expected = start * keep + (start + 5) * (1 - keep)  # slow.lerp_(fast, 1 - keep), copied back
    assert torch.allclose(net.weight, expected) and torch.allclose(la.slow["weight"], expected)
    for step in range(6, 13):
        net.weight.data += 1.0
        la.step(net, step, total=12)
    assert torch.equal(net.weight, la.slow["weight"])  # step 10 pulled; step 12 ends on the slow weights
    assert not torch.allclose(net.weight, start + 12)


class SigintAt(Callback):
    """Ctrl-C after optimizer step `step`, as a user would press it: the run saves at the next step boundary."""

    def __init__(self, step: int = 1) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


LOOKAHEAD = ["--data", "moons", "--model.lookahead", "true", "--model.scheduler", "triangle", "--quiet", "true",
             "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "4", "--patience", "0"]


def test_lookahead_run_resumed_mid_epoch_is_exact(tmp_path):
    assert train.main(["fit", *LOOKAHEAD, "--runs_root", str(tmp_path / "a")]) == 0
    (full,) = (tmp_path / "a").glob("moons/mlp/*")
    rc = train.main(["fit", *LOOKAHEAD, "--runs_root", str(tmp_path / "b"),
                     "--trainer.callbacks+=test_module.SigintAt", "--trainer.callbacks.step", "6"])
    (part,) = (tmp_path / "b").glob("moons/mlp/*")
    stopped = load_checkpoint(part / "last.ckpt")
    assert rc != 0 and stopped["global_step"] == 6 and set(stopped["lookahead"]["slow"]) == {
        k[len("model."):] for k in stopped["state_dict"] if k.startswith("model.")}
    assert train.main(["fit", *LOOKAHEAD, "--runs_root", str(tmp_path / "b"), "--ckpt_path", "last"]) == 0
    a, b = load_checkpoint(full / "last.ckpt"), load_checkpoint(part / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 12
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for key, value in a["lookahead"]["slow"].items():
        assert torch.equal(value, b["lookahead"]["slow"][key]), key
        assert torch.equal(b["state_dict"][f"model.{key}"], value), key  # the last step pulled all the way
    assert a["hyper_parameters"]["lookahead"] is True


def test_recipe_keys_resolve_and_old_checkpoints_keep_their_values():
    m = ZooModule("mlp")
    assert (m.hparams.momentum, m.hparams.label_smoothing, m.hparams.lookahead) == (0.9, 0.0, False)
    m = ZooModule("mlp", momentum=0.5, label_smoothing=0.1, lookahead=True)
    assert (m.hparams.momentum, m.hparams.label_smoothing, m.hparams.lookahead) == (0.5, 0.1, True)


@pytest.mark.parametrize("damage", ["missing key", "wrong shape", "not a dict", "bad every"])
def test_damaged_lookahead_state_is_refused_in_one_paragraph(damage):
    net = nn.Linear(3, 2)
    state = Lookahead(net).state()
    if damage == "missing key":
        state["slow"].pop("bias")
    elif damage == "wrong shape":
        state["slow"]["weight"] = torch.zeros(5, 5)
    elif damage == "not a dict":
        state = ["weight"]
    else:
        state["every"] = "5"
    with pytest.raises(ZooError, match="Lookahead state.*does not fit this model"):
        Lookahead.from_state(state, net)
    assert torch.equal(Lookahead.from_state(Lookahead(net).state(), net).slow["weight"], net.weight)


# Knowledge distillation: a student learns from a frozen teacher's softened outputs (--model.teacher).
DISTILL = ["--data", "moons", "--quiet", "true", "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "4",
           "--patience", "0", "--model.hidden", "[16]"]


def test_distillation_loss_is_hintons_and_leaves_the_teacher_alone(tiny_moons_run):
    teacher_file = tiny_moons_run / "best.ckpt"
    student = ZooModule("mlp", hidden=[16], teacher=str(teacher_file), distill_weight=0.7, distill_temperature=2.0)
    teacher = student.__dict__["_teacher"]
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x, y = torch.randn(32, 2), torch.randint(0, 2, (32,))
    logits, loss = student._train_loss(x, y)
    ce = torch.nn.functional.cross_entropy(logits, y)
    p_t = (teacher(x) / 2).softmax(-1)
    kl = (p_t * (p_t.log() - (logits / 2).log_softmax(-1))).sum(-1).mean() * 4
    assert torch.allclose(loss, 0.3 * ce + 0.7 * kl, atol=1e-6)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert not any(k.startswith("_teacher") for k in student.state_dict())  # checkpoints hold the student only
    assert ZooModule("mlp", teacher=str(teacher_file)).hparams.distill_weight == 0.9  # the defaults
    assert ZooModule("mlp", teacher=str(teacher_file)).hparams.distill_temperature == 4.0


def test_restandardise_maps_one_normalisation_onto_the_other():
    from zoo.module import restandardise

    raw = torch.rand(5, 3, 4, 4)
    mean, std, t_mean, t_std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3], [0.45, 0.5, 0.35], [0.22, 0.2, 0.28]
    a, b = restandardise(mean, std, t_mean, t_std, 3)
    x = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    want = (raw - torch.tensor(t_mean).view(1, 3, 1, 1)) / torch.tensor(t_std).view(1, 3, 1, 1)
    assert torch.allclose(x * a + b, want, atol=1e-5)
    assert restandardise(mean, std, mean, std, 3) is None and restandardise(None, None, mean, std, 3) is None


def test_a_distilled_run_resumes_exactly_and_evaluates_without_its_teacher(tmp_path, tiny_moons_run, capsys):
    teacher = tmp_path / "teacher.ckpt"
    teacher.write_bytes((tiny_moons_run / "best.ckpt").read_bytes())
    args = [*DISTILL, "--model.teacher", str(teacher)]
    assert train.main(["fit", *args, "--runs_root", str(tmp_path / "a")]) == 0
    (full,) = (tmp_path / "a").glob("moons/mlp/*")
    rc = train.main(["fit", *args, "--runs_root", str(tmp_path / "b"),
                     "--trainer.callbacks+=test_module.SigintAt", "--trainer.callbacks.step", "6"])
    (part,) = (tmp_path / "b").glob("moons/mlp/*")
    assert rc != 0 and load_checkpoint(part / "last.ckpt")["global_step"] == 6
    assert train.main(["fit", *args, "--runs_root", str(tmp_path / "b"), "--ckpt_path", "last"]) == 0
    a, b = load_checkpoint(full / "last.ckpt"), load_checkpoint(part / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 12
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    assert a["hyper_parameters"]["teacher"] == str(teacher) and len(a["teacher_sha256"]) == 64
    # The student differs from a run without the teacher (the term does something).
    assert train.main(["fit", *DISTILL, "--runs_root", str(tmp_path / "c")]) == 0
    (plain,) = (tmp_path / "c").glob("moons/mlp/*")
    assert not torch.equal(load_checkpoint(plain / "last.ckpt")["state_dict"]["model.1.weight"],
                           a["state_dict"]["model.1.weight"])
    # Evaluating needs the student only: the teacher may be gone.
    teacher.unlink()
    import evaluate

    capsys.readouterr()
    assert evaluate.main([str(full / "best.ckpt"), "--png", "false"]) == 0
    assert "per-class accuracy" in capsys.readouterr().out
    assert train.main(["test", "--config", str(full / "config.yaml"), "--ckpt_path", str(full / "best.ckpt")]) == 0


def test_a_resume_refuses_a_changed_teacher(tmp_path, tiny_moons_run, capsys):
    teacher = tmp_path / "teacher.ckpt"
    teacher.write_bytes((tiny_moons_run / "best.ckpt").read_bytes())
    args = [*DISTILL, "--model.teacher", str(teacher), "--runs_root", str(tmp_path)]
    assert train.main(["fit", *args, "--trainer.max_epochs", "1"]) == 0
    ckpt = torch.load(teacher, weights_only=True)
    ckpt["state_dict"]["model.1.weight"] += 1
    torch.save(ckpt, teacher)
    capsys.readouterr()
    assert train.main(["fit", *args, "--trainer.max_epochs", "1", "--ckpt_path", "last"]) != 0
    err = capsys.readouterr().err
    assert "is not the file this run was distilled from" in err and "Traceback" not in err


def test_distillation_flags_without_a_teacher_or_with_the_wrong_one_are_refused(tmp_path, tiny_moons_run, capsys):
    assert train.main(["fit", *DISTILL, "--runs_root", str(tmp_path), "--model.distill_weight", "0.5"]) != 0
    assert "no teacher is given" in capsys.readouterr().err
    missing = str(tmp_path / "no.ckpt")
    assert train.main(["fit", *DISTILL, "--runs_root", str(tmp_path), "--model.teacher", missing]) != 0
    assert f"--model.teacher {missing}: Checkpoint not found" in capsys.readouterr().err
    text = tmp_path / "notes.txt"  # not a checkpoint: refused by the safe loader, never quoted
    text.write_text("secret: do not print me\n")
    assert train.main(["fit", *DISTILL, "--runs_root", str(tmp_path), "--model.teacher", str(text)]) != 0
    err = capsys.readouterr().err
    assert f"--model.teacher {text}: " in err and "secret" not in err and "Traceback" not in err
    with pytest.raises(ZooError, match="takes input \\[2\\] with 2 classes; this data has \\[3\\]"):
        ZooModule("mlp", input_shape=[3], teacher=str(tiny_moons_run / "best.ckpt"))
    other = tmp_path / "other.ckpt"  # the same network, said to be trained on other data
    ckpt = torch.load(tiny_moons_run / "best.ckpt", weights_only=True)
    ckpt["data_name"] = "mnist"
    torch.save(ckpt, other)
    assert train.main(["fit", *DISTILL, "--runs_root", str(tmp_path), "--model.teacher", str(other)]) != 0
    err = capsys.readouterr().err
    assert "was trained on mnist, and this run trains on moons" in err and "Traceback" not in err
    assert not list(tmp_path.glob("moons/mlp/*/*.ckpt"))  # refused before it trained anything
