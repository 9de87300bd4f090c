"""`train.py compare`: train zoo models on datasets over several seeds and tabulate accuracy against cost.

    python train.py compare --models [linear,mlp,lenet5] --datasets [mnist] --seeds 3 --out results/mnist
    python train.py compare --from_runs results/mnist        # rebuild the tables without training

Every compatible (dataset, model) pair is trained once per seed by `train.py fit`, in-process, into a
fixed run directory <runs_root>/<data>/<model>/seed<k>/. A run with metrics.json is reused and one with
only last.ckpt (interrupted) is resumed, so the same command, run again, continues where it stopped.
Each finished run's metrics.json, config.yaml and history.csv are copied to <out>/runs/<data>/<model>/seed<k>/
(no checkpoints), and the tables are built from those copies alone: that is why `--from_runs` rebuilds
them exactly. Costs measured here rather than in the runs (baselines, CPU latency) are kept in
<out>/compare.json. Per dataset it writes <data>.md, <data>.csv, test error against parameters and
against FLOPs (PNG), validation accuracy against wall time and epochs (<data>_time_to_accuracy.png),
and for 2-feature data a decision-boundary plot per model.
"""

import csv
import io
import json
import math
import os
import shlex
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import lightning
import yaml
from torch.utils.collect_env import get_env_info

from datamodules import DATAMODULES, get_datamodule_class
from zoo import cli, insight
from zoo.checkpoint import YAML_VALUES_CAP, atomic_write_bytes, check_hparams, expands_past, fits, load_checkpoint
from zoo.commands.baselines import knn_baseline, majority
from zoo.commands.doctor import cpu_name
from zoo.commands.evaluate import TTA, evaluate
from zoo.errors import ZooError, command_parser
from zoo.models.profile import format_count, profile
from zoo.models.registry import MODELS, create_model
from zoo.module import RECIPE_KEYS, ZooModule, resolve_recipe

BASELINES = ("majority", "knn")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# Published test accuracies (%) to hold our rows against: (accuracy, short source).
# The only numbers in the tables that do not come from a run or a measurement.
REFERENCES = {
    ("mnist", "knn"): (97.0, "lecture: nearest neighbour, 3% error"),
    ("mnist", "linear"): (92.0, "lecture: linear, 8% error"),
    ("mnist", "mlp"): (98.0, "lecture: 2-layer net, 2% error"),
    ("mnist", "lenet5"): (99.2, "lecture: LeNet-5, 0.8% error (distorted training images)"),
    ("fashion_mnist", "mlp"): (87.0, "lecture: MLP 784-128-10, Adam 1e-3, batch 100, 4 epochs"),
    ("cifar10", "resnet20"): (91.25, "He et al. 2015, Table 6"),
    ("cifar10", "resnet32"): (92.49, "He et al. 2015, Table 6"),
    ("cifar10", "resnet44"): (92.83, "He et al. 2015, Table 6"),
    ("cifar10", "resnet56"): (93.03, "He et al. 2015, Table 6"),
    ("moons", "mlp"): (95.0, "lecture: MLP(10,10), 0.95 test"),
}


