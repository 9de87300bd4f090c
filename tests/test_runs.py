"""Run directories and flags: a run is never overwritten, two processes never train one run, a
refused resume changes no file, and every flag the user gives is the one that trains and is
recorded (issue: trust). In-process through `train.main`; files compared by checksum."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import train
from zoo import cli
from zoo.errors import ZooError as ZooError_
from zoo.rundir import LOCK_FILE, RunLock, claim_run_dir

FAST = ["--quiet", "true"]


def checksums(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*"))
            if p.is_file()}


@pytest.fixture()
def finished_run(tmp_path) -> Path:
    """A finished 2-epoch MLP(10,10)-on-moons run of its own (tests here modify or lock it)."""
    assert train.main(["fit", "--runs_root", str(tmp_path / "runs"), *FAST, "--data", "moons", "--model.hidden",
                       "[10,10]", "--trainer.max_epochs", "2"]) == 0
    (run,) = (tmp_path / "runs").glob("moons/mlp/*")
    return run


def fit(*args: str) -> int:
    return train.main(["fit", *FAST, *args])


def printed_config(capsys, *args: str) -> dict:
    capsys.readouterr()  # drop what fixtures printed
    assert train.main([*args, "--print_config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


# --- a run directory holds one run ----------------------------------------------------------------

def test_run_dir_of_another_run_is_refused_and_untouched(finished_run, capsys):
    before = checksums(finished_run)
    assert fit("--data", "moons", "--model.arch", "linear", "--run_dir", str(finished_run)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert checksums(finished_run) == before


def test_run_dir_holding_other_files_is_refused_and_untouched(tmp_path, capsys):
    folder = tmp_path / "my-project"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    before = checksums(folder)
    assert fit("--data", "moons", "--trainer.max_epochs", "1", "--run_dir", str(folder)) == 2
    assert "new or empty directory" in capsys.readouterr().err
    assert checksums(folder) == before


def test_new_or_empty_run_dir_is_used(tmp_path):
    empty = tmp_path / "mine"
    empty.mkdir()
    assert fit("--data", "moons", "--trainer.max_epochs", "1", "--run_dir", str(empty)) == 0
    assert (empty / "best.ckpt").is_file() and not (empty / LOCK_FILE).exists()  # lock released


def test_nodes_of_one_job_share_a_run_dir_other_jobs_do_not(tmp_path, monkeypatch):
    run = tmp_path / "job-42"
    job = {"TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "8"}
    for key, value in job.items():
        monkeypatch.setenv(key, value)
    claim_run_dir(run, resuming=False)  # the first node
    (run / "config.yaml").write_text("written by the first node\n")
    claim_run_dir(run, resuming=False)  # another node of the same job joins
    monkeypatch.setenv("MASTER_PORT", "29501")  # another job
    with pytest.raises(ZooError_, match="already holds a run"):
        claim_run_dir(run, resuming=False)
    monkeypatch.setenv("MASTER_PORT", "29500")
    (run / "last.ckpt").write_bytes(b"a checkpoint")  # the job has trained: a new launch is another job
    with pytest.raises(ZooError_, match="already holds a run"):
        claim_run_dir(run, resuming=False)


# --- one process per run: the lock ----------------------------------------------------------------

def test_a_run_resumed_in_a_moved_directory_keeps_its_best(finished_run, tmp_path):
    """A clone or a copy elsewhere: Lightning reloads the best score only when the run's directory is where
    the checkpoint was written, so the first resumed epoch would replace a better best.ckpt with itself."""
    last = torch.load(finished_run / "last.ckpt", weights_only=False)
    (state,) = [s for s in last["callbacks"].values() if s.get("monitor") == "val/loss"]
    unbeatable = torch.tensor(-1.0)  # a best that no later epoch can improve on (val/loss is minimised)
    state.update(best_model_score=unbeatable, kth_value=unbeatable,
                 best_k_models={k: unbeatable for k in state["best_k_models"]})
    torch.save(last, finished_run / "last.ckpt")
    best = (finished_run / "best.ckpt").read_bytes()
    moved = tmp_path / "clone" / "run"
    moved.parent.mkdir()
    finished_run.rename(moved)
    assert fit("--config", str(moved / "config.yaml"), "--ckpt_path", str(moved), "--trainer.max_epochs", "3") == 0
    assert (moved / "best.ckpt").read_bytes() == best  # epoch 3 did not beat the best: best.ckpt kept
    after = torch.load(moved / "last.ckpt", weights_only=False)
    (state,) = [s for s in after["callbacks"].values() if s.get("monitor") == "val/loss"]
    assert float(state["best_model_score"]) == -1.0
    assert state["best_model_path"] == str(moved.resolve() / "best.ckpt") and state["dirpath"] == str(moved.resolve())


def test_resume_of_a_run_being_trained_is_refused(finished_run, capsys):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live 'trainer'
    try:
        (finished_run / LOCK_FILE).write_text(f'{{"pid": {other.pid}, "host": "{os.uname().nodename}", '
                                              f'"started": "now"}}')
        before = checksums(finished_run)
        assert fit("--config", str(finished_run / "config.yaml"), "--ckpt_path", str(finished_run),
                   "--trainer.max_epochs", "3") == 2
        err = capsys.readouterr().err
        assert f"process {other.pid}" in err and "two processes must not train one run" in err.lower(), err
        assert checksums(finished_run) == before
    finally:
        other.kill()
        other.wait()


def test_stale_lock_is_taken_over_with_a_notice(finished_run, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (finished_run / LOCK_FILE).write_text(f'{{"pid": {dead.pid}, "host": "{os.uname().nodename}", "started": "x"}}')
    assert fit("--config", str(finished_run / "config.yaml"), "--ckpt_path", str(finished_run),
               "--trainer.max_epochs", "3") == 0
    assert f"process {dead.pid} that held it is no longer running" in capsys.readouterr().err
    assert torch.load(finished_run / "last.ckpt", weights_only=True)["epoch"] == 2
    assert not (finished_run / LOCK_FILE).exists()


@pytest.mark.parametrize("text", ['{"pid": 1000000000000000000000, "host": "HOST"}', '{"pid": 0, "host": "HOST"}',
                                  '{"pid": -1, "host": "HOST"}', '{"pid": true, "host": "HOST"}', "[1, 2]", "{"])
def test_a_garbled_lock_is_taken_over_never_named_as_a_process(tmp_path, capsys, text):
    """A lock's pid is only believed if it can be one: a huge one was an OverflowError traceback, and
    pid 0 or -1 made the message say `kill -1` (every process of the user)."""
    (tmp_path / LOCK_FILE).write_text(text.replace("HOST", os.uname().nodename))
    lock = RunLock(tmp_path)
    lock.acquire()
    assert lock.held and "its lock file was unreadable or garbled" in capsys.readouterr().err
    (tmp_path / LOCK_FILE).write_text("[1]")  # replaced under us by something that is not a lock
    lock.release()  # not ours: left in place, and no error
    assert (tmp_path / LOCK_FILE).read_text() == "[1]"


def test_lock_is_exclusive_within_and_across_processes(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    first.acquire()
    # Same PID in the file is this process: a lock left by an earlier in-process run, taken over.
    second.acquire()
    assert second.held
    second.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_resume_removes_temp_files_of_an_interrupted_save(finished_run, capsys):
    (finished_run / ".last.ckpt.k9x2.tmp").write_bytes(b"half a checkpoint")
    (finished_run / ".my-notes.tmp").write_text("not ours")
    assert fit("--config", str(finished_run / "config.yaml"), "--ckpt_path", str(finished_run),
               "--trainer.max_epochs", "3") == 0
    assert [p.name for p in finished_run.glob(".*.tmp")] == [".my-notes.tmp"]  # only our own temp files go
    assert "left by an interrupted save" in capsys.readouterr().err


# --- a refused resume writes nothing ----------------------------------------------------------------

@pytest.mark.parametrize("change, words", [(["--model.hidden", "[20]"], ["hidden", "[10, 10]", "[20]"]),
                                           (["--model.optimizer", "sgd"], ["optimizer", "adam", "sgd"])],
                         ids=["hidden", "optimizer"])
def test_refused_resume_changes_no_file(finished_run, capsys, change, words):
    before = checksums(finished_run)
    assert fit("--config", str(finished_run / "config.yaml"), "--ckpt_path", str(finished_run), *change) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err
    assert checksums(finished_run) == before
    # ... so README's resume command still works afterwards.
    assert fit("--config", str(finished_run / "config.yaml"), "--ckpt_path", str(finished_run),
               "--trainer.max_epochs", "3") == 0


# --- flags: the user's win, one interface, recorded as they ran ----------------------------------

def test_explicit_flags_win_over_the_dataset_recipe_wherever_they_stand(capsys):
    cfg = printed_config(capsys, "fit", "--trainer.max_epochs", "1", "--data", "mnist")
    assert cfg["trainer"]["max_epochs"] == 1  # configs/mnist.yaml says 15
    cfg = printed_config(capsys, "fit", "--model.arch", "mobilenetv2", "--data", "cifar10")
    assert cfg["model"]["arch"] == "mobilenetv2"  # configs/cifar10.yaml says resnet20
    cfg = printed_config(capsys, "fit", "--data", "image_folder", "--data.init_args.data_dir", "/anywhere")
    assert cfg["data"]["init_args"]["batch_size"] == 64  # its own default, not two-moons' 32


def test_printed_and_saved_config_is_the_resolved_recipe(capsys, finished_run):
    model = printed_config(capsys, "fit", "--data", "cifar10", "--model.arch", "resnet20")["model"]
    assert (model["optimizer"], model["lr"], model["weight_decay"], model["scheduler"]) == ("sgd", 0.1, 5e-4, "cosine")
    assert model["channels_last"] is True
    saved = yaml.safe_load((finished_run / "config.yaml").read_text())["model"]
    hp = torch.load(finished_run / "best.ckpt", weights_only=True)["hyper_parameters"]
    assert saved["hidden"] == hp["hidden"] == [10, 10]
    assert saved["optimizer"] == hp["optimizer"] == "adam" and saved["lr"] == hp["lr"] == 0.01  # moons recipe


def test_lr_find_choice_is_what_config_and_hparams_record(tmp_path):
    assert fit("--runs_root", str(tmp_path), "--data", "moons", "--lr_find", "true", "--trainer.max_epochs", "1") == 0
    (run,) = tmp_path.glob("moons/mlp/*")
    lr = yaml.safe_load((run / "config.yaml").read_text())["model"]["lr"]
    assert lr != 0.01  # the finder's choice, not the recipe's
    assert torch.load(run / "best.ckpt", weights_only=True)["hyper_parameters"]["lr"] == lr


def test_no_data_and_no_config_is_the_moons_recipe(capsys):
    cfg = printed_config(capsys, "fit")
    recipe = yaml.safe_load((cli.CONFIGS / "moons.yaml").read_text())
    assert cfg["data"]["class_path"].endswith("MoonsDataModule")
    assert (cfg["model"]["lr"] == recipe["model"]["lr"]
            and cfg["trainer"]["max_epochs"] == recipe["trainer"]["max_epochs"])
    assert (cfg["monitor"], cfg["patience"]) == (recipe["monitor"], recipe["patience"])


def test_a_config_file_without_a_data_section_trains_the_moons_recipe_under_it(capsys, tmp_path):
    """A file of trainer settings alone is the moons recipe with those settings on top (it used to be
    refused: 'the following arguments are required: fit.data')."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("trainer:\n  max_epochs: 3\nmodel:\n  arch: linear\n")
    cfg = printed_config(capsys, "fit", "--config", str(mine))
    assert cfg["data"]["class_path"].endswith("MoonsDataModule")
    assert cfg["trainer"]["max_epochs"] == 3 and cfg["model"]["arch"] == "linear"
    assert cfg["model"]["lr"] == yaml.safe_load((cli.CONFIGS / "moons.yaml").read_text())["model"]["lr"]
    # A file that names its data is the whole recipe: the moons recipe does not come underneath it.
    assert cli.expand_data_shorthand(["fit", f"--config={cli.CONFIGS / 'mnist.yaml'}"]) == [
        "fit", f"--config={cli.CONFIGS / 'mnist.yaml'}"]


