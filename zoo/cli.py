"""The command line of fit, validate and test: LightningCLI with a Run (zoo/run.py) behind its hooks.

Every option comes from the type-hinted __init__ of ZooModule, the datamodules and Lightning's
Trainer (`python train.py fit --help`). What this adds: the `--data NAME` and `--model NAME`
shorthands, the project's options (--runs_root, --monitor, --patience, --threads, ...), mistakes
caught up front, the progress bar, and `main`, which turns every user mistake into one paragraph.
train.py dispatches here; `train.py compare` runs its fits through `main` too.

    from zoo import cli
    cli.main(["fit", "--data", "mnist", "--model", "lenet5"])     # the exit status, like the program's
"""

import inspect
import logging
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentError
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import ProcessingSpeedColumn
from lightning.pytorch.cli import LightningCLI
from rich.text import Text

from datamodules import DATAMODULES, TensorDataModule, registered_name
from zoo import ZooError, ZooModule, errors, insight, loggers
from zoo.checkpoint import YAML_VALUES_CAP, expands_past
from zoo.models.registry import RECIPES, Fraction
from zoo.module import keep_freed_memory, largest_block, skip_gpu_probes
from zoo.run import Run, fill_in_recipe

ROOT = Path(__file__).resolve().parents[1]

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
# The progress bar.

