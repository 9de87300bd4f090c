"""Checkpoints as data: atomic writes, and loading that never runs code.

Every checkpoint the project writes holds only tensors and plain values, so it loads with
torch's `weights_only=True`; anything else (a pickled module, a crafted file whose unpickling
would run code) is refused with a clear message before any of its code can execute.

    ckpt = load_checkpoint("checkpoints/mnist/lenet5/<run>/best.ckpt")
"""

import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from zoo.errors import ZooError


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a lightning-zoo checkpoint safely (weights_only=True), or raise ZooError saying why not."""
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
        # weights_only refuses globals it does not know: a pickled class or a code-running payload.
        raise ZooError(f"Refused to load {path}: it contains objects other than tensors and plain values "
                       f"(a pickled class or code), which could run arbitrary code when loaded. Only load "
                       f"checkpoints written by lightning-zoo or another source you trust. ({str(e).splitlines()[0]})"
                       ) from None
    except Exception as e:  # truncated zip, text file, legacy pickle garbage: all 'not readable'
        raise ZooError(f"Cannot read checkpoint {path}: the file is truncated, corrupted or not a PyTorch "
                       f"checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Use another "
                       f"checkpoint of the run (best.ckpt / last.ckpt) or retrain.") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "arch" not in ckpt.get("hyper_parameters", {}):
        raise ZooError(f"{path} is a PyTorch file but not a lightning-zoo checkpoint (it lacks the model "
                       f"name and weights). Pass a best.ckpt or last.ckpt written by train.py.")
    return ckpt


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that it is either the old one or the complete new one, never half of each."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; results are meant to be shared like any file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made crash-safe (temp file + fsync + rename) and safe to load."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(path, map_location=map_location or "cpu")
