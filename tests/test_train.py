"""train.py and evaluate.py end to end: real Trainer, real checkpoints, real TensorBoard and W&B files.

One two-moons run is shared by most tests (session fixture); the CLI runs in-process through
`train.main`, except where separate processes are the point (DDP, torchrun).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate
import train
import wandb_log
from conftest import REPO, require_data

FAST = ["--quiet", "true", "--trainer.enable_model_summary", "false"]


def fit(tmp: Path, *args: str) -> Path:
    """Run `train.py fit` in-process; return the run directory it made."""
    before = set(tmp.glob("*/*/*"))
    rc = train.main(["fit", "--runs_root", str(tmp), *FAST, *args])
    assert rc == 0, f"fit exited with {rc}"
    (run,) = set(tmp.glob("*/*/*")) - before
    return run


@pytest.fixture(scope="session")
def moons_run(tmp_path_factory) -> Path:
    os.environ["WANDB_MODE"] = "offline"
    os.environ.pop("WANDB_API_KEY", None)
    return fit(tmp_path_factory.mktemp("runs"), "--data", "moons", "--model.hidden", "[10,10]", "--wandb", "true")


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_moons_reaches_lecture_accuracy(moons_run):
    m = metrics(moons_run)
    assert moons_run.parent.name == "mlp" and moons_run.parent.parent.name == "moons"
    assert m["test_acc"] >= 0.93, m
    assert m["params"] == 2 * 10 + 10 + 10 * 10 + 10 + 10 * 2 + 2  # MLP(10,10) on 2 features
    for name in ("best.ckpt", "last.ckpt", "config.yaml", "metrics.json"):
        assert (moons_run / name).is_file(), name


def test_evaluate_reproduces_fit_test_accuracy(moons_run, capsys):
    r = evaluate.evaluate(str(moons_run / "best.ckpt"))
    assert r["test_acc"] == metrics(moons_run)["test_acc"]  # exactly: same data, same weights
    assert sum(map(sum, r["confusion_matrix"])) == 60
    assert evaluate.main([str(moons_run), "--json", str(moons_run / "eval.json")]) == 0
    assert "per-class accuracy" in capsys.readouterr().out
    assert json.loads((moons_run / "eval.json").read_text())["test_acc"] == r["test_acc"]
    png = moons_run / "best_confusion.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_loads_weights_only_and_rebuilds(moons_run):
    from zoo import ZooModule

    ckpt = torch.load(moons_run / "best.ckpt", weights_only=True)  # plain data only
    assert ckpt["data_name"] == "moons" and ckpt["hyper_parameters"]["hidden"] == [10, 10]
    model = ZooModule.load_from_checkpoint(moons_run / "best.ckpt", weights_only=True)
    assert model.hparams.arch == "mlp"
    x = torch.randn(5, 2)
    ref = ZooModule(**ckpt["hyper_parameters"])
    ref.load_state_dict(ckpt["state_dict"])
    assert torch.equal(model(x), ref(x))


def test_tensorboard_has_val_acc_every_epoch(moons_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(moons_run), size_guidance={"scalars": 0})
    acc.Reload()
    val = acc.Scalars("val/acc")
    assert len(val) == metrics(moons_run)["epochs"]
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "test/acc"} <= tags
    assert len(acc.Scalars("train/lr")) == len(val)  # the learning rate, every epoch


def test_wandb_offline_run_has_config_and_metrics(moons_run):
    (log,) = (moons_run / "wandb").glob("offline-run-*/run-*.wandb")
    assert log.name == f"run-{moons_run.name}.wandb"  # the W&B id is the run directory's name
    config, final, history = wandb_log.summary(log)
    assert config["arch"] == "mlp" and config["hidden"] == [10, 10] and config["n_samples"] == 200
    assert config["data"] == "moons" and config["max_epochs"] == 150  # configs/moons.yaml
    m = metrics(moons_run)
    assert final["test/acc"] == pytest.approx(m["test_acc"])
    assert len([row for row in history if "val/acc" in row]) == m["epochs"]


def test_validate_and_test_accept_the_saved_config(moons_run, capsys):
    rc = train.main(["test", "--config", str(moons_run / "config.yaml"), "--ckpt_path", str(moons_run / "best.ckpt")])
    assert rc == 0
    assert f"{metrics(moons_run)['test_acc']}"[:6] in capsys.readouterr().out
    assert train.main(["validate", "--config", str(moons_run / "config.yaml"),
                       "--ckpt_path", str(moons_run / "best.ckpt")]) == 0


def test_resume_continues_the_same_run_exactly(tmp_path):
    common = ["--data", "moons", "--model.dropout", "0.2", "--patience", "0", "--wandb", "true"]
    full = fit(tmp_path / "a", *common, "--trainer.max_epochs", "6")
    part = fit(tmp_path / "b", *common, "--trainer.max_epochs", "3")
    assert train.main(["fit", "--runs_root", str(tmp_path / "b"), *FAST, *common, "--trainer.max_epochs", "6",
                       "--ckpt_path", "last"]) == 0
    assert [p.name for p in (tmp_path / "b/moons/mlp").iterdir()] == [part.name]  # same directory
    a = torch.load(full / "last.ckpt", weights_only=True)
    b = torch.load(part / "last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 5
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert metrics(full)["test_acc"] == metrics(part)["test_acc"]
    assert len(list((part / "wandb").glob("offline-run-*"))) >= 1
    assert {p.name for p in (part / "wandb").glob("offline-run-*/run-*.wandb")} == {f"run-{part.name}.wandb"}


def test_early_stopping_stops_a_plateau(tmp_path):
    run = fit(tmp_path, "--data", "moons", "--model.lr", "1e-12", "--patience", "3", "--monitor", "val/acc",
              "--trainer.max_epochs", "50")
    m = metrics(run)
    assert m["epochs"] < 50 and m["stopped"].startswith("early stopping"), m


@pytest.mark.parametrize("args, reason", [
    (["--trainer.max_epochs", "2"], "reached max_epochs=2"),
    (["--trainer.max_steps", "3", "--monitor", "train/loss"], "reached max_steps=3"),  # said max_epochs=150
    (["--trainer.max_time", "00:00:00:01", "--trainer.max_epochs", "100000", "--patience", "0"], "reached max_time"),
])
def test_the_summary_says_which_limit_ended_the_run(tmp_path, args, reason):
    m = metrics(fit(tmp_path, "--data", "moons", *args))
    assert m["stopped"].startswith(reason), m["stopped"]


def test_lenet5_on_mnist_fraction_of_an_epoch(tmp_path):
    require_data("mnist")
    run = fit(tmp_path, "--data", "mnist", "--model.arch", "lenet5", "--trainer.max_epochs", "1",
              "--trainer.limit_train_batches", "30", "--trainer.limit_val_batches", "2", "--data.augment", "true",
              "--data.cutout", "8")
    m = metrics(run)
    assert 55_000 < m["params"] < 65_000
    assert m["test_acc"] > 0.3, m  # 30 steps already learn digits, even with crops and cutout (chance: 0.1)
    assert "cutout: 8" in (run / "config.yaml").read_text()  # recorded, so the run can be reproduced


@pytest.mark.parametrize("args, words", [
    (["fit", "--model.arch", "resnet9000"], ["resnet9000", "lenet5", "mlp"]),
    (["fit", "--data", "imagenet"], ["imagenet", "mnist", "cifar10"]),
    (["fit", "--data", "moons", "--model.arch", "lenet5"], ["lenet5", "linear", "mlp"]),
    (["fit", "--data", "moons", "--ckpt_path", "/nonexistent/last.ckpt"], ["not found", "/nonexistent"]),
    (["fit", "--data", "moons", "--model.arch", "linear", "--ckpt_path", "last"], ["no run", "linear"]),
    (["fit", "--data", "moons", "--steps_per_execution", "abc"], ["--steps_per_execution abc", "a whole number"]),
    (["fit", "--data", "moons", "--histograms", "abc"], ["--histograms abc", "a whole number"]),
    (["fit", "--data", "moons", "--histograms", "-1"], ["--histograms -1", "v>=0"]),
    (["fit", "--data", "moons", "--model.compile", "maybe"],
     ["--model.compile maybe", "must be true or false (or null: the default)."]),
    (["fit", "--data", "moons", "--data.cutout", "4"], ["cutout"]),
])
def test_bad_input_is_a_clear_error(tmp_path, capsys, args, words):
    rc = train.main([*args, "--runs_root", str(tmp_path), *FAST])
    err = capsys.readouterr().err
    assert rc == 2, err
    # One "error: " paragraph (Lightning's "Seed set to 42" may come before it, depending on logging).
    assert [line for line in err.splitlines() if line.startswith("error: ")] and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


BILLION_LAUGHS = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))


@pytest.mark.parametrize("form", ["--config PATH", "--config=PATH", "-c PATH"])
def test_a_missing_or_broken_config_file_is_named(tmp_path, capsys, form):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  arch: [mlp\n")
    text = tmp_path / "secret.txt"  # valid YAML, a plain string: the parser would print it whole
    text.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1\n")
    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"\x80\xff\x00\xfe" * 64)
    bomb = tmp_path / "laughs.yaml"  # 387 million strings once expanded: jsonargparse copying it hung
    bomb.write_text(BILLION_LAUGHS)
    for path, words in [(tmp_path / "nope.yaml", ["nope.yaml", "not found"]),
                        (bomb, ["laughs.yaml", "expands to more than 100,000 values"]),
                        (tmp_path, ["is a directory, not a file"]),
                        (broken, ["broken.yaml", "is not valid YAML", "line"]),
                        (text, ["secret.txt", "holds a YAML str, not a mapping"]),
                        (binary, ["weights.bin", "cannot be read as text"])]:
        flag = form.replace("PATH", str(path)).split(" ")
        rc = train.main(["fit", *flag, "--runs_root", str(tmp_path), *FAST])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, err
        for word in words:
            assert word in err, (word, err)
        assert "/bin/bash" not in err  # never the file's contents


@pytest.mark.parametrize("flag", ["--data", "--model", "--trainer", "--trainer.callbacks", "--data.init_args"])
def test_a_file_given_to_any_option_is_named_never_echoed(tmp_path, capsys, flag):
    """jsonargparse loads a file given as any option's value as YAML; a text file that is not options
    was quoted whole in its error (`--data ../../etc/passwd`: a path with a dot is no dataset name)."""
    text = tmp_path / "secret.txt"
    text.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1\n")
    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"\x80\xff\x00\xfe" * 64)
    for path, words in [(text, ["secret.txt", "holds a YAML str, not a mapping"]),
                        (binary, ["weights.bin", "cannot be read as text"])]:
        rc = train.main(["fit", flag, str(path), "--runs_root", str(tmp_path), *FAST])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, err
        assert f"{flag} {path}" in err and all(word in err for word in words), err
        assert "/bin/bash" not in err and "daemon" not in err  # never the file's contents


def test_a_file_named_inside_a_config_is_named_never_echoed(tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1\n")
    for text, key in (("data: secret.txt\n", "data"), ("trainer:\n  callbacks: secret.txt\n", "trainer.callbacks")):
        config = tmp_path / "config.yaml"
        config.write_text(text)
        assert train.main(["fit", "--config", str(config), "--runs_root", str(tmp_path), *FAST]) == 2
        err = capsys.readouterr().err
        assert f"{config}: {key}: secret.txt is a file" in err and "/bin/bash" not in err, err


def test_option_files_of_options_still_load(tmp_path):
    model, callbacks = tmp_path / "model.yaml", tmp_path / "callbacks.yaml"
    model.write_text("arch: mlp\nhidden: [8]\n")
    callbacks.write_text("- class_path: lightning.pytorch.callbacks.ModelSummary\n")
    assert train.main(["fit", "--model", str(model), "--trainer.callbacks", str(callbacks),
                       "--trainer.max_epochs", "1", "--runs_root", str(tmp_path), *FAST]) == 0
    (run,) = tmp_path.glob("moons/mlp/*")
    assert json.loads((run / "metrics.json").read_text())["params"] == 2 * 8 + 8 + 8 * 2 + 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_distributed_run(run: Path) -> None:
    """Metrics logged once (one TensorBoard writer) and synchronised over both processes."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    m = metrics(run)
    assert m["devices"] == 2
    events = list(run.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    assert len(acc.Scalars("val/acc")) == m["epochs"]  # once per epoch, not once per process
    assert len({e.name.split(".")[4] for e in events}) == 1  # one host process wrote them
    # Each process saw half the test set; the logged number must be over all of it.
    assert evaluate.evaluate(m["best_ckpt"])["test_acc"] == pytest.approx(m["test_acc"], abs=1e-6)


ENV = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}


