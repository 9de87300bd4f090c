"""One training run: its directory, the checkpoint it resumes or tests, its lock and its summary.

train.py's ZooCLI builds one Run from the parsed config and calls it from its LightningCLI hooks:

    run = Run.from_config("fit", cfg)   # --ckpt_path (last, a run directory, a .ckpt file) resolved and checked
    run.start()                         # recipe, precision, run directory and its lock, before instantiation
    trainer = Trainer(callbacks=run.callbacks(), **run.trainer_options(), ...)
    run.before_fit(trainer, model, datamodule); trainer.fit(...); run.after_fit(trainer, model, datamodule)
    run.close()                         # however the command ended: lock released, a run that saved nothing removed

A run directory is checkpoints/<data>/<model>/<run-id>/, one per fit and never shared (zoo.rundir).
"""

import csv
import importlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint, Timer
from lightning.pytorch.plugins.io import TorchCheckpointIO

from datamodules import registered_name
from zoo import checkpoint as zoo_checkpoint
from zoo import insight, loggers
from zoo.checkpoint import atomic_write_bytes, io_mismatch, load_checkpoint
from zoo.errors import ZooError
from zoo.models import profile
from zoo.models.registry import check_model_name
from zoo.module import (
    RESOLVED,
    default_precision,
    emulated_bf16_note,
    keep_freed_memory,
    largest_block,
    resolve_hparams,
)
from zoo.rundir import RunLock, claim_run_dir, global_rank, job_id, remove_stale_temp_files

# The run directory, for the DDP workers Lightning starts by re-running the command (LOCAL_RANK 1, 2, ...):
# they inherit the environment and join their parent's run instead of starting one. Set by the parent
# in Run.start, read only by such a worker (inherited_run_dir), removed again by Run.close.
RUN_DIR_ENV = "ZOO_RUN_DIR"

# --steps_per_execution when not given: chunks of AUTO_CHUNK steps where a step's forward work is at most
# SMALL_STEP_FLOPS (the MLP and LeNet-5 at their batch sizes: 26M and 110M; ResNet-20 at batch 128 is 10G).
# There Lightning's work per Lightning step is 15-40% of an epoch (results/lightning_tax.md, section 2).
# Chunks of 50 brought the MNIST MLP epoch to 1.05-1.13x the bare loop's, against 1.20-1.26x with chunks
# of 10 (results/chunks_mlp.txt, runs 1 and 2); a chunk of 50 LeNet-5 steps (15-25 ms each on one CPU
# thread in results/lightning_tax.md and its earlier runs) still ends within about 1.5 s of Ctrl-C.
AUTO_CHUNK, SMALL_STEP_FLOPS = 50, 1e9


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that resumes its best-so-far in a run directory that moved (a clone or a copy
    elsewhere). Lightning reloads best_model_score and the rest only when the saved directory equals the
    current one, so a moved run took its first resumed epoch as the best and overwrote a better best.ckpt.
    A resume always continues the checkpoint's own directory, so the saved paths are mapped into it."""

    def load_state_dict(self, state_dict: dict) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if isinstance(old, str) and old and new and old != new:
            def moved(path):
                inside = isinstance(path, str) and os.path.dirname(path) == old
                return os.path.join(new, os.path.basename(path)) if inside else path

            best_k = state_dict.get("best_k_models")
            state_dict = {**state_dict, "dirpath": new,
                          **{k: moved(state_dict.get(k)) for k in ("best_model_path", "kth_best_model_path",
                                                                   "last_model_path")},
                          "best_k_models": {moved(k): v for k, v in best_k.items()} if isinstance(best_k, dict)
                          else best_k}
        super().load_state_dict(state_dict)


