"""zoo/run.py: one Run per command. Resume resolution and its refusals, the run directory claimed
once and given back, and no run state left in os.environ (only DDP workers read ZOO_RUN_DIR)."""

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from jsonargparse import Namespace

import train
import zoo.run
from zoo.errors import ZooError
from zoo.run import RUN_DIR_ENV, Run
from zoo.rundir import LOCK_FILE

MOONS = "datamodules.moons.MoonsDataModule"


@pytest.fixture(autouse=True)
def no_ddp_parent(monkeypatch):
    """A plain process, whatever the environment the tests run in."""
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def config(runs_root: Path, ckpt_path: str | None = None, arch: str = "mlp", run_dir: str | None = None) -> Namespace:
    """The part of a parsed `fit` config that a Run reads before instantiation."""
    return Namespace(data=Namespace(class_path=MOONS, init_args=Namespace()), model=Namespace(arch=arch),
                     trainer=Namespace(precision=None, accelerator="cpu"), runs_root=str(runs_root),
                     run_dir=run_dir, ckpt_path=ckpt_path)


@pytest.fixture()
def runs(tiny_moons_run, tmp_path) -> Path:
    """A runs root holding one finished moons run (a copy: a Run must not be able to touch the shared one)."""
    run = tmp_path / "runs" / "moons" / "mlp" / tiny_moons_run.name
    shutil.copytree(tiny_moons_run, run)
    return tmp_path / "runs"


def test_ckpt_path_last_a_run_directory_or_a_file(runs):
    (run,) = runs.glob("moons/mlp/*")
    for spec, resolved in (("last", run / "last.ckpt"), (str(run), run / "last.ckpt"),
                           (str(run / "best.ckpt"), run / "best.ckpt")):
        fit = Run.from_config("fit", config(runs, spec))
        assert (fit.ckpt_path, fit.dir) == (resolved, run), spec  # a resume continues the checkpoint's run
        assert fit.ckpt_hparams["arch"] == "mlp" and fit.ckpt_precision == "32-true"
    test = Run.from_config("test", config(runs, str(run / "best.ckpt")))
    assert (test.ckpt_path, test.dir) == (run / "best.ckpt", None)  # evaluating writes no run
    assert Run.from_config("fit", config(runs, "last", run_dir=str(run))).ckpt_path == run / "last.ckpt"


@pytest.mark.parametrize("spec, change, words", [
    ("last", {"runs_root": "{tmp}/empty"}, ["no run of mlp on moons to resume", "Start one without --ckpt_path"]),
    ("{tmp}/none.ckpt", {}, ["Checkpoint not found", "none.ckpt", "a run directory"]),
    ("{run}", {"arch": "linear"}, ["checkpoint of mlp on moons", "this command trains linear", "config.yaml"]),
    ("{run}", {"run_dir": "{tmp}/other"}, ["name different runs", "drop --run_dir"]),
], ids=["nothing to resume", "missing file", "another model", "another run dir"])
def test_refused_resume(runs, tmp_path, spec, change, words):
    (run,) = runs.glob("moons/mlp/*")
    fill = {k: v.replace("{tmp}", str(tmp_path)) for k, v in change.items()}
    with pytest.raises(ZooError) as e:
        Run.from_config("fit", config(fill.pop("runs_root", runs), spec.format(tmp=tmp_path, run=run), **fill))
    for word in words:
        assert word in str(e.value), str(e.value)


def test_only_a_ddp_worker_reads_the_parents_run_dir(runs, tmp_path, monkeypatch):
    (run,) = runs.glob("moons/mlp/*")
    elsewhere = tmp_path / "elsewhere"  # no run here: `last` finds one only through the variable
    monkeypatch.setenv(RUN_DIR_ENV, str(run))
    with pytest.raises(ZooError, match="no run of mlp"):  # the process that set it: ignored
        Run.from_config("fit", config(elsewhere, "last"))
    monkeypatch.setenv("LOCAL_RANK", "1")  # a worker Lightning started by re-running the command
    worker = Run.from_config("fit", config(elsewhere, "last"))
    assert (worker.ckpt_path, worker.dir) == (run / "last.ckpt", run)
    new = Run.from_config("fit", config(elsewhere))
    new.start()  # joins the parent's run: no directory of its own, no lock (the parent holds it)
    assert new.dir == run and new.lock is None and not elsewhere.exists()
    new.close()
    assert run.is_dir()


