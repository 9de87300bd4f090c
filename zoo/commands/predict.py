"""`train.py predict`: a trained model's top-k classes for your own images (or two-moons points).

    python train.py predict --ckpt_path <run> --inputs my_digits/
    python train.py predict --pretrained mnist --inputs "photos/*.png" --top_k 3 --csv out.csv --json out.json
    python train.py predict --ckpt_path <run> --inputs points.csv            (a two-moons model)

--ckpt_path (Lightning's name) and --checkpoint are the same option. Images (PNG, JPEG, ...)
become exactly what the model was trained on, by its pretrained_cfg (zoo.weights.Transform, which
zoo.transforms(model) returns too): grayscale or RGB, resized to its H x W, uint8, then
normalised with the checkpoint's own mean/std (datamodules.images.normalize). MNIST digits are
white on black: pass --invert true for black-on-white drawings. Models of flat features (two-moons)
read CSV files, one point per line (x1,x2), header optional. Files that cannot be read are listed
and skipped; the command fails only when nothing could be predicted.
"""

import csv
import glob
import io
import json
import math
import sys
from pathlib import Path

import torch
from jsonargparse.typing import PositiveInt
from PIL import Image

from datamodules.images import IMAGE_EXTENSIONS, list_images
from zoo.checkpoint import atomic_write_bytes, check_output, network_from_checkpoint
from zoo.errors import ZooError, command_parser, run_main
from zoo.weights import Transform, add_source_arguments, load_trained, pick_device, pretrained_cfg


