"""`train.py compare` end to end on two-moons, and the k-NN / majority baselines on toy data.

One small compare (linear and MLP x two-moons x 2 seeds, 2 epochs each) is shared by the tests; it
runs in-process through `train.main`, like a user's command line.
"""

import csv
import json
import os
import shutil
import statistics
from pathlib import Path

import pytest
import torch

import train
from conftest import require_data
from test_train import BILLION_LAUGHS
from zoo.commands import evaluate
from zoo.commands.baselines import knn, majority, vote
from zoo.commands.compare import read_tta, recipe_text
from zoo.errors import ZooError

PNG = b"\x89PNG\r\n\x1a\n"


def compare_args(tmp: Path, *extra: str) -> list[str]:
    return ["compare", "--models", "[linear,mlp,lenet5]", "--datasets", "[moons]", "--seeds", "2", "--epochs", "2",
            "--out", str(tmp / "out"), "--runs_root", str(tmp / "runs"), *extra]


@pytest.fixture(scope="module", autouse=True)
def keep_global_seed():
    """The fits publish their seed in PL_GLOBAL_SEED, which datamodules read: don't leak it to other tests."""
    old = os.environ.get("PL_GLOBAL_SEED")
    yield
    if old is None:
        os.environ.pop("PL_GLOBAL_SEED", None)
    else:
        os.environ["PL_GLOBAL_SEED"] = old


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("compare")
    assert train.main(compare_args(tmp)) == 0
    return tmp


def read_csv(path: Path) -> dict[str, dict]:
    with path.open() as f:
        return {row["model"]: row for row in csv.DictReader(f)}


def test_table_has_a_row_per_model_and_baseline(compared):
    rows = read_csv(compared / "out/moons.csv")
    assert list(rows) == ["majority", "knn", "linear", "mlp"]  # baselines, then models by parameters
    assert all(row["dataset"] == "moons" for row in rows.values())
    markdown = (compared / "out/moons.md").read_text()
    for model in rows:
        assert f"| {model} |" in markdown


def test_numbers_come_from_the_runs(compared):
    rows = read_csv(compared / "out/moons.csv")
    for model in ("linear", "mlp"):
        runs = [json.loads((compared / f"runs/moons/{model}/seed{k}/metrics.json").read_text()) for k in (0, 1)]
        copies = [json.loads((compared / f"out/runs/moons/{model}/seed{k}/metrics.json").read_text()) for k in (0, 1)]
        assert runs == copies  # results/ holds the runs' own metrics, not a re-computation
        row, accs = rows[model], [m["test_acc"] for m in runs]
        assert float(row["test_acc_mean"]) == pytest.approx(statistics.mean(accs), abs=1e-6)
        assert float(row["test_acc_std"]) == pytest.approx(statistics.stdev(accs), abs=1e-6)
        assert float(row["test_error_mean"]) == pytest.approx(1 - statistics.mean(accs), abs=1e-6)
        assert int(row["params"]) == runs[0]["params"] and int(row["flops"]) == runs[0]["flops"]
        assert float(row["fit_seconds"]) == pytest.approx(statistics.mean(m["fit_seconds"] for m in runs), abs=1e-6)
        assert row["n_seeds"] == "2" and row["seeds"] == "0 1" and row["max_epochs"] == "2"
        assert float(row["latency_ms_b1"]) > 0 and float(row["throughput"]) > 0
        assert not list((compared / f"out/runs/moons/{model}").glob("*/*.ckpt"))  # no checkpoints in results
        history = (compared / f"out/runs/moons/{model}/seed0/history.csv").read_text().splitlines()
        assert history[0].startswith("epoch,step,seconds") and len(history) == 1 + 2  # a row per epoch
    lin, mlp = rows["linear"], rows["mlp"]
    gain = (float(mlp["test_acc_mean"]) - float(lin["test_acc_mean"])) * 100
    assert float(mlp["delta_linear_pp"]) == pytest.approx(gain, abs=1e-4)
    assert mlp["reference_acc"] == "95.0" and "lecture" in mlp["reference_source"]


def test_plots_are_valid_pngs(compared):
    from PIL import Image

    names = ["moons_error_vs_params.png", "moons_error_vs_flops.png", "moons_boundary_linear.png",
             "moons_boundary_mlp.png", "moons_time_to_accuracy.png"]
    for name in names:
        path = compared / "out" / name
        assert path.read_bytes()[:8] == PNG, name
        with Image.open(path) as image:
            image.verify()
            assert image.size[0] > 200


