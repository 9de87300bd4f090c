"""train.py: the single entry point. Any zoo model on any dataset, on any hardware.

    python train.py fit                                        # MLP on two-moons, needs no files
    python train.py fit --data mnist --model lenet5            # --data NAME = --config configs/NAME.yaml
    python train.py fit --config checkpoints/mnist/lenet5/<run>/config.yaml --ckpt_path last   # resume
    python train.py test --config <run>/config.yaml --ckpt_path <run>/best.ckpt
    python train.py compare --models [linear,mlp] --datasets [moons]
    python train.py doctor

It is a thin LightningCLI: every option comes from the type-hinted __init__ of ZooModule, the
datamodules and Lightning's Trainer (see --help). What it adds is the run directory
(checkpoints/<data>/<model>/<run-id>/), resume of the newest run, early stopping, the loggers and
a final summary with the test accuracy of the best checkpoint.
"""

import importlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import ProcessingSpeedColumn
from lightning.pytorch.cli import LightningCLI
from rich.text import Text

from datamodules import DATAMODULES, TensorDataModule
from zoo import ZooError, ZooModule, insight, loggers, profile
from zoo.checkpoint import AtomicCheckpointIO, atomic_write_bytes, load_checkpoint
from zoo.module import RESOLVED, default_precision, resolve_hparams
from zoo.rundir import RunLock, claim_run_dir, global_rank, job_id, remove_stale_temp_files

ROOT = Path(__file__).resolve().parent

# Lightning's advice that does not apply here: we pass args on purpose (`--data` shorthand), log
# per epoch only, and write config.yaml into the run directory before the first checkpoint.
for message in (".*args parameter is intended to run from within Python.*", ".*smaller than the logging interval.*",
                ".*exists and is not empty.*", ".*LeafSpec.*is deprecated.*", ".*does not have many workers.*",
                ".*callbacks used to create the checkpoint need to be provided.*", ".*The dirpath has changed.*"):
    warnings.filterwarnings("ignore", message=message)
# Lightning 2.6 advertises its cloud logger (litlogger) whenever no LitLogger is among the loggers,
# with no option or environment variable to turn that off: drop that one message.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: "pypi.org/project/litlogger" not in record.getMessage())
CONFIGS = ROOT / "configs"


# ---------------------------------------------------------------------------------------------
# Run directories: checkpoints/<data>/<model>/<run-id>/, one per fit, never shared.

NEW_RUN_DIRS: list[Path] = []  # made by this process: removed again if it fails before a checkpoint
LOCKS: list[RunLock] = []  # held by this process: released when the command ends, however it ends


def new_run_dir(runs_root: Path, data: str, arch: str) -> Path:
    parent = runs_root / data / arch
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ZooError(f"Cannot create the run directory under {parent} ({e.strerror or e}). Choose a "
                       f"writable place with --runs_root DIR.") from None
    while True:  # time stamp for humans, random suffix so concurrent runs never collide
        run = parent / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        try:
            run.mkdir()
            NEW_RUN_DIRS.append(run)
            return run
        except FileExistsError:
            continue


def remove_failed_runs() -> None:
    """A run that failed before its first checkpoint leaves no half-made directory behind."""
    release_locks()
    while NEW_RUN_DIRS:
        run = NEW_RUN_DIRS.pop()
        if run.is_dir() and not any(run.glob("*.ckpt")):
            shutil.rmtree(run, ignore_errors=True)


def release_locks() -> None:
    while LOCKS:
        LOCKS.pop().release()