def compare(
    models: list[str] | None = None,
    datasets: list[str] | None = None,
    seeds: int | list[int] = 3,
    seeds_for: dict[str, int | list[int]] | None = None,
    epochs: int | None = None,
    train_fraction: float | None = None,
    train_args: str | None = None,
    args_for: dict[str, str] | None = None,
    out: str | None = None,
    runs_root: str | None = None,
    from_runs: str | None = None,
    baselines: bool = True,
    tta: TTA = "none",
    verbose: bool = False,
    command: str = "",
) -> int:
    """Train models x datasets x seeds (or read finished runs) and write comparison tables and plots.

    Args:
        models: Zoo models to compare, e.g. [linear,mlp,lenet5]; knn and majority are the baselines and
            are always included. With --from_runs: only these (default: every model found).
        datasets: Datasets, e.g. [mnist,fashion_mnist]; each trains with its configs/<name>.yaml recipe.
        seeds: Number of seeds (seeds 0..n-1) or a list of seeds, e.g. [0,1,2].
        seeds_for: Seeds for particular models (the costly ones), e.g. '{resnet20: 1, mobilenetv2: [0]}'.
        epochs: max_epochs of every run (default: the dataset config's max_epochs).
        train_fraction: Train on this fraction of each training split (default: all of it).
        train_args: More `train.py fit` options for every run, one string: --train_args="--model.lr 0.01".
        args_for: More options for one model, or one dataset/model pair:
            '{mlp: "--model.hidden [10,10]", mnist/lenet5: "--data.init_args.augment true"}'.
        out: Where tables, plots, compare.json and the runs' metrics.json + config.yaml go
            (default: results/compare; with --from_runs: that directory).
        runs_root: Where the runs (with checkpoints) go (default: checkpoints/compare/<name of out>).
        from_runs: Rebuild the tables from a compare output directory (or a runs root), no training.
        baselines: Include the majority-class and k-NN baselines (with --from_runs: where the rebuilt table had them).
        tta: Also evaluate each run's best checkpoint with this test-time augmentation (evaluate.py --tta:
            flip or flip_translate) and show it in its own column beside the plain one, which stays the headline.
        verbose: Show each run's progress bar and model summary.
    """
    start = time.perf_counter()
    models = [m for m in models or [] if m not in BASELINES]
    if from_runs:
        source = Path(from_runs)
        runs_dir = source / "runs" if (source / "runs").is_dir() else source
        if not runs_dir.is_dir():
            raise ZooError(f"--from_runs {source}: no such directory. Pass the --out directory of a compare "
                           f"(it holds runs/<data>/<model>/seed<k>/) or a runs root.")
        out_dir = Path(out) if out else source
        meta = read_meta(source / "compare.json")
        runs = discover(runs_dir, models, datasets or [])
        if not runs:
            raise ZooError(f"No finished runs (runs/<data>/<model>/seed<k>/metrics.json) under {source}.")
        stats = dict(trained=0, resumed=0, reused=0)
    else:
        if not models or not datasets:
            raise ZooError("compare needs --models and --datasets, e.g. --models [linear,mlp] --datasets [moons] "
                           "(or --from_runs DIR to rebuild tables from finished runs).")
        out_dir = Path(out or "results/compare")
        root = Path(runs_root) if runs_root else Path("checkpoints/compare") / out_dir.resolve().name
        if out_dir.resolve() in (root.resolve(), *root.resolve().parents):
            raise ZooError(f"--runs_root {root} lies inside --out {out_dir}: checkpoints would land among the "
                           f"results. Pass a runs root outside it (default: checkpoints/compare/<name>).")
        meta = read_meta(out_dir / "compare.json")
        jobs, skipped = plan(models, datasets, seeds, seeds_for or {}, epochs, train_fraction, train_args or "",
                             args_for or {}, root)
        meta["command"] = command
        meta.setdefault("skipped", {}).update(skipped)
        stats = run_jobs(jobs, out_dir / "runs", verbose, tta)
        if stats is None:
            return 1
        runs = {(d, m): [] for d in datasets for m in models if m not in skipped[d]}
        for job in jobs:
            runs[job.data, job.model].append(out_dir / "runs" / job.data / job.model / f"seed{job.seed}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for data in [d for d in DATAMODULES if any(key[0] == d for key in runs) or d in (datasets or [])]:
        # A rebuild shows the baselines where the last table did (compare.json records it), so a table made
        # with --baselines false comes back as it was and nothing is measured, even when an earlier compare
        # left them cached; older compare.json files without the record: where they are cached. Without a
        # compare.json (deleted to measure again, as its error says) they are measured as in a compare.
        shown_before = meta.get("baselines_shown", {}).get(data, data in meta.get("baselines", {}))
        shown = baselines and (from_runs is None or not meta or shown_before)
        meta.setdefault("baselines_shown", {})[data] = shown
        table = build_table(data, {m: paths for (d, m), paths in runs.items() if d == data}, meta, shown)
        write_outputs(table, out_dir, meta, stats, command, time.perf_counter() - start, from_runs is not None)
    atomic_write_bytes(out_dir / "compare.json", json.dumps(meta, indent=1, sort_keys=True).encode())
    return 0


def main(args: list[str]) -> int:
    """`train.py compare ...`: parse the options (jsonargparse, so --help lists them) and run."""
    parser = command_parser("train.py compare", "Train zoo models on datasets over seeds (reusing finished runs, "
                            "resuming interrupted ones) and tabulate test accuracy against cost.")
    parser.add_function_arguments(compare, skip={"command"})
    cfg = parser.parse_args(args)
    try:
        command = shlex.join(["python", "train.py", "compare", *args]).replace("\n", " ")  # one Markdown line
        return compare(**cfg.as_dict(), command=command)
    except KeyboardInterrupt:
        print("\ncompare interrupted: finished runs are kept; run the same command again to continue.")
        return 130


# ---------------------------------------------------------------------------------------------
# Planning and running the fits.

@dataclass
class Job:
    data: str
    model: str
    seed: int
    run: Path  # the fixed run directory
    args: list[str]  # the fit options that define the run (no paths)
    state: str  # "done" (metrics.json), "resume" (last.ckpt) or "new"


def pair_problem(data: str, model: str) -> str | None:
    """Why `model` cannot train on `data` (e.g. a conv net on 2 features), or None when it can."""
    dm = get_datamodule_class(data)
    try:
        create_model(model, dm.input_shape, dm.num_classes)
    except ZooError as e:
        return str(e)
    return None


def seed_list(seeds: int | list[int], flag: str = "--seeds") -> list[int]:
    """A number of seeds (0..n-1) or the seeds themselves, checked: a run per seed, at least one."""
    out = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not out or len(set(out)) != len(out) or not all(0 <= s < 2**32 for s in out):
        raise ZooError(f"{flag} {seeds}: give a number of seeds (at least 1) or a list of different seeds from 0 "
                       f"to {2**32 - 1}, e.g. 3 or [0,1,2].")
    return out


def split_args(flag: str, text: str) -> list[str]:
    """A string of train.py fit options as the shell would split it."""
    try:
        return shlex.split(text)
    except ValueError as e:  # "No closing quotation"
        raise ZooError(f"{flag} {text!r}: {e}. Quote the options as a shell would, e.g. "
                       f"--train_args '--model.lr 0.01 --data.augment true'.") from None


def plan(models: list[str], datasets: list[str], seeds: int | list[int], seeds_for: dict, epochs: int | None,
         train_fraction: float | None, train_args: str, args_for: dict, root: Path) -> tuple[list[Job], dict]:
    """Every run the command asks for, with its state on disk, and the pairs skipped with their reason."""
    for name in models:
        if name not in MODELS:
            raise ZooError(f"Unknown model {name!r}. Available: {', '.join(sorted(MODELS))} (and the baselines "
                           f"{', '.join(BASELINES)}, always included).")
    for name in datasets:
        get_datamodule_class(name)  # an unknown name raises, listing the known ones
    for key in [*seeds_for, *args_for]:  # a typo would silently train with the defaults
        data, _, model = key.rpartition("/")
        if model not in MODELS or (data and data not in DATAMODULES):
            raise ZooError(f"--seeds_for / --args_for key {key!r} is neither a model name "
                           f"({', '.join(sorted(MODELS))}) nor a dataset/model pair such as mnist/lenet5.")
        if model not in models or (data and data not in datasets):  # would be ignored: say so instead
            raise ZooError(f"--seeds_for / --args_for key {key!r} names a model or dataset this command does not "
                           f"train (--models {models}, --datasets {datasets}). Add it there, or drop the key.")
    seed_list(seeds)
    for key, value in seeds_for.items():
        seed_list(value, f"--seeds_for {key}:")
    # Checked here, not by each run's fit: a bad budget would stop the command after its first run started.
    if epochs is not None and epochs < 1 and epochs != -1:
        raise ZooError(f"--epochs {epochs}: give at least 1 (or -1 for no limit).")
    if train_fraction is not None and not 0 < train_fraction <= 1:
        raise ZooError(f"--train_fraction {train_fraction}: give a fraction of the training split in (0, 1].")
    common = split_args("--train_args", train_args)
    extra = {key: split_args(f"--args_for {key}:", value) for key, value in args_for.items()}
    jobs, skipped = [], {}
    for data in datasets:
        skipped[data] = {}
        for model in models:
            problem = pair_problem(data, model)
            if problem:
                skipped[data][model] = problem
                print(f"skip {model} on {data}: {problem}")
                continue
            args = ["--data", data, "--model.arch", model]
            if epochs is not None:
                args += ["--trainer.max_epochs", str(epochs)]
            if train_fraction is not None:
                args += ["--data.init_args.train_fraction", str(train_fraction)]
            args += common + extra.get(model, []) + extra.get(f"{data}/{model}", [])
            for seed in seed_list(seeds_for.get(f"{data}/{model}", seeds_for.get(model, seeds))):
                run = root / data / model / f"seed{seed}"
                job = Job(data, model, seed, run, [*args, "--seed_everything", str(seed)], run_state(run))
                check_same_args(job)
                jobs.append(job)
    return jobs, skipped


def run_state(run: Path) -> str:
    if (run / "metrics.json").is_file():
        return "done"
    return "resume" if (run / "last.ckpt").is_file() else "new"


def check_same_args(job: Job) -> None:
    """Refuse to reuse or resume a run that was started with other options (another budget, say)."""
    saved = job.run / "compare-args.json"
    if job.state == "new" or not saved.is_file():
        return
    args = read_json(saved, lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v),
                     "the fit options of the run, as a JSON list of strings", f"delete {job.run} to retrain it")
    if args != job.args:
        raise ZooError(f"{job.run} was trained with `{shlex.join(args)}`, but this command "
                       f"asks for `{shlex.join(job.args)}`. Pass another --runs_root (and --out), or delete "
                       f"{job.run} to retrain it.")