def test_an_empty_runs_root_is_refused_not_taken_for_the_current_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fit("--runs_root", "") == 2
    assert "--runs_root is empty" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_an_unknown_model_name_makes_no_directory_anywhere(tmp_path, capsys):
    """The model's name becomes part of the run directory's path: it is checked before any is made,
    so a name like ../../x cannot make directories outside --runs_root."""
    runs = tmp_path / "a" / "runs"
    for spec in ([], ["--ckpt_path", "last"]):
        assert fit("--model.arch", "../../escape", "--runs_root", str(runs), *spec) == 2
        assert "unknown model '../../escape'" in capsys.readouterr().err
        assert list(tmp_path.rglob("*")) == []


@pytest.mark.parametrize("args", [
    ["fit", "--trainer.max_epo", "1"],  # Lightning's parser would take the prefix for --trainer.max_epochs
    ["predict", "--pretrained", "moons", "--model", "mlp", "--inp", "x.csv"],
    ["export", "--pretrained", "moons", "--model", "mlp", "--ou", "x.pt"],
    ["compare", "--datasets", "[moons]", "--model", "[mlp]"],
    ["doctor", "--data_d", "data"],
])
def test_an_abbreviated_option_is_refused_not_guessed(args, capsys, tmp_path, monkeypatch):
    """Only whole option names: a prefix silently meant whatever option it began (evaluate.py --data mnist
    was --data_dir mnist), and a new option would change what an old prefix means."""
    monkeypatch.chdir(tmp_path)
    assert train.main(args) == 2
    assert f"unrecognized arguments: {args[-2]}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_refuses_an_abbreviated_option(capsys, tmp_path):
    import evaluate

    assert evaluate.main([str(tmp_path), "--data", "mnist"]) == 2
    assert "unrecognized arguments: --data mnist" in capsys.readouterr().err