def find_resume(spec: str, runs_root: Path, data: str, arch: str) -> Path:
    """Turn --ckpt_path (last, a run directory or a .ckpt file) into a checkpoint file."""
    if spec == "last":
        runs = sorted((runs_root / data / arch).glob("*/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise ZooError(f"--ckpt_path last: there is no run of {arch} on {data} to resume under "
                           f"{runs_root / data / arch}. Start one without --ckpt_path, or pass a run directory.")
        return runs[-1]
    path = Path(spec)
    if path.is_dir():
        path = path / "last.ckpt"
    if not path.is_file():
        raise ZooError(f"Checkpoint not found: {spec}. Pass 'last' (the newest run of this model and "
                       f"dataset), a run directory, or a .ckpt file.")
    return path


def check_matches(ckpt: dict, path: Path, data: str, model_cfg) -> None:
    """Refuse a checkpoint of another model or dataset, before Lightning fails on shapes."""
    hp = ckpt["hyper_parameters"]
    theirs = (hp["arch"], ckpt.get("data_name"))
    if hp["arch"] != model_cfg.arch or (ckpt.get("data_name") and ckpt["data_name"] != data):
        raise ZooError(f"{path} is a checkpoint of {theirs[0]} on {theirs[1]}, but this command trains "
                       f"{model_cfg.arch} on {data}. Resume with the run's own config: "
                       f"--config {path.parent / 'config.yaml'} --ckpt_path {path}.")


# ---------------------------------------------------------------------------------------------
# Callbacks that Lightning lacks.

class RunInfo(Callback):
    """Times the fit and saves last.ckpt when the run is interrupted (Ctrl-C, SIGTERM).

    Ctrl-C stops at the next step boundary, as Lightning does for SIGTERM, so the checkpoint holds
    whole steps and a resume continues exactly (a second Ctrl-C stops at once)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.fit_seconds, self._start = run_dir, 0.0, None
        self._stop, self._previous_handler = False, None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        # One process only: DDP ranks could see the signal at different steps and wait on each other.
        if trainer.world_size == 1 and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        if self._stop:
            raise KeyboardInterrupt
        self._stop = True
        print("\nStopping after this step (Ctrl-C again to stop at once) ...", file=sys.stderr)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._stop:
            raise KeyboardInterrupt

    def on_fit_end(self, trainer, pl_module) -> None:
        self.fit_seconds = time.perf_counter() - self._start

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # A kill by the user is not a failure: keep the progress so `--ckpt_path last` continues.
        if isinstance(exception, KeyboardInterrupt) or type(exception).__name__ == "SIGTERMException":
            trainer.save_checkpoint(self.run_dir / "last.ckpt", weights_only=False)  # full state, to resume
            if trainer.is_global_zero:
                print(f"\nInterrupted: progress saved to {self.run_dir / 'last.ckpt'}; "
                      f"resume with --ckpt_path {self.run_dir}", file=sys.stderr)


class ProgressBar(RichProgressBar):
    """Lightning's Rich bar, redrawn at most every `interval` seconds during training instead of after
    every batch: redrawing every batch cost 0.37 ms per MNIST MLP step (results/bench.md as of
    commit e0d9774, section 2: +2110 against +1743 us per step without the bar)."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__()
        self.interval, self._drawn = interval, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # Every epoch's first and last batch too: Rich measures it/s between two updates, and an epoch
        # shorter than `interval` would otherwise get one (its last) and show 0.00it/s.
        now = time.monotonic()
        if batch_idx == 0 or now - self._drawn >= self.interval or batch_idx + 1 >= trainer.num_training_batches:
            self._drawn = now
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def configure_columns(self, trainer) -> list:
        return [*super().configure_columns(trainer)[:-1], SpeedColumn(style=self.theme.processing_speed)]


class SpeedColumn(ProcessingSpeedColumn):
    """Lightning's it/s column, but for a bar updated once (a one-batch test set) the average since
    it started, where Rich has no estimate and Lightning shows 0.00it/s."""

    def render(self, task) -> Text:
        elapsed = task.finished_time or task.elapsed
        speed = task.speed or (task.completed / elapsed if elapsed else None)
        return Text(f"{speed:.2f}it/s" if speed else "", style=self.style)


def check_writable(run_dir: Path) -> None:
    """Fail before training, not after an hour, when the run directory cannot be written."""
    probe = run_dir / f".write-test-{os.getpid()}"  # per process: several nodes may share the directory
    try:
        atomic_write_bytes(probe, b"ok")
        probe.unlink(missing_ok=True)
    except OSError as e:
        raise ZooError(f"Cannot write to the run directory {run_dir} ({e.strerror or e}). Checkpoints and logs "
                       f"go there: free some space, fix its permissions, or choose another place with "
                       f"--runs_root DIR.") from None


# ---------------------------------------------------------------------------------------------

class ZooCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The model is built for the data: the user never types num_classes or the input shape.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.add_argument("--runs_root", type=str, default="checkpoints", help="Where run directories go.")
        parser.add_argument("--run_dir", type=str | None, default=None,
                            help="Use this run directory (multi-node launches: give every node the same).")
        parser.add_argument("--monitor", type=str, default="val/acc",
                            help="Metric for the best checkpoint and early stopping.")
        parser.add_argument("--patience", type=int, default=10,
                            help="Early stopping patience in epochs; 0 turns it off.")
        parser.add_argument("--quiet", type=bool, default=False, help="No progress bar or model summary (for scripts).")
        parser.add_argument("--threads", type=int, default=0,
                            help="CPU threads per process (0: torch's default, one per core). 1 helps when other "
                                 "jobs share the cores: oversubscribed threads spin and can make steps 10x slower.")
        insight.add_arguments(parser)
        loggers.add_arguments(parser)
        # Configs written before there was one optimizer interface hold `optimizer: null` and
        # `lr_scheduler: null`: still read, but only as null (see parse_arguments).
        for key in ("optimizer", "lr_scheduler"):
            parser.add_argument(f"--{key}", type=str | None, default=None,
                                help="Not an option: set the optimizer with --model.optimizer, --model.lr, "
                                     "--model.scheduler (kept so that older config.yaml files load).")

    def parse_arguments(self, parser, args) -> None:
        # --print_config shows the resolved recipe, as config.yaml does: parse without it, resolve, print.
        printing = any(a == "--print_config" or a.startswith("--print_config=") for a in args or [])
        super().parse_arguments(parser, [a for a in args if not a.startswith("--print_config")] if printing else args)
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        for key in ("optimizer", "lr_scheduler"):
            if cfg.get(key) is not None:
                raise not_our_optimizer_flag(key)
        seed = cfg.get("seed_everything")
        if not isinstance(seed, bool) and isinstance(seed, int) and not 0 <= seed <= 2**32 - 1:
            raise ZooError(f"--seed_everything {seed}: a seed must be an integer from 0 to {2**32 - 1} (numpy's "
                           f"range), or true for a random one.")
        if printing:
            fill_in_recipe(cfg.model)
            subparser = parser._subcommands_action._name_parser_map[sub] if sub else parser
            sys.stdout.write(subparser.dump(cfg, skip_check=True))
            raise SystemExit(0)

    def _parse_ckpt_path(self) -> None:
        # Replaces Lightning's version: resolve `last` / a run directory, load the file safely
        # (weights_only) and refuse a checkpoint of another model or dataset with a clear message.
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        self.run_dir, self.ckpt_hparams, self.ckpt_precision = None, None, None
        spec = cfg.get("ckpt_path") if sub else None
        if not spec:
            return
        data, runs, arch = data_name(cfg.data), run_data_name(cfg.data), cfg.model.arch
        if os.environ.get("ZOO_RUN_DIR") and spec == "last":  # a DDP child: same run as rank 0
            spec = os.environ["ZOO_RUN_DIR"]
        elif sub == "fit" and cfg.get("run_dir") and spec == "last":  # `--run_dir D --ckpt_path last`: D's run
            spec = cfg.run_dir
        path = find_resume(spec, Path(cfg.runs_root), runs, arch) if sub == "fit" else Path(spec)
        if sub == "fit" and cfg.get("run_dir") and Path(cfg.run_dir).resolve() != path.parent.resolve():
            raise ZooError(f"--run_dir {cfg.run_dir} and --ckpt_path {spec} name different runs ({path.parent}). "
                           f"A resume continues the checkpoint's own run directory: drop --run_dir.")
        ckpt = load_checkpoint(path)
        check_matches(ckpt, path, data, cfg.model)
        self.ckpt_hparams, self.ckpt_precision = ckpt["hyper_parameters"], ckpt.get("precision")
        cfg.ckpt_path = str(path)
        if sub == "fit":
            self.run_dir = path.parent  # continue the same run: same directory, TensorBoard and W&B id

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        self.data_name, self.arch = data_name(cfg.data), cfg.model.arch
        check_trainer_options(cfg)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
            os.environ["OMP_NUM_THREADS"] = str(cfg.threads)  # DDP workers started from here inherit it
        fill_in_recipe(cfg.model)  # so config.yaml records what really trains
        if cfg.trainer.precision is None:  # not given: as the weights were trained, else the fast path
            if self.ckpt_precision:
                cfg.trainer.precision = self.ckpt_precision
            elif self.ckpt_hparams is not None or (self.subcommand != "fit" and cfg.model.pretrained):
                cfg.trainer.precision = "32-true"  # older checkpoints and the shipped weights: fp32 throughout
            else:
                cfg.trainer.precision = default_precision(self.arch, cfg.trainer.accelerator)
        if self.subcommand != "fit":
            return
        inherited = os.environ.get("ZOO_RUN_DIR")  # a DDP worker: rank 0 claimed and locked the directory
        if self.run_dir is not None or inherited:
            self.run_dir = self.run_dir or Path(inherited)
        elif cfg.run_dir:
            fresh = not Path(cfg.run_dir).exists() and job_id() is None
            self.run_dir = claim_run_dir(Path(cfg.run_dir), resuming=False)
            if fresh:
                NEW_RUN_DIRS.append(self.run_dir)
        else:
            self.run_dir = new_run_dir(Path(cfg.runs_root), run_data_name(cfg.data), self.arch)
        if not inherited and global_rank() == 0:  # one lock per run: the job's first process holds it
            lock = RunLock(self.run_dir)
            lock.acquire()
            LOCKS.append(lock)
        check_writable(self.run_dir)
        os.environ["ZOO_RUN_DIR"] = str(self.run_dir)  # DDP workers Lightning starts inherit this
        cfg.trainer.default_root_dir = str(self.run_dir)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        cfg = self.config[self.subcommand]
        callbacks = list(self._get(self.config_init, "trainer").get("callbacks") or [])
        if not cfg.quiet:
            callbacks.append(ProgressBar())
        kwargs.update(enable_progress_bar=not cfg.quiet, enable_model_summary=not cfg.quiet)
        if self.subcommand != "fit":
            # validate/test read a config and a checkpoint; they write nothing (and a Trainer that may
            # checkpoint but has no ModelCheckpoint prints an advert for Lightning's litmodels).
            self.save_config_callback = None
            return super().instantiate_trainer(callbacks=callbacks, logger=False, plugins=[AtomicCheckpointIO()],
                                               enable_checkpointing=False, **kwargs)
        mode = "min" if "loss" in cfg.monitor else "max"
        self.checkpoint = ModelCheckpoint(dirpath=self.run_dir, filename="best", monitor=cfg.monitor, mode=mode,
                                          enable_version_counter=False)
        # last.ckpt every epoch, after best.ckpt (so it records the new best). Not save_last=True:
        # Lightning 2.6 then writes last.ckpt only in epochs that improved the best, and a resume
        # after a crash would lose every epoch since the last improvement.
        last = ModelCheckpoint(dirpath=self.run_dir, filename="last", enable_version_counter=False)
        self.run_info = RunInfo(self.run_dir)
        callbacks += [self.checkpoint, last, self.run_info, loggers.RunSettings(self.data_name)]
        callbacks += insight.callbacks(cfg, self.run_dir)
        if cfg.patience > 0:
            # strict=False: a metric that never comes (max_steps inside the first epoch) ends the run
            # without best.ckpt, said in the summary, instead of a crash after training.
            self.early_stopping = EarlyStopping(monitor=cfg.monitor, mode=mode, patience=cfg.patience, strict=False)
            callbacks.append(self.early_stopping)
        self.save_config_kwargs = dict(overwrite=True)
        return super().instantiate_trainer(callbacks=callbacks, logger=loggers.make_loggers(cfg, self.run_dir),
                                           plugins=[AtomicCheckpointIO()], **kwargs)

    def check_checkpoint_fits(self) -> None:
        """The data's shape and classes must be the checkpoint's, or loading fails deep in torch."""
        hp, mine = self.ckpt_hparams, self.model.hparams
        if hp and (hp["num_classes"], list(hp["input_shape"])) != (mine.num_classes, list(mine.input_shape)):
            raise ZooError(f"The checkpoint's {hp['arch']} takes input {list(hp['input_shape'])} with "
                           f"{hp['num_classes']} classes, but {self.data_name} gives {list(mine.input_shape)} with "
                           f"{mine.num_classes}. Use the data it was trained on (its run's config.yaml).")

    before_validate = before_test = check_checkpoint_fits

    def check_resume_matches(self) -> None:
        """A resume must train the model and recipe the checkpoint holds: say what differs before any
        file is written (config.yaml included), instead of failing inside Lightning after it."""
        if not self.ckpt_hparams:
            return
        cfg = self.config["fit"]
        theirs, mine = resolve_hparams(dict(self.ckpt_hparams)), dict(self.model.hparams)
        ignored = {"compile", "pretrained", "num_classes", "input_shape"} | ({"lr"} if cfg.lr_find else set())
        differ = [f"{k}: checkpoint {theirs.get(k)!r}, command {mine.get(k)!r}" for k in sorted(set(theirs) | set(mine))
                  if k not in ignored and _norm(theirs.get(k)) != _norm(mine.get(k))]
        if differ:
            raise ZooError(f"Cannot resume {cfg.ckpt_path} with other model settings ({'; '.join(differ)}). Resume "
                           f"with the run's own settings: --config {self.run_dir / 'config.yaml'} --ckpt_path "
                           f"{self.run_dir}; or start a new run without --ckpt_path.")

    def check_monitor(self) -> None:
        """The metric behind best.ckpt and early stopping must be one that this run will log."""
        cfg, t = self.config["fit"], self.config["fit"].trainer
        dm, monitor = self.datamodule, cfg.monitor
        logged = ["train/loss", "train/acc", "val/loss", "val/acc"] + (["val/acc_top5"] if dm.num_classes > 5 else [])
        if monitor not in logged:
            raise ZooError(f"--monitor {monitor}: this run logs no such metric. Pick one of: {', '.join(logged)}.")
        if not monitor.startswith("val/"):
            return
        dm.setup("fit")  # loaded now rather than at the first step: the split size decides
        why = ("--trainer.limit_val_batches is 0" if t.limit_val_batches in (0, 0.0) else
               "the validation split is empty" if len(dm.val_y) == 0 else None)
        if why:
            raise ZooError(f"--monitor {monitor} can never be measured: {why}, so no validation metric is logged. "
                           f"Keep a validation split, or monitor a training metric (--monitor train/loss) and "
                           f"turn early stopping off (--patience 0).")

    def before_fit(self) -> None:
        self.check_checkpoint_fits()
        self.check_resume_matches()
        self.check_monitor()
        if LOCKS and self.ckpt_hparams:
            for p in remove_stale_temp_files(self.run_dir):
                print(f"Removed {p.name}, left by an interrupted save.", file=sys.stderr)
        stats = profile(self.model.model, self.model.hparams.input_shape)
        self.stats = stats
        if self.trainer.is_global_zero:
            print(f"{self.arch} on {self.data_name}: {stats['params']:,} parameters, "
                  f"{stats['flops']:,} FLOPs per sample ({stats['macs']:,} MACs). Run: {self.run_dir}")

    def after_fit(self) -> None:
        trainer, cb = self.trainer, self.checkpoint
        if trainer.interrupted:
            return
        # Read how the fit ended before testing: trainer.test restores the callbacks' state.
        es = getattr(self, "early_stopping", None)
        if es is not None and es.stopped_epoch > 0:
            stopped = f"early stopping: {es.monitor} did not improve for {es.patience} epochs"
        else:
            stopped = f"reached max_epochs={trainer.max_epochs}"
        epochs = trainer.current_epoch
        best_score = float(cb.best_model_score) if cb.best_model_score is not None else None
        best = cb.best_model_path or str(self.run_dir / "last.ckpt")
        if not Path(best).is_file():
            raise ZooError(f"The fit ended without saving a checkpoint ({epochs} epochs, {trainer.global_step} steps), "
                           f"so there is nothing to test. Train at least one epoch (check --trainer.max_steps and "
                           f"--trainer.limit_train_batches).")
        if not cb.best_model_path:
            print(f"note: {cb.monitor} was never logged (the run stopped before a validation epoch ended), so "
                  f"there is no best.ckpt; testing last.ckpt.", file=sys.stderr)
        test = trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best, verbose=False)[0]
        if not trainer.is_global_zero:
            return
        metrics = {
            "data": self.data_name, "model": self.arch, "params": self.stats["params"],
            "flops": self.stats["flops"], "macs": self.stats["macs"],
            "epochs": epochs, "stopped": stopped, "monitor": cb.monitor, "best_score": best_score,
            "test_acc": test["test/acc"], "test_loss": test["test/loss"],
            "fit_seconds": round(self.run_info.fit_seconds, 3),
            "device": device_name(trainer), "devices": trainer.world_size,
            "precision": str(trainer.precision), "seed": int(os.environ.get("PL_GLOBAL_SEED", -1)),
            "run_dir": str(self.run_dir), "best_ckpt": best,
            "versions": {"torch": torch.__version__, "lightning": __import__("lightning").__version__},
        }
        atomic_write_bytes(self.run_dir / "metrics.json", json.dumps(metrics, indent=2).encode())
        loggers.log_final(trainer, metrics, model=Path(best) if self.config["fit"].wandb_log_model else None)
        print(f"\n{self.arch} on {self.data_name}: {metrics['params']:,} params, {metrics['flops']:,} FLOPs/sample | "
              f"best {cb.monitor} {_fmt(best_score)} | test acc {metrics['test_acc']:.4f} (best checkpoint) | "
              f"{epochs} epochs in {metrics['fit_seconds']:.1f} s on {metrics['device']}, {metrics['precision']} "
              f"({stopped})\n"
              f"checkpoint: {best}\nlogs:       {self.run_dir}  (tensorboard --logdir {self.run_dir.parent})")