def run_jobs(jobs: list[Job], copies: Path, verbose: bool, tta: str = "none") -> dict | None:
    """Train what is missing, one run after the other, printing progress; None when a run failed."""
    todo = [j for j in jobs if j.state != "done"]
    counts = {s: sum(j.state == s for j in jobs) for s in ("done", "resume", "new")}
    print(f"compare: {len(jobs)} runs: {counts['done']} finished (reused), {counts['resume']} to resume, "
          f"{counts['new']} to train.", flush=True)
    start, durations = time.perf_counter(), []
    for i, job in enumerate(jobs, 1):
        label = f"[{i}/{len(jobs)}] {job.model} on {job.data}, seed {job.seed}"
        if job.state == "done":
            print(f"{label}: reused {job.run} (metrics.json present)", flush=True)
        else:
            left = len(todo) - len(durations)
            eta = fmt_seconds(statistics.mean(durations) * left) if durations else "after the first run"
            verb = "resuming from last.ckpt" if job.state == "resume" else "training"
            print(f"{label}: {verb} -> {job.run} | elapsed {fmt_seconds(time.perf_counter() - start)} | "
                  f"ETA {eta}", flush=True)
            if job.state == "new" and job.run.exists():
                shutil.rmtree(job.run)  # an earlier attempt that died before its first checkpoint
            job.run.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(job.run / "compare-args.json", json.dumps(job.args).encode())
            resume = ["--ckpt_path", str(job.run)] if job.state == "resume" else []
            t = time.perf_counter()
            try:
                rc = cli.main(["fit", *job.args, "--run_dir", str(job.run), "--quiet", str(not verbose).lower(),
                                 *resume])
            except KeyboardInterrupt:
                rc = 130
            if rc != 0 or not (job.run / "metrics.json").is_file():
                print(f"\ncompare stopped: {label} did not finish (exit status {rc}). Finished runs are kept and "
                      f"an interrupted one resumes from its last.ckpt: run the same command again to continue.",
                      flush=True)
                return None
            durations.append(time.perf_counter() - t)
        if tta != "none" and not (job.run / f"tta_{tta}.json").is_file():
            evaluate_tta(job.run, tta)
        copy = copies / job.data / job.model / f"seed{job.seed}"
        copy.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.json", "config.yaml", "history.csv", *TTA_FILES):
            if name != "metrics.json" and name != "config.yaml" and not (job.run / name).is_file():
                continue  # history.csv: runs from before it was written; TTA: only where asked for
            shutil.copyfile(job.run / name, copy / name)
    return dict(trained=counts["new"], resumed=counts["resume"], reused=counts["done"])


TTA_FILES = tuple(f"tta_{t}.json" for t in get_args(TTA) if t != "none")


def evaluate_tta(run: Path, tta: str) -> None:
    """The run's tested checkpoint evaluated again with test-time augmentation: tta_<kind>.json beside
    metrics.json (accuracy on the full test set, and on the original-pixel images where there are some)."""
    metrics = read_run(run)[0]
    ckpt = tested_checkpoint(metrics) or run / "last.ckpt"
    r = evaluate(str(ckpt), device="cpu", tta=tta)
    out = {"tta": tta, "test_acc": r["test_acc"], "test_acc_exact": r["test_acc_exact"], "n_exact": r["n_exact"],
           "checkpoint": str(ckpt)}
    atomic_write_bytes(run / f"tta_{tta}.json", json.dumps(out, indent=1).encode())
    print(f"  test-time augmentation {tta}: test acc {r['test_acc']:.4f}", flush=True)


def discover(runs_dir: Path, models: list[str], datasets: list[str]) -> dict[tuple[str, str], list[Path]]:
    """Finished runs under runs_dir/<data>/<model>/seed<k>/, optionally only these models and datasets."""
    runs = {}
    for metrics in sorted(runs_dir.glob("*/*/seed*/metrics.json"), key=lambda p: (p.parts[-4:-2], seed_of(p.parent))):
        data, model = metrics.parts[-4], metrics.parts[-3]
        if (not models or model in models) and (not datasets or data in datasets):
            runs.setdefault((data, model), []).append(metrics.parent)
    return runs


def seed_of(run: Path) -> int:
    return int(run.name.removeprefix("seed")) if run.name.removeprefix("seed").isdigit() else -1


# ---------------------------------------------------------------------------------------------
# Costs measured here, not in the runs: baselines and CPU latency, cached in compare.json so that
# `--from_runs` on another machine shows the numbers measured with the runs.

def read_meta(path: Path) -> dict:
    """compare.json: the cached baselines and profiles (numbers), the command and machine (text)."""
    return read_json(path, meta_ok, "the baselines and model profiles compare measured, with the command and "
                     "machine", "delete it to measure them again on this machine") if path.is_file() else {}