class ProgressBar(RichProgressBar):
    """Lightning's Rich bar, redrawn at most every `interval` seconds during training instead of after
    every batch: redrawing every batch cost 0.37 ms per MNIST MLP step (results/bench.md as of
    commit e0d9774, section 2: +2110 against +1743 us per step without the bar). With
    --steps_per_execution K it counts optimizer steps, not Lightning's chunks of K of them, so the
    total and it/s read as in a plain run."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__()
        self.interval, self._drawn, self._steps = interval, 0.0, None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        steps = getattr(trainer.datamodule, "steps_per_epoch", None)
        self._steps = steps() if getattr(pl_module, "steps_per_execution", 1) > 1 and callable(steps) else None
        super().on_train_epoch_start(trainer, pl_module)

    @property
    def total_train_batches(self) -> int | float:
        return self._steps if self._steps is not None else super().total_train_batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # Every epoch's first and last batch too: Rich measures it/s between two updates, and an epoch
        # shorter than `interval` would otherwise get one (its last) and show 0.00it/s.
        now = time.monotonic()
        if batch_idx == 0 or now - self._drawn >= self.interval or batch_idx + 1 >= trainer.num_training_batches:
            self._drawn = now
            if self._steps is not None:  # the optimizer steps done: K per chunk, the last chunk may be short
                batch_idx = min((batch_idx + 1) * pl_module.steps_per_execution, self._steps) - 1
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


# ---------------------------------------------------------------------------------------------

class ZooCLI(LightningCLI):
    """LightningCLI with a Run (zoo/run.py) built from the parsed config: each hook hands over to it."""

    run: Run | None = None

    def __init__(self, *args, **kwargs) -> None:
        try:
            super().__init__(*args, **kwargs)  # parses, instantiates and runs the subcommand
        finally:  # however the command ended: the lock released, no half-made run left behind
            if self.run is not None:
                self.run.close()

    def add_arguments_to_parser(self, parser) -> None:
        # The model is built for the data: the user never types num_classes or the input shape.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.add_argument("--runs_root", type=str, default="checkpoints", help="Where run directories go.")
        parser.add_argument("--run_dir", type=str | None, default=None,
                            help="Use this run directory (multi-node launches: give every node the same).")
        parser.add_argument("--monitor", type=str, default="val/acc",
                            help="Metric for the best checkpoint and early stopping.")
        parser.add_argument("--patience", type=NonNegativeInt, default=10,
                            help="Early stopping patience in epochs; 0 turns it off.")
        parser.add_argument("--steps_per_execution", type=PositiveInt | None, default=None,
                            help="Optimizer steps per Lightning step (Keras's steps_per_execution): the loader hands "
                                 "over K batches at once, so Lightning's per-step work is paid once per K steps. "
                                 "Same steps, same weights. Default: 10 for small steps (<= 1 GFLOP of forward work: "
                                 "linear, MLP, LeNet-5), else 1; a resumed run keeps its own.")
        parser.add_argument("--ema", type=Fraction, default=0.0,
                            help="Average the weights (and BatchNorm statistics) over training: an exponential "
                                 "moving average with this decay per optimizer step, e.g. 0.999 (Lightning's "
                                 "EMAWeightAveraging). Validation, best.ckpt, the test and evaluate.py use the "
                                 "average. 0: off.")
        parser.add_argument("--quiet", type=bool, default=False, help="No progress bar or model summary (for scripts).")
        parser.add_argument("--threads", type=NonNegativeInt, default=0,
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
        if sub:
            self.run = Run.from_config(sub, cfg)  # --ckpt_path resolved: loaded safely, checked against the command
            # Lightning's _parse_ckpt_path, called next, would load the file again and parse its hyperparameters
            # over the command's model options: it gets no checkpoint; Run.start puts the resolved one back.
            cfg.ckpt_path = None

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        # Plain ints, not jsonargparse's range-checked subclasses of int: EarlyStopping saves its patience
        # in checkpoints, which must hold plain values only (weights_only loading).
        cfg.patience, cfg.threads, cfg.ema = int(cfg.patience), int(cfg.threads), float(cfg.ema)
        if cfg.get("steps_per_execution") is not None:
            cfg.steps_per_execution = int(cfg.steps_per_execution)
        check_trainer_options(cfg)
        skip_gpu_probes()
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
            os.environ["OMP_NUM_THREADS"] = str(cfg.threads)  # DDP workers started from here inherit it
        self.run.start()

    def instantiate_trainer(self, **kwargs) -> Trainer:
        cfg = self.config[self.subcommand]
        callbacks = list(self._get(self.config_init, "trainer").get("callbacks") or [])
        callbacks += ([] if cfg.quiet else [ProgressBar()]) + self.run.callbacks()
        if self.subcommand != "fit":
            self.save_config_callback = None  # validate/test write nothing, config.yaml included
        return super().instantiate_trainer(callbacks=callbacks, enable_progress_bar=not cfg.quiet,
                                           enable_model_summary=not cfg.quiet, **self.run.trainer_options(), **kwargs)

    def before_fit(self) -> None:
        self.run.before_fit(self.trainer, self.model, self.datamodule)

    def after_fit(self) -> None:
        self.run.after_fit(self.trainer, self.model, self.datamodule)

    def before_validate(self) -> None:
        self.run.check_checkpoint_fits(self.model)
        batch = getattr(self.datamodule, "eval_batch_size", 0)
        keep_freed_memory(largest_block(self.model.model, self.model.hparams.input_shape, batch))

    before_test = before_validate


def check_trainer_options(cfg) -> None:
    """Mistakes Lightning would accept silently, or report from deep inside, caught up front."""
    t = cfg.trainer
    for what, value in (("limit_train_batches", t.limit_train_batches), ("max_steps", t.max_steps)):
        if value is not None and not isinstance(value, bool) and value == 0:
            raise ZooError(f"--trainer.{what} 0 trains nothing, so there would be no checkpoint to test. Leave it "
                           f"out, or pass a positive number.")
    if t.max_epochs is not None and t.max_epochs != -1 and t.max_epochs < 1:
        raise ZooError(f"--trainer.max_epochs must be at least 1 (or -1 for no limit), got {t.max_epochs}.")
    # Lightning divides by these (a ZeroDivisionError traceback) or, for the clip, silently flips the
    # gradients: a negative max norm makes clip_grad_norm_'s scale negative, gradient ascent.
    for what, value, least in (("accumulate_grad_batches", t.accumulate_grad_batches, "1"),
                               ("check_val_every_n_epoch", t.check_val_every_n_epoch, "1 (or null)")):
        if isinstance(value, int) and value < 1:
            raise ZooError(f"--trainer.{what} {value}: give at least {least}.")
    if isinstance(t.val_check_interval, int | float) and t.val_check_interval <= 0:
        raise ZooError(f"--trainer.val_check_interval {t.val_check_interval}: give a fraction of an epoch in (0, 1] "
                       f"or a number of training batches (at least 1).")
    if isinstance(t.gradient_clip_val, int | float) and t.gradient_clip_val < 0:
        raise ZooError(f"--trainer.gradient_clip_val {t.gradient_clip_val}: a clipping threshold is positive (0 or "
                       f"null: no clipping); a negative one would reverse the gradients.")
    for low, high in (("min_epochs", "max_epochs"), ("min_steps", "max_steps")):  # Lightning lets the max win
        lo, hi = getattr(t, low), getattr(t, high)
        if isinstance(lo, int) and isinstance(hi, int) and hi != -1 and lo > hi:
            raise ZooError(f"--trainer.{low} {lo} is more than --trainer.{high} {hi}, which would end the run "
                           f"first. Lower {low} or raise {high}.")
    if cfg.get("runs_root") is not None and not str(cfg.runs_root).strip():
        raise ZooError("--runs_root is empty: give the directory run directories go in (default: checkpoints).")
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
    if devices == 0:
        raise ZooError("--trainer.devices 0 trains on nothing. Pass how many devices to use (1, 2, ...), -1 or "
                       "auto for all of them, or a list of GPU indices such as [0, 1].")
    if devices:
        if accelerator in ("gpu", "cuda") and devices > torch.cuda.device_count():
            raise ZooError(f"--trainer.devices {devices}: only {torch.cuda.device_count()} GPU(s) here. "
                           f"Pass at most that many, or -1 for all of them.")
        if accelerator == "cpu" and devices > (os.cpu_count() or 1):
            raise ZooError(f"--trainer.devices {devices}: this machine has {os.cpu_count()} CPU cores, so at "
                           f"most {os.cpu_count()} CPU processes make sense. Pass a smaller number.")


def expand_data_shorthand(args: list[str]) -> list[str]:
    """`--data mnist` means `--config configs/mnist.yaml`: the dataset with its training recipe.

    The recipe goes first, right after the subcommand, whatever the position of `--data`: the
    user's own flags always win over it. When neither --data nor a --config file with a `data:`
    section names the dataset, fit/validate/test take the two-moons recipe (configs/moons.yaml),
    the README's default, under the user's flags and files (a file of trainer settings alone works)."""
    named = any("data" in read_config(path) or not Path(path).is_file()  # a bad file: the parser says so
                for flag, path in flags_with_values(args) if flag in ("--config", "-c"))
    out, recipes, dataset, i = [], [], None, 0
    while i < len(args):
        a = args[i]
        if a.startswith("--data="):
            name = a.split("=", 1)[1]
        else:
            name = args[i + 1] if a == "--data" and i + 1 < len(args) else None
        named |= a == "--data" or a.startswith(("--data=", "--data.class_path"))
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
        dataset = name
        i += 1 if a.startswith("--data=") else 2
    if not named and out and out[0] in ("fit", "validate", "test"):
        recipes, dataset = ["--config", str(CONFIGS / "moons.yaml")], "moons"
    if out and out[0] in ("fit", "validate", "test"):
        arch, data_named = named_model_and_data(out)
        recipes += model_recipe_flags(arch, dataset or data_named)
    return out[:1] + recipes + out[1:] if out and not out[0].startswith("-") else recipes + out


def named_model_and_data(args: list[str]) -> tuple[str | None, str | None]:
    """The model and the registered dataset a command line names, reading each config file once.

    Model: `--model.arch NAME`, or `arch` inside a file given with --config (model: {arch: ...}) or
    --model (arch: ...). Dataset: a registered datamodule's class path in `--data.class_path`,
    `--data` or a --config file (data: {class_path: ...}). The last one wins, as in jsonargparse, so a
    recipe applies whether the model is named by flag or only in the user's config file."""
    def name_of(class_path) -> str | None:  # "datamodules.cifar10.CIFAR10DataModule" -> "cifar10"
        return registered_name(class_path.rpartition(".")[2]) if isinstance(class_path, str) else None

    arch = dataset = None
    for flag, value in flags_with_values(args):
        if flag == "--model.arch":
            arch = value
        elif flag in ("--data", "--data.class_path"):
            dataset = name_of(value) or dataset
        elif flag in ("--config", "-c", "--model"):
            cfg = read_config(value)
            model = cfg if flag == "--model" else cfg.get("model")
            model = model if isinstance(model, dict) else {}
            model = model.get("init_args") if isinstance(model.get("init_args"), dict) else model
            arch = model.get("arch") if isinstance(model.get("arch"), str) else arch
            data = cfg.get("data") if flag != "--model" else None
            dataset = name_of(data.get("class_path") if isinstance(data, dict) else None) or dataset
    return arch, dataset