def fill_in_recipe(model_cfg) -> None:
    """The model options left None set as ZooModule will resolve them (the recipe, the builder's
    defaults), so config.yaml and --print_config show what trains."""
    resolved = resolve_hparams({k: model_cfg.get(k) for k in ("arch", *RESOLVED)})
    for key in RESOLVED:
        model_cfg[key] = resolved[key]


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


def _fmt(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.4f}"


def check_trainer_options(cfg) -> None:
    """Mistakes Lightning would accept silently, or report from deep inside, caught up front."""
    t = cfg.trainer
    for what, value in (("limit_train_batches", t.limit_train_batches), ("max_steps", t.max_steps)):
        if value is not None and not isinstance(value, bool) and value == 0:
            raise ZooError(f"--trainer.{what} 0 trains nothing, so there would be no checkpoint to test. Leave it "
                           f"out, or pass a positive number.")
    if t.max_epochs is not None and t.max_epochs != -1 and t.max_epochs < 1:
        raise ZooError(f"--trainer.max_epochs must be at least 1 (or -1 for no limit), got {t.max_epochs}.")
    if cfg.patience < 0:
        raise ZooError(f"--patience must be >= 0 (0 turns early stopping off), got {cfg.patience}.")
    if cfg.threads < 0:
        raise ZooError(f"--threads must be >= 0 (0 keeps torch's default of one per core), got {cfg.threads}.")
    accelerator = str(t.accelerator)
    if accelerator not in ("auto", "cpu", "gpu", "cuda", "mps"):
        raise ZooError(f"--trainer.accelerator {accelerator}: lightning-zoo runs on auto, cpu, gpu (cuda) or mps; "
                       f"{accelerator} needs its own stack (e.g. torch_xla for TPUs), which this project does not "
                       f"install or test. Use --trainer.accelerator auto.")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ZooError(f"--trainer.accelerator {accelerator}: this machine has no usable CUDA GPU (torch "
                       f"{torch.__version__}, torch.cuda.is_available() is False). Use --trainer.accelerator auto "
                       f"to take a GPU when there is one and the CPU otherwise, or cpu.")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ZooError("--trainer.accelerator mps: Apple's MPS backend is not available on this machine. Use "
                       "--trainer.accelerator auto (takes MPS on a Mac with it, the CPU otherwise) or cpu.")
    devices = int(t.devices) if str(t.devices).isdigit() else None  # may arrive as "2"
    if devices:
        if accelerator in ("gpu", "cuda") and devices > torch.cuda.device_count():
            raise ZooError(f"--trainer.devices {devices}: only {torch.cuda.device_count()} GPU(s) here. "
                           f"Pass at most that many, or -1 for all of them.")
        if accelerator == "cpu" and devices > (os.cpu_count() or 1):
            raise ZooError(f"--trainer.devices {devices}: this machine has {os.cpu_count()} CPU cores, so at "
                           f"most {os.cpu_count()} CPU processes make sense. Pass a smaller number.")


