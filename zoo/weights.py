"""Trained models for inference, with torch alone: the shipped weights by name, and what a
checkpoint's network needs to be used (its preprocessing, its class names, a device).

A weights file is a checkpoint cut down to what inference needs: the model's hyperparameters,
its state_dict (float16 where that keeps the accuracy), the dataset's name, options and
normalisation (mean/std, class names). It keeps the checkpoint's keys, so evaluate.py, `predict`
and `export` take it like any best.ckpt. results/weights/manifest.json lists the shipped files,
each with its sha256 and preprocessing (`pretrained_cfg`); zoo/commands/pretrained.py writes them.

    model = load_pretrained("lenet5", "mnist")     # sha256 checked, weights_only, float32, eval mode
    x = Transform(model.pretrained_cfg)(Image.open("digit.png"))  # the model's input, as predict makes it

Nothing here imports Lightning: `predict`, `export` and zoo.create start in about the time of
`import torch` (issue 18), and a model can be used where only torch is installed.
"""

import hashlib
import importlib
import json
import os
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from datamodules.images import image_to_uint8, normalize
from zoo.checkpoint import load_checkpoint, network_from_checkpoint, resolve_checkpoint
from zoo.errors import ZooError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "results" / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"


# ---------------------------------------------------------------------------------------------
# Any checkpoint or weights file: how its inputs must look, what its outputs mean.

def pick_device(name: str) -> torch.device:
    """--device as a device this machine has ('auto': CUDA when there is one, else the CPU), or a
    ZooError listing the ones it has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = torch.backends.mps.is_available()
    try:
        device = torch.device(name)
        here = {"cpu": True, "cuda": (device.index or 0) < gpus, "mps": mps}.get(device.type, False)
    except RuntimeError:  # not a device name at all
        here = False
    if not here:
        have = ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(gpus)] if gpus else []) + (["mps"] if mps else [])
        raise ZooError(f"--device {name}: this machine has no such device ({gpus} CUDA GPU(s) visible to torch "
                       f"{torch.__version__}). Fix: pass auto (a GPU when there is one, else the CPU) or one of: "
                       f"{', '.join(have)}.")
    return device


def datamodule_state(ckpt: dict) -> dict:
    """The datamodule's saved state (mean, std, class_names), or {}. Lightning files it under the
    datamodule class's __qualname__ (e.g. 'MNISTDataModule'); there is one per checkpoint."""
    for key, value in ckpt.items():
        if key.endswith("DataModule") and isinstance(value, dict) and value:
            return value
    return {}


def class_names(ckpt: dict) -> list[str]:
    """The names of the model's output classes: saved in the checkpoint, else (files written before
    they were saved, and the shipped weights) the registered dataset's, else "0", "1", ..."""
    k = ckpt["hyper_parameters"]["num_classes"]
    names = datamodule_state(ckpt).get("class_names")
    if not names and ckpt.get("data_name"):
        # Imported here, only for such files: the datamodules import Lightning (seconds of start-up).
        datamodules = importlib.import_module("datamodules")
        names = getattr(datamodules.DATAMODULES.get(ckpt["data_name"]), "class_names", None)
    return list(names) if names and len(names) == k else [str(i) for i in range(k)]


def pretrained_cfg(ckpt: dict) -> dict:
    """How the checkpoint's model wants its inputs and what its outputs mean, like timm's
    pretrained_cfg (input_size -> input_shape, label_names -> class_names): images are converted to
    `color` (grayscale or rgb), resized to input_shape's H x W with `interpolation`, scaled to 0..1
    and standardised with the per-channel mean/std. Feature vectors (two-moons) are used as they are
    (color and interpolation None). Read from the checkpoint itself: the statistics training used."""
    hp, state = ckpt["hyper_parameters"], datamodule_state(ckpt)
    shape = list(hp["input_shape"])
    image = len(shape) == 3
    return {
        "input_shape": shape,
        "color": {1: "grayscale", 3: "rgb"}.get(shape[0]) if image else None,
        "interpolation": "bilinear" if image else None,
        "mean": state.get("mean"), "std": state.get("std"),
        "num_classes": hp["num_classes"], "class_names": class_names(ckpt),
    }