def meta_ok(meta: object) -> bool:
    def numbers(d: object, text: tuple[str, ...] = ()) -> bool:  # a dict of numbers (or None), some keys text
        return isinstance(d, dict) and all(fits(v, str if k in text else float | None) for k, v in d.items())

    def baseline(b: object) -> bool:
        knn = b.get("knn") if isinstance(b, dict) else None
        return (isinstance(knn, dict) and isinstance(b.get("data_options"), dict) and numbers(b.get("majority"))
                and numbers(knn.get("val_grid", {}))
                and numbers({k: v for k, v in knn.items() if k != "val_grid"}, text=("metric",)))

    def dicts(key: str) -> list:  # the values of meta[key], if it is a dict of dicts
        d = meta.get(key, {})
        return list(d.values()) if isinstance(d, dict) and all(isinstance(v, dict) for v in d.values()) else [None]

    return (isinstance(meta, dict) and all(isinstance(meta.get(k, ""), str) for k in ("command", "machine"))
            and None not in dicts("skipped") and all(map(baseline, dicts("baselines")))
            and all(map(numbers, dicts("profiles")))
            and isinstance(shown := meta.get("baselines_shown", {}), dict)
            and all(isinstance(v, bool) for v in shown.values()))


def machine() -> str:
    """CPU model, cores, versions and date: where the latency and baseline numbers were measured. CPU
    and torch as torch's collect_env reports them, like the doctor; cores: those this process may use."""
    env = get_env_info()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu_name(env.cpu_info)}, {cores} cores, torch {env.torch_version}, lightning {lightning.__version__}, "
            f"{time.strftime('%Y-%m-%d')}")


def data_config(data: str, config: dict | None) -> dict:
    """The datamodule options of a run (its config.yaml), or of configs/<data>.yaml without runs.
    The split seed is pinned (to the run's seed) so the k-NN validation split never drifts."""
    if config is None:
        path = CONFIGS / f"{data}.yaml"
        config = yaml.safe_load(path.read_text()) if path.is_file() else {}
    options = dict((config.get("data") or {}).get("init_args") or {})
    if options.get("split_seed") is None:
        options["split_seed"] = config.get("seed_everything", 0)
    # Options that do not change the data a baseline sees; left out so every model's runs agree.
    return {k: v for k, v in options.items() if k not in ("augment", "batch_size", "eval_batch_size", "download")}


def measure_baselines(data: str, options: dict, meta: dict) -> dict:
    cache = meta.setdefault("baselines", {}).get(data)
    if cache and cache["data_options"] == options:
        return cache
    print(f"{data}: measuring the baselines (majority class, k-NN with k and distance chosen on validation) ...",
          flush=True)
    dm = get_datamodule_class(data)(**options, batch_size=1)  # no loaders: batch_size 1 always fits
    dm.setup("fit")
    result = {"data_options": options, "majority": majority(dm.train_y, dm.test_y), "knn": knn_baseline(dm)}
    meta["baselines"][data], meta["machine"] = result, machine()
    return result


def measure_profile(data: str, model_options: dict, meta: dict, source: Path) -> dict:
    """Parameters, FLOPs and CPU latency of the model that `source` (a run's config.yaml) describes."""
    key = json.dumps([data, model_options], sort_keys=True)
    dm = get_datamodule_class(data)
    options = {**model_options, "num_classes": dm.num_classes, "input_shape": list(dm.input_shape)}
    # Checked on the meta device first: a crafted config must not make us allocate a 40 GB model.
    check_hparams(options, source, f"Fix: restore it (git checkout -- {source}), or delete its run folder.")
    if key not in meta.setdefault("profiles", {}):
        module = ZooModule(**options)
        meta["profiles"][key] = profile(module.model, dm.input_shape, latency=True)
        meta["machine"] = machine()
    return meta["profiles"][key]


# ---------------------------------------------------------------------------------------------
# The table: one row per model, every number from the runs or the measurements above.

@dataclass
class Row:
    """One line of a comparison table: a model (its seeds averaged) or a baseline. Cost columns a
    baseline lacks are None; the comparisons with baselines and references are filled in last."""

    model: str
    dataset: str
    params: int
    macs: int | None
    flops: int
    latency_ms_b1: float | None
    throughput: float | None
    epochs: float | None
    max_epochs: int | None
    fit_seconds: float | None
    device: str
    seeds: list[int]
    acc: float
    acc_std: float
    recipe: str
    acc_exact: float | None = None  # on the test images with original pixels (CIFAR-10's first 1,017), if any
    tta: str = ""  # the test-time augmentation of acc_tta, where every run has one (compare --tta)
    acc_tta: float | None = None
    acc_exact_tta: float | None = None
    delta_majority_pp: float | None = None
    delta_knn_pp: float | None = None
    delta_linear_pp: float | None = None
    flag: bool = False  # not above linear by more than the spread over seeds (⚑)
    reference: float | None = None
    reference_source: str = ""
    delta_reference_pp: float | None = None

    def csv_fields(self) -> dict:
        """The CSV's columns (raw numbers; error = 1 - accuracy, its std the accuracy's)."""
        return {
            "model": self.model, "dataset": self.dataset, "params": self.params, "macs": self.macs,
            "flops": self.flops, "latency_ms_b1": self.latency_ms_b1, "throughput": self.throughput,
            "epochs": self.epochs, "max_epochs": self.max_epochs, "fit_seconds": self.fit_seconds,
            "device": self.device, "n_seeds": len(self.seeds), "seeds": " ".join(map(str, self.seeds)),
            "test_acc_mean": self.acc, "test_acc_std": self.acc_std, "test_error_mean": 1 - self.acc,
            "test_error_std": self.acc_std, "delta_majority_pp": self.delta_majority_pp,
            "delta_knn_pp": self.delta_knn_pp, "delta_linear_pp": self.delta_linear_pp,
            "not_above_linear": self.flag, "reference_acc": self.reference,
            "reference_source": self.reference_source, "delta_reference_pp": self.delta_reference_pp,
            "recipe": self.recipe,
            **({"test_acc_exact_mean": self.acc_exact} if self.acc_exact is not None else {}),
            **({"tta": self.tta, "test_acc_tta_mean": self.acc_tta, "test_acc_exact_tta_mean": self.acc_exact_tta}
               if self.acc_tta is not None else {}),
        }