def test_start_claims_one_directory_and_close_gives_it_back(tmp_path):
    run = Run.from_config("fit", config(tmp_path))
    run.start()
    (made,) = tmp_path.glob("moons/mlp/*")
    assert run.dir == made and (made / LOCK_FILE).is_file()
    assert os.environ[RUN_DIR_ENV] == str(made)  # for the DDP workers Lightning may start
    assert run.cfg.trainer.default_root_dir == str(made) and run.cfg.trainer.precision == "32-true"
    assert run.cfg.model.hidden is not None  # the recipe filled in, as config.yaml records it
    run.close()  # ended before a checkpoint: nothing left behind, in the file system or the environment
    assert not made.exists() and RUN_DIR_ENV not in os.environ


def checksums(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir() if p.is_file()}


def test_lightning_never_sees_the_checkpoint_before_the_run_resolves_it(runs, capsys):
    # LightningCLI._parse_ckpt_path, given a checkpoint file, parses the file's hyperparameters over the
    # command's model options: this resume with another hidden size would then train silently.
    (run,) = runs.glob("moons/mlp/*")
    before = checksums(run)
    assert train.main(["fit", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "last.ckpt"),
                       "--model.hidden", "[20]", "--runs_root", str(runs), "--quiet", "true"]) == 2
    assert "Cannot resume" in capsys.readouterr().err and checksums(run) == before
    assert RUN_DIR_ENV not in os.environ


def test_an_in_process_fit_claims_its_directory_once_and_leaves_no_state(tmp_path, monkeypatch):
    made, new_run_dir = [], zoo.run.new_run_dir

    def counted(*args):
        made.append(new_run_dir(*args))
        return made[-1]

    monkeypatch.setattr(zoo.run, "new_run_dir", counted)
    assert train.main(["fit", "--runs_root", str(tmp_path), "--quiet", "true", "--data", "moons",
                       "--trainer.max_epochs", "1"]) == 0
    assert made == list(tmp_path.glob("moons/mlp/*")) and (made[0] / "metrics.json").is_file()
    assert RUN_DIR_ENV not in os.environ and not (made[0] / LOCK_FILE).exists()


def test_a_resumed_run_sums_its_time_and_continues_its_history(tmp_path):
    """fit_seconds covers every part of a resumed run (issue 16), and history.csv, one row per epoch,
    continues across the resume without a gap or a repeated epoch."""
    common = ["--runs_root", str(tmp_path), "--quiet", "true", "--data", "moons", "--patience", "0"]
    assert train.main(["fit", *common, "--trainer.max_epochs", "2"]) == 0
    (run,) = tmp_path.glob("moons/mlp/*")
    first = json.loads((run / "metrics.json").read_text())
    assert first["fit_parts"] == 1
    assert train.main(["fit", "--config", str(run / "config.yaml"), "--ckpt_path", str(run), *common,
                       "--trainer.max_epochs", "4"]) == 0
    second = json.loads((run / "metrics.json").read_text())
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert second["fit_parts"] == 2 and second["fit_seconds"] > first["fit_seconds"]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    seconds = [float(r["seconds"]) for r in rows]
    assert seconds == sorted(seconds) and seconds[1] <= first["fit_seconds"] <= seconds[2] <= second["fit_seconds"]
    assert all(0 <= float(r["val/acc"]) <= 1 for r in rows)


