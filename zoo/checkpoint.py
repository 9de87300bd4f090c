"""Checkpoints as data: atomic writes, and loading that never runs code or trusts the file.

Every checkpoint the project writes holds only tensors and plain values, so it loads with
torch's `weights_only=True`; anything else (a pickled module, a crafted file whose unpickling
would run code) is refused with a clear message before any of its code can execute. What it
does hold is checked before anything is built from it: the model's hyperparameters against
their declared types (zoo.models.registry.HParams: ZooModule's arguments), the model's size
(counted on the meta device, so a crafted file cannot make us allocate 160 GB), and the weights
against the model they claim to be. It needs torch only: inference loads checkpoints without Lightning.

    ckpt = load_checkpoint("checkpoints/mnist/lenet5/<run>/best.ckpt")
"""

import inspect
import math
import os
import pickle
import re
import reprlib
import tempfile
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.errors import ZooError
from zoo.models.registry import HParams, convolutional, create_model, network_options, optimizer_groups

MAX_PARAMS = 100_000_000  # 40x the largest zoo model (MobileNetV2, 2.2M); 400 MB of float32
MAX_INPUT = 1 << 24  # numbers in one input (3 x 2364 x 2364): export and predict allocate batches of them
REQUIRED = ("arch", "num_classes", "input_shape")  # ZooModule has defaults, but a checkpoint must say
FIX = "Use best.ckpt or last.ckpt of a run written by train.py fit (or retrain); do not edit checkpoints by hand."


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a lightning-zoo checkpoint safely (weights_only=True) and check what it holds, or raise
    ZooError saying why not."""
    path = Path(path)
    if path.is_dir():
        raise ZooError(f"{path} is a directory, not a checkpoint file. Pass a .ckpt file inside it "
                       f"(best.ckpt or last.ckpt of a run directory).")
    if not path.exists():
        raise ZooError(f"Checkpoint not found: {path}. Check the path; runs are saved under "
                       f"checkpoints/<data>/<model>/<run-id>/ as best.ckpt and last.ckpt.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only stops at anything but tensors and plain values. A named global is a pickled
        # class or code; an unknown opcode or a malformed stream is damage (or a crafted file).
        why = unpickler_detail(e)
        if "GLOBAL" in why:
            raise ZooError(f"Refused to load {path}: it contains objects other than tensors and plain values "
                           f"(a pickled class or code), which could run arbitrary code when loaded. Only load "
                           f"checkpoints written by lightning-zoo or another source you trust. ({why})") from None
        raise ZooError(f"Refused to load {path}: it is damaged (overwritten or truncated bytes) or is not a plain "
                       f"checkpoint: the safe loader, which runs no code, stopped at what a checkpoint never holds "
                       f"({why}). Use another checkpoint of the run (best.ckpt / last.ckpt), copy or download the "
                       f"file again, or retrain.") from None
    except Exception as e:  # truncated zip, text file, legacy pickle garbage: all 'not readable'
        raise ZooError(f"Cannot read checkpoint {path}: the file is truncated, corrupted or not a PyTorch "
                       f"checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Use another "
                       f"checkpoint of the run (best.ckpt / last.ckpt) or retrain.") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "arch" not in hp or not isinstance(ckpt.get("state_dict"), dict):
        raise ZooError(f"{path} is a PyTorch file but not a lightning-zoo checkpoint (it lacks the model "
                       f"name and weights). Pass a best.ckpt or last.ckpt written by train.py.")
    check_checkpoint(ckpt, path)
    return ckpt


def unpickler_detail(error: Exception) -> str:
    """The one line of torch's weights_only error that says what it stopped at (the rest is advice
    about weights_only=False, which this project never takes)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    detail = found.group(1) if found else (text.strip().splitlines() or [type(error).__name__])[0]
    return detail.split(". Please use")[0].strip()[:200]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory meaning its best checkpoint (else its last)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (p / name).is_file():
                return p / name
        raise ZooError(f"{p} holds no best.ckpt or last.ckpt. Pass a checkpoint file or a run directory "
                       f"written by train.py fit.")
    return p