class Transform:
    """A model's input made from one image, by its pretrained_cfg: a PIL image, or a uint8 (C, H, W)
    tensor of any size (C = 1, 3 or 4, e.g. torchvision.io.decode_image's), becomes float32 (C, H, W),
    normalised as in training; `invert` first turns black-on-white drawings into MNIST's white on
    black. Feature vectors become float32 as they are. `train.py predict` feeds every input through
    this, so `model(transform(image)[None])` is what predict computes.

        transform = Transform(pretrained_cfg(ckpt))   # or zoo.transforms(model)
    """

    def __init__(self, cfg: dict, invert: bool = False):
        if len(cfg["input_shape"]) == 3 and cfg["color"] is None:
            raise ZooError(f"The model takes {cfg['input_shape'][0]}-channel images; only grayscale (1) or RGB (3) "
                           f"images can be converted to its input.")
        if cfg["color"] is not None and cfg["mean"] is None:
            raise ZooError("The checkpoint holds no normalisation statistics (mean/std) for its images; "
                           "it was not written by train.py fit. Retrain it with train.py.")
        self.cfg, self.invert = cfg, invert

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg["color"] is None:
            return torch.as_tensor(image, dtype=torch.float32)
        if isinstance(image, torch.Tensor):
            if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3, 4):
                raise ZooError(f"An image tensor must be uint8 (C, H, W) with C = 1, 3 or 4, got {image.dtype} "
                               f"{tuple(image.shape)}. Fix: pass pixels 0..255, e.g. torchvision.io.decode_image's.")
            array = image.cpu().permute(1, 2, 0).numpy()  # (H, W, C)
            image = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
        channels = {"grayscale": 1, "rgb": 3}[cfg["color"]]
        x = image_to_uint8(image, channels, cfg["input_shape"][1:], cfg["interpolation"])
        if self.invert:
            x = 255 - x
        return normalize(x[None], cfg["mean"], cfg["std"])[0]  # training's normalisation; (1, C, H, W) -> (C, H, W)

    def __repr__(self) -> str:
        c = self.cfg
        return (f"Transform({c['color']}, {c['input_shape']}, {c['interpolation']}, mean={c['mean']}, std={c['std']}"
                f"{', invert' if self.invert else ''})")


# ---------------------------------------------------------------------------------------------
# Shipped weights: the manifest, the sha256 check, loading by name.

ENTRY_KEYS = ("model", "dataset", "file", "sha256")  # what loading needs of each manifest entry


def read_manifest(manifest: str | os.PathLike | None = None) -> list[dict]:
    """The manifest's entries (default: results/weights/manifest.json), each checked to be usable."""
    path = Path(manifest or MANIFEST)  # looked up at call time, so tests can point MANIFEST elsewhere
    if not path.is_file():
        raise ZooError(f"No pretrained weights: the manifest {path} does not exist. Train the model instead "
                       f"(python train.py fit --data DATASET --model.arch MODEL) and use its checkpoint.")
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ZooError(f"The weights manifest {path} cannot be read ({e}). Restore it: "
                       f"git checkout -- {path}") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ZooError(f"The weights manifest {path} is not a list of entries like {{\"model\": \"lenet5\", "
                       f"\"dataset\": \"mnist\", \"file\": ..., \"sha256\": ...}}. Fix: restore it with "
                       f"git checkout -- {path} (or regenerate it: python -m zoo.commands.pretrained).")
    for n, entry in enumerate(entries, start=1):
        missing = [k for k in ENTRY_KEYS if not isinstance(entry.get(k), str)]
        if missing:
            raise ZooError(f"Entry {n} of the weights manifest {path} lacks {', '.join(missing)} (each entry needs "
                           f"the text fields {', '.join(ENTRY_KEYS)}). Fix: restore it with git checkout -- {path} "
                           f"(or regenerate it: python -m zoo.commands.pretrained).")
    return entries