def expand_inputs(specs: list[str], extensions: tuple[str, ...]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files named by paths, folders (their files with these extensions, recursively) and globs;
    and the (spec, reason) of those that name nothing."""
    files, missing = [], []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = list_images(path, extensions)
            files += found
            if not found:
                missing.append((spec, f"folder without {'/'.join(extensions)} files"))
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(spec):
            found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            files += found
            if not found:
                missing.append((spec, "no file matches this pattern"))
        else:
            missing.append((spec, "no such file or folder"))
    return list(dict.fromkeys(files)), missing  # in order, each file once


def read_images(files: list[Path], transform: Transform) -> tuple[list[str], torch.Tensor | None,
                                                                   list[tuple[str, str]]]:
    """Images as the model's input (N, C, H, W), made by `transform`; unreadable files skipped."""
    names, images, skipped = [], [], []
    for path in files:
        try:
            with Image.open(path) as im:
                images.append(transform(im))
            names.append(str(path))
        except Exception as e:  # PIL raises many types for a broken file; none should stop the rest
            skipped.append((str(path), f"not a readable image ({type(e).__name__}: {e})"))
    return names, (torch.stack(images) if images else None), skipped


def read_points(files: list[Path], n_features: int) -> tuple[list[str], list[list[float]], list[tuple[str, str]]]:
    """CSV rows of n_features numbers; a first line that is not numbers is a header. Unreadable
    files and malformed rows are skipped."""
    names, rows, skipped = [], [], []
    for path in files:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            skipped.append((str(path), f"cannot read ({type(e).__name__}: {e})"))
            continue
        first, before = True, len(rows)
        for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            row = [cell.strip() for cell in row]
            if not any(row) or row[0].startswith("#"):
                continue
            try:
                values = [float(cell) for cell in row]
            except ValueError:
                if not first:
                    skipped.append((f"{path}:{line_no}", f"not {n_features} numbers: {','.join(row)}"))
                first = False
                continue  # the header
            first = False
            if len(values) != n_features:
                skipped.append((f"{path}:{line_no}", f"{len(values)} values, the model takes {n_features}"))
                continue
            if not all(math.isfinite(v) for v in values):  # nan/inf parse as floats; their scores would be nan
                skipped.append((f"{path}:{line_no}", f"not finite numbers: {','.join(row)}"))
                continue
            names.append(f"{path}:{line_no}")
            rows.append(values)
        if len(rows) == before and not any(s.startswith(f"{path}:") for s, _ in skipped):
            skipped.append((str(path), f"no lines of {n_features} comma-separated numbers"))
    return names, rows, skipped


@torch.inference_mode()
def predict(ckpt: dict, inputs: list[str], top_k: int = 3, invert: bool = False, batch_size: int = 256,
            device: str = "cpu") -> dict:
    """Top-k classes and probabilities for every readable input; skipped inputs with the reason."""
    device = pick_device(device)
    cfg = pretrained_cfg(ckpt)
    shape = cfg["input_shape"]
    images = len(shape) == 3
    transform = Transform(cfg, invert)  # refuses images it cannot make (not 1 or 3 channels, no mean/std)
    if not images and len(shape) != 1:
        raise ZooError(f"The model's input shape {shape} is neither an image (C, H, W) nor a feature vector.")
    files, skipped = expand_inputs(inputs, IMAGE_EXTENSIONS if images else (".csv", ".txt"))
    if not files:
        what = "image files (PNG, JPEG, ...)" if images else f"CSV files of points ({shape[0]} numbers per line)"
        raise ZooError(f"No input files found: {'; '.join(f'{s} ({r})' for s, r in skipped)}. Fix: pass {what}, "
                       f"a folder of them or a quoted glob such as 'photos/*.png' to --inputs.")
    if images:
        names, x, bad = read_images(files, transform)
    else:
        names, points, bad = read_points(files, shape[0])
        x = transform(points) if points else None
    skipped += bad
    if x is None:
        raise ZooError(f"None of the {len(files)} input file(s) could be read: "
                       f"{'; '.join(f'{s}: {r}' for s, r in skipped[:5])}. "
                       + ("Fix: pass PNG or JPEG images." if images else
                          f"Fix: pass CSV files with {shape[0]} numbers per line (x1,x2 for two-moons)."))
    model = network_from_checkpoint(ckpt).to(device)
    probs = torch.cat([model(batch.to(device)).softmax(-1).cpu() for batch in x.split(batch_size)])
    k = min(top_k, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
    labels = cfg["class_names"]
    results = []
    for n, name in enumerate(names):
        row = {"input": name, "top_k": [{"class": labels[i], "index": i, "prob": p}
                                        for p, i in zip(top_p[n].tolist(), top_i[n].tolist())]}
        if not images:
            row["features"] = points[n]
        results.append(row)
    return {"model": ckpt["hyper_parameters"]["arch"], "data": ckpt.get("data_name"), "top_k": k,
            "predictions": results, "skipped": [{"input": s, "reason": r} for s, r in skipped]}


def table(r: dict, source: str) -> str:
    """The predictions as aligned text: one line per input, its top-k classes with probabilities."""
    rows = []
    for p in r["predictions"]:
        name = p["input"] + (f" ({', '.join(f'{v:g}' for v in p['features'])})" if "features" in p else "")
        rows.append([name] + [f"{c['class']} {c['prob']:.3f}" for c in p["top_k"]])
    header = ["input"] + [f"top-{i + 1}" for i in range(r["top_k"])]
    widths = [max(len(row[j]) for row in rows + [header]) for j in range(len(header))]
    lines = [f"{r['model']} on {r['data']} ({source}): {len(rows)} input(s)"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows]
    if r["skipped"]:
        lines += ["", f"skipped {len(r['skipped'])}:"] + [f"  {s['input']}: {s['reason']}" for s in r["skipped"]]
    return "\n".join(lines)


def to_csv(r: dict) -> str:
    """One row per input: input, features (points only), then class_1, prob_1, class_2, ..."""
    n_features = len(r["predictions"][0].get("features", []))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["input"] + [f"x{j + 1}" for j in range(n_features)]
                    + [f"{col}_{i + 1}" for i in range(r["top_k"]) for col in ("class", "prob")])
    for p in r["predictions"]:
        writer.writerow([p["input"], *p.get("features", [])]
                        + [v for c in p["top_k"] for v in (c["class"], f"{c['prob']:.6f}")])
    return out.getvalue()


def main(args: list[str] | None = None) -> int:
    parser = command_parser("train.py predict", __doc__.split("\n")[0])
    add_source_arguments(parser, "Use")
    parser.add_argument("--inputs", nargs="+", required=True,
                        help="Image files, folders or quoted globs ('imgs/*.png'); CSV files of points for two-moons.")
    parser.add_argument("--top_k", type=PositiveInt, default=3, help="How many classes to show per input.")
    parser.add_argument("--invert", type=bool, default=False,
                        help="Invert images (255 - x): black-on-white drawings for the white-on-black MNIST.")
    parser.add_argument("--csv", type=str | None, default=None, help="Also write the predictions to this CSV file.")
    parser.add_argument("--json", type=str | None, default=None, help="Also write the predictions to this JSON file.")
    parser.add_argument("--batch_size", type=PositiveInt, default=256, help="Inputs per forward pass.")
    parser.add_argument("--device", type=str, default="cpu", help="cpu, cuda (cuda:N), mps or auto.")
    cfg = parser.parse_args(args)
    # A ZooError goes up to train.main: one paragraph, exit status 2, the traceback with --debug.
    for flag, path in (("--csv", cfg.csv), ("--json", cfg.json)):
        if path:
            check_output(path, flag)  # before the work, not after it
    pick_device(cfg.device)
    ckpt, source = load_trained(cfg.checkpoint, cfg.pretrained, cfg.model, cfg.manifest)
    r = predict(ckpt, cfg.inputs, cfg.top_k, cfg.invert, cfg.batch_size, cfg.device)
    r["checkpoint"] = source
    print(table(r, source))
    for path, text in ((cfg.csv, to_csv(r) if cfg.csv else ""), (cfg.json, json.dumps(r, indent=2) + "\n")):
        if path:
            try:
                atomic_write_bytes(path, text.encode())
            except OSError as e:
                raise ZooError(f"Cannot write {path} ({e.strerror or e}); it is as it was before. Fix: choose a "
                               f"writable path.") from None
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # python -m zoo.commands.predict ...: the same as python train.py predict ...
    sys.exit(run_main(main, sys.argv[1:]))
