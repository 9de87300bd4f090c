"""ZooModule: the one LightningModule that trains every zoo model on every dataset.

It picks the network by name from the registry, so a checkpoint rebuilds itself from its saved
hyperparameters alone (`ZooModule.load_from_checkpoint(path)`). Those hyperparameters are plain
strings, numbers and lists, so every checkpoint loads with torch's `weights_only=True`.

    model = ZooModule("lenet5", num_classes=10, input_shape=[1, 28, 28])
"""

import math
import os

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from zoo.errors import ZooError
from zoo.registry import create_model

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "onecycle", "step")

# Training recipes by model family: what each needs to train well when the user says nothing.
# Small nets are happy with Adam at 1e-3 (the lecture's setting); the deep conv nets want SGD with
# Nesterov momentum, weight decay and a cosine schedule, as in their papers' CIFAR recipes.
RECIPES = {
    "linear": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="none"),
    "mlp": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="none"),
    "lenet5": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="cosine"),
    "resnet": dict(optimizer="sgd", lr=0.1, weight_decay=5e-4, scheduler="cosine"),
    "mobilenetv2": dict(optimizer="sgd", lr=0.05, weight_decay=4e-5, scheduler="cosine"),
}


def recipe(arch: str) -> dict:
    """The default optimizer, lr, weight decay and schedule for a model name."""
    family = "resnet" if arch.startswith("resnet") else arch
    return dict(RECIPES.get(family, RECIPES["mlp"]))


class NonFiniteLossError(ZooError):
    """The loss became NaN or infinite: training stops instead of wasting hours on garbage."""