def flags_with_values(args: list[str]) -> Iterator[tuple[str, str]]:
    """Each argument as (flag, value): `--flag=value` split at the "=", else the next argument ("" after
    the last one). Non-flags come through too; callers match only the flags they read."""
    for arg, following in zip(args, [*args[1:], ""]):
        flag, eq, inline = arg.partition("=")
        yield flag, inline if eq else following


def read_config(path: str) -> dict:
    """A YAML config file as a dict; {} for anything missing, unreadable or not a mapping (the parser
    reports those itself, later)."""
    try:
        cfg = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def model_recipe_flags(arch: str | None, dataset: str | None) -> list[str]:
    """The batch size, epochs and datamodule options a model's recipe declares (airbench94's batch 1024,
    10 epochs, 2-pixel translation and alternating flip), as flags placed after the dataset's config and
    before the user's own, which win. A data option goes only to a dataset it means something for: the
    flip to one that flips (not digits), the translation to one that crops; a datamodule that is not
    one of the registered ones gets neither."""
    recipe = RECIPES.get(arch or "", {})
    flags = []
    if recipe.get("batch_size"):
        flags += ["--data.init_args.batch_size", str(recipe["batch_size"])]
    if recipe.get("max_epochs"):
        flags += ["--trainer.max_epochs", str(recipe["max_epochs"])]
    cls = DATAMODULES.get(dataset) if dataset else None
    takes = inspect.signature(cls.__init__).parameters if cls is not None else {}
    for key, value in (recipe.get("data") or {}).items():
        applies = key in takes and {"alternate_flip": cls.flip, "translate": cls.pad > 0}.get(key, True)
        if applies and cls.augment_default:
            flags += [f"--data.init_args.{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


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


# Options whose value is a path of their own; any other option given an existing file loads it as YAML.
PATH_OPTIONS = ("ckpt_path", "run_dir", "runs_root", "trainer.default_root_dir", "model.teacher")


def loads_a_file(option: str) -> bool:
    """Whether jsonargparse reads a file named as this option's value (`trainer.callbacks`) as YAML."""
    return option not in PATH_OPTIONS and not option.endswith("data_dir")


def check_config_files(args: list[str]) -> None:
    """A missing or broken --config file named in one sentence (jsonargparse would not name it). Any
    other option's value that is a file is a config too for jsonargparse (`--data my_data.yaml`,
    `--trainer.callbacks callbacks.yaml`): one that is not YAML text of options is named the same way,
    never echoed (the parser's error quoted its text: /etc/passwd's first line, say)."""
    for flag, value in flags_with_values(args):
        if flag in ("--config", "-c") and value:  # a bare --config: the parser says so
            path = Path(value)
            if not path.is_file():
                what = "is a directory, not a file" if path.is_dir() else "not found"
                raise ZooError(f"Config file {path}: {what}. Check the path (dataset configs are in "
                               f"{CONFIGS}, a run's resolved config is <run dir>/config.yaml).")
            check_files_inside(path, check_yaml_file(f"Config file {path}", path, (dict,)) or {})
        elif flag.startswith("--") and loads_a_file(flag[2:]) and value and not value.startswith("-") and Path(
                value).is_file():
            check_yaml_file(f"{flag} {value}: a file given as an option's value is read as YAML options, and this "
                            f"file", Path(value), (dict, list))


def check_files_inside(config: Path, cfg: dict, keys: str = "") -> None:
    """A config's values that name files are loaded by the parser too (`data: my_data.yaml`, relative to
    the config's folder): checked as an option's file is, so that none is quoted in an error."""
    for key, value in cfg.items():
        name = f"{keys}.{key}" if keys else str(key)
        if isinstance(value, dict):
            check_files_inside(config, value, name)
        elif isinstance(value, str) and loads_a_file(name) and (config.parent / value).is_file():
            check_yaml_file(f"{config}: {name}: {value} is a file, read as YAML options, and it",
                            config.parent / value, (dict, list))


def check_yaml_file(what: str, path: Path, kinds: tuple[type, ...]) -> object:
    """`path` must be YAML text of one of `kinds` (or empty), which is returned; `what` starts each message."""
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        where = f" at line {e.problem_mark.line + 1}" if getattr(e, "problem_mark", None) else ""
        raise ZooError(f"{what} is not valid YAML{where}: {getattr(e, 'problem', e)}. "
                       f"Fix the file (indentation, brackets, colons).") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ZooError(f"{what} cannot be read as text ({e.__class__.__name__}). "
                       f"A config file is a YAML text file: check the path.") from None
    if expands_past(cfg):
        raise ZooError(f"{what} expands to more than {YAML_VALUES_CAP:,} values through its YAML aliases (&name and "
                       f"*name that repeat one another), where a config holds a few hundred; reading it would "
                       f"hang. Fix: write the values out without aliases, or check where the file came from.")
    if cfg is not None and not isinstance(cfg, kinds):  # else the parser echoes the whole file
        raise ZooError(f"{what} holds a YAML {type(cfg).__name__}, not a mapping of options. A config maps "
                       f"option names to values (`model: {{arch: mlp}}` in a --config file, `arch: mlp` in a "
                       f"--model file): check the path (dataset configs are in {CONFIGS}).")
    return cfg


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
    # auto_configure_optimizers=False: one optimizer interface (--model.optimizer, recorded in the
    # hyperparameters), not also LightningCLI's --optimizer/--lr_scheduler, which bypassed them.
    return ZooCLI(ZooModule, TensorDataModule, subclass_mode_data=True, seed_everything_default=42,
                  trainer_defaults={"max_epochs": 20}, save_config_kwargs={"overwrite": True},
                  load_from_checkpoint_support=False, auto_configure_optimizers=False,
                  # exit_on_error: raise, so main() prints one clear line; allow_abbrev: whole option names
                  # only (argparse takes a prefix for the one option it begins: --trainer.max_epo)
                  parser_kwargs={"exit_on_error": False, "allow_abbrev": False},
                  args=args)


def main(args: list[str]) -> int:
    """fit, validate or test; returns the exit status. User mistakes print one paragraph, not a traceback."""
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
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
        print(f"error: {errors.one_paragraph(str(e))}\n(see `python train.py {sub} --help` for the options)",
              file=sys.stderr)
        return 2
    except SystemExit as e:  # --help, or jsonargparse has printed its message already
        return e.code if isinstance(e.code, int) else 1
    # A DDP run's process group goes while the interpreter is whole: left to the exit, Gloo's worker threads
    # could abort the process (SIGABRT, "terminate called without an active exception") as it finalised, and
    # torchrun's other node then waited out its 300-s exit barrier (tests/test_train.py's two-node test, about
    # 1 run in 6). Only after success: after an error a peer may still be inside a collective.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0