def device_name(trainer: Trainer) -> str:
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def data_name(data_cfg) -> str:
    """The dataset name (mnist, ...) of the datamodule a config selects: its registry name, else the
    class's own `name` (what its checkpoints record), else the class name."""
    module, _, class_name = data_cfg.get("class_path").rpartition(".")  # jsonargparse may shorten the module
    for name, cls in DATAMODULES.items():
        if cls.__name__ == class_name:
            return name
    try:  # a datamodule of your own, given by class path: parsing has imported it already
        return getattr(importlib.import_module(module), class_name).name or class_name
    except (ImportError, AttributeError, ValueError):
        return class_name


def run_data_name(data_cfg) -> str:
    """The dataset part of run directories: data_name, and for image_folder the folder's name too
    (image_folder-my_images), so runs on unrelated folders never mix, nor resume each other."""
    name = data_name(data_cfg)
    folder = (data_cfg.get("init_args") or {}).get("data_dir")
    if name != "image_folder" or not folder:
        return name
    folder_name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(os.path.abspath(folder)).name)  # abspath: "." has a name
    return f"{name}-{folder_name}" if folder_name.strip("._") else name


def expand_data_shorthand(args: list[str]) -> list[str]:
    """`--data mnist` means `--config configs/mnist.yaml`: the dataset with its training recipe.

    The recipe goes first, right after the subcommand, whatever the position of `--data`: the
    user's own flags always win over it. With neither --data nor --config, fit/validate/test take
    the two-moons recipe (configs/moons.yaml), the README's default."""
    out, recipes, named, i = [], [], False, 0
    while i < len(args):
        a = args[i]
        if a.startswith("--data="):
            name = a.split("=", 1)[1]
        else:
            name = args[i + 1] if a == "--data" and i + 1 < len(args) else None
        named |= a in ("--data", "--config", "-c") or a.startswith(("--data=", "--config=", "--data.class_path"))
        if name is None or "." in name or name.endswith("DataModule") or name.startswith("{"):
            out.append(a)
            i += 1
            continue
        if name not in DATAMODULES:
            raise ZooError(f"Unknown dataset {name!r}. Available: {', '.join(DATAMODULES)} (--data NAME).")
        config = CONFIGS / f"{name}.yaml"
        if not config.exists():
            raise ZooError(f"Dataset {name!r} has no recipe file {config}: every registered dataset needs one "
                           f"(batch size, epochs), written as configs/moons.yaml is.")
        recipes += ["--config", str(config)]
        i += 1 if a.startswith("--data=") else 2
    if not named and out and out[0] in ("fit", "validate", "test"):
        recipes = ["--config", str(CONFIGS / "moons.yaml")]
    return out[:1] + recipes + out[1:] if out and not out[0].startswith("-") else recipes + out