def test_impossible_pair_is_skipped_with_its_reason(compared):
    markdown = (compared / "out/moons.md").read_text()
    assert "Skipped lenet5" in markdown and "needs image input" in markdown
    assert not (compared / "runs/moons/lenet5").exists()


def test_rerun_reuses_finished_runs(compared, capsys):
    ckpts = sorted((compared / "runs").glob("moons/*/seed*/best.ckpt"))
    assert len(ckpts) == 4
    before = {p: p.stat().st_mtime_ns for p in ckpts}
    capsys.readouterr()
    assert train.main(compare_args(compared)) == 0
    out = capsys.readouterr().out
    assert "4 finished (reused), 0 to resume, 0 to train" in out and out.count(": reused ") == 4
    assert {p: p.stat().st_mtime_ns for p in ckpts} == before


def test_from_runs_rebuilds_the_same_table(compared):
    assert train.main(["compare", "--from_runs", str(compared / "out"), "--out", str(compared / "rebuilt")]) == 0
    old, new = (compared / "out/moons.md").read_text(), (compared / "rebuilt/moons.md").read_text()
    assert old.splitlines()[:-1] == new.splitlines()[:-1]  # all but the "Written ... by ..." line
    assert (compared / "out/moons.csv").read_bytes() == (compared / "rebuilt/moons.csv").read_bytes()
    assert (compared / "rebuilt/moons_error_vs_params.png").read_bytes()[:8] == PNG


def test_from_runs_without_compare_json_measures_the_baselines_again(compared, tmp_path):
    shutil.copytree(compared / "out", tmp_path / "out")
    (tmp_path / "out/compare.json").unlink()  # what its error message tells a user with a damaged one to do
    assert train.main(["compare", "--from_runs", str(tmp_path / "out")]) == 0
    assert list(read_csv(tmp_path / "out/moons.csv")) == ["majority", "knn", "linear", "mlp"]
    assert "moons" in json.loads((tmp_path / "out/compare.json").read_text())["baselines"]


def test_from_runs_keeps_the_baselines_as_the_last_compare_left_them(compared, tmp_path, capsys):
    """A table compared with baselines and then again with --baselines false keeps its cached baselines in
    compare.json, but a rebuild shows the table as it was last written: without them, until a compare
    shows them again (from the cache: nothing measured)."""
    shutil.copytree(compared / "out", tmp_path / "out")
    again = compare_args(tmp_path, "--runs_root", str(compared / "runs"))  # the shared runs, reused
    rebuild = ["compare", "--from_runs", str(tmp_path / "out"), "--out", str(tmp_path / "rebuilt")]
    assert train.main([*again, "--baselines", "false"]) == 0
    assert list(read_csv(tmp_path / "out/moons.csv")) == ["linear", "mlp"]
    assert "moons" in json.loads((tmp_path / "out/compare.json").read_text())["baselines"]  # still cached
    assert train.main(rebuild) == 0
    assert list(read_csv(tmp_path / "rebuilt/moons.csv")) == ["linear", "mlp"]
    capsys.readouterr()
    assert train.main(again) == 0
    assert "measuring the baselines" not in capsys.readouterr().out
    assert train.main(rebuild) == 0
    assert list(read_csv(tmp_path / "rebuilt/moons.csv")) == ["majority", "knn", "linear", "mlp"]


def test_interrupted_run_resumes_in_its_directory(compared, capsys):
    run = compared / "runs/moons/linear/seed1"
    acc = json.loads((run / "metrics.json").read_text())["test_acc"]
    (run / "metrics.json").unlink()  # as if killed after the last checkpoint, before the test
    capsys.readouterr()
    assert train.main(compare_args(compared)) == 0
    assert "linear on moons, seed 1: resuming from last.ckpt" in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text())["test_acc"] == acc  # same weights, same test


def test_changed_budget_refuses_to_reuse(compared, capsys):
    args = compare_args(compared)
    args[args.index("--epochs") + 1] = "5"
    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert "was trained with" in err and "--trainer.max_epochs 2" in err