def build_table(data: str, runs: dict[str, list[Path]], meta: dict, with_baselines: bool) -> dict:
    """Rows (baselines first, then models by parameter count) and what the notes need."""
    rows, runs_of, histories = [], {}, {}
    for model, paths in runs.items():
        if not paths:
            continue
        paths = sorted(paths, key=seed_of)
        loaded = [read_run(p) for p in paths]
        runs_of[model] = loaded
        histories[model] = [read_history(p / "history.csv") for p in paths]
        cost = measure_profile(data, loaded[0][1]["model"], meta, paths[0] / "config.yaml")
        row = model_row(data, model, loaded, cost)
        add_tta(row, paths)
        rows.append(row)
    rows.sort(key=lambda r: (r.params, r.model))
    base = None
    if with_baselines:
        first = runs_of[min(runs_of)][0][1] if runs_of else None  # any run will do: pick one the same way always
        base = measure_baselines(data, data_config(data, first), meta)
        rows = baseline_rows(data, base) + rows
    by_name = {r.model: r for r in rows}
    for r in rows:
        for other in ("majority", "knn", "linear"):
            ref = by_name.get(other)
            setattr(r, f"delta_{other}_pp", None if ref is None or other == r.model else (r.acc - ref.acc) * 100)
        lin = by_name.get("linear")
        spread = math.hypot(r.acc_std, lin.acc_std) if lin else 0.0
        r.flag = bool(lin and r.model not in ("linear", *BASELINES) and r.acc - lin.acc <= spread)
        ref = REFERENCES.get((data, r.model))
        r.reference, r.reference_source = ref if ref else (None, "")
        r.delta_reference_pp = r.acc * 100 - ref[0] if ref else None
    return {"data": data, "rows": rows, "runs": runs_of, "baselines": base, "histories": histories,
            "skipped": meta.get("skipped", {}).get(data, {})}


def read_json(path: Path, ok, what: str, fix: str) -> object:
    """A JSON file that compare wrote, if `ok` accepts it; anything else (damaged, hand-edited, a merge
    conflict) is named in one paragraph."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ZooError(f"{path} cannot be read as JSON ({type(e).__name__}: {e}); it should hold {what}. Fix: "
                       f"restore it (git checkout -- {path}), or {fix}.") from None
    if not ok(value):
        raise ZooError(f"{path} is not what compare writes there ({what}). Fix: restore it "
                       f"(git checkout -- {path}), or {fix}.")
    return value


# What the tables read from a run's metrics.json, as train.py fit writes it (types as zoo.checkpoint.fits
# reads them: an int is a float, a bool is neither).
METRICS = {"data": str, "model": str, "test_acc": float, "params": int, "flops": float, "macs": float,
           "epochs": float, "fit_seconds": float, "seed": int, "device": str}
METRICS_OPTIONAL = {"devices": int, "fit_parts": int, "test_acc_exact": float | None, "best_ckpt": str | None,
                    "best_score": float | None, "monitor": str | None, "run_dir": str | None}


def metrics_ok(m: object) -> bool:
    return (isinstance(m, dict) and all(fits(m.get(k), kind) for k, kind in METRICS.items())
            and all(fits(m[k], kind) for k, kind in METRICS_OPTIONAL.items() if k in m)
            and 0 <= m["test_acc"] <= 1 and m["fit_seconds"] >= 0 and m.get("devices", 1) >= 1
            and isinstance(m.get("versions"), dict) and all(isinstance(m["versions"].get(k), str)
                                                            for k in ("torch", "lightning")))


def config_ok(c: object) -> bool:
    data = (c.get("data") or {}) if isinstance(c, dict) else None
    options = (data.get("init_args") or {}) if isinstance(data, dict) else None
    return (isinstance(options, dict) and isinstance(c.get("trainer"), dict) and isinstance(c.get("model"), dict)
            and fits(c["trainer"].get("max_epochs"), int | None)
            and all(fits(v, float | None) for v in (c.get("ema"), c.get("patience"), options.get("train_fraction"),
                                                    options.get("batch_size"))))


def tested_checkpoint(metrics: dict) -> Path | None:
    """The checkpoint a run was tested with, or None when it is not here. metrics.json names it by
    absolute path, which no longer exists once the project is cloned or moved elsewhere (committed runs
    name /work/main/...); then the same file in the run's directory, run_dir, relative to the project root."""
    best, run_dir = metrics.get("best_ckpt"), metrics.get("run_dir")
    if not (isinstance(best, str) and best):
        return None
    if Path(best).is_file():
        return Path(best)
    moved = Path(run_dir) / Path(best).name if isinstance(run_dir, str) and run_dir else None
    return moved if moved is not None and moved.is_file() else None


def read_run(run: Path) -> tuple[dict, dict]:
    """A finished run's metrics.json and config.yaml (as compare copies them), checked for what the
    tables read, so a damaged or hand-edited copy is named instead of failing deep in the table code."""
    fix = f"delete {run} (a results copy) or rerun the compare command that trained it"
    metrics = read_json(run / "metrics.json", metrics_ok, "the metrics train.py fit wrote: test_acc, params, "
                        "flops, macs, epochs, fit_seconds, seed, device, versions", fix)
    path = run / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ZooError(f"{path} cannot be read as YAML ({type(e).__name__}: {first}); it should hold the run's "
                       f"resolved config. Fix: restore it (git checkout -- {path}), or {fix}.") from None
    if expands_past(config):
        raise ZooError(f"{path} expands to more than {YAML_VALUES_CAP:,} values through its YAML aliases, where a "
                       f"run's config holds a few hundred: not one that train.py fit wrote. Fix: restore it "
                       f"(git checkout -- {path}), or {fix}.")
    if not config_ok(config):
        raise ZooError(f"{path} is not a config that train.py fit wrote (a mapping with trainer, model and data "
                       f"sections). Fix: restore it (git checkout -- {path}), or {fix}.")
    return metrics, config


