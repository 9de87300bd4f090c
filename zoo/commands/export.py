"""`train.py export`: a checkpoint's network as a torch.export (.pt2), TorchScript or ONNX file, checked.

    python train.py export --ckpt_path <run> --out lenet5.pt2     # torch.export (ExportedProgram)
    python train.py export --ckpt_path <run> --out lenet5.pt      # TorchScript
    python train.py export --ckpt_path <run> --out lenet5.onnx    # ONNX

--ckpt_path (Lightning's name) and --checkpoint are the same option. --format is read from the
--out suffix (.pt2: pt2, .onnx: onnx, else torchscript) unless given. pt2 is what PyTorch
recommends now that TorchScript is deprecated: torch.export.load(path).module() runs it.

The bare network (ZooModule.model) is exported in eval mode with a dynamic batch dimension. It
takes float32 (B, *input_shape) inputs that are already normalised as in training: pixels / 255,
then (x - mean) / std per channel, and returns logits (B, num_classes). Those statistics, the class
names and the rest of the model's pretrained_cfg are stored in the file (pt2 and TorchScript:
extra file 'zoo.json'; ONNX: metadata_props['zoo']) and printed. The file is written to a
temporary file beside --out, synced, loaded back and run on a batch of random real-shaped inputs;
only if its outputs match the checkpoint's within 1e-4 does it replace --out (atomically), so a
full disk or a failed check leaves a previous file at --out as it was. ONNX needs the optional
packages onnx and onnxscript, and onnxruntime for the check: pip install -e .[export].
"""

import importlib.util
import io
import json
import sys
import warnings
from pathlib import Path
from typing import Literal, get_args

import torch

from datamodules.images import normalize
from zoo.checkpoint import atomic_write_bytes, check_output, network_from_checkpoint
from zoo.errors import ZooError, command_parser, run_main
from zoo.weights import add_source_arguments, datamodule_state, load_trained, pretrained_cfg

Format = Literal["pt2", "torchscript", "onnx"]
FORMATS = get_args(Format)
SUFFIXES = {".pt2": "pt2", ".onnx": "onnx"}  # --format from --out when not given; anything else: torchscript
TOLERANCE = 1e-4
EXPORT_BATCH, CHECK_BATCH = 4, 7  # checked on another batch size than exported: the batch axis is dynamic


def metadata(ckpt: dict) -> dict:
    """What a user of the exported file needs to feed it: the pretrained_cfg (shape, normalisation,
    class names, ...) and the input and output in words."""
    shape = list(ckpt["hyper_parameters"]["input_shape"])
    return {
        "model": ckpt["hyper_parameters"]["arch"], "data": ckpt.get("data_name"), **pretrained_cfg(ckpt),
        "input": "float32 (B, C, H, W): pixels / 255, then (x - mean) / std per channel" if len(shape) == 3
        else "float32 (B, features), as in training (not normalised)",
        "output": "logits (B, num_classes); softmax gives probabilities",
    }


def sample_inputs(ckpt: dict, batch: int, seed: int = 0) -> torch.Tensor:
    """Random inputs the model could really see: uint8 images normalised with the checkpoint's
    statistics, or standard-normal features."""
    g = torch.Generator().manual_seed(seed)
    shape = ckpt["hyper_parameters"]["input_shape"]
    if len(shape) != 3:
        return torch.randn(batch, *shape, generator=g)
    state = datamodule_state(ckpt)
    mean, std = state.get("mean") or [0.0] * shape[0], state.get("std") or [1.0] * shape[0]
    return normalize(torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, generator=g), mean, std)


def export_pt2(net: torch.nn.Module, example: torch.Tensor, meta: dict) -> bytes:
    program = torch.export.export(net, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    buffer = io.BytesIO()  # into memory, then atomic_write_bytes: as for the other formats
    with warnings.catch_warnings():
        # torch's note on tensors that view part of a storage (ResNet-20 has some); the check below
        # runs the saved file, so a weight saved wrongly would show there
        warnings.filterwarnings("ignore", "No complete tensor found")
        torch.export.save(program, buffer, extra_files={"zoo.json": json.dumps(meta)})
    return buffer.getvalue()


def run_pt2(out: Path, x: torch.Tensor) -> torch.Tensor:
    return torch.export.load(out).module()(x)


def export_torchscript(net: torch.nn.Module, example: torch.Tensor, meta: dict) -> bytes:
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, but TorchScript is still what LibTorch
        # (C++), older runtimes and mobile load; the issue asks for it.
        warnings.simplefilter("ignore", FutureWarning)
        # check_trace=False: torch's own check reruns the trace and compares with torch.testing, which
        # imports much of torch.distributed (the command took 1.54x `import torch` with it, 1.19x
        # without: docs/speed.md); the check below runs the written file against the checkpoint instead.
        traced = torch.jit.trace(net, example, check_trace=False)
        # Into memory, not to a path: torch's C++ file writer aborts the process on a full disk.
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={"zoo.json": json.dumps(meta)})
    return buffer.getvalue()


def run_torchscript(out: Path, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(out))(x)