@pytest.mark.parametrize("extra, says", [
    (["--seeds", "0"], "--seeds 0: give a number of seeds (at least 1)"),
    (["--seeds", "[0,0]"], "--seeds [0, 0]: give a number of seeds"),
    (["--seeds", "[-1]"], "--seeds [-1]: give a number of seeds"),
    (["--seeds_for", "{mlp: 0}"], "--seeds_for mlp: 0: give a number of seeds"),
    (["--seeds_for", "{lenet5: 2}"], "key 'lenet5' names a model or dataset this command does not train"),
    (["--args_for", "{mnist/mlp: --trainer.max_epochs 1}"], "key 'mnist/mlp' names a model or dataset"),
    (["--args_for", "{mpl: --trainer.max_epochs 1}"], "key 'mpl' is neither a model name"),
    (["--epochs", "0"], "--epochs 0: give at least 1"),
    (["--train_fraction", "1.5"], "--train_fraction 1.5: give a fraction"),
    (["--train_args", '--model.lr "0.1'], "--train_args '--model.lr \"0.1': No closing quotation"),
    (["--args_for", "{mlp: \"--model.lr '0.1\"}"], "--args_for mlp: \"--model.lr '0.1\": No closing quotation"),
])
def test_a_budget_seed_or_key_that_cannot_work_is_refused_before_any_run(extra, says, tmp_path, capsys):
    """Refused before any run: --seeds 0 wrote a table of baselines alone, a --seeds_for or --args_for key
    for a model the command does not train was silently ignored, --epochs 0 stopped the command in its
    first run, and unbalanced quotes were a traceback."""
    args = ["compare", "--models", "[mlp]", "--datasets", "[moons]", "--out", str(tmp_path / "out"),
            "--runs_root", str(tmp_path / "runs"), *extra]
    assert train.main(args) == 2
    assert says in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_knn_is_exact_on_separable_toy_data():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    def sample(n):
        y = torch.arange(n) % 3
        return centres[y] + 0.5 * torch.randn(n, 2), y
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = sample(60), sample(15), sample(30)
    r = knn(train_x, train_y, val_x, val_y, test_x, test_y, num_classes=3)
    assert r["test_acc"] == 1.0 and r["val_acc"] == 1.0
    assert (r["k"], r["metric"]) == (1, "euclidean")  # ties go to the simplest setting
    assert r["n_train"] == 60 and r["flops"] == 2 * 60 * 2 and r["latency_ms_b1"] > 0
    # 1-NN on its own training set is exact: every point is its own nearest neighbour.
    assert knn(train_x, train_y, train_x, train_y, train_x, train_y, 3, ks=(1,))["test_acc"] == 1.0


def test_vote_breaks_ties_towards_the_nearer_neighbour_and_majority_counts():
    labels = torch.tensor([[2, 1, 1], [0, 1, 2]])  # nearest first
    assert vote(labels, 3, 3).tolist() == [1, 0]  # a clear majority; a three-way tie goes to the nearest
    assert vote(labels, 2, 3).tolist() == [2, 0]
    m = majority(torch.tensor([0, 1, 1, 2]), torch.tensor([1, 1, 0, 2]))
    assert m["label"] == 1 and m["test_acc"] == 0.5


def test_machine_comes_from_torchs_collect_env_like_the_doctor(monkeypatch):
    from torch.utils import collect_env

    from zoo.commands import compare

    fake = collect_env.get_env_info()._replace(torch_version="9.9.9+zoo", cpu_info="Model name: Zoo Test CPU 9000")
    monkeypatch.setattr(compare, "get_env_info", lambda: fake)
    assert compare.machine().startswith("Zoo Test CPU 9000, ") and ", torch 9.9.9+zoo, lightning " in compare.machine()


def test_exact_pixel_column_only_where_the_data_has_it():
    """CIFAR-10's original-pixel accuracy gets its own column beside the headline one; tables of other
    datasets keep their columns (their committed CSVs rebuild byte for byte)."""
    from zoo.commands.compare import CSV_FIELDS, Row, csv_text, markdown_text

    def row(model, exact):
        return Row(model=model, dataset="cifar10", params=10, macs=5, flops=10, latency_ms_b1=1.0, throughput=2.0,
                   epochs=1, max_epochs=1, fit_seconds=3.0, device="cpu", seeds=[0], acc=0.9, acc_std=0.0,
                   recipe="sgd", acc_exact=exact)

    plain, exact = csv_text([row("a", None)]), csv_text([row("a", 0.925)])
    assert plain.splitlines()[0] == ",".join(CSV_FIELDS)
    assert exact.splitlines()[0].endswith(",test_acc_exact_mean") and exact.splitlines()[1].endswith(",0.925")
    table = {"data": "cifar10", "rows": [row("a", 0.925)], "baselines": None, "skipped": {}, "runs": {}}
    md = markdown_text(table, {}, "")
    header = md.splitlines()[2].split(" | ")
    assert header.index("original-pixel test acc %") == header.index("test acc %") + 1
    assert "| 90.00 | 92.50 |" in md and "1,017" in md


