"""Experiment records: what TensorBoard and W&B hold after a real run, read back with their own
readers (TensorBoard's event accumulator and hparams plugin, `wandb leet inspect`), and the noise a
run no longer prints. One short run serves every test: a two-moons fit with parameters drawn from
configs/sweep.yaml and passed as W&B's sweep agent passes them, logging to W&B offline."""

import base64
import contextlib
import hashlib
import io
import json
import logging
import math
import random
from pathlib import Path
from unittest import mock

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

import train
import wandb_log
from conftest import REPO

SWEEP = yaml.safe_load((REPO / "configs/sweep.yaml").read_text())


def draw(spec: dict, rng: random.Random):
    """One value of a W&B sweep parameter, for the kinds configs/sweep.yaml uses."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    if spec["distribution"] == "uniform":
        return rng.uniform(spec["min"], spec["max"])
    if spec["distribution"] == "log_uniform_values":  # uniform in log(value)
        return math.exp(rng.uniform(math.log(spec["min"]), math.log(spec["max"])))
    raise NotImplementedError(f"draw: distribution {spec['distribution']} (add it here)")


def sweep_command(params: dict) -> list[str]:
    """The sweep's command after `${program}`, filled in by the agent's own formatting of `${args}`."""
    assert SWEEP["command"][:3] == ["${env}", "${interpreter}", "${program}"] and SWEEP["program"] == "train.py"
    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    return [a for c in SWEEP["command"][3:] for a in (sweep_vars[c[2:-1]] if c.startswith("${") else [c])]


@contextlib.contextmanager
def captured():
    """Everything a run shows the user, as one text: stdout, stderr, Lightning's log messages and
    W&B's warnings (recorded as W&B issues them: it prints each once per process, or only to its
    own log after an earlier run set WANDB_SILENT)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    lightning = logging.getLogger("lightning.pytorch")
    lightning.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
                mock.patch("wandb.termwarn", lambda text, *args, **kwargs: out.write(f"wandb: WARNING {text}\n")):
            yield out
    finally:
        lightning.removeHandler(handler)


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory) -> tuple[Path, dict, str]:
    """(run directory, drawn parameters, output) of a 2-epoch sweep run, with every W&B option."""
    rng = random.Random(0)
    params = {name: draw(spec, rng) for name, spec in SWEEP["parameters"].items()}
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as env, captured() as out:
        env.setenv("WANDB_MODE", "offline")
        env.delenv("WANDB_API_KEY", raising=False)
        env.setenv("WANDB_DATA_DIR", str(root / "wandb-data"))  # artifacts are staged there until `wandb sync`
        assert train.main([*sweep_command(params), "--runs_root", str(root), "--trainer.max_epochs", "2",
                           "--wandb_project", "zoo-tests", "--wandb_group", "sweep-test",
                           "--wandb_tags", "[moons,tests]", "--wandb_log_model", "true"]) == 0
    (run,) = root.glob("moons/mlp/*")
    return run, params, out.getvalue()


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def wandb_file(run: Path) -> Path:
    (log,) = run.glob("wandb/offline-run-*/run-*.wandb")
    return log


def test_sweep_run_trained_with_the_drawn_values(sweep_run):
    run, params, _ = sweep_run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["lr"] == pytest.approx(params["model.lr"]) and 0.001 <= params["model.lr"] <= 0.1
    assert cfg["model"]["hidden"] == params["model.hidden"]
    assert cfg["model"]["dropout"] == pytest.approx(params["model.dropout"])
    assert cfg["data"]["init_args"]["batch_size"] == params["data.init_args.batch_size"]
    assert cfg["wandb"] is True and cfg["trainer"]["max_epochs"] == 2
    assert metrics(run)["epochs"] == 2
    assert SWEEP["metric"]["name"] == f"{metrics(run)['monitor']}_best"  # a key every run's summary has


def test_tensorboard_hparams_hold_what_ran_and_the_final_metrics(sweep_run):
    run, params, _ = sweep_run
    m, acc = metrics(run), events(run)
    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    hp = {k: v.string_value or v.number_value for k, v in start.hparams.items()}
    assert {k: hp[k] for k in ("data", "precision", "optimizer", "scheduler", "hidden")} == {
        "data": "moons", "precision": "32-true", "optimizer": "adam", "scheduler": "none",
        "hidden": str(params["model.hidden"])}
    assert (hp["batch_size"], hp["max_epochs"], hp["seed"]) == (params["data.init_args.batch_size"], 2, 42)
    assert hp["lr"] == pytest.approx(params["model.lr"]) and hp["dropout"] == pytest.approx(params["model.dropout"])
    experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
    columns = [info.name.tag for info in experiment.metric_infos]
    assert columns == ["val/loss_best", "test/acc", "test/loss"]
    # The HParams tab shows each metric's last value: the run's.
    final = [acc.Scalars(tag)[-1].value for tag in columns]
    assert final == pytest.approx([m["best_score"], m["test_acc"], m["test_loss"]])


