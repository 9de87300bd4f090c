"""The exporter alone: the floor of bench/startup.py's .pt2 and ONNX rows. torch's own export of a
LeNet-5-shaped network (random weights, MNIST's input) to a file, as torch's documentation shows
it: nothing of this project imported, nothing checked.

    python bench/bare_export.py pt2|onnx OUT

torch.export imports most of its machinery on the first export (torch.export._trace, sympy, parts
of inductor; for ONNX also onnxscript's function library), so a process that only imports the
exporter's packages would leave that out and count it against `train.py export`.
"""
import sys

import torch
from torch import nn


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    ).eval()


if __name__ == "__main__":
    fmt, out = sys.argv[1], sys.argv[2]
    net, example, batch = lenet5(), torch.randn(4, 1, 28, 28), torch.export.Dim("batch")
    if fmt == "pt2":
        torch.export.save(torch.export.export(net, (example,), dynamic_shapes=({0: batch},)), out)
    elif fmt == "onnx":
        torch.onnx.export(net, (example,), out, dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    else:
        sys.exit(f"unknown format {fmt!r}: pt2 or onnx")