def test_help_lists_every_subcommand(capsys):
    assert train.main(["--help"]) == 0
    out = capsys.readouterr().out
    for sub in ("fit", "validate", "test", "compare", "doctor", "predict", "export"):
        assert f"\n  {sub} " in out, sub
    assert "predict   classify image files" in out  # ours, not Lightning's predict


@pytest.mark.filterwarnings("ignore:.*could not find the monitored key")  # Lightning's, what this test is about
def test_metric_that_never_comes_ends_without_best_ckpt_and_says_so(tmp_path, capsys):
    # 3 steps of a 4-step epoch: no validation epoch ends, so val/loss never exists.
    assert fit("--runs_root", str(tmp_path), "--data", "moons", "--trainer.max_steps", "3") == 0
    (run,) = tmp_path.glob("moons/mlp/*")
    assert "no best.ckpt" in capsys.readouterr().err
    assert not (run / "best.ckpt").exists() and (run / "last.ckpt").is_file() and (run / "metrics.json").is_file()


def test_a_refused_run_removes_the_folders_it_made_and_only_those(tmp_path, capsys):
    """A fit refused before its first checkpoint leaves the disk as it found it: its run directory
    and the folders made above it go (--runs_root's data/model folders, or --run_dir's parents);
    a folder that was there before, or that holds another run, stays."""
    bad = ["--data", "moons", "--monitor", "val/accuracy"]  # refused once the datamodule is set up
    assert fit(*bad, "--runs_root", str(tmp_path / "new" / "runs")) == 2
    assert "val/accuracy" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert fit(*bad, "--run_dir", str(tmp_path / "a" / "b" / "run")) == 2
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "runs" / "moons" / "mlp" / "other"
    kept.mkdir(parents=True)
    assert fit(*bad, "--runs_root", str(tmp_path / "runs")) == 2
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*"))] == [
        "runs", "runs/moons", "runs/moons/mlp", "runs/moons/mlp/other"]