@pytest.mark.parametrize("text", ["epoch,step,seconds\n0,1,not a number\n",
                                  "epoch,val/acc\n0,0.5\n",  # no seconds: the plot's KeyError
                                  "epoch,seconds,val/acc\n0,inf,0.5\n", "epoch,seconds,val/acc\n0,1,93\n"])
def test_a_damaged_history_is_named_not_a_traceback(compared, tmp_path, capsys, text):
    copy = tmp_path / "out"
    shutil.copytree(compared / "out", copy)
    (copy / "runs/moons/mlp/seed0/history.csv").write_text(text)
    assert train.main(["compare", "--from_runs", str(copy), "--out", str(tmp_path / "rebuilt")]) == 2
    err = capsys.readouterr().err
    assert "history.csv is not a history written by train.py fit" in err and "Traceback" not in err
    assert not any((tmp_path / "rebuilt").glob("*")), "nothing half-written"


# (file in the first run's copy, damaged text, words of the one paragraph): a hand edit, a merge conflict,
# another program's file, and a config describing a model too big to build.
DAMAGES = [
    ("runs/moons/mlp/seed0/metrics.json", "{not json", "cannot be read as JSON"),
    ("runs/moons/mlp/seed0/metrics.json", "[]", "is not what compare writes there"),
    ("runs/moons/mlp/seed0/metrics.json", None, "is not what compare writes there"),  # test_acc as text
    ("runs/moons/mlp/seed0/config.yaml", "trainer: [", "cannot be read as YAML"),
    ("runs/moons/mlp/seed0/config.yaml", "- a list\n", "is not a config that train.py fit wrote"),
    ("runs/moons/mlp/seed0/config.yaml", "model: {arch: mlp}\ntrainer: {}\n" + BILLION_LAUGHS.replace("a0:", "ema:"),
     "expands to more than 100,000 values"),
    ("runs/moons/mlp/seed0/config.yaml", "model: {arch: mlp}\ntrainer: {}\nema: fast\n", "is not a config that"),
    ("runs/moons/mlp/seed0/config.yaml", "model: {arch: mlp, hidden: [200000, 200000]}\ntrainer: {}\n",
     "refused before allocating"),
    ("compare.json", "<<<<<<< HEAD\n{}\n=======\n{}\n>>>>>>> other\n", "cannot be read as JSON"),
    ("compare.json", '{"profiles": {"x": {"latency_ms_b1": "fast"}}}', "is not what compare writes there"),
    ("compare.json", '{"baselines_shown": {"moons": "yes"}}', "is not what compare writes there"),
]