def test_ddp_two_cpu_processes(tmp_path):
    cmd = [sys.executable, str(REPO / "train.py"), "fit", "--data", "moons", "--runs_root", str(tmp_path), *FAST,
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.max_epochs", "5", "--data.init_args.n_samples", "400", "--steps_per_execution", "3"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # Chunks of steps are one process's fast path: DDP trains one step per Lightning step, said once.
    assert out.stderr.count("--steps_per_execution 3: it runs on several processes (DDP)") == 1, out.stderr[-3000:]
    (run,) = tmp_path.glob("moons/mlp/*")
    check_distributed_run(run)
    # Numbers logged once per epoch are synced, and the confusion matrix is summed without the
    # deprecated all_gather: Lightning and torch have nothing to warn about.
    assert "sync_dist" not in out.stderr and "all_gather" not in out.stderr, out.stderr[-3000:]


def test_a_finished_command_destroys_its_process_group_and_a_failed_one_does_not(monkeypatch):
    """Left to the interpreter's exit, a DDP process group's Gloo threads could abort the process and hang
    torchrun's other node (the two-node test below, about 1 run in 6); zoo.cli.main destroys it after
    success only, since after an error a peer may still be inside a collective."""
    import zoo.cli
    from zoo.errors import ZooError

    destroyed = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda *a, **k: destroyed.append(1))
    monkeypatch.setattr(zoo.cli, "cli_main", lambda args: None)
    assert zoo.cli.main(["fit"]) == 0 and destroyed == [1]

    def fails(args):
        raise ZooError("a refused run")

    monkeypatch.setattr(zoo.cli, "cli_main", fails)
    assert zoo.cli.main(["fit"]) == 2 and destroyed == [1]