def network_from_checkpoint(ckpt: dict) -> nn.Module:
    """The bare network a checkpoint holds (ZooModule.model), float32, in eval mode: torch alone
    rebuilds it, for inference (predict, export, zoo.create). `ckpt` is what load_checkpoint returned."""
    hp = ckpt["hyper_parameters"]
    net = create_model(hp["arch"], hp["input_shape"], hp["num_classes"], **network_options(hp))
    prefix = "model."
    net.load_state_dict({k[len(prefix):]: v.float() if v.is_floating_point() else v
                         for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    channels_last = hp.get("channels_last")
    if (convolutional(hp["arch"]) if channels_last is None else channels_last) and len(hp["input_shape"]) == 3:
        net = net.to(memory_format=torch.channels_last)  # as it trained: the same convolution kernels
    return net.eval()


def io_mismatch(hp: dict, input_shape, num_classes: int) -> str | None:
    """None when a checkpoint's network (its hyper_parameters `hp`) takes this input shape to this many
    classes; else the difference, for a message: "takes input [1, 28, 28] with 10 classes; this data has
    [3, 32, 32] and 10". Loading it into a network of another shape fails deep in torch."""
    theirs, mine = (list(hp["input_shape"]), hp["num_classes"]), (list(input_shape), num_classes)
    if theirs == mine:
        return None
    return f"takes input {theirs[0]} with {theirs[1]} classes; this data has {mine[0]} and {mine[1]}"


def check_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    """Refuse a checkpoint that would make us build something other than a zoo model of sane size
    with these very weights: everything below is decided by the file, so nothing is taken on trust."""
    for key in ("data_name", "precision"):
        if not isinstance(ckpt.get(key), str | None):
            raise ZooError(f"{path}: '{key}' is {reprlib.repr(ckpt[key])}, not a name. {FIX}")
    net = check_hparams(ckpt["hyper_parameters"], path)
    check_weights(ckpt["state_dict"], net, path, ckpt["hyper_parameters"])
    if ckpt.get("optimizer_states"):  # (none: weights only, or a run without an optimizer)
        check_optimizer_state(ckpt["optimizer_states"], net, path, ckpt["hyper_parameters"])
    channels = ckpt["hyper_parameters"]["input_shape"][0]
    for key, state in ckpt.items():  # the datamodule's normalisation, used as it is by evaluate/predict/export
        if key.endswith("DataModule") and isinstance(state, dict):
            for stat in ("mean", "std"):
                if stat in state and not (fits(state[stat], list[float]) and len(state[stat]) == channels):
                    raise ZooError(f"{path}: {key}['{stat}'] is {reprlib.repr(state[stat])}, not {channels} "
                                   f"numbers (one per input channel). {FIX}")
                # Inputs are divided by std (and a teacher's re-standardised with it): a zero, negative or
                # non-finite value would turn every prediction into inf/NaN without a word.
                if stat in state and not all(math.isfinite(v) and (stat == "mean" or v > 0) for v in state[stat]):
                    raise ZooError(f"{path}: {key}['{stat}'] is {reprlib.repr(state[stat])}: "
                                   f"{'every std must be a positive' if stat == 'std' else 'every mean must be a'} "
                                   f"finite number (training never writes anything else). {FIX}")


def check_optimizer_state(states, net: nn.Module, path: str | os.PathLike, hp: dict) -> None:
    """The saved optimizer state must fit the network's parameters in the optimizer's order (its groups,
    zoo.models.registry.optimizer_groups): one state dict per parameter at most, its tensors the
    parameter's shape (the step count: one number). torch's optimizers take them as they are, and the fused
    kernels then read and write past the tensors' ends: a mis-shaped moment in a damaged or hostile
    file crashed the process (a segfault or heap corruption) at the first step of the resume."""
    def problem() -> str | None:
        if not (isinstance(states, list) and len(states) == 1 and isinstance(states[0], dict)):
            return "not the one optimizer's state train.py writes"
        state, groups = states[0].get("state"), states[0].get("param_groups")
        if not (isinstance(state, dict) and isinstance(groups, list)
                and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)):
            return "no 'state' and 'param_groups' as torch writes them"
        mine = [g["params"] for g in optimizer_groups(net, hp.get("lr") or 0.0, hp.get("weight_decay") or 0.0)]
        if [len(g["params"]) for g in groups] != [len(g) for g in mine]:
            return (f"parameter groups of {[len(g['params']) for g in groups]} parameters, the model's optimizer has "
                    f"{[len(g) for g in mine]}")
        ids = [i for g in groups for i in g["params"]]
        if set(state) - set(ids):
            return "state for parameters no group holds"
        for i, p in zip(ids, (p for g in mine for p in g)):
            entry = state.get(i, {})
            if not isinstance(entry, dict):
                return f"the state of parameter {i} is a {type(entry).__name__}"
            for key, t in entry.items():  # the step count one number; moments and momentum the parameter's shape
                fits = isinstance(t, torch.Tensor) and (t.numel() == 1 if key == "step" else t.shape == p.shape)
                if not (fits or t is None and key != "step"):
                    shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                    return f"'{key}' of parameter {i} is {shape}, the parameter is {list(p.shape)}"
        return None

    why = problem()
    if why:
        raise ZooError(f"{path}: its optimizer state does not fit the model ({why}). {FIX}")


def check_hparams(hp: dict, path: str | os.PathLike, fix: str = FIX) -> nn.Module:
    """The model's hyperparameters as ZooModule takes them (names, types, choices, ranges), and a
    network of at most MAX_PARAMS parameters; returns that network built on the meta device (shapes
    only, no memory). `fix` ends each message: what to do about the file at `path`."""
    check_args(HParams, hp, path, "hyperparameter", REQUIRED, fix)
    shape = hp["input_shape"]
    if shape and math.prod(shape) > MAX_INPUT:
        raise ZooError(f"{path}: input_shape {reprlib.repr(shape)} means {math.prod(shape):,} numbers per input, "
                       f"more than the {MAX_INPUT:,} this project allows. {fix}")
    try:
        with torch.device("meta"):  # parameters without storage: counting 40 billion costs nothing
            net = create_model(hp["arch"], shape, hp["num_classes"], **network_options(hp))
    except ZooError as e:
        raise ZooError(f"{path} holds hyperparameters that do not make a model: {e} {fix}") from None
    n = sum(p.numel() for p in net.parameters())
    if n > MAX_PARAMS:
        raise ZooError(f"{path} describes a {hp['arch']} of {n:,} parameters ({4 * n / 1e9:.1f} GB), more than "
                       f"the {MAX_PARAMS:,} this project builds; refused before allocating it. {fix}")
    return net


def check_weights(state_dict: dict, net: nn.Module, path: str | os.PathLike, hp: dict) -> None:
    """The weights must be exactly the tensors the network has, name by name and shape by shape
    (ZooModule holds the network as `model`, hence the prefix)."""
    expected = {f"model.{k}": tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in state_dict.items()}
    problems = [f"{k} is missing" for k in expected if k not in got]
    problems += [f"{k} is not one of its weights" for k in got if k not in expected]
    problems += [f"{k} has shape {list(got[k]) if got[k] is not None else 'none (not a tensor)'}, the model's "
                 f"is {list(shape)}" for k, shape in expected.items() if k in got and got[k] != shape]
    if problems:
        raise ZooError(f"The weights in {path} do not fit its model ({hp['arch']}, input {hp['input_shape']}, "
                       f"{hp['num_classes']} classes): {'; '.join(problems[:3])}"
                       f"{f' (and {len(problems) - 3} more)' if len(problems) > 3 else ''}. {FIX}")


def check_args(fn: Callable, values: dict, path: str | os.PathLike, what: str, required: tuple[str, ...] = (),
               fix: str = FIX) -> None:
    """`values` (from a file) as keyword arguments of `fn`: known names, the annotated types, the
    required ones present. Keys starting with '_' are Lightning's bookkeeping and are skipped."""
    params = [p for p in inspect.signature(fn).parameters if p != "self"]
    hints = typing.get_type_hints(fn)
    for key in required:
        if key not in values:
            raise ZooError(f"{path} lacks the {what} '{key}'. {fix}")
    for key, value in values.items():
        if key.startswith("_"):
            continue
        if key not in params:
            raise ZooError(f"{path} has an unknown {what} '{key}' (= {reprlib.repr(value)}); {fn.__qualname__} "
                           f"takes only {', '.join(params)}. It was written by another program or version. {fix}")
        if key in hints and not fits(value, hints[key]):
            raise ZooError(f"{path}: the {what} '{key}' is {reprlib.repr(value)} ({type(value).__name__}), but "
                           f"must be {type_name(hints[key])}. {fix}")


YAML_VALUES_CAP = 100_000  # a training config holds a few hundred values


def expands_past(value: Any, cap: int = YAML_VALUES_CAP) -> bool:
    """Whether a value parsed from YAML holds more than `cap` values once its aliases are expanded.
    safe_load shares an aliased node, but whatever copies or walks the value meets every repetition
    (jsonargparse copied a --config file value by value and hung): nine aliases of nine aliases, nine
    levels deep (a 'billion laughs' file), are 387 million strings written in 400 bytes."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        count += 1
        if count > cap:
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def fits(value: Any, hint: Any) -> bool:
    """Whether a plain value read from a file has the type an annotation asks for (int for float
    is fine, bool for int is not)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(fits(value, h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        item = (typing.get_args(hint) or (Any,))[0]
        return isinstance(value, list | tuple) and all(fits(v, item) for v in value)
    if typing.get_origin(hint) is typing.Literal:
        return isinstance(value, str) and value in typing.get_args(hint)
    if isinstance(hint, type) and issubclass(hint, int | float) and hint not in (int, float, bool):
        try:  # jsonargparse's constrained numbers (PositiveFloat, ...): their constructor checks the range
            return fits(value, float if issubclass(hint, float) else int) and hint(value) is not None
        except ValueError:
            return False
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return not isinstance(hint, type) or isinstance(value, hint)


def type_name(hint: Any) -> str:
    """An annotation in words: 'float with v>=0 and v<1 or None', "one of 'sgd', 'adam' or None"."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and getattr(hint, "_expression", None):  # jsonargparse's constrained numbers
        return f"{'float' if issubclass(hint, float) else 'int'} with {hint._expression}"
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


# ---------------------------------------------------------------------------------------------
# Writing: whole files or nothing.

def check_output(path: str | os.PathLike, flag: str) -> Path:
    """An output path the user gave (--out, --json, ...): refused before any work when it is a folder
    or its folder does not exist; we never create folders nobody asked for."""
    path = Path(path)
    if path.is_dir() or not path.parent.is_dir():
        what = "is a folder" if path.is_dir() else f"is in a folder that does not exist ({path.parent})"
        raise ZooError(f"Cannot write {path}: it {what}. Fix: give {flag} a file path in an existing folder.")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, check: Callable[[Path], Any] | None = None) -> Any:
    """Write a file so that it is either the old one or the complete new one, never half of each.
    `check(temp_path)` runs on the complete, synced file before it takes the name; if it raises, the
    old file stays. Returns what `check` returned."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; results are meant to be shared like any file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        result = check(Path(tmp)) if check is not None else None
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file
        return result
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
