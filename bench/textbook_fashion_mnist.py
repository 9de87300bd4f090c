"""The baseline of benchmark 1: Fashion-MNIST the way tutorials teach it, and nothing else.

torchvision's FashionMNIST with ToTensor, a shuffling DataLoader, MLP 784-128-10, Adam 1e-3,
batch 100, a Python loop over the batches printing the loss every 100 of them (as PyTorch's
quickstart does), then a test pass. Deliberately not optimised: it is what we compare against.
Prints one JSON line: seconds for the 4 epochs (data loading included), seconds for the test pass,
test accuracy.

    python bench/textbook_fashion_mnist.py [--epochs 4] [--max_batches N]
"""
import argparse
import json
import os
import time

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import ToTensor

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--max_batches", type=int, default=0,
                    help="stop each epoch and the test after this many batches (smoke test)")
args = parser.parse_args()
root = os.environ.get("ZOO_DATA", "data")

training_data = datasets.FashionMNIST(root=root, train=True, download=False, transform=ToTensor())
test_data = datasets.FashionMNIST(root=root, train=False, download=False, transform=ToTensor())
train_dataloader = DataLoader(training_data, batch_size=100, shuffle=True)
test_dataloader = DataLoader(test_data, batch_size=100)

torch.manual_seed(0)
model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 128), nn.ReLU(), nn.Linear(128, 10))
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

start = time.perf_counter()
for epoch in range(args.epochs):
    model.train()
    for batch, (X, y) in enumerate(train_dataloader):
        pred = model(X)
        loss = loss_fn(pred, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if batch % 100 == 0:
            print(f"epoch {epoch + 1} batch {batch:>4d}: loss {loss.item():>7f}")
        if args.max_batches and batch + 1 >= args.max_batches:
            break
train_seconds = time.perf_counter() - start

start = time.perf_counter()
model.eval()
correct = total = 0
with torch.no_grad():
    for batch, (X, y) in enumerate(test_dataloader):
        correct += (model(X).argmax(1) == y).sum().item()
        total += len(y)
        if args.max_batches and batch + 1 >= args.max_batches:
            break
test_seconds = time.perf_counter() - start
print(json.dumps({"train_seconds": train_seconds, "test_seconds": test_seconds, "test_acc": correct / total}))