class Run:
    """A command of train.py (fit, validate, test) as one object, built once from its parsed config
    (`cfg`: the subcommand's namespace, which it completes: recipe, precision, ckpt_path)."""

    def __init__(self, subcommand: str, cfg) -> None:
        self.subcommand, self.cfg = subcommand, cfg
        self.data, self.arch = data_name(cfg.data), cfg.model.arch
        check_model_name(self.arch)  # before a run directory or a resume is looked up by its name
        self.ckpt_path: Path | None = None  # the checkpoint to resume or evaluate, resolved
        self.ckpt_hparams: dict | None = None
        self.ckpt_precision: str | None = None
        self.ckpt_steps: tuple[int, int] = (1, 0)  # the checkpoint's (steps per execution, global step)
        self.ckpt_ema: float | None = None  # the checkpoint's --ema decay (0: off); None: not known
        self.dir: Path | None = None  # fit only
        self.made_dir = False  # made by this run: removed again if it ends before its first checkpoint
        self.made_parents: list[Path] = []  # folders above it made with it: removed with it when left empty
        self.lock: RunLock | None = None
        self.told_children = False  # RUN_DIR_ENV set by this process
        self.checkpoint = self.run_info = self.early_stopping = None
        self.stats: dict = {}

    @classmethod
    def from_config(cls, subcommand: str, cfg) -> "Run":
        run = cls(subcommand, cfg)
        if cfg.get("ckpt_path"):
            run.resolve_checkpoint(str(cfg.ckpt_path))
        return run

    # --- before instantiation ---------------------------------------------------------------------

    def resolve_checkpoint(self, spec: str) -> None:
        """--ckpt_path as a checked checkpoint file: loaded safely (weights_only) and refused when it
        is of another model or dataset. A fit continues the checkpoint's own run directory."""
        cfg, fit = self.cfg, self.subcommand == "fit"
        inherited = inherited_run_dir()
        if inherited and spec == "last":  # a DDP worker: the run its parent resolved
            spec = str(inherited)
        elif fit and cfg.get("run_dir") and spec == "last":  # `--run_dir D --ckpt_path last`: D's run
            spec = cfg.run_dir
        path = find_resume(spec, Path(cfg.runs_root), run_data_name(cfg.data), self.arch) if fit else Path(spec)
        if fit and cfg.get("run_dir") and Path(cfg.run_dir).resolve() != path.parent.resolve():
            raise ZooError(f"--run_dir {cfg.run_dir} and --ckpt_path {spec} name different runs ({path.parent}). "
                           f"A resume continues the checkpoint's own run directory: drop --run_dir.")
        ckpt = load_checkpoint(path)
        check_matches(ckpt, path, self.data, cfg.model)
        self.ckpt_path, self.ckpt_hparams, self.ckpt_precision = path, ckpt["hyper_parameters"], ckpt.get("precision")
        k, step = ckpt.get("steps_per_execution", 1), ckpt.get("global_step", 0)
        if not (type(k) is int and k >= 1 and type(step) is int and step >= 0):
            raise ZooError(f"{path}: its steps_per_execution ({k!r}) or global_step ({step!r}) is not the positive "
                           f"whole number train.py writes. Use best.ckpt or last.ckpt of a run written by train.py "
                           f"fit (or retrain); do not edit checkpoints by hand.")
        self.ckpt_steps = (k, step)
        self.ckpt_ema = ema_of(ckpt, path) if fit else None
        if fit:
            self.dir = path.parent  # continue the same run: same directory, TensorBoard and W&B id

    def start(self) -> None:
        """Complete the config (what really trains, for config.yaml) and, for a fit, take the run
        directory: the resumed one, the parent's (a DDP worker), --run_dir, or a new one."""
        cfg = self.cfg
        cfg.ckpt_path = str(self.ckpt_path) if self.ckpt_path else None  # the file, not `last` or a directory
        fill_in_recipe(cfg.model)
        if self.subcommand != "fit" and cfg.model.get("teacher"):  # a teacher only matters in training
            cfg.model.teacher = cfg.model.distill_weight = cfg.model.distill_temperature = None
        if cfg.trainer.precision is None:  # not given: as the weights were trained, else the fast path
            if self.ckpt_precision:
                cfg.trainer.precision = self.ckpt_precision
                if note := emulated_bf16_note(self.ckpt_precision, str(cfg.trainer.accelerator),
                                              "--trainer.precision 32-true"):
                    print(note, file=sys.stderr, flush=True)
            elif self.ckpt_hparams is not None or (self.subcommand != "fit" and cfg.model.pretrained):
                cfg.trainer.precision = "32-true"  # older checkpoints and the shipped weights: fp32 throughout
            else:
                cfg.trainer.precision = default_precision(self.arch, cfg.trainer.accelerator)
        if self.subcommand != "fit":
            return
        inherited = inherited_run_dir()  # a DDP worker: its parent claimed and locked the directory
        if self.dir is None:  # not a resume (that continues the checkpoint's directory)
            if inherited:
                self.dir = inherited
            elif cfg.run_dir:
                fresh = not Path(cfg.run_dir).exists() and job_id() is None
                self.made_parents = missing_dirs(Path(cfg.run_dir).parent) if fresh else []
                self.dir = claim_run_dir(Path(cfg.run_dir), resuming=False)
                self.made_dir = fresh
            else:
                parent = Path(cfg.runs_root) / run_data_name(cfg.data) / self.arch
                self.made_parents = missing_dirs(parent)
                self.dir = new_run_dir(parent)
                self.made_dir = True
        if not inherited and global_rank() == 0:  # one lock per run: the job's first process holds it
            self.lock = RunLock(self.dir)
            self.lock.acquire()
        check_writable(self.dir)
        if not inherited:  # for the DDP workers Lightning will start (see RUN_DIR_ENV); never read here
            os.environ[RUN_DIR_ENV], self.told_children = str(self.dir), True
        cfg.trainer.default_root_dir = str(self.dir)

    # --- the Trainer ------------------------------------------------------------------------------

    def callbacks(self) -> list[Callback]:
        """A fit's callbacks: best.ckpt and last.ckpt, timing and Ctrl-C, settings, insight, early stopping."""
        if self.subcommand != "fit":
            return []
        cfg = self.cfg
        mode = "min" if "loss" in cfg.monitor else "max"
        self.checkpoint = RunCheckpoint(dirpath=self.dir, filename="best", monitor=cfg.monitor, mode=mode,
                                        enable_version_counter=False)
        # last.ckpt every epoch, after best.ckpt (so it records the new best). Not save_last=True:
        # Lightning 2.6 then writes last.ckpt only in epochs that improved the best, and a resume
        # after a crash would lose every epoch since the last improvement.
        last = RunCheckpoint(dirpath=self.dir, filename="last", enable_version_counter=False)
        self.run_info = RunInfo(self.dir)
        callbacks = [self.checkpoint, last, self.run_info, loggers.RunSettings(self.data)]
        if cfg.get("ema"):
            callbacks.append(EMA(decay=cfg.ema))
        callbacks += insight.callbacks(cfg, self.dir)
        if cfg.patience > 0:
            # strict=False: a metric that never comes (max_steps inside the first epoch) ends the run
            # without best.ckpt, said in the summary, instead of a crash after training.
            self.early_stopping = EarlyStopping(monitor=cfg.monitor, mode=mode, patience=cfg.patience, strict=False)
            callbacks.append(self.early_stopping)
        return callbacks

    def trainer_options(self) -> dict:
        if self.subcommand != "fit":
            # validate/test read a config and a checkpoint; they write nothing (and a Trainer that may
            # checkpoint but has no ModelCheckpoint prints an advert for Lightning's litmodels).
            return dict(logger=False, plugins=[AtomicCheckpointIO()], enable_checkpointing=False)
        return dict(logger=loggers.make_loggers(self.cfg, self.dir), plugins=[AtomicCheckpointIO()])

    # --- before and after the subcommand ----------------------------------------------------------

    def check_checkpoint_fits(self, model) -> None:
        """The data's shape and classes must be the checkpoint's, or loading fails deep in torch."""
        hp, mine = self.ckpt_hparams, model.hparams
        if hp and (differs := io_mismatch(hp, mine.input_shape, mine.num_classes)):
            raise ZooError(f"The checkpoint's {hp['arch']} {differs} ({self.data}). Use the data it was trained on "
                           f"(its run's config.yaml).")

    def check_resume_matches(self, model) -> None:
        """A resume must train the model and recipe the checkpoint holds: say what differs before any
        file is written (config.yaml included), instead of failing inside Lightning after it."""
        if not self.ckpt_hparams:
            return
        theirs, mine = resolve_hparams(dict(self.ckpt_hparams)), dict(model.hparams)
        ignored = {"compile", "pretrained", "num_classes", "input_shape"} | ({"lr"} if self.cfg.lr_find else set())
        differ = [f"{k}: checkpoint {theirs.get(k)!r}, command {mine.get(k)!r}" for k in sorted(set(theirs) | set(mine))
                  if k not in ignored and _norm(theirs.get(k)) != _norm(mine.get(k))]
        if differ:
            raise ZooError(f"Cannot resume {self.ckpt_path} with other model settings ({'; '.join(differ)}). Resume "
                           f"with the run's own settings: --config {self.dir / 'config.yaml'} --ckpt_path "
                           f"{self.dir}; or start a new run without --ckpt_path.")
        self.check_schedule_length(mine["scheduler"])
        saved_ema, ema = self.ckpt_ema, float(self.cfg.get("ema") or 0)
        if saved_ema is not None and saved_ema != ema:
            raise ZooError(f"Cannot resume {self.ckpt_path} with --ema {ema:g}: the run averaged its weights with "
                           f"--ema {saved_ema:g} (0: off), and its checkpoint holds "
                           f"{'that average and the raw weights apart' if saved_ema else 'raw weights only'}, so "
                           f"the run would not continue where it stopped. Resume with the run's own settings "
                           f"(--config {self.dir / 'config.yaml'} --ckpt_path {self.dir}), or start a new run.")

    def check_schedule_length(self, scheduler: str) -> None:
        """A learning-rate schedule is planned for the run's length (OneCycleLR refuses to step past its
        end; cosine would restart): a resume keeps what sets the length, as the run's config.yaml has it."""
        saved = self.dir / "config.yaml"
        if scheduler == "none" or not saved.is_file():
            return
        try:
            config = yaml.safe_load(saved.read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            config = None
        data = (config.get("data") or {}) if isinstance(config, dict) else None
        if not (isinstance(data, dict) and isinstance(config.get("trainer") or {}, dict)
                and isinstance(data.get("init_args") or {}, dict)):
            raise ZooError(f"Cannot resume {self.ckpt_path}: the run's {saved} is damaged (not the mapping train.py "
                           f"fit wrote), and it says how long the run's {scheduler} schedule was planned. Fix: "
                           f"restore it (from a backup or git), or start a new run.")
        run, now = training_length(config), training_length(self.cfg)
        changed = [f"{k}: run {run[k]!r}, command {now[k]!r}" for k in run
                   if run[k] is not None and now[k] is not None and run[k] != now[k]]
        if changed:
            raise ZooError(f"Cannot resume {self.ckpt_path} with another training length ({'; '.join(changed)}): "
                           f"its {scheduler} learning-rate schedule was planned for the run's own length. "
                           f"Resume with the run's settings (--config {saved} --ckpt_path {self.dir}), or start "
                           f"a new run (or use --model.scheduler none to extend runs freely).")

    def check_monitor(self, datamodule) -> None:
        """The metric behind best.ckpt and early stopping must be one that this run will log."""
        dm, monitor, t = datamodule, self.cfg.monitor, self.cfg.trainer
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

    def set_steps_per_execution(self, trainer: Trainer, model, datamodule) -> None:
        """--steps_per_execution K: K optimizer steps per Lightning step (ZooModule.use_steps_per_execution)
        where every option of the run means the same with it, else one (said in one line when K was asked
        for). Not given: AUTO_CHUNK for small steps (at most SMALL_STEP_FLOPS of forward work per step, where
        Lightning's per-step work weighs most), else 1. A resumed run keeps its K: Lightning's saved progress
        counts chunks."""
        saved, _ = self.ckpt_steps
        asked = self.cfg.get("steps_per_execution")
        auto = auto_steps_per_execution(self.stats["flops"], getattr(datamodule, "batch_size", 0))
        k = int(asked) if asked is not None else saved if self.ckpt_path else auto
        why = chunk_blocker(trainer, datamodule, self.cfg) if k > 1 else None
        if why:
            if trainer.is_global_zero and asked is not None:
                print(f"--steps_per_execution {k}: {why}, so this run trains one step per Lightning step.",
                      file=sys.stderr)
            k = 1
        if self.ckpt_path and k != saved:  # even at an epoch's end: Lightning's restart logic reads the count
            raise ZooError(f"{self.ckpt_path} was trained {saved} step(s) per Lightning step and this resume would "
                           f"train {k}: Lightning's saved progress counts those chunks, so the run would not continue "
                           f"where it stopped. Resume with --steps_per_execution {saved} and the run's own options "
                           f"(--config {self.dir / 'config.yaml'}), or start a new run.")
        model.use_steps_per_execution(k)
        if hasattr(datamodule, "steps_per_execution"):
            datamodule.steps_per_execution = k

    def before_fit(self, trainer: Trainer, model, datamodule) -> None:
        self.check_checkpoint_fits(model)
        self.check_resume_matches(model)
        self.check_monitor(datamodule)
        if self.lock is not None and self.ckpt_hparams:
            for p in remove_stale_temp_files(self.dir):
                print(f"Removed {p.name}, left by an interrupted save.", file=sys.stderr)
        self.stats = profile(model.model, model.hparams.input_shape)
        # The training steps' blocks decide (validation's larger batches, without gradients, are 2-3% of a fit)
        keep_freed_memory(largest_block(model.model, model.hparams.input_shape, getattr(datamodule, "batch_size", 0)))
        self.set_steps_per_execution(trainer, model, datamodule)
        if trainer.is_global_zero:
            print(f"{self.arch} on {self.data}: {self.stats['params']:,} parameters, "
                  f"{self.stats['flops']:,} FLOPs per sample ({self.stats['macs']:,} MACs). Run: {self.dir}")

    def after_fit(self, trainer: Trainer, model, datamodule) -> None:
        """Test the best checkpoint; write metrics.json, log it, print the summary."""
        cb = self.checkpoint
        if trainer.interrupted:
            return
        # Read how the fit ended before testing: trainer.test restores the callbacks' state.
        es = self.early_stopping
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if es is not None and es.stopped_epoch > 0:
            stopped = f"early stopping: {es.monitor} did not improve for {es.patience} epochs"
        elif trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
            stopped = f"reached max_steps={trainer.max_steps}"
        elif timer is not None and timer.time_remaining() is not None and timer.time_remaining() <= 0:
            stopped = f"reached max_time after {timer.time_elapsed('train'):.0f} s of training"
        elif trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs:
            stopped = f"reached max_epochs={trainer.max_epochs}"
        else:
            stopped = f"stopped by a callback after {trainer.global_step} steps"
        epochs = trainer.current_epoch
        best_score = float(cb.best_model_score) if cb.best_model_score is not None else None
        best = cb.best_model_path or str(self.dir / "last.ckpt")
        if not Path(best).is_file():
            raise ZooError(f"The fit ended without saving a checkpoint ({epochs} epochs, {trainer.global_step} steps), "
                           f"so there is nothing to test. Train at least one epoch (check --trainer.max_steps and "
                           f"--trainer.limit_train_batches).")
        if not cb.best_model_path:
            print(f"note: {cb.monitor} was never logged (the run stopped before a validation epoch ended), so "
                  f"there is no best.ckpt; testing last.ckpt.", file=sys.stderr)
        # The test images with original pixels, where the data has such a subset (CIFAR-10's rebuild):
        # their accuracy too, from the same pass (one process: the unshuffled loader keeps test-set order).
        exact = getattr(datamodule, "exact_test", None) if trainer.world_size == 1 else None
        model.keep_test_correct = exact is not None
        test = trainer.test(model, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
        model.keep_test_correct = False
        if not trainer.is_global_zero:
            return
        acc_exact, n_exact = model.exact_test_accuracy(exact) if exact is not None else (None, None)
        metrics = {
            "data": self.data, "model": self.arch, "params": self.stats["params"],
            "flops": self.stats["flops"], "macs": self.stats["macs"],
            "epochs": epochs, "stopped": stopped, "monitor": cb.monitor, "best_score": best_score,
            "test_acc": test["test/acc"], "test_loss": test["test/loss"],
            **({"test_acc_exact": acc_exact, "n_exact": n_exact} if exact is not None else {}),
            "fit_seconds": round(self.run_info.fit_seconds, 3), "fit_parts": self.run_info.fit_parts,
            "device": device_name(trainer), "devices": trainer.world_size,
            "precision": str(trainer.precision), "seed": int(os.environ.get("PL_GLOBAL_SEED", -1)),
            "steps_per_execution": model.steps_per_execution, "compiled": bool(model._compile),
            "run_dir": str(self.dir), "best_ckpt": best,
            "versions": {"torch": torch.__version__, "lightning": __import__("lightning").__version__},
        }
        atomic_write_bytes(self.dir / "metrics.json", json.dumps(metrics, indent=2).encode())
        loggers.log_final(trainer, metrics, model=Path(best) if self.cfg.wandb_log_model else None)
        parts = f" (summed over {metrics['fit_parts']} resumed parts)" if metrics["fit_parts"] > 1 else ""
        exact_text = f" | on the {n_exact} original-pixel test images {acc_exact:.4f}" if exact is not None else ""
        print(f"\n{self.arch} on {self.data}: {metrics['params']:,} params, {metrics['flops']:,} FLOPs/sample | "
              f"best {cb.monitor} {_fmt(best_score)} | test acc {metrics['test_acc']:.4f} (best checkpoint)"
              f"{exact_text} | "
              f"{epochs} epoch{'s' * (epochs != 1)} in {metrics['fit_seconds']:.1f} s{parts} on {metrics['device']}, "
              f"{metrics['precision']} ({stopped})\n"
              f"checkpoint: {best}\nlogs:       {self.dir}  (tensorboard --logdir {self.dir.parent})")

    def close(self) -> None:
        """The command has ended, however it ended: release the lock, and remove a directory this run
        made if it holds no checkpoint (a failure before the first one leaves nothing half-made)."""
        if self.lock is not None:
            self.lock.release()
        if self.told_children:
            os.environ.pop(RUN_DIR_ENV, None)
            self.told_children = False
        if self.made_dir and self.dir.is_dir() and not any(self.dir.glob("*.ckpt")):
            shutil.rmtree(self.dir, ignore_errors=True)
            for folder in self.made_parents:  # deepest first; one another run has used since stays
                try:
                    folder.rmdir()
                except OSError:
                    break
        self.made_dir, self.made_parents = False, []


# ---------------------------------------------------------------------------------------------
# Run directories and checkpoints to resume.

def auto_steps_per_execution(flops_per_sample: int, batch_size: int) -> int:
    """--steps_per_execution when not given (see AUTO_CHUNK)."""
    return AUTO_CHUNK if 0 < flops_per_sample * batch_size <= SMALL_STEP_FLOPS else 1


def chunk_blocker(trainer: Trainer, datamodule, cfg) -> str | None:
    """Why this run cannot train several steps per Lightning step, or None: the options whose meaning
    is per Lightning step, or that need Lightning's automatic optimization."""
    t = trainer
    whole = isinstance(t.limit_train_batches, float) and t.limit_train_batches == 1.0
    reasons = [
        (not hasattr(datamodule, "steps_per_execution"), "the datamodule is not one of the zoo's tensor datamodules"),
        (t.world_size > 1, "it runs on several processes (DDP)"),
        (bool(t.gradient_clip_val), "gradient clipping needs Lightning's automatic optimization"),
        (t.accumulate_grad_batches != 1, "gradient accumulation needs Lightning's automatic optimization"),
        (t.val_check_interval != 1.0, "--trainer.val_check_interval counts Lightning steps"),
        (t.max_steps != -1, "--trainer.max_steps could fall inside a chunk"),
        (not whole, "--trainer.limit_train_batches counts Lightning steps"),
        (bool(t.overfit_batches), "--trainer.overfit_batches counts Lightning steps"),
        (bool(t.fast_dev_run), "--trainer.fast_dev_run counts Lightning steps"),
        (bool(cfg.get("lr_find")), "the learning-rate finder steps through Lightning's automatic optimization"),
        (bool(cfg.get("ema")), "--ema averages the weights after each Lightning step"),
    ]
    return next((why for blocked, why in reasons if blocked), None)


class EMA(EMAWeightAveraging):
    """--ema DECAY: Lightning's exponential moving average of the weights and BatchNorm statistics,
    updated after every optimizer step. Validation, best.ckpt's selection and its weights, the test
    and evaluate.py all use the average; the raw weights travel in the checkpoint beside it (Lightning's
    current_model_state) for an exact resume. One change to Lightning's: loading a checkpoint outside a
    fit (the test of best.ckpt after training) keeps the average the file's state_dict holds, where
    Lightning's would put the raw weights back and test those."""

    def __init__(self, decay: float) -> None:
        super().__init__(decay=decay)
        self.decay = decay

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "decay": self.decay}  # so a resume can refuse another decay

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == "fit":
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


def ema_of(ckpt: dict, path: Path) -> float:
    """The --ema decay a checkpoint was trained with (0: none), checked as far as a resume relies on it."""
    states = [v for k, v in (ckpt.get("callbacks") or {}).items() if isinstance(k, str) and k.startswith("EMA")]
    raw = ckpt.get("current_model_state")
    if not states and raw is None:
        return 0.0
    decay = states[0].get("decay") if len(states) == 1 and isinstance(states[0], dict) else None
    if not (isinstance(decay, float) and 0 < decay < 1 and isinstance(raw, dict)
            and isinstance(ckpt.get("averaging_state"), dict)):
        raise ZooError(f"{path}: its weight average (--ema: the callbacks' EMA entry, current_model_state and "
                       f"averaging_state) is incomplete or not what train.py writes. Use best.ckpt or last.ckpt of "
                       f"a run written by train.py fit (or retrain); do not edit checkpoints by hand.")
    return decay


def inherited_run_dir() -> Path | None:
    """The parent's run directory when this process is a DDP worker that Lightning started by
    re-running the command (it sets LOCAL_RANK 1, 2, ... for them); None in any other process."""
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    return None


def missing_dirs(path: Path) -> list[Path]:
    """path and each of its ancestors that does not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def new_run_dir(parent: Path) -> Path:
    """A new, empty run directory in parent (<runs_root>/<data>/<model>), made with its parents."""
    while True:  # time stamp for humans, random suffix so concurrent runs never collide
        try:  # (in the loop: a run refused elsewhere may remove the parent it made, empty, in between)
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ZooError(f"Cannot create the run directory under {parent} ({e.strerror or e}). Choose a "
                           f"writable place with --runs_root DIR.") from None
        run = parent / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        try:
            run.mkdir()
            return run
        except (FileExistsError, FileNotFoundError):
            continue


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


def training_length(cfg) -> dict:
    """What decides how many optimizer steps a run takes, from a fit config (the parsed one, or a run's
    config.yaml read back): trainer.max_epochs, ..., data.batch_size, data.train_fraction."""
    trainer, data = cfg.get("trainer") or {}, (cfg.get("data") or {}).get("init_args") or {}
    return {**{f"trainer.{k}": trainer.get(k) for k in
               ("max_epochs", "max_steps", "limit_train_batches", "accumulate_grad_batches")},
            **{f"data.{k}": data.get(k) for k in ("batch_size", "train_fraction")}}


def fill_in_recipe(model_cfg) -> None:
    """The model options left None set as ZooModule will resolve them (the recipe, the builder's
    defaults), so config.yaml and --print_config show what trains."""
    resolved = resolve_hparams({k: model_cfg.get(k) for k in ("arch", *RESOLVED)})
    for key in RESOLVED:
        model_cfg[key] = resolved[key]


def data_name(data_cfg) -> str:
    """The dataset name (mnist, ...) of the datamodule a config selects: its registry name, else the
    class's own `name` (what its checkpoints record), else the class name."""
    module, _, class_name = data_cfg.get("class_path").rpartition(".")  # jsonargparse may shorten the module
    if name := registered_name(class_name):
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


def device_name(trainer: Trainer) -> str:
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


def _fmt(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.4f}"


# ---------------------------------------------------------------------------------------------
# What Lightning lacks: checkpoints written whole, and a fit that survives Ctrl-C.

class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made crash-safe (temp file + fsync + rename) and safe to load."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Looked up in zoo.checkpoint at each save: the disk-full tests (tests/test_reliability.py) replace it there.
        zoo_checkpoint.atomic_write_bytes(path, buffer.getvalue())

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None,
                        weights_only: bool | None = None) -> dict:
        return load_checkpoint(path, map_location=map_location or "cpu")