def read_history(path: Path) -> list[dict]:
    """A run's history.csv (one row per epoch: seconds so far, val/acc, ...), [] when it has none."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as f:
            rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
        for i, row in enumerate(rows, 2):  # what the plot reads: a line number in the message
            if not ("epoch" in row and "seconds" in row and all(map(math.isfinite, row.values()))
                    and row["epoch"] >= 0 and row["seconds"] >= 0 and 0 <= row.get("val/acc", 0) <= 1):
                raise ValueError(f"line {i} lacks a finite epoch, seconds >= 0 or a val/acc in [0, 1]")
        return rows
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, TypeError) as e:
        raise ZooError(f"{path} is not a history written by train.py fit (one row of numbers per epoch: "
                       f"{type(e).__name__}: {e}). Fix: restore it (git checkout -- {path}), or delete it: the "
                       f"tables do not need it, only the time-to-accuracy plot does.") from None


def model_row(data: str, model: str, runs: list[tuple[dict, dict]], cost: dict) -> Row:
    accs = [m["test_acc"] for m, _ in runs]
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    devices = sorted({m["device"] + (f" x{m['devices']}" if m.get("devices", 1) > 1 else "") for m, _ in runs})
    return Row(
        model=model, dataset=data, params=runs[0][0]["params"], macs=runs[0][0]["macs"], flops=runs[0][0]["flops"],
        latency_ms_b1=cost["latency_ms_b1"], throughput=cost["throughput_b256"],
        epochs=statistics.mean(m["epochs"] for m, _ in runs),
        max_epochs=max((c["trainer"]["max_epochs"] for _, c in runs if c["trainer"]["max_epochs"] is not None),
                       default=None),
        fit_seconds=statistics.mean(m["fit_seconds"] for m, _ in runs), device=", ".join(devices),
        seeds=[m["seed"] for m, _ in runs], acc=statistics.mean(accs), acc_std=std,
        recipe=recipe_text(data, runs[0][1]),
        acc_exact=(statistics.mean(m["test_acc_exact"] for m, _ in runs)
                   if all(m.get("test_acc_exact") is not None for m, _ in runs) else None),
    )


def add_tta(row: Row, paths: list[Path]) -> None:
    """The row's test-time-augmented accuracy, where every run of it was evaluated with the same kind."""
    for name in TTA_FILES:
        found = [read_tta(p / name) for p in paths if (p / name).is_file()]
        if found and len(found) == len(paths):
            row.tta, row.acc_tta = found[0]["tta"], statistics.mean(f["test_acc"] for f in found)
            if all(f.get("test_acc_exact") is not None for f in found):
                row.acc_exact_tta = statistics.mean(f["test_acc_exact"] for f in found)
            return


def read_tta(path: Path) -> dict:
    """A tta_<kind>.json as evaluate_tta writes it; anything else named in one paragraph."""
    try:
        out = json.loads(path.read_text())
        if isinstance(out, dict) and isinstance(out.get("tta"), str) and isinstance(out.get("test_acc"), float) and (
                out.get("test_acc_exact") is None or isinstance(out["test_acc_exact"], float)):
            return out
    except (OSError, UnicodeDecodeError, ValueError):
        pass
    raise ZooError(f"{path} is not a test-time-augmentation result written by compare --tta (tta, test_acc). Fix: "
                   f"restore it (git checkout -- {path}), or delete it and run compare --tta again.")


def baseline_rows(data: str, base: dict) -> list[Row]:
    k = base["knn"]
    common = dict(dataset=data, epochs=None, max_epochs=None, fit_seconds=None, device="cpu", seeds=[], acc_std=0.0)
    return [
        Row(model="majority", params=0, macs=None, flops=0, latency_ms_b1=None, throughput=None,
            acc=base["majority"]["test_acc"], recipe=f"always class {base['majority']['label']}", **common),
        Row(model="knn", params=0, macs=k["flops"] // 2, flops=k["flops"], latency_ms_b1=k["latency_ms_b1"],
            throughput=k["throughput"], acc=k["test_acc"], recipe=f"k={k['k']}, {k['metric']} on {inputs(data)}",
            **common),
    ]


def inputs(data: str) -> str:
    return "features" if len(get_datamodule_class(data).input_shape) == 1 else "pixels scaled to 0..1"


def recipe_text(data: str, config: dict) -> str:
    """How a model was trained, from its config.yaml; what it leaves None (files written before the
    recipe was resolved into them) comes from resolve_recipe."""
    m, d = config["model"], config["data"].get("init_args") or {}
    r = resolve_recipe(m["arch"], data, batch_size=d.get("batch_size"), **{k: m.get(k) for k in RECIPE_KEYS})
    wd, sched = r["weight_decay"], r["scheduler"]
    parts = [f"{r['optimizer']} lr {r['lr']:g}"] + ([f"wd {wd:g}"] if wd else []) + ([sched] if sched != "none" else [])
    if r["optimizer"] == "sgd" and r["momentum"] != 0.9:
        parts.append(f"momentum {r['momentum']:g}")
    parts += [f"label smoothing {r['label_smoothing']:g}"] if r["label_smoothing"] else []
    parts += ["lookahead"] if r["lookahead"] else []
    parts.append(f"batch {r['batch_size']}")
    if m.get("hidden"):
        parts.append(f"hidden {m['hidden']}")
    augment = d.get("augment")
    if augment or (augment is None and get_datamodule_class(data).augment_default):
        crop = ([f"translate {d['translate']}"] if d.get("translate") is not None else []) + (
            ["reflection padding"] if d.get("pad_mode") == "reflect" else [])
        parts.append("augmented" + (f" ({', '.join(crop)})" if crop else "")
                     + (", alternating flip" if d.get("alternate_flip") else "")
                     + (f", cutout {d['cutout']}" if d.get("cutout") else ""))
    if d.get("train_fraction", 1.0) < 1:
        parts.append(f"{d['train_fraction']:g} of train")
    if config.get("ema"):
        parts.append(f"ema {config['ema']:g}")
    if config.get("patience"):
        parts.append(f"patience {config['patience']}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Writing: CSV (raw numbers), Markdown (formatted, with notes), plots.

CSV_FIELDS = ["model", "dataset", "params", "macs", "flops", "latency_ms_b1", "throughput", "epochs", "max_epochs",
              "fit_seconds", "device", "n_seeds", "seeds", "test_acc_mean", "test_acc_std", "test_error_mean",
              "test_error_std", "delta_majority_pp", "delta_knn_pp", "delta_linear_pp", "not_above_linear",
              "reference_acc", "reference_source", "delta_reference_pp", "recipe"]


def csv_text(rows: list[Row]) -> str:
    def num(x):
        return "" if x is None else round(x, 6) if isinstance(x, float) else x

    buffer = io.StringIO()
    exact = ["test_acc_exact_mean"] if any(r.acc_exact is not None for r in rows) else []  # CIFAR-10 only
    tta = ["tta", "test_acc_tta_mean", "test_acc_exact_tta_mean"] if any(r.acc_tta is not None for r in rows) else []
    writer = csv.DictWriter(buffer, fieldnames=[*CSV_FIELDS, *exact, *tta], lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: num(v) for k, v in r.csv_fields().items()} for r in rows)
    return buffer.getvalue()