@pytest.mark.parametrize("name, text, words", DAMAGES)
def test_damaged_results_files_are_named_not_a_traceback(compared, tmp_path, capsys, name, text, words):
    copy = tmp_path / "out"
    shutil.copytree(compared / "out", copy)
    path = copy / name
    if text is None:
        metrics = json.loads(path.read_text())
        path.write_text(json.dumps({**metrics, "test_acc": str(metrics["test_acc"])}))
    else:
        path.write_text(text)
    assert train.main(["compare", "--from_runs", str(copy), "--out", str(tmp_path / "rebuilt")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and words in err and "git checkout" in err and "Traceback" not in err, err
    assert not (tmp_path / "rebuilt" / "moons.md").exists()


def test_a_damaged_compare_args_file_is_named_when_the_run_is_reused(compared, tmp_path, capsys):
    shutil.copytree(compared / "runs", tmp_path / "runs")
    args = (tmp_path / "runs/moons/linear/seed0/compare-args.json")
    args.write_text('{"not": "a list"}')
    assert train.main(compare_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert str(args) in err and "is not what compare writes there" in err and "Traceback" not in err, err


def test_every_committed_result_passes_the_checks():
    """The checks accept every file compare has written into results/ (they must not refuse our own)."""
    from zoo.commands.compare import read_history, read_meta, read_run

    results = Path(__file__).resolve().parents[1] / "results"
    metas = sorted(results.glob("*/compare.json"))
    runs = sorted(p.parent for p in results.glob("*/runs/*/*/seed*/metrics.json"))
    assert metas and runs
    for path in metas:
        read_meta(path)
    for run in runs:
        metrics, config = read_run(run)
        assert metrics["model"] == run.parts[-2] and config["model"]["arch"] == metrics["model"]
        read_history(run / "history.csv")


def test_recipe_text_names_every_departure_from_the_defaults():
    airbench = {"model": {"arch": "airbench94"},
                "data": {"init_args": {"translate": 2, "pad_mode": "reflect", "alternate_flip": True}}}
    text = recipe_text("cifar10", airbench)
    for words in ("sgd lr 1.5", "triangle", "momentum 0.85", "label smoothing 0.2", "lookahead", "batch 1024",
                  "augmented (translate 2, reflection padding), alternating flip"):
        assert words in text, (words, text)
    cut = recipe_text("cifar10", {"model": {"arch": "resnet20"}, "data": {"init_args": {"cutout": 16}}})
    assert cut.endswith("augmented, cutout 16"), cut
    plain = recipe_text("cifar10", {"model": {"arch": "resnet20"}, "data": {"init_args": {}}})
    assert plain == "sgd lr 0.1, wd 0.0005, cosine, batch 128, augmented"


def test_tta_is_its_own_column_beside_the_headline(tmp_path):
    require_data("fashion_mnist")
    args = ["compare", "--models", "[linear]", "--datasets", "[fashion_mnist]", "--seeds", "[0]", "--epochs", "1",
            "--train_fraction", "0.05", "--baselines", "false", "--tta", "flip", "--out", str(tmp_path / "out"),
            "--runs_root", str(tmp_path / "runs")]
    assert train.main(args) == 0
    tta = json.loads((tmp_path / "out/runs/fashion_mnist/linear/seed0/tta_flip.json").read_text())
    metrics = json.loads((tmp_path / "out/runs/fashion_mnist/linear/seed0/metrics.json").read_text())
    again = evaluate.evaluate(metrics["best_ckpt"], device="cpu", tta="flip")
    assert tta["tta"] == "flip" and tta["test_acc"] == again["test_acc"] != metrics["test_acc"]
    md = (tmp_path / "out/fashion_mnist.md").read_text()
    header = md.splitlines()[2].split(" | ")
    assert header.index("test acc % with TTA") == header.index("test acc %") + 1
    assert f"| {metrics['test_acc'] * 100:.2f} | {tta['test_acc'] * 100:.2f} (flip) |" in md and "**with TTA**" in md
    row = read_csv(tmp_path / "out/fashion_mnist.csv")["linear"]
    assert row["tta"] == "flip" and float(row["test_acc_tta_mean"]) == pytest.approx(tta["test_acc"])
    # rebuilt from the committed copies alone: the column stays, and the baselines this compare left out stay
    # out (a rebuild measures nothing, so it never adds them)
    assert train.main(["compare", "--from_runs", str(tmp_path / "out"), "--out", str(tmp_path / "rebuilt")]) == 0
    assert (tmp_path / "rebuilt/fashion_mnist.md").read_text().splitlines()[:-1] == md.splitlines()[:-1]
    assert "| majority |" not in md and "baselines" not in json.loads((tmp_path / "rebuilt/compare.json").read_text())


def test_a_damaged_tta_result_is_named_not_a_traceback(tmp_path):
    path = tmp_path / "tta_flip.json"
    for text in ("{not json", '["tta"]', '{"tta": "flip", "test_acc": "0.9"}'):
        path.write_text(text)
        with pytest.raises(ZooError, match="not a test-time-augmentation result"):
            read_tta(path)
    path.write_text('{"tta": "flip", "test_acc": 0.9, "test_acc_exact": null}')
    assert read_tta(path)["test_acc"] == 0.9


def test_time_to_accuracy_draws_a_run_without_validation(tmp_path):
    """A run trained on every training image (--data.val_size 0) logs no validation accuracy: it
    still gets its test star, at its summed fit time, and the legend says why it has no curve."""
    from PIL import Image

    from zoo.commands.compare import plot_time_to_accuracy

    def run(acc, val):
        rows = [{"epoch": e, "seconds": 60.0 * (e + 1), **({"val/acc": 0.5 + 0.1 * e} if val else {})}
                for e in range(3)]
        return ({"fit_seconds": 190.0, "test_acc": acc}, {}), rows

    with_val, without = run(0.7, True), run(0.8, False)
    table = {"data": "cifar10", "histories": {"a_val": [with_val[1]], "b_all": [without[1]]},
             "runs": {"a_val": [with_val[0]], "b_all": [without[0]]}}
    plot_time_to_accuracy(table, tmp_path / "t.png")
    with Image.open(tmp_path / "t.png") as image:
        pixels = list(image.convert("RGB").getdata())
    orange = sum(1 for r, g, b in pixels if r > 220 and 100 < g < 160 and b < 60)  # matplotlib's C1: b_all
    blue = sum(1 for r, g, b in pixels if r < 60 and 100 < g < 140 and b > 160)  # C0: a_val's line and star
    assert orange > 40 and blue > 40