def test_learning_rate_has_one_name_whatever_the_optimizer(sweep_run):
    run, params, _ = sweep_run
    acc = events(run)
    assert not [t for t in acc.Tags()["scalars"] if t.startswith("lr-")]
    lr = acc.Scalars("train/lr")
    assert len(lr) == 2 and lr[-1].value == pytest.approx(params["model.lr"])  # every epoch; no schedule here


def test_wandb_run_holds_the_settings_options_and_one_of_each_metric(sweep_run):
    run, params, _ = sweep_run
    m, state = metrics(run), wandb_log.run(wandb_file(run))
    assert (state["project"], state["name"], state["run_id"]) == ("zoo-tests", run.name, run.name)
    assert state["tags"] == ["moons", "tests"] and state["state"] == "finished"
    (start,) = [r["run"] for r in wandb_log.records(wandb_file(run)) if r["type"] == "run"]
    assert start["run_group"] == "sweep-test"
    config = state["config"]
    assert {k: config[k] for k in ("data", "max_epochs", "precision", "seed", "devices")} == {
        "data": "moons", "max_epochs": 2, "precision": "32-true", "seed": 42, "devices": 1}
    assert config["batch_size"] == params["data.init_args.batch_size"] and config["hidden"] == params["model.hidden"]
    assert config["lr"] == pytest.approx(params["model.lr"])
    summary = state["summary"]
    assert not {"test_acc", "test_loss", "best_score"} & set(summary)  # said once, under the curves' names
    assert summary["test/acc"] == pytest.approx(m["test_acc"]) and summary["test/loss"] == pytest.approx(m["test_loss"])
    assert summary["val/loss_best"] == pytest.approx(m["best_score"])


def test_wandb_confusion_chart_and_per_class_table(sweep_run):
    run, _, _ = sweep_run
    log, m = wandb_file(run), metrics(run)
    summary = wandb_log.run(log)["summary"]
    charts = [r["config"]["update"] for r in wandb_log.records(log) if r["type"] == "config"]
    panel = next(c["_wandb.visualize.test/confusion_matrix_chart"] for c in charts
                 if "_wandb.visualize.test/confusion_matrix_chart" in c)
    assert panel["panel_config"]["panelDefId"] == "wandb/confusion_matrix/v1"  # W&B's interactive chart
    chart = json.loads((log.parent / "files" / summary["test/confusion_matrix_chart_table"]["path"]).read_text())
    assert chart["columns"] == ["Actual", "Predicted", "nPredictions"]
    counts = {(true, pred): n for true, pred, n in chart["data"]}
    assert sum(counts.values()) == 60  # the two-moons test split
    assert (counts["0", "0"] + counts["1", "1"]) / 60 == pytest.approx(m["test_acc"])
    table = json.loads((log.parent / "files" / summary["test/acc_per_class"]["path"]).read_text())
    assert table["columns"] == ["class", "correct", "examples", "accuracy"]
    for name, correct, examples, accuracy in table["data"]:
        assert correct == counts[name, name] and accuracy == pytest.approx(summary[f"test/acc_class/{name}"])


def test_wandb_model_artifact_is_the_best_checkpoint(sweep_run):
    run, _, _ = sweep_run
    (artifact,) = [r["artifact"] for r in wandb_log.records(wandb_file(run))
                   if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    assert artifact["name"] == f"model-{run.name}" and set(artifact["aliases"]) == {"best", "latest"}
    (entry,) = artifact["manifest"]["contents"]
    md5 = base64.b64encode(hashlib.md5((run / "best.ckpt").read_bytes()).digest()).decode()
    assert entry["path"] == "best.ckpt" and entry["digest"] == md5
    assert json.loads(artifact["metadata"])["test/acc"] == pytest.approx(metrics(run)["test_acc"])


def test_a_run_prints_no_noise(sweep_run):
    _, _, out = sweep_run
    assert "Epoch 1/1" in out and "it/s" in out  # the progress bar was drawn, with its speed ...
    assert "0.00it/s" not in out  # ... measured on 2-8 batch epochs and a 1-batch test set
    assert "anonymous setting has no effect" not in out  # W&B
    assert "litlogger" not in out and "litmodels" not in out  # Lightning's adverts


def test_test_command_prints_no_advert(sweep_run):
    run, _, _ = sweep_run
    with captured() as out:
        assert train.main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "best.ckpt")]) == 0
    assert "Testing" in out.getvalue() and "litmodels" not in out.getvalue()