def test_two_node_torchrun_on_loopback(tmp_path):
    port, run = free_port(), tmp_path / "moons/mlp/two-node"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
         str(REPO / "train.py"), "fit", "--data", "moons", *FAST, "--run_dir", str(run),
         "--trainer.accelerator", "cpu", "--trainer.num_nodes", "2", "--trainer.devices", "1",
         "--trainer.strategy", "ddp", "--trainer.max_epochs", "5", "--data.init_args.n_samples", "400"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV) for rank in (0, 1)]
    def tails(outs: list[str]) -> str:  # both nodes' last lines, labelled, for a hang or a failure alike
        return "\n".join(f"node {i}:\n{out[-3000:]}" for i, out in enumerate(outs))

    try:  # on a hang both nodes are killed and both outputs shown, not rank 0's alone
        outs = [p.communicate(timeout=300)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"the two-node run hung for 300 s:\n{tails([p.communicate()[0] for p in procs])}")
    assert [p.returncode for p in procs] == [0, 0], tails(outs)
    check_distributed_run(run)


def test_defaults_need_no_options(tmp_path):
    run = fit(tmp_path, "--trainer.max_epochs", "1")  # no --data, no --model: MLP on two-moons
    assert (run.parent.name, run.parent.parent.name) == ("mlp", "moons")