class RunInfo(Callback):
    """Times the fit, keeps its history, and saves last.ckpt when the run is interrupted (Ctrl-C, SIGTERM).

    The time is summed over every part of a resumed run (the checkpoint carries the seconds before
    it), and history.csv holds one row per epoch (seconds so far, validation metrics, learning rate):
    the data of time-to-accuracy curves, kept in the checkpoint too so a resume continues it.
    Ctrl-C stops at the next step boundary, as Lightning does for SIGTERM, so the checkpoint holds
    whole steps and a resume continues exactly (a second Ctrl-C stops at once)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self._start = run_dir, None
        self.before, self.parts, self.history = 0.0, 0, []  # earlier parts of this run, from the checkpoint
        self.fit_seconds, self.fit_parts = 0.0, 0  # this run's totals, set when the fit ends
        self._stop, self._previous_handler = False, None

    def seconds(self) -> float:
        return self.before + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def state_dict(self) -> dict:
        return {"fit_seconds": self.seconds(), "parts": self.parts, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        # Also called by trainer.test (it restores callbacks): the totals above are read before that.
        seconds, parts, history = state.get("fit_seconds", 0.0), state.get("parts", 0), state.get("history", [])
        number = (int, float)
        if not (isinstance(seconds, number) and seconds >= 0 and isinstance(parts, int) and parts >= 0
                and isinstance(history, list) and all(isinstance(row, dict) and all(
                    isinstance(v, number) or v is None for v in row.values()) for row in history)):
            raise ZooError("The checkpoint's run timing (callbacks['RunInfo']: fit_seconds, parts, history) is not "
                           "what train.py writes. Use best.ckpt or last.ckpt of a run written by train.py fit (or "
                           "retrain); do not edit checkpoints by hand.")
        self.before, self.parts, self.history = float(seconds), parts, [dict(row) for row in history]

    def on_fit_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        self.parts += 1
        # One process only: DDP ranks could see the signal at different steps and wait on each other.
        if trainer.world_size == 1 and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def on_validation_end(self, trainer, pl_module) -> None:
        # Here, not at the epoch's end: ModelCheckpoint saves at this point (it runs after us), so the
        # checkpoint of an epoch holds that epoch's row.
        if not trainer.sanity_checking:
            self._record(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._record(trainer)  # epochs without validation

    def _record(self, trainer) -> None:
        if self.history and self.history[-1]["epoch"] == trainer.current_epoch:
            return
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, "seconds": round(self.seconds(), 3),
               **{k: float(metrics[k]) for k in ("val/loss", "val/acc") if k in metrics},
               "lr": trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None}
        self.history.append(row)
        if trainer.is_global_zero:
            write_history(self.run_dir / "history.csv", self.history)

    def _on_sigint(self, signum, frame) -> None:
        if self._stop:
            raise KeyboardInterrupt
        self._stop = True
        print("\nStopping after this step (Ctrl-C again to stop at once) ...", file=sys.stderr)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._stop:
            raise KeyboardInterrupt

    def on_fit_end(self, trainer, pl_module) -> None:
        self.fit_seconds, self.fit_parts = self.seconds(), self.parts

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # A kill by the user is not a failure: keep the progress so `--ckpt_path last` continues.
        if isinstance(exception, KeyboardInterrupt) or type(exception).__name__ == "SIGTERMException":
            if trainer.state.fn != "fit":  # the test after training: the fit's own last.ckpt is the one to keep
                if trainer.is_global_zero:
                    print(f"\nInterrupted while testing: training had finished and {self.run_dir / 'last.ckpt'} "
                          f"is kept; test again with `python evaluate.py {self.run_dir}`", file=sys.stderr)
                return
            trainer.save_checkpoint(self.run_dir / "last.ckpt", weights_only=False)  # full state, to resume
            if trainer.is_global_zero:
                print(f"\nInterrupted: progress saved to {self.run_dir / 'last.ckpt'}; "
                      f"resume with --ckpt_path {self.run_dir}", file=sys.stderr)


HISTORY_COLUMNS = ("epoch", "step", "seconds", "val/loss", "val/acc", "lr")


def write_history(path: Path, rows: list[dict]) -> None:
    """history.csv: one row per epoch, seconds summed over the run's parts (written whole each time)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, out.getvalue().encode())