def expand_name_shorthand(args: list[str]) -> list[str]:
    """`--model lenet5` means `--model.arch lenet5` (fit, validate, test), and `--data.help mnist`
    means `--data.help datamodules.mnist.MNISTDataModule`: the names used everywhere else work here."""
    out, i = [], 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        if flag == "--model" and args[0] in ("fit", "validate", "test") and re.fullmatch(r"[\w-]+", value):
            out += ["--model.arch", value]  # not a name (model.yaml, {...}): jsonargparse's --model CONFIG
        elif flag == "--data.help" and value in DATAMODULES:
            out += ["--data.help", f"{DATAMODULES[value].__module__}.{DATAMODULES[value].__name__}"]
        else:
            out.append(args[i])
            i += 1
            continue
        i += 1 if eq else 2
    return out


def check_config_files(args: list[str]) -> None:
    """A missing or broken --config file named in one sentence (jsonargparse would not name it)."""
    for flag, value in zip(args, args[1:]):
        if flag in ("--config", "-c"):
            path = Path(value)
            if not path.is_file():
                raise ZooError(f"Config file not found: {path}. Check the path (dataset configs are in "
                               f"{CONFIGS}, a run's resolved config is <run dir>/config.yaml).")
            try:
                yaml.safe_load(path.read_text())
            except yaml.YAMLError as e:
                where = f" at line {e.problem_mark.line + 1}" if getattr(e, "problem_mark", None) else ""
                raise ZooError(f"Config file {path} is not valid YAML{where}: {getattr(e, 'problem', e)}. "
                               f"Fix the file (indentation, brackets, colons).") from None