class ZooModule(L.LightningModule):
    def __init__(
        self,
        arch: str = "mlp",
        num_classes: int = 2,
        input_shape: list[int] = [2],
        hidden: list[int] | None = None,
        dropout: float | None = None,
        width: float | None = None,
        optimizer: str | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        momentum: float = 0.9,
        scheduler: str | None = None,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        pretrained: str | None = None,
    ) -> None:
        """
        Args:
            arch: Model name from the zoo (linear, mlp, lenet5, resnet20/32/44/56/110, mobilenetv2).
            num_classes: Number of classes; linked from the datamodule, never typed by hand.
            input_shape: Shape of one input, e.g. [1, 28, 28]; linked from the datamodule.
            hidden: mlp only: hidden layer sizes (default [128]; the lecture's moons net is [10, 10]).
            dropout: mlp only: dropout probability after each hidden layer.
            width: mobilenetv2 only: width multiplier (default 1.0).
            optimizer: sgd (Nesterov momentum), adam or adamw; default from the model's recipe.
            lr: Peak learning rate; default from the model's recipe.
            weight_decay: L2 penalty; default from the model's recipe.
            momentum: SGD momentum.
            scheduler: none, cosine, onecycle or step (x0.1 at 50% and 75% of training); default from the recipe.
            label_smoothing: Label smoothing of the cross-entropy loss.
            channels_last: Train conv models in channels_last memory format (faster on some hardware).
            pretrained: Start from the shipped weights of this model trained on this dataset (e.g.
                mnist; see results/weights/manifest.json), to evaluate or fine-tune them.
        """
        super().__init__()
        # Fill the recipe's defaults in before saving, so the checkpoint records what was used
        # (save_hyperparameters reads these local variables).
        defaults = recipe(arch)
        optimizer = optimizer or defaults["optimizer"]
        scheduler = scheduler or defaults["scheduler"]
        lr = defaults["lr"] if lr is None else lr
        weight_decay = defaults["weight_decay"] if weight_decay is None else weight_decay
        optimizer, scheduler = optimizer.lower(), scheduler.lower()
        if optimizer not in OPTIMIZERS:
            raise ZooError(f"Unknown optimizer {optimizer!r}. Choose one of: {', '.join(OPTIMIZERS)} (--model.optimizer).")
        if scheduler not in SCHEDULERS:
            raise ZooError(f"Unknown scheduler {scheduler!r}. Choose one of: {', '.join(SCHEDULERS)} (--model.scheduler).")
        if not lr > 0:
            raise ZooError(f"The learning rate must be positive, got {lr}. Pass e.g. --model.lr 0.001.")
        if weight_decay < 0 or not 0 <= label_smoothing < 1:
            raise ZooError("weight_decay must be >= 0 and label_smoothing in [0, 1): check --model.weight_decay "
                           "and --model.label_smoothing.")
        input_shape = [int(s) for s in input_shape]  # plain list: the checkpoint must hold no tuples of tensors
        self.save_hyperparameters()
        self.model = create_model(arch, input_shape, num_classes, hidden=hidden, dropout=dropout, width=width)
        if pretrained:
            self._load_pretrained(pretrained)
        self.example_input_array = torch.zeros(1, *input_shape)  # Lightning's summary: sizes and FLOPs
        if channels_last and len(input_shape) == 3:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        top5 = num_classes > 5  # top-5 says nothing with 5 classes or fewer
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=5, average="micro") if top5 else None
        self.test_top5 = MulticlassAccuracy(num_classes, top_k=5, average="micro") if top5 else None

    def _load_pretrained(self, dataset: str) -> None:
        from zoo.pretrained import load_pretrained_checkpoint  # (it imports this module)

        ckpt = load_pretrained_checkpoint(self.hparams.arch, dataset)  # sha256-checked, weights_only
        hp = ckpt["hyper_parameters"]
        if (hp["num_classes"], list(hp["input_shape"])) != (self.hparams.num_classes, self.hparams.input_shape):
            raise ZooError(f"The pretrained {self.hparams.arch} for {dataset} takes input {hp['input_shape']} with "
                           f"{hp['num_classes']} classes; this data has {self.hparams.input_shape} and "
                           f"{self.hparams.num_classes}. Train on {dataset} or drop --model.pretrained.")
        weights = {k[len("model."):]: v.float() for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        self.model.load_state_dict(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point() and x.dtype != self.dtype:  # bf16-true / 16-true weights
            x = x.to(self.dtype)
        if self.hparams.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"The training loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step}. "
                f"Training stopped; the last good checkpoint (last.ckpt of the previous epoch) is kept. Try a "
                f"smaller learning rate (now {self.hparams.lr}) or full precision (--trainer.precision 32).")
        self.train_acc(logits, y)
        # on_step=False: accumulate on the device and reduce once per epoch (no per-step sync).
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, prog_bar=True, sync_dist=True)
        acc, top5 = (self.val_acc, self.val_top5) if stage == "val" else (self.test_acc, self.test_top5)
        acc(logits, y)
        self.log(f"{stage}/acc", acc, on_epoch=True, prog_bar=True)
        if top5 is not None:
            top5(logits, y)
            self.log(f"{stage}/acc_top5", top5, on_epoch=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0])

    def on_train_epoch_start(self) -> None:
        # Dropout draws from the global RNG. Reseeding it from (seed, epoch, rank) makes every epoch
        # reproducible on its own, so a run resumed at epoch k continues exactly as if never stopped.
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        torch.manual_seed((seed * 1_000_003 + self.current_epoch * 1009 + self.global_rank) % 2**63)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Which dataset the weights belong to: resume and evaluate refuse a mismatch by name.
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        checkpoint["data_name"] = getattr(datamodule, "name", None)

    def configure_optimizers(self):
        hp = self.hparams
        # No weight decay on biases and norm parameters: the usual practice, it helps short schedules.
        decay = [p for p in self.parameters() if p.dim() > 1]
        no_decay = [p for p in self.parameters() if p.dim() <= 1]
        groups = [dict(params=decay, weight_decay=hp.weight_decay), dict(params=no_decay, weight_decay=0.0)]
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.momentum > 0)
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(groups, lr=hp.lr)
        else:
            opt = torch.optim.AdamW(groups, lr=hp.lr)
        if hp.scheduler == "none":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if hp.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        elif hp.scheduler == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=total)
        else:
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, [total // 2, total * 3 // 4], gamma=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def init_loss_expected(num_classes: int) -> float:
    """Cross-entropy of a uniform guess: what a well-initialised classifier should start near."""
    return math.log(num_classes)