def test_fit_reports_the_exact_pixel_subset_as_evaluate_does(tmp_path, monkeypatch):
    """Where a dataset says only its first N test images have the original pixels (CIFAR-10's rebuild),
    metrics.json has their accuracy beside the full test set's, equal to evaluate.py's."""
    from datamodules.moons import MoonsDataModule
    from zoo.commands.evaluate import evaluate

    monkeypatch.setattr(MoonsDataModule, "exact_test", 7)
    assert train.main(["fit", "--runs_root", str(tmp_path), "--quiet", "true", "--data", "moons",
                       "--trainer.max_epochs", "1"]) == 0
    (run,) = tmp_path.glob("moons/mlp/*")
    metrics = json.loads((run / "metrics.json").read_text())
    r = evaluate(str(run), device="cpu")
    assert metrics["n_exact"] == r["n_exact"] == 7
    assert metrics["test_acc_exact"] == r["test_acc_exact"] and metrics["test_acc"] == r["test_acc"]


def test_a_resume_cannot_stretch_a_planned_schedule(tmp_path, capsys):
    """OneCycleLR refuses to step past the end it was built for (a traceback after the last planned
    step); cosine would start over. A resume that changes the run's length is refused up front, and
    the run's files, config.yaml included, stay as they were."""
    common = ["--runs_root", str(tmp_path), "--quiet", "true", "--data", "moons", "--model.scheduler", "onecycle"]
    assert train.main(["fit", *common, "--trainer.max_epochs", "1"]) == 0
    (run,) = tmp_path.glob("moons/mlp/*")
    before = checksums(run)
    assert train.main(["fit", "--config", str(run / "config.yaml"), "--ckpt_path", str(run), *common,
                       "--trainer.max_epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "another training length" in err and "trainer.max_epochs: run 1, command 2" in err
    assert checksums(run) == before


def test_a_damaged_config_of_the_run_to_resume_is_named(tmp_path, capsys):
    """The run's config.yaml says how long its schedule was planned; damaged, it is named (was a
    traceback inside the length check), and nothing of the run changes."""
    common = ["--runs_root", str(tmp_path), "--quiet", "true", "--data", "moons", "--model.scheduler", "onecycle"]
    assert train.main(["fit", *common, "--trainer.max_epochs", "1"]) == 0
    (run,) = tmp_path.glob("moons/mlp/*")
    for text in ("- a list\n", "trainer: [1, 2]\n", "trainer: {max_epochs: [\n", "data: {init_args: [1]}\n"):
        (run / "config.yaml").write_text(text)
        before = checksums(run)
        assert train.main(["fit", "--ckpt_path", str(run), *common, "--trainer.max_epochs", "1"]) == 2
        err = capsys.readouterr().err
        assert f"{run / 'config.yaml'} is damaged" in err and "Traceback" not in err, err
        assert checksums(run) == before


def test_a_crafted_run_timing_in_a_checkpoint_is_refused_in_one_paragraph(tmp_path, capsys):
    common = ["--runs_root", str(tmp_path), "--quiet", "true", "--data", "moons"]
    assert train.main(["fit", *common, "--trainer.max_epochs", "1"]) == 0
    (run,) = tmp_path.glob("moons/mlp/*")
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    ckpt["callbacks"]["RunInfo"]["history"] = ["rm -rf /", {"epoch": "zero"}]
    torch.save(ckpt, run / "last.ckpt")
    assert train.main(["fit", "--config", str(run / "config.yaml"), "--ckpt_path", str(run), *common,
                       "--trainer.max_epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "run timing" in err and "Traceback" not in err and err.strip().count("\n") == 0


# --- --ema: Lightning's EMAWeightAveraging as the run's weights ---------------------------------------
EMA_ARGS = ["--quiet", "true", "--data", "moons", "--patience", "0", "--ema", "0.9"]


def test_ema_is_what_validation_best_ckpt_the_test_and_evaluate_see(tmp_path):
    from zoo.commands.evaluate import evaluate

    assert train.main(["fit", "--runs_root", str(tmp_path), *EMA_ARGS, "--trainer.max_epochs", "4"]) == 0
    (run,) = tmp_path.glob("moons/mlp/*")
    metrics = json.loads((run / "metrics.json").read_text())
    best = torch.load(run / "best.ckpt", weights_only=True)
    average, raw = best["state_dict"], best["current_model_state"]
    assert any(not torch.equal(average[k], raw[k]) for k in average)  # two sets of weights, kept apart
    r = evaluate(str(run / "best.ckpt"), device="cpu")
    assert (r["test_acc"], r["test_loss"]) == (metrics["test_acc"], metrics["test_loss"])  # the test saw the average
    best["state_dict"] = raw  # the raw weights score otherwise: so the equality above is not an accident
    torch.save(best, tmp_path / "raw.ckpt")
    assert evaluate(str(tmp_path / "raw.ckpt"), device="cpu")["test_loss"] != metrics["test_loss"]
    assert "ema: 0.9" in (run / "config.yaml").read_text()


def test_ema_resumes_exactly(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert train.main(["fit", "--runs_root", str(full), *EMA_ARGS, "--trainer.max_epochs", "4"]) == 0
    assert train.main(["fit", "--runs_root", str(part), *EMA_ARGS, "--trainer.max_epochs", "2"]) == 0
    (run,) = part.glob("moons/mlp/*")
    assert train.main(["fit", "--runs_root", str(part), *EMA_ARGS, "--trainer.max_epochs", "4",
                       "--ckpt_path", str(run)]) == 0
    (ref,) = full.glob("moons/mlp/*")
    a, b = (torch.load(r / "last.ckpt", weights_only=True) for r in (ref, run))
    for key in ("state_dict", "current_model_state", "averaging_state"):  # the average, the raw weights, the count
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (ref, run))
    assert (ma["test_acc"], ma["test_loss"], ma["best_score"]) == (mb["test_acc"], mb["test_loss"], mb["best_score"])


@pytest.mark.parametrize("first, then", [("0.9", "0"), ("0", "0.9"), ("0.9", "0.99")])
def test_a_resume_keeps_the_runs_ema(tmp_path, capsys, first, then):
    common = ["--runs_root", str(tmp_path), "--quiet", "true", "--data", "moons", "--patience", "0"]
    assert train.main(["fit", *common, "--ema", first, "--trainer.max_epochs", "1"]) == 0
    (run,) = tmp_path.glob("moons/mlp/*")
    before = checksums(run)
    assert train.main(["fit", *common, "--ema", then, "--trainer.max_epochs", "2", "--ckpt_path", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"with --ema {float(then):g}" in err and f"--ema {float(first):g}" in err and "Traceback" not in err
    assert checksums(run) == before


def test_ema_trains_one_step_per_lightning_step_and_says_so_when_asked_for_more(tmp_path, capsys):
    assert train.main(["fit", "--runs_root", str(tmp_path), *EMA_ARGS, "--trainer.max_epochs", "1",
                       "--steps_per_execution", "4"]) == 0
    assert "--steps_per_execution 4: --ema averages the weights after each Lightning step" in capsys.readouterr().err
    (run,) = tmp_path.glob("moons/mlp/*")
    assert torch.load(run / "last.ckpt", weights_only=True)["steps_per_execution"] == 1


@pytest.mark.parametrize("damage", ["decay", "raw"])
def test_a_damaged_weight_average_is_refused_in_one_paragraph(tmp_path, capsys, damage):
    common = ["--runs_root", str(tmp_path), *EMA_ARGS]
    assert train.main(["fit", *common, "--trainer.max_epochs", "1"]) == 0
    (run,) = tmp_path.glob("moons/mlp/*")
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    if damage == "decay":
        ckpt["callbacks"]["EMA"]["decay"] = "0.9; rm -rf /"
    else:
        del ckpt["current_model_state"]
    torch.save(ckpt, run / "last.ckpt")
    assert train.main(["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", str(run)]) == 2
    err = capsys.readouterr().err
    assert "weight average" in err and "Traceback" not in err and err.strip().count("\n") == 0