def not_our_optimizer_flag(key: str) -> ZooError:
    ours = "--model.scheduler" if key == "lr_scheduler" else "--model.optimizer, --model.lr, --model.momentum"
    return ZooError(f"--{key} is not an option of lightning-zoo: the optimizer and schedule are the model's "
                    f"hyperparameters, so that checkpoints and logs record what trained. Use {ours} "
                    f"(see `python train.py fit --help`).")


def cli_main(args: list[str] | None = None) -> ZooCLI:
    """Run the CLI in-process (tests call this); errors propagate."""
    args = expand_data_shorthand(expand_name_shorthand(list(sys.argv[1:] if args is None else args)))
    for a in args:
        key = a[2:].split("=")[0].split(".")[0]
        if a.startswith("--") and key in ("optimizer", "lr_scheduler") and a[2 + len(key):] not in ("", "=null"):
            raise not_our_optimizer_flag(key)
    check_config_files(args)
    inherited = "ZOO_RUN_DIR" in os.environ  # set: we are a DDP worker of a run started elsewhere
    try:
        # auto_configure_optimizers=False: one optimizer interface (--model.optimizer, recorded in the
        # hyperparameters), not also LightningCLI's --optimizer/--lr_scheduler, which bypassed them.
        return ZooCLI(ZooModule, TensorDataModule, subclass_mode_data=True, seed_everything_default=42,
                      trainer_defaults={"max_epochs": 20}, save_config_kwargs={"overwrite": True},
                      load_from_checkpoint_support=False, auto_configure_optimizers=False,
                      parser_kwargs={"exit_on_error": False},  # raise, so main() prints one clear line
                      args=args)
    finally:
        release_locks()
        if not inherited:  # in-process callers (tests) start every run afresh
            os.environ.pop("ZOO_RUN_DIR", None)