def find_entry(model: str | None, dataset: str, manifest: str | os.PathLike | None = None) -> dict:
    """The manifest entry for (model, dataset); model may be None when the dataset has only one."""
    entries = read_manifest(manifest)
    matches = [e for e in entries if e["dataset"] == dataset and model in (None, e["model"])]
    if len(matches) == 1:
        return matches[0]
    available = ", ".join(f"{e['model']} on {e['dataset']}" for e in entries) or "none"
    if not matches:
        raise ZooError(f"No pretrained {model or 'model'} for {dataset}. Available weights: {available}. "
                       f"Fix: pick one of these, or train it and pass its checkpoint.")
    raise ZooError(f"Several pretrained models for {dataset}: {', '.join(e['model'] for e in matches)}. "
                   f"Fix: say which with --model NAME.")


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pretrained_path(model: str | None, dataset: str, manifest: str | os.PathLike | None = None) -> Path:
    """The verified weights file of (model, dataset): it exists and its sha256 is the manifest's."""
    return verified_entry(model, dataset, manifest)[0]


def verified_entry(model: str | None, dataset: str, manifest: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """pretrained_path's file and the manifest entry that vouches for it (one read of the manifest)."""
    entry = find_entry(model, dataset, manifest)
    path = Path(manifest or MANIFEST).parent / entry["file"]
    fix = (f"Fix: restore it with `git checkout -- {path}` (or regenerate it: "
           f"{entry.get('command', 'see the manifest')}).")
    if not path.is_file():
        raise ZooError(f"The weights file of {entry['model']} on {dataset} is missing: {path}. {fix}")
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise ZooError(f"The weights file {path} is corrupted or was replaced: its sha256 is {digest[:16]}..., "
                       f"the manifest says {entry['sha256'][:16]}.... {fix}")
    return path, entry


def load_pretrained_checkpoint(model: str | None, dataset: str, manifest: str | os.PathLike | None = None) -> dict:
    """The shipped weights file of (model, dataset) as a checkpoint dict, weights in float32."""
    path, entry = verified_entry(model, dataset, manifest)
    ckpt = load_checkpoint(path)  # weights_only=True
    ckpt["state_dict"] = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    names = (entry.get("pretrained_cfg") or {}).get("class_names")
    state = datamodule_state(ckpt)
    if not state.get("class_names") and isinstance(names, list) and all(isinstance(n, str) for n in names):
        # A file older than saved class names: the manifest's (read from the file by write_cfgs)
        # name the classes, so that no datamodule, and no Lightning, has to be imported for them.
        if not state:
            ckpt["DataModule"] = state
        state["class_names"] = names
    return ckpt


def load_pretrained(model: str, dataset: str, manifest: str | os.PathLike | None = None) -> nn.Module:
    """A shipped network by name, ready for inference: e.g. load_pretrained("lenet5", "mnist"), in
    eval mode and float32, its preprocessing in `.pretrained_cfg` (for Transform / zoo.transforms)."""
    ckpt = load_pretrained_checkpoint(model, dataset, manifest)
    net = network_from_checkpoint(ckpt)
    net.pretrained_cfg = pretrained_cfg(ckpt)
    return net


def add_source_arguments(parser, verb: str) -> None:
    """The options that say which weights a command takes, as load_trained reads them (predict, export)."""
    parser.add_argument("--checkpoint", "--ckpt_path", type=str | None, default=None,
                        help="A .ckpt or weights file, or a run directory (its best.ckpt).")
    parser.add_argument("--pretrained", type=str | None, default=None,
                        help=f"{verb} the shipped weights for this dataset (mnist, fashion_mnist, cifar10, moons).")
    parser.add_argument("--model", type=str | None, default=None, help="With --pretrained: which model (e.g. lenet5).")
    parser.add_argument("--manifest", type=str | None, default=None,
                        help="The pretrained weights' manifest (default: results/weights/manifest.json).")


def load_trained(checkpoint: str | None, pretrained: str | None, model: str | None = None,
                 manifest: str | os.PathLike | None = None) -> tuple[dict, str]:
    """The checkpoint a command was pointed at (--checkpoint PATH or run dir, or --pretrained
    DATASET [--model NAME]) and a name for it to print."""
    if (checkpoint is None) == (pretrained is None):
        raise ZooError("Say which model to use: --checkpoint PATH (or --ckpt_path PATH: a .ckpt file, a weights "
                       "file or a run directory) or --pretrained DATASET [--model NAME], not both.")
    if pretrained is not None:
        ckpt = load_pretrained_checkpoint(model, pretrained, manifest)
        return ckpt, f"pretrained {ckpt['hyper_parameters']['arch']} on {pretrained}"
    path = resolve_checkpoint(checkpoint)
    return load_checkpoint(path), str(path)