def pct(mean: float, std: float, n: int) -> str:
    return f"{mean * 100:.2f} ± {std * 100:.2f}" if n > 1 else f"{mean * 100:.2f}"


def signed(x: float | None, flag: bool = False) -> str:
    return "" if x is None else f"{round(x, 2) + 0.0:+.2f}" + (" ⚑" if flag else "")  # + 0.0: no "-0.00"


def markdown_text(table: dict, meta: dict, tail: str) -> str:
    data, rows = table["data"], table["rows"]
    header = ["model", "params", "MACs", "FLOPs", "CPU ms (batch 1)", "CPU img/s (batch 256)", "epochs",
              "train s", "device", "seeds", "test acc %", "test error %", "Δ majority", "Δ k-NN", "Δ linear",
              "reference %", "Δ ref", "recipe"]
    exact = any(r.acc_exact is not None for r in rows)
    if exact:  # beside the headline column, never instead of it
        header.insert(header.index("test error %"), "original-pixel test acc %")
    tta = any(r.acc_tta is not None for r in rows)
    if tta:
        header[header.index("test error %"):header.index("test error %")] = (
            ["test acc % with TTA"] + (["original-pixel with TTA"] if exact else []))
    lines = [f"# {data}: test accuracy against model cost", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        n = len(r.seeds)
        cells = [
            r.model, format_count(r.params) if r.params else "—",
            format_count(r.macs) if r.macs is not None else "—",
            format_count(r.flops) if r.flops else "—",
            f"{r.latency_ms_b1:.3g}" if r.latency_ms_b1 is not None else "~0",
            format_count(round(r.throughput)) if r.throughput else "—",
            f"{r.epochs:.3g}/{r.max_epochs}" if r.epochs is not None else "—",
            f"{r.fit_seconds:.1f}" if r.fit_seconds is not None else "—", r.device,
            str(n) if n else "— (deterministic)", pct(r.acc, r.acc_std, n), pct(1 - r.acc, r.acc_std, n),
            signed(r.delta_majority_pp), signed(r.delta_knn_pp), signed(r.delta_linear_pp, r.flag),
            f"{r.reference:g} ({r.reference_source})" if r.reference is not None else "",
            signed(r.delta_reference_pp), r.recipe,
        ]
        if exact:
            cells.insert(header.index("original-pixel test acc %"),
                         f"{r.acc_exact * 100:.2f}" if r.acc_exact is not None else "—")
        if tta:
            cells.insert(header.index("test acc % with TTA"),
                         f"{r.acc_tta * 100:.2f} ({r.tta})" if r.acc_tta is not None else "—")
            if exact:
                cells.insert(header.index("original-pixel with TTA"),
                             f"{r.acc_exact_tta * 100:.2f}" if r.acc_exact_tta is not None else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *notes(table, meta), "", tail, ""]
    return "\n".join(lines)


def notes(table: dict, meta: dict) -> list[str]:
    rows, base = table["rows"], table["baselines"]
    out = [
        "- **test acc / error**: mean ± sample standard deviation over the seeds (the *seeds* column; seed lists "
        "in the CSV), each run tested once on the official test split with its best-validation checkpoint.",
        "- **MACs**: multiply-adds per sample (what papers call FLOPs); **FLOPs** = 2 × MACs, counting matmuls and "
        "convolutions only (torch's FlopCounterMode). k-NN: the distance matmul against every training input.",
        "- **CPU ms (batch 1)**: median forward time of one input in eval mode; **img/s**: throughput at batch 256 "
        "(k-NN: classifying the whole test split in chunks of 256). **train s**: mean wall time of a fit, summed "
        "over a resumed run's parts (runs without fit_parts in metrics.json: the last part only); **epochs**: mean "
        "epochs trained / max_epochs.",
        "- **Δ**: test-accuracy difference in percentage points. ⚑: does not beat linear by more than the spread "
        "over seeds, sqrt(std² + std_linear²).",
    ]
    if base:
        k, maj = base["knn"], base["majority"]
        val = f"{k['val_acc'] * 100:.2f}% there" if k["val_acc"] is not None else "no validation split: 1-NN"
        out.append(f"- **Baselines** (deterministic, one run): majority always predicts class {maj['label']}, the most "
                   f"frequent training label. k-NN: k={k['k']}, {k['metric']} distance on {inputs(table['data'])}, "
                   f"chosen among k in 1,3,5,7,9 × euclidean/cosine on {k['n_val']:,} validation inputs ({val}); it "
                   f"stores {k['n_train']:,} training inputs ({format_count(k['stored_values'])} values).")
    if any(r.acc_exact is not None for r in rows):
        out.append("- **original-pixel test acc**: this project's CIFAR-10 is a faithful rebuild in which ~90% of the "
                   "images (train and test) are quality-75 JPEG decodes; only the first 1,017 images of each batch "
                   "file have their original pixels (../shared/data/README.md). This column is the accuracy on those "
                   "1,017 test images: noisier (±1.5 points at 90%), but the one to set beside the papers' numbers. "
                   "The headline column is the full test set. Neither uses test-time augmentation.")
    if any(r.acc_tta is not None for r in rows):
        out.append("- **with TTA**: the same checkpoints evaluated with test-time augmentation (evaluate.py --tta; "
                   "flip: the mean softmax of each image and its mirror; flip_translate: also two 1-pixel shifts and "
                   "their mirrors, airbench94's evaluation). Beside the headline, which never uses it.")
    if any(r.reference is not None for r in rows):
        out.append("- **References**: lecture = the course lecture this project grew from (MNIST, Fashion-MNIST and "
                   "two-moons rows); He et al. 2015 = 'Deep Residual Learning for Image Recognition', Table 6 "
                   "(CIFAR-10, 64k iterations at batch 128, crop + flip augmentation). A reference may use another "
                   "architecture size or budget than our row: compare with its recipe in mind.")
    for model, reason in table["skipped"].items():
        out.append(f"- **Skipped {model}**: {reason}")
    metrics = [m for runs in table["runs"].values() for m, _ in runs]
    if metrics:
        versions = sorted({f"torch {m['versions']['torch']}, lightning {m['versions']['lightning']}" for m in metrics})
        total = sum(m["fit_seconds"] for m in metrics)
        out.append(f"- **Training**: {len(metrics)} runs on {', '.join(sorted({m['device'] for m in metrics}))} "
                   f"({'; '.join(versions)}), {fmt_seconds(total)} of fitting in all.")
    if meta.get("machine"):
        out.append(f"- **Latency and baselines measured on**: {meta['machine']}.")
    if meta.get("command"):
        out.append(f"- **Command**: `{meta['command']}`")
    return out


def write_outputs(table: dict, out: Path, meta: dict, stats: dict, command: str, seconds: float,
                  rebuilt: bool) -> None:
    data = table["data"]
    what = "rebuilt from the run directories (no training)" if rebuilt else (
        f"{stats['trained']} runs trained, {stats['resumed']} resumed, {stats['reused']} reused")
    tail = f"Written {time.strftime('%Y-%m-%d %H:%M')} by `{command}` in {fmt_seconds(seconds)}: {what}."
    markdown = markdown_text(table, meta, tail)
    atomic_write_bytes(out / f"{data}.md", markdown.encode())
    atomic_write_bytes(out / f"{data}.csv", csv_text(table["rows"]).encode())
    for axis in ("params", "flops"):
        plot_error(table, axis, out / f"{data}_error_vs_{axis}.png")
    if any(h for runs in table["histories"].values() for h in runs):
        plot_time_to_accuracy(table, out / f"{data}_time_to_accuracy.png")
    if tuple(get_datamodule_class(data).input_shape) == (2,):  # a plane we can draw
        for model, runs in table["runs"].items():
            metrics, config = runs[0]
            if ckpt := tested_checkpoint(metrics):  # the checkpoints stay out of results/: plot while they exist
                plot_boundary(ckpt, data, config, out / f"{data}_boundary_{model}.png")
    print("\n" + markdown + f"\nwrote {out / data}.md, .csv and plots", flush=True)


def plot_error(table: dict, axis: str, path: Path) -> None:
    """Test error (log) against parameters or FLOPs: a point per model with its seed spread, the
    Pareto front (no other model is both cheaper and better), the baselines as horizontal lines."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    models = [r for r in table["rows"] if r.model not in BASELINES]
    n_test = (table["baselines"] or {}).get("majority", {}).get("n_test", 10_000)
    floor = 50 / n_test  # half an error, in %: a perfect score still shows on a log axis
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    for r in models:
        err = max((1 - r.acc) * 100, floor)
        ax.errorbar(getattr(r, axis), err, yerr=r.acc_std * 100, fmt="o", capsize=3)
        ax.annotate(r.model, (getattr(r, axis), err), textcoords="offset points", xytext=(5, 5), fontsize=8)
    front, best = [], math.inf
    for r in sorted(models, key=lambda r: (getattr(r, axis), 1 - r.acc)):
        if 1 - r.acc < best:
            best = 1 - r.acc
            front.append((getattr(r, axis), max(best * 100, floor)))
    if len(front) > 1:
        ax.plot(*zip(*front), "k--", lw=1, drawstyle="steps-post", label="Pareto front")
    for r, style in zip([r for r in table["rows"] if r.model in BASELINES], (":", "-.")):
        ax.axhline(max((1 - r.acc) * 100, floor), color="gray", ls=style, lw=1,
                   label=f"{r.model}: {(1 - r.acc) * 100:.2f}%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 2, 5, 10 rather than 2x10^0
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else ""))
    ax.set_xlabel("parameters" if axis == "params" else "FLOPs per sample (2 per multiply-add)")
    ax.set_ylabel("test error (%)")
    n = sorted({len(r.seeds) for r in models})
    ax.set_title(f"{table['data']}: test error vs {axis} (mean ± std, seeds per model: {'/'.join(map(str, n))})",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_time_to_accuracy(table: dict, path: Path) -> None:
    """Validation accuracy after each epoch against training wall time (summed over a run's resumed
    parts) and against epochs, one line per run, with the final test accuracy of the best checkpoint
    as a marker at the run's end: what each model's accuracy costs in time on the machine it ran on."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    by_time, by_epoch = fig.subplots(1, 2, sharey=True)
    for i, (model, histories) in enumerate(sorted(table["histories"].items())):
        color, label = f"C{i % 10}", model  # one legend entry per model, however many seeds
        for (metrics, _), rows in zip(table["runs"][model], histories):
            if not rows:
                continue
            val = [r for r in rows if "val/acc" in r]
            if val:  # a run trained on every training image (val_size 0) has no curve, only its star
                accs = [r["val/acc"] * 100 for r in val]
                by_time.plot([r["seconds"] / 60 for r in val], accs, color=color, lw=1.2, label=label)
                by_epoch.plot([r["epoch"] + 1 for r in val], accs, color=color, lw=1.2)
            else:
                label = label and f"{label} (no validation split: test only)"
            by_time.plot(metrics["fit_seconds"] / 60, metrics["test_acc"] * 100, "*", color=color, ms=9,
                         label=None if val else label)
            by_epoch.plot(rows[-1]["epoch"] + 1, metrics["test_acc"] * 100, "*", color=color, ms=9)
            label = None
    by_time.set(xlabel="training wall time (minutes)", ylabel="accuracy (%)")
    by_epoch.set(xlabel="epoch")
    for ax in (by_time, by_epoch):
        ax.grid(alpha=0.3)
    by_time.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{table['data']}: validation accuracy per epoch (lines), test accuracy of the tested checkpoint "
                 f"(stars)", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())


def plot_boundary(ckpt_path: Path, data: str, config: dict, path: Path) -> None:
    """Decision boundary of a run's best checkpoint on a 2-feature dataset: the picture fit draws."""
    module = ZooModule.from_checkpoint(load_checkpoint(ckpt_path))
    dm = get_datamodule_class(data)(**data_config(data, config), batch_size=1)
    dm.setup("fit")
    insight.decision_boundary_png(module, dm, path, f" (best checkpoint, seed {config['seed_everything']})")


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