# Subcommands that are not Trainer methods: each lives in its own module with a main(args) -> int.
EXTRA_COMMANDS = {
    "compare": "zoo.commands.compare",
    "doctor": "zoo.commands.doctor",
    "predict": "zoo.commands.predict",
    "export": "zoo.commands.export",
}


HELP = """usage: train.py SUBCOMMAND [options]      (python train.py SUBCOMMAND --help for its options)

Train, evaluate and compare lightning-zoo models. Subcommands:
  fit       train a model on a dataset (default: the lecture's MLP on two-moons), test its best checkpoint
  validate  evaluate a checkpoint on the validation split (--config <run>/config.yaml --ckpt_path ...)
  test      evaluate a checkpoint on the test split
  compare   train several models and seeds, write the accuracy-versus-cost tables (results/)
  doctor    check the environment: packages, devices, data files, W&B
  predict   classify image files with a checkpoint or the shipped weights
  export    write a checkpoint as TorchScript, ONNX or torch.export (.pt2), checked against it

  python train.py fit --data mnist --model lenet5
  python evaluate.py <run>/best.ckpt       (test metrics, per-class accuracy, confusion matrix)
Add --debug to any command to see the full traceback of an error."""


def main(args: list[str] | None = None) -> int:
    """Entry point: returns the exit status. User mistakes print one paragraph, not a traceback."""
    args = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if not args or args[0] in ("-h", "--help"):
        print(HELP, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    try:
        if args and args[0] in EXTRA_COMMANDS:
            return importlib.import_module(EXTRA_COMMANDS[args[0]]).main(args[1:]) or 0
        cli_main(args)
    except (ZooError, MisconfigurationException) as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full or read-only disk while saving: say so, don't dump a traceback
        if debug:
            traceback.print_exc()
        name = os.fsdecode(e.filename) if e.filename is not None else "a file"  # torch passes bytes
        print(f"error: could not write {name}: {e.strerror or e}. Free some space or choose a "
              f"writable --runs_root; checkpoints already saved are intact (they are written atomically).",
              file=sys.stderr)
        return 1
    except ArgumentError as e:  # a mistyped option or a broken config file
        if debug:
            traceback.print_exc()
        sub = next((a for a in args if a in ("fit", "validate", "test")), "fit")
        print(f"error: {e}\n(see `python train.py {sub} --help` for the options)", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help, or jsonargparse has printed its message already
        return e.code if isinstance(e.code, int) else 1
    finally:  # whatever ended the command (a mistake, a bug, Ctrl-C): no half-made run left behind
        remove_failed_runs()
    return 0


if __name__ == "__main__":
    sys.exit(main())