def export_onnx(net: torch.nn.Module, example: torch.Tensor, meta: dict) -> bytes:
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ZooError(f"ONNX export needs the optional package(s) {', '.join(missing)}. Fix: pip install -e .[export] "
                       f"(or pip install onnx onnxscript onnxruntime), or export --format torchscript.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(net, (example,), input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
    program.model.metadata_props["zoo"] = json.dumps(meta)
    return program.model_proto.SerializeToString()  # one self-contained file (fine below 2 GB)


def run_onnx(out: Path, x: torch.Tensor) -> torch.Tensor | None:
    """The ONNX file's outputs computed by onnxruntime, or None when it is not installed."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@torch.inference_mode()
def reference(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def export(ckpt: dict, fmt: str, out: str | Path) -> dict:
    """Write the checkpoint's network to `out` in `fmt`, load it back and compare its outputs with
    the checkpoint's on a random batch. Returns the check: {'max_abs_diff': float or None, ...}."""
    if fmt not in FORMATS:
        raise ZooError(f"Unknown export format {fmt!r}. Choose one of: {', '.join(FORMATS)} (--format).")
    out = check_output(out, "--out")
    net = network_from_checkpoint(ckpt)  # the bare network in eval mode: no Lightning, no metrics
    meta = metadata(ckpt)
    x = sample_inputs(ckpt, CHECK_BATCH, seed=1)
    expected = reference(net, x)
    kept = f"Nothing was written: {out} is as it was before." if out.exists() else f"Nothing was written to {out}."

    def check(tmp: Path) -> float | None:
        """The written file, run on its own, against the checkpoint: None when onnxruntime is absent."""
        try:
            got = {"pt2": run_pt2, "torchscript": run_torchscript, "onnx": run_onnx}[fmt](tmp, x)
        except Exception as e:  # our own bytes that do not load back: an exporter bug, not the user's
            raise ZooError(f"The exported {fmt} file does not load back ({type(e).__name__}: "
                           f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}). {kept} Please report this "
                           f"with the model name ({meta['model']}) and your torch version "
                           f"({torch.__version__}).") from e
        diff = None if got is None else (got.float() - expected).abs().max().item()
        if diff is not None and (got.shape != expected.shape or not diff < TOLERANCE):
            raise ZooError(f"The {fmt} export of the checkpoint failed its check: max abs difference {diff:.3g} "
                           f"on a batch of {CHECK_BATCH} (tolerance {TOLERANCE}). {kept} Please report this "
                           f"with the model name ({meta['model']}) and your torch version ({torch.__version__}).")
        return diff

    try:
        write = {"pt2": export_pt2, "torchscript": export_torchscript, "onnx": export_onnx}[fmt]
        data = write(net, sample_inputs(ckpt, EXPORT_BATCH), meta)
        diff = atomic_write_bytes(out, data, check=check)  # temp file, fsync, check, then rename onto out
    except OSError as e:  # a full disk, a read-only folder, a quota
        raise ZooError(f"Cannot write {out}: {e.strerror or e}. {kept} Fix: free some space or choose a "
                       f"writable place for --out.") from None
    return {"out": str(out), "format": fmt, "max_abs_diff": diff, "batch": CHECK_BATCH, "metadata": meta}


def main(args: list[str] | None = None) -> int:
    parser = command_parser("train.py export", __doc__.split("\n")[0])
    add_source_arguments(parser, "Export")
    parser.add_argument("--format", type=Format | None, default=None,
                        help="pt2 (torch.export), torchscript or onnx; default: by the --out suffix "
                             "(.pt2, .onnx, else torchscript).")
    parser.add_argument("--out", type=str, required=True,
                        help="The file to write (e.g. model.pt2, model.pt, model.onnx).")
    cfg = parser.parse_args(args)
    # A ZooError goes up to train.main: one paragraph, exit status 2, the traceback with --debug.
    named = SUFFIXES.get(Path(cfg.out).suffix.lower())
    if cfg.format and named and cfg.format != named:  # a .onnx file that holds TorchScript misleads its reader
        raise ZooError(f"--format {cfg.format} but --out {cfg.out} is named for {named}. Give the file the "
                       f"format's suffix, or leave out --format: the suffix picks it.")
    fmt = cfg.format or named or "torchscript"
    ckpt, source = load_trained(cfg.checkpoint, cfg.pretrained, cfg.model, cfg.manifest)
    r = export(ckpt, fmt, cfg.out)
    m = r["metadata"]
    print(f"exported {m['model']} on {m['data']} ({source}) to {r['out']} ({r['format']})")
    print(f"  input  {m['input']}; shape (B, {', '.join(map(str, m['input_shape']))})")
    if m["mean"] is not None and len(m["input_shape"]) == 3:
        print(f"         mean {[round(v, 4) for v in m['mean']]}, std {[round(v, 4) for v in m['std']]}")
    print(f"  output logits (B, {len(m['class_names'])}), classes {', '.join(m['class_names'])}")
    if r["max_abs_diff"] is None:
        print("  check  skipped: onnxruntime is not installed, so the ONNX file was not run. It is optional: "
              "pip install -e .[export] (or pip install onnxruntime) to verify exports.")
    else:
        print(f"  check  OK: on a random batch of {r['batch']}, outputs match the checkpoint "
              f"(max abs diff {r['max_abs_diff']:.2e} < {TOLERANCE:g})")
    return 0


if __name__ == "__main__":  # python -m zoo.commands.export ...: the same as python train.py export ...
    sys.exit(run_main(main, sys.argv[1:]))
