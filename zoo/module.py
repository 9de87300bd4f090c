"""ZooModule: the one LightningModule that trains every zoo model on every dataset.

It picks the network by name from the registry, so a checkpoint rebuilds itself from its saved
hyperparameters alone (`ZooModule.load_from_checkpoint(path)`). Those hyperparameters are plain
strings, numbers and lists, so every checkpoint loads with torch's `weights_only=True`.

    model = ZooModule("lenet5", num_classes=10, input_shape=[1, 28, 28])
"""

import inspect
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import yaml
from jsonargparse.typing import NonNegativeFloat, PositiveFloat
from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.trainer import call
from torch.optim import optimizer as torch_optimizer
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from datamodules.tensor import mix_seed
from zoo.checkpoint import io_mismatch, load_checkpoint, network_from_checkpoint, resolve_checkpoint
from zoo.errors import ZooError
from zoo.models.registry import (
    DEFAULT_RECIPE,
    MODELS,
    OPTIMIZERS,
    RECIPES,
    SCHEDULERS,
    Fraction,
    Optimizer,
    Scheduler,
    convolutional,
    create_model,
    optimizer_groups,
)
from zoo.weights import datamodule_state, load_pretrained_checkpoint, sha256

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # one YAML per dataset: batch size, epochs
RECIPE_KEYS = tuple(DEFAULT_RECIPE)  # optimizer, lr, ..., lookahead: the model's part


def resolve_recipe(arch: str, data: str | None = None, **given) -> dict:
    """How model `arch` trains on dataset `data`, the one place that puts a recipe together (for
    ZooModule, compare's tables and the bench): RECIPE_KEYS (optimizer, lr, weight_decay, scheduler,
    momentum, label_smoothing, lookahead), batch_size and max_epochs, each from the first of these
    that sets it (not None):
      1. `given`: the command line's values, or those a run's config.yaml records;
      2. the batch size and epochs the model's recipe declares, if it does (airbench94's 1024 and 10:
         a speedrun's schedule is part of the model);
      3. the dataset's configs/<data>.yaml: batch size and epochs, and any of the model's keys a
         dataset wants its own (two-moons' lr 0.01);
      4. the model's recipe, declared where it is registered (zoo/models/registry.py; DEFAULT_RECIPE,
         Adam at 1e-3 and no schedule, for a model registered without one).
    batch_size and max_epochs stay None when neither 1 nor 2 sets them (a dataset given by class
    path has no YAML): the datamodule's and the Trainer's defaults apply."""
    unknown = set(given) - {*RECIPE_KEYS, "batch_size", "max_epochs"}
    if unknown:
        raise ZooError(f"resolve_recipe: no recipe key {', '.join(sorted(unknown))}; the keys are "
                       f"{', '.join(RECIPE_KEYS)}, batch_size, max_epochs.")
    path = CONFIGS / f"{data}.yaml" if data else None
    config = (yaml.safe_load(path.read_text()) or {}) if path and path.is_file() else {}
    model = config.get("model") or {}
    dataset = dict(batch_size=((config.get("data") or {}).get("init_args") or {}).get("batch_size"),
                   max_epochs=(config.get("trainer") or {}).get("max_epochs"),
                   **{k: model.get(k) for k in RECIPE_KEYS})
    recipe = RECIPES.get(arch, DEFAULT_RECIPE)
    out = {**{k: recipe[k] for k in RECIPE_KEYS}, "batch_size": None, "max_epochs": None}
    own = {k: recipe.get(k) for k in ("batch_size", "max_epochs")}
    for layer in (dataset, own, given):
        out.update({k: v for k, v in layer.items() if v is not None})
    return out


RESOLVED = ("hidden", "dropout", "width", *RECIPE_KEYS, "channels_last")


def resolve_hparams(hp: dict) -> dict:
    """`hp` with every option left None filled in as training will use it: the recipe's optimizer,
    lr, weight decay and schedule, the builder's defaults for the options it takes (mlp's hidden,
    ...), channels_last for conv nets. Options a model does not take stay None. Checkpoints and
    config.yaml record these values, and a resume compares them."""
    arch = hp["arch"]
    out = dict(hp)
    recipe = resolve_recipe(arch, **{k: hp.get(k) for k in RECIPE_KEYS})  # no dataset: the CLI put its YAML in hp
    out.update({k: recipe[k] for k in RECIPE_KEYS})
    builder = MODELS.get(arch)
    params = inspect.signature(builder).parameters if builder else {}
    for key in ("hidden", "dropout", "width"):
        if out.get(key) is None and key in params and params[key].default is not inspect.Parameter.empty:
            default = params[key].default
            out[key] = list(default) if isinstance(default, tuple) else default
    if out.get("channels_last") is None:
        out["channels_last"] = convolutional(arch)  # conv nets always take (C, H, W) input
    if isinstance(out.get("optimizer"), str):
        out["optimizer"] = out["optimizer"].lower()
    if isinstance(out.get("scheduler"), str):
        out["scheduler"] = out["scheduler"].lower()
    return out


DATA_INIT_IMAGES = 5000  # training images a data-initialised network is set from (airbench94: as the paper)


class NonFiniteLossError(ZooError):
    """The loss became NaN or infinite: training stops instead of wasting hours on garbage."""


class ZooModule(L.LightningModule):
    def __init__(
        self,
        arch: str = "mlp",
        num_classes: int = 2,
        input_shape: list[int] = [2],
        hidden: list[int] | None = None,
        dropout: Fraction | None = None,
        width: PositiveFloat | None = None,
        optimizer: Optimizer | None = None,
        lr: PositiveFloat | None = None,
        weight_decay: NonNegativeFloat | None = None,
        momentum: Fraction | None = None,
        scheduler: Scheduler | None = None,
        label_smoothing: Fraction | None = None,
        lookahead: bool | None = None,
        channels_last: bool | None = None,
        pretrained: str | None = None,
        compile: bool | None = None,
        teacher: str | None = None,
        distill_weight: Fraction | None = None,
        distill_temperature: PositiveFloat | None = None,
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
            momentum: SGD momentum; default from the recipe (0.9).
            scheduler: none, cosine, onecycle, step (x0.1 at 50% and 75% of training) or triangle (linear
                from 0.2 lr up to lr at 23% of training, then down to 0.07 lr: airbench94's); default from
                the recipe.
            label_smoothing: Label smoothing of the cross-entropy loss; default from the recipe (0).
            lookahead: Lookahead (Zhang et al. 2019) as airbench94 uses it: every 5 steps the weights
                and BatchNorm statistics move to an average of themselves and their slow copy, with a
                weight on the slow copy that grows as (step/total)^3 to 0.95^5, and training ends on the
                slow weights; default from the recipe (off).
            channels_last: channels_last memory format; default: on for conv nets (1.07-1.2x faster
                steps on CPU, see results/bench.md), off for the others (it changes nothing there).
            pretrained: Start from the shipped weights of this model trained on this dataset (e.g.
                mnist; see results/weights/manifest.json), to evaluate or fine-tune them.
            compile: torch.compile the network for training (validation and tests run it eagerly).
                Default: only where it was measured to pay, see compile_by_default (a long ResNet fit
                in bf16 on a CPU with AMX); off elsewhere.
            teacher: Knowledge distillation (Hinton et al. 2015): a trained model to learn from, as a
                checkpoint, a run directory or a shipped weights file (e.g. results/weights/airbench94_cifar10.pt)
                of the same data. Its softened predictions on each training batch join the loss; it is
                frozen, runs in eval mode, and is kept out of this model's checkpoints (they record its
                path and sha256, and a resume refuses a changed file).
            distill_weight: With a teacher: the distillation term's share of the loss, the cross-entropy
                with the labels taking the rest (default 0.9).
            distill_temperature: With a teacher: the softmax temperature of both models' outputs in the
                distillation term (default 4), which is scaled by its square (Hinton et al.).
        """
        super().__init__()
        # Fill the recipe's defaults in before saving, so the checkpoint records what was used
        # (save_hyperparameters reads these local variables).
        r = resolve_hparams(dict(arch=arch, hidden=hidden, dropout=dropout, width=width, optimizer=optimizer, lr=lr,
                                 weight_decay=weight_decay, scheduler=scheduler, momentum=momentum,
                                 label_smoothing=label_smoothing, lookahead=lookahead, channels_last=channels_last))
        (hidden, dropout, width, optimizer, lr, weight_decay, scheduler, momentum, label_smoothing, lookahead,
         channels_last) = (r[k] for k in RESOLVED)
        # Plain floats in the hyperparameters, not jsonargparse's range-checked subclasses of float:
        # checkpoints must hold plain values only (weights_only loading).
        dropout, width, lr, weight_decay, momentum, label_smoothing = (
            None if v is None else float(v) for v in (dropout, width, lr, weight_decay, momentum, label_smoothing))
        lookahead = bool(lookahead)
        if teacher:  # plain floats, as above; None without a teacher (nothing to record)
            distill_weight = 0.9 if distill_weight is None else float(distill_weight)
            distill_temperature = 4.0 if distill_temperature is None else float(distill_temperature)
        elif distill_weight is not None or distill_temperature is not None:
            raise ZooError("--model.distill_weight and --model.distill_temperature set how a student learns from a "
                           "teacher, and no teacher is given: add --model.teacher PATH (a checkpoint, run directory or "
                           "weights file of a model trained on this data), or drop them.")
        if optimizer not in OPTIMIZERS:
            raise ZooError(f"Unknown optimizer {optimizer!r}. Choose one of: {', '.join(OPTIMIZERS)} "
                           "(--model.optimizer).")
        if scheduler not in SCHEDULERS:
            raise ZooError(f"Unknown scheduler {scheduler!r}. Choose one of: {', '.join(SCHEDULERS)} "
                           "(--model.scheduler).")
        if not lr > 0:
            raise ZooError(f"The learning rate must be positive, got {lr}. Pass e.g. --model.lr 0.001.")
        if not 0 <= momentum < 1:
            raise ZooError(f"SGD momentum must be in [0, 1), got {momentum}. Pass e.g. --model.momentum 0.9 (0: none).")
        if weight_decay < 0 or not 0 <= label_smoothing < 1:
            raise ZooError("weight_decay must be >= 0 and label_smoothing in [0, 1): check --model.weight_decay "
                           "and --model.label_smoothing.")
        input_shape = [int(s) for s in input_shape]  # plain list: the checkpoint must hold no tuples of tensors
        self.save_hyperparameters()
        self.model = create_model(arch, input_shape, num_classes, hidden=hidden, dropout=dropout, width=width)
        if pretrained:
            self._load_pretrained(pretrained)
        self._teacher_sha256: str | None = None
        if teacher:
            self._load_teacher(teacher)
        self.example_input_array = torch.zeros(1, *input_shape)  # Lightning's summary: sizes and FLOPs
        if channels_last and len(input_shape) == 3:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Metrics per stage, updated every step and logged once per epoch (on_*_epoch_end). Not
        # self.log per step: Lightning's per-call bookkeeping plus a metric forward made the MNIST
        # MLP's epoch 1.92x a bare loop's; this way 1.65-1.73x (results/bench.md).
        # validate_args=False: the inputs are our own logits and labels, checked by construction.
        acc = dict(num_classes=num_classes, average="micro", validate_args=False)
        top5 = num_classes > 5  # top-5 says nothing with 5 classes or fewer
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_loss", MeanMetric(nan_strategy="disable"))  # NaN is caught in training_step
            setattr(self, f"{stage}_acc", MulticlassAccuracy(**acc))
            setattr(self, f"{stage}_top5", MulticlassAccuracy(top_k=5, **acc) if top5 and stage != "train" else None)
        # The test set's (true, predicted) counts: per-class accuracy and the most confused pairs
        # (evaluate.py). Not logged: read after trainer.test, reset when a test starts.
        self.test_confusion = MulticlassConfusionMatrix(num_classes, validate_args=False)
        # Test-stage options evaluate.py sets before trainer.test. Plain attributes, not hyperparameters:
        # checkpoints do not change, and fit (which never sets them) tests exactly as before.
        self.tta = "none"  # "flip", "flip_translate": predict from several views of each image (see _tta)
        self.keep_test_correct = False  # True: test_correct collects, in test-set order, which rows were right
        self.test_correct: list[torch.Tensor] = []
        self._lookahead: Lookahead | None = None  # the slow weights (lookahead on), from the start of a fit
        self._fit_total_steps: int | float | None = None  # set with it, in on_fit_start
        self._compile = compile  # whether training runs the compiled network; None: decided in on_fit_start
        self.steps_per_execution = 1  # see use_steps_per_execution
        self.last_step_in_epoch = False  # set before each training step (zoo.insight's histograms read it)

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "ZooModule":
        """The module a checkpoint holds (what zoo.checkpoint.load_checkpoint returned, so its weights
        fit), float32 and in eval mode: the network zoo.checkpoint.network_from_checkpoint rebuilds too."""
        hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
        # The weights are this file's, not the shipped ones; a teacher only matters in training.
        module = cls(**{**hp, "pretrained": None, "teacher": None, "distill_weight": None, "distill_temperature": None})
        module.load_state_dict(ckpt["state_dict"])  # float16 weights are copied into the float32 parameters
        return module.eval()

    def exact_test_accuracy(self, n: int) -> tuple[float, int]:
        """Accuracy on the first n test images (the ones with original pixels, datamodule.exact_test) and
        how many there were, from the last test run with keep_test_correct on one process."""
        correct = torch.cat(self.test_correct)[:n]
        return int(correct.sum()) / len(correct), len(correct)

    def _load_pretrained(self, dataset: str) -> None:
        ckpt = load_pretrained_checkpoint(self.hparams.arch, dataset)  # sha256-checked, weights_only
        if differs := io_mismatch(ckpt["hyper_parameters"], self.hparams.input_shape, self.hparams.num_classes):
            raise ZooError(f"The pretrained {self.hparams.arch} for {dataset} {differs}. Train on {dataset} or drop "
                           f"--model.pretrained.")
        weights = {k[len("model."):]: v.float() for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        self.model.load_state_dict(weights)

    def _load_teacher(self, path: str) -> None:
        """The teacher network, frozen and in eval mode, held outside the module tree (a plain attribute,
        not a submodule): checkpoints keep the student's weights only, and Lightning's train() leaves it
        in eval mode. Refused unless it maps this input to these classes."""
        try:
            file = resolve_checkpoint(path)
            ckpt = load_checkpoint(file)  # weights_only, and checked like any checkpoint
        except ZooError as error:  # the loader's message, said of the flag (a resume names a checkpoint too)
            raise ZooError(f"--model.teacher {path}: {error}") from None
        hp = ckpt["hyper_parameters"]
        if differs := io_mismatch(hp, self.hparams.input_shape, self.hparams.num_classes):
            raise ZooError(f"The teacher {file} ({hp['arch']}) {differs}. Give --model.teacher a model trained on "
                           f"this dataset.")
        net = network_from_checkpoint(ckpt).requires_grad_(False)
        self.__dict__["_teacher"] = net
        self._teacher_data = ckpt.get("data_name")
        self._teacher_stats = datamodule_state(ckpt)  # the normalisation it was trained with
        self._teacher_sha256 = sha256(file)
        self._teacher_affine: tuple[torch.Tensor, torch.Tensor] | None = None  # set in on_fit_start

    def _setup_teacher(self) -> None:
        """At the start of a fit: the teacher on this device, and its inputs normalised as it was trained:
        the batches come standardised with this data's statistics, so x * a + b re-standardises them
        with the teacher's (the identity when they agree, as for the same dataset and split)."""
        teacher = self.__dict__["_teacher"].to(self.device)
        self.__dict__["_teacher"] = teacher
        datamodule = getattr(self.trainer, "datamodule", None)
        name = getattr(datamodule, "name", None)
        if self._teacher_data and name and self._teacher_data != name:
            raise ZooError(f"The teacher {self.hparams.teacher} was trained on {self._teacher_data}, and this run "
                           f"trains on {name}. Give --model.teacher a model trained on {name}.")
        mine = (getattr(datamodule, "mean", None), getattr(datamodule, "std", None))
        theirs = (self._teacher_stats.get("mean"), self._teacher_stats.get("std"))
        affine = restandardise(*mine, *theirs, len(self.hparams.input_shape))
        self._teacher_affine = None if affine is None else tuple(t.to(self.device) for t in affine)

    def _distill(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Hinton et al.'s term: T^2 KL(teacher || student) of the outputs softened by temperature T,
        averaged over the batch (the T^2 keeps its gradients' scale as T changes)."""
        teacher, T = self.__dict__["_teacher"], self.hparams.distill_temperature
        with torch.no_grad():
            if self._teacher_affine is not None:
                x = x * self._teacher_affine[0] + self._teacher_affine[1]
            if x.dim() == 4:  # (a no-op on the student's channels_last batch, and the affine keeps that layout)
                x = x.contiguous(memory_format=torch.channels_last)
            target = teacher(x.float()).float()  # (fp32 weights; autocast, if on, lowers it as it does the student)
        return F.kl_div((logits.float() / T).log_softmax(-1), (target / T).log_softmax(-1), log_target=True,
                        reduction="batchmean") * T * T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point() and x.dtype != self.dtype:  # bf16-true / 16-true weights
            x = x.to(self.dtype)
        if self.hparams.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if not (self._compile and self.training):
            return self.model(x)
        if "_compiled" not in self.__dict__:
            # Kept outside the module tree (not a submodule), so checkpoints keep the plain
            # parameter names and load into an uncompiled model.
            # dynamic=False: an epoch's last, smaller batch otherwise made dynamo recompile a dynamic-shape
            # graph that every later batch ran: ResNet-20 epochs of 39.1 s against 34.6 s with one static
            # graph per batch size, 42.1 s eager (results/cifar10_conv/compile_epochs_xeon.txt).
            self.__dict__["_compiled"] = torch.compile(self.model, dynamic=False)
        if self.__dict__.get("_compile_ran"):
            return self.__dict__["_compiled"](x)
        try:  # the first call compiles: inductor needs a working C++ compiler on a CPU
            out = self.__dict__["_compiled"](x)
        except Exception as error:
            why = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            if not self.hparams.get("compile"):  # on by default, for speed alone: train on without it
                print(f"note: torch.compile failed ({type(error).__name__}: {why}), so this run trains without it "
                      f"(it is on by default here for speed only). On a CPU it needs a C++ compiler (g++ or "
                      f"clang++, or $CXX) on the PATH.", file=sys.stderr, flush=True)
                self._compile = False
                return self.model(x)
            raise ZooError(f"--model.compile true: torch.compile failed ({type(error).__name__}: {why}). On a "
                           f"CPU it needs a C++ compiler (g++ or clang++, or $CXX) on the PATH; install one, or train "
                           f"without it: --model.compile false.") from error
        self.__dict__["_compile_ran"] = True
        return out

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        if not self.automatic_optimization:
            return self._train_chunk(batch, batch_idx)
        x, y = batch
        logits, loss = self._train_loss(x, y)
        if not torch.isfinite(loss):  # (a chunk checks its losses together, in _train_chunk)
            self._stop_non_finite(loss, self.global_step)
        self._update("train", logits.detach(), y, loss.detach())
        return loss

    def _train_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.hparams.teacher and self.hparams.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # once, for the student and the teacher
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        if self.hparams.teacher:
            w = self.hparams.distill_weight
            loss = (1 - w) * loss + w * self._distill(logits, x)
        return logits, loss

    def _stop_non_finite(self, loss: torch.Tensor, step: int) -> None:
        saved = [p for p in self._last_checkpoints() if p.is_file()]
        kept = (f"the last good checkpoint {saved[0]} (end of the previous epoch) is kept" if saved else
                "no checkpoint was saved (it diverged before the first epoch ended)")
        raise NonFiniteLossError(
            f"The training loss became {loss.item()} at epoch {self.current_epoch}, step {step}. "
            f"Training stopped; {kept}. Try a smaller learning rate (now {self.hparams.lr}) or full precision "
            f"(--trainer.precision 32).")

    def use_steps_per_execution(self, k: int) -> None:
        """Train k optimizer steps per Lightning step (train.py's --steps_per_execution): the training
        loader yields chunks of k batches and training_step steps through them with manual
        optimization, so Lightning's per-step work (hooks, callbacks, progress) is paid once per chunk.
        Every step is the plain path's: same order, dropout seeds, schedule and Lookahead steps."""
        self.steps_per_execution, self.automatic_optimization = k, k == 1

    def _train_chunk(self, batch: list, batch_idx: int) -> None:
        opt, sched = self.optimizers(), self.lr_schedulers()
        last_chunk = batch_idx + 1 >= self.trainer.num_training_batches
        direct = steps_directly(self.trainer)
        listened = listened_step_hooks(self.trainer) if direct else set()
        outputs, first_step = [], self.global_step
        linears = self._backprop_by_hand(listened) if direct else None
        by_hand_dtype = linears[0].weight.dtype if linears is not None else None
        # bf16-mixed: autocast casts float32 (never float64) tensors for the Linear layers
        low = torch.bfloat16 if by_hand_dtype == torch.float32 and torch.is_autocast_enabled("cpu") else None
        reseed, first_batch = self._reseeder(), batch_idx * self.steps_per_execution
        for j, (x, y) in enumerate(batch):
            reseed(first_batch + j)
            last = last_chunk and j == len(batch) - 1
            if last != self.last_step_in_epoch:  # (nn.Module's setattr is slow, and the flag changes twice an epoch)
                self.last_step_in_epoch = last
            if x.dtype == by_hand_dtype:
                logits, loss = mlp_backprop(linears, x, y, low)  # and the gradients: autograd's, bitwise
                self._step_directly(opt, None, listened)
            else:
                logits, loss = self._train_loss(x, y)  # its NaN stop: below, for the whole chunk
                if direct:
                    self._step_directly(opt, loss, listened)
                else:
                    opt.zero_grad()
                    self.manual_backward(loss)
                    opt.step()
            if sched is not None:  # then Lookahead: the order of Lightning's loop (schedule, on_train_batch_end)
                sched.step()
            if self._lookahead is not None:
                self._lookahead.step(self.model, self.global_step, self._fit_total_steps)
            outputs.append((logits.detach(), y, loss.detach()))
        logits, y, losses = zip(*outputs)
        losses = torch.stack(losses)
        # The NaN stop, once per chunk: one read of a device value instead of one per step (on a GPU
        # each read waits for the queued work). It names the first bad step; the weights it kept are
        # the last checkpoint's, which the steps after it in the chunk did not touch.
        finite = torch.isfinite(losses)
        if not finite.all():
            j = int((~finite).nonzero()[0])
            self._stop_non_finite(losses[j], first_step + j)
        # One metric update per chunk: each update costs about as much as Lightning's per-step work.
        self.train_loss.update(losses, torch.tensor([len(t) for t in y], device=losses.device))
        self.train_acc.update(torch.cat(logits), torch.cat(y))

    def _step_directly(self, opt, loss: torch.Tensor, listened: set[str]) -> None:
        """manual_backward + opt.step without Lightning's per-step dispatch (six hook calls through
        every callback, 0.08-0.16 ms a step on a 2-core CPU: results/chunks_mlp.txt), in the same order: the
        hooks some callback or this module listens to are still called, through Lightning, and
        Lightning's step count (global_step, the profiler) still moves. Only where steps_directly."""
        trainer, raw = self.trainer, opt.optimizer

        def hook(name: str, *args) -> None:
            if name in listened:
                call._call_callback_hooks(trainer, name, *args)
                call._call_lightning_module_hook(trainer, name, *args)

        if loss is not None:  # (None: mlp_backprop has set every gradient, and no one listens for a backward)
            if type(raw).zero_grad is torch.optim.Optimizer.zero_grad:  # its set_to_none, without its profiler range
                for group in raw.param_groups:
                    for p in group["params"]:
                        p.grad = None
            else:
                raw.zero_grad()
            hook("on_before_backward", loss)
            loss.backward()
            hook("on_after_backward")
        opt._on_before_step()  # what LightningOptimizer.step does around the step: count it
        hook("on_before_optimizer_step", raw)
        if not fused_adam_step(raw):
            raw.step()
        opt._on_after_step()

    def _backprop_by_hand(self, listened: set[str]) -> list[torch.nn.Linear] | None:
        """The network's Linear layers where a chunk may train it with mlp_backprop instead of autograd:
        a plain MLP or linear model on the CPU (Flatten, Linear-ReLU blocks, Linear; no dropout, no module,
        parameter or global hooks), full precision or bf16 autocast, no label smoothing, no compile, every
        parameter trained, no callback listening for the backward, and ZooModule's own forward and loss
        (not a subclass's). None (autograd) anywhere else."""
        from torch.nn.modules import module as torch_module

        net = self.model
        if self.device.type != "cpu":  # (bitwise autograd's: tested on the CPU only)
            return None
        if (self.hparams.label_smoothing or self._compile or self.hparams.teacher
                or {"on_before_backward", "on_after_backward"} & listened or type(net) is not torch.nn.Sequential
                or (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") != torch.bfloat16)
                or any(getattr(torch_module, f"_global_{h}") for h in (
                    "forward_hooks", "forward_pre_hooks", "backward_hooks", "backward_pre_hooks"))):
            return None
        layers, blocks = list(net), len(net) // 2
        plain = [torch.nn.Flatten] + [torch.nn.Linear, torch.nn.ReLU] * (blocks - 1) + [torch.nn.Linear]
        if [type(m) for m in layers] != plain or (layers[0].start_dim, layers[0].end_dim) != (1, -1):
            return None
        if any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               or "forward" in m.__dict__ for m in net.modules()):
            return None
        if (type(self).forward, type(self)._train_loss) != PLAIN_LOSS:  # a subclass's or a patch's own loss
            return None
        params = list(net.parameters())
        if (len(params) != 2 * blocks or any(
                not p.requires_grad or p._backward_hooks or p._post_accumulate_grad_hooks
                or p.dtype not in (torch.float32, torch.float64) for p in params)):
            return None  # (a Linear without bias has fewer parameters)
        return layers[1::2]

    def total_steps(self) -> int | float:
        """Optimizer steps in the whole fit: what the learning-rate schedule and Lookahead plan for
        (inf: no end, --trainer.max_epochs -1)."""
        if self.automatic_optimization:
            total = self.trainer.estimated_stepping_batches
            return int(total) if math.isfinite(total) else total
        # Lightning counts chunks; zoo.run falls back to one step per Lightning step whenever the length
        # is not epochs x batches (max_steps, limit_train_batches, ...), so this is exact.
        epochs = self.trainer.max_epochs
        return math.inf if epochs is None or epochs < 0 else epochs * self.trainer.datamodule.steps_per_epoch()

    def _last_checkpoints(self) -> list[Path]:
        callbacks = self.trainer.checkpoint_callbacks if self._trainer else []
        return [Path(cb.dirpath) / "last.ckpt" for cb in callbacks if getattr(cb, "dirpath", None)]

    def _update(self, stage: str, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        # Accumulated on the device, no sync: torchmetrics reduces across processes in compute().
        getattr(self, f"{stage}_loss").update(loss, len(y))
        getattr(self, f"{stage}_acc").update(logits, y)
        top5 = getattr(self, f"{stage}_top5")
        if top5 is not None:
            top5.update(logits, y)

    def _log_epoch(self, stage: str) -> None:
        # Logging the metric objects: Lightning calls compute() (synced under DDP) and reset().
        if not getattr(self, f"{stage}_loss").update_called:
            return  # no batch this epoch (a run resumed at the very end of one): nothing to report
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), prog_bar=True)
        self.log(f"{stage}/acc", getattr(self, f"{stage}_acc"), prog_bar=True)
        top5 = getattr(self, f"{stage}_top5")
        if top5 is not None:
            self.log(f"{stage}/acc_top5", top5)

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x) if stage != "test" or self.tta == "none" else self._tta(x)
        self._update(stage, logits, y, F.cross_entropy(logits, y))
        if stage == "test":
            self.test_confusion.update(logits, y)
            if self.keep_test_correct:
                self.test_correct.append(logits.argmax(1) == y)  # how MulticlassAccuracy counts a hit

    def _tta(self, x: torch.Tensor) -> torch.Tensor:
        """Test-time augmentation: the weighted mean of the softmax outputs over views of x (an ensemble,
        so the loss is the NLL of the averaged prediction; averaging logits would give a sharper,
        renormalised geometric mean), kept as its log: cross-entropy, accuracy and the confusion matrix
        take it as they take logits. "flip": the image and its mirror, 1/2 each. "flip_translate"
        (airbench94's): those two at 1/4 each, and the mirror pair of each of two 1-pixel diagonal
        shifts (reflect padding: up-left, down-right) at 1/8 each."""
        views, weights = [x, x.flip(-1)], [0.5, 0.5]
        if self.tta == "flip_translate":
            padded = F.pad(x.float(), (1, 1, 1, 1), mode="reflect").to(x.dtype)  # (B, C, H+2, W+2)
            h, w = x.shape[-2:]
            shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]
            views = [x, x.flip(-1)] + [v for s in shifted for v in (s, s.flip(-1))]
            weights = [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
        log_probs = torch.stack([self(v).float().log_softmax(-1) for v in views])  # (views, B, classes)
        return (log_probs + torch.tensor(weights, device=x.device).log()[:, None, None]).logsumexp(0)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")
        # The learning rate for the next step under one name whatever the optimizer (Lightning's
        # LearningRateMonitor names it lr-Adam/pg1, lr-SGD/pg2, ...); both parameter groups share it.
        # sync_dist: it is the same in every DDP process; without it Lightning warns that it is not synced.
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], sync_dist=True)

    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()
        self.test_correct = []

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0])

    def on_fit_start(self) -> None:
        # A network initialised from data (airbench94's whitening layer) gets it here, from the first
        # DATA_INIT_IMAGES images of the training split: the split is seeded, so the same seed gives the
        # same weights. A resumed run restores them from the checkpoint (the network's buffer
        # data_initialised says so) instead of recomputing them.
        init = getattr(self.model, "init_from_data", None)
        datamodule = getattr(self.trainer, "datamodule", None)
        if init is not None and not bool(getattr(self.model, "data_initialised", False)) and datamodule is not None:
            datamodule.setup("fit")
            x = datamodule.normalize(datamodule.train_x[:DATA_INIT_IMAGES].to(self.device))
            init(x.to(memory_format=torch.channels_last) if self.hparams.channels_last and x.dim() == 4 else x)
        if self.hparams.teacher:
            self._setup_teacher()
        if self.hparams.lookahead and self._lookahead is None:  # (a resume restored it in on_load_checkpoint)
            self._lookahead = Lookahead(self.model)  # after the data initialisation, as the paper starts it
        # The fit's length, worked out once per fit: Lookahead's schedule reads it every step, and the
        # compile default here.
        steps = self.total_steps()
        self._fit_total_steps = steps if self._lookahead is not None else None
        self._compile = self.hparams.get("compile")
        if self._compile is None:  # (the same answer when a run resumes on the same machine)
            self._compile = compile_by_default(self.hparams.arch, self.trainer.precision, self.device, steps)
            if self._compile and self.trainer.is_global_zero:
                print(f"torch.compile: on, the default for a ResNet in bf16 on a CPU with AMX over {steps:,} steps "
                      f"(the first step waits for the compile); --model.compile false turns it off.", flush=True)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self.automatic_optimization:  # (chunks reseed per step in _train_chunk)
            self._reseeder()(batch_idx)
            self.last_step_in_epoch = batch_idx + 1 >= self.trainer.num_training_batches

    def _reseeder(self) -> Callable[[int], None]:
        """reseed(batch_idx) for this epoch: dropout draws from the device's global RNG, and reseeding
        it from (seed, epoch, step, rank) makes every step reproducible on its own, so a run resumed
        anywhere (after a crash at an epoch's end, or Ctrl-C / SIGTERM mid-epoch) continues exactly as
        if never stopped. (The device's generator only: torch.manual_seed would cost 80 us per step.
        Made once per chunk: Lightning's epoch, rank and device properties are slow to read; see
        results/fitstep_avx2_ab.txt.)"""
        seed, epoch, rank = int(os.environ.get("PL_GLOBAL_SEED", 0)), self.current_epoch, self.global_rank
        device = self.device
        set_seed = {"cuda": torch.cuda.manual_seed, "mps": torch.mps.manual_seed}.get(
            device.type, torch.default_generator.manual_seed)
        return lambda batch_idx: set_seed(mix_seed(seed, epoch, batch_idx, rank))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Which dataset the weights belong to: resume and evaluate refuse a mismatch by name.
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        checkpoint["data_name"] = getattr(datamodule, "name", None)
        # And its precision: evaluate.py and a resume use the same arithmetic, so numbers reproduce.
        checkpoint["precision"] = str(self.trainer.precision) if self._trainer else None
        if self._lookahead is not None:
            checkpoint["lookahead"] = self._lookahead.state()
        # Lightning's mid-epoch progress counts chunks of this many batches: a resume must keep it (zoo.run).
        checkpoint["steps_per_execution"] = self.steps_per_execution
        if self._teacher_sha256:
            checkpoint["teacher_sha256"] = self._teacher_sha256

    def configure_optimizers(self):
        hp = self.hparams
        kind = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[hp.optimizer]
        extra = dict(momentum=hp.momentum, nesterov=hp.momentum > 0) if hp.optimizer == "sgd" else {}
        opt = kind(optimizer_groups(self.model, hp.lr, hp.weight_decay), lr=hp.lr, fused=use_fused(self, self._trainer),
                   **extra)
        if hp.scheduler == "none":
            return opt
        total = self.total_steps()
        if not math.isfinite(total):  # max_epochs -1 and no max_steps: a schedule needs an end
            raise ZooError(f"The {hp.scheduler} learning-rate schedule needs to know how long training lasts, but "
                           f"--trainer.max_epochs is -1 (no limit) and no --trainer.max_steps is set. Give one of "
                           f"them, or pass --model.scheduler none.")
        total = max(1, int(total))
        if hp.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        elif hp.scheduler == "onecycle":
            peaks = [g["lr"] for g in opt.param_groups]  # each group's own (lr_scale)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peaks, total_steps=total)
        elif hp.scheduler == "triangle":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, Triangle(total))
        else:
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, [total // 2, total * 3 // 4], gamma=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_epoch_start(self) -> None:
        freeze_finished_groups(self.trainer.optimizers[0], self.current_epoch)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.hparams.lookahead and self.automatic_optimization:
            self._lookahead.step(self.model, self.global_step, self._fit_total_steps)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("teacher_sha256")
        if self._teacher_sha256 and saved and saved != self._teacher_sha256:
            raise ZooError(f"The teacher {self.hparams.teacher} is not the file this run was distilled from (its "
                           f"sha256 differs from the one the checkpoint recorded), so the run would not continue as it "
                           f"started. Put the original file back, or start a new run without --ckpt_path.")
        if self.hparams.lookahead and checkpoint.get("lookahead") is not None:
            self._lookahead = Lookahead.from_state(checkpoint["lookahead"], self.model)  # slow weights: exact resume


def restandardise(mean, std, t_mean, t_std, dims: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(a, b) such that x * a + b turns inputs standardised with (mean, std) into inputs standardised
    with (t_mean, t_std), per channel, for inputs of `dims` dimensions per sample; None when nothing
    changes (equal statistics) or either is unknown (None)."""
    if any(v is None for v in (mean, std, t_mean, t_std)):
        return None
    mean, std, t_mean, t_std = (torch.as_tensor(v, dtype=torch.float32) for v in (mean, std, t_mean, t_std))
    if torch.equal(mean, t_mean) and torch.equal(std, t_std):
        return None
    shape = (1, -1) + (1,) * (dims - 1)
    return (std / t_std).view(shape), ((mean - t_mean) / t_std).view(shape)


class Triangle:
    """airbench94's learning-rate factor at step s of `total`: linear from `start` up to 1 at `peak` of the
    way, then down to `end`. A class, not a lambda, so LambdaLR saves nothing that will not load."""

    def __init__(self, total: int, start: float = 0.2, peak: float = 0.23, end: float = 0.07):
        self.total, self.start, self.peak, self.end = total, start, peak, end

    def __call__(self, step: int) -> float:
        top = max(1, int(self.peak * self.total))
        if step <= top:
            return self.start + (1 - self.start) * step / top
        return 1 + (self.end - 1) * min(1.0, (step - top) / max(1, self.total - top))


class Lookahead:
    """The slow copy of a network's floating-point state (weights and BatchNorm statistics), pulled
    towards the fast weights every `every` steps and copied back into them, as airbench94 does."""

    def __init__(self, net: torch.nn.Module, every: int = 5):
        self.every = every
        self.slow = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}

    @classmethod
    def from_state(cls, state: dict, net: torch.nn.Module) -> "Lookahead":
        """The slow weights a checkpoint saved, if they are the floating-point state of `net`, name by name
        and shape by shape (a file may be damaged or hostile)."""
        expected = {k: v.shape for k, v in net.state_dict().items() if v.is_floating_point()}
        slow = state.get("slow") if isinstance(state, dict) else None
        every = state.get("every") if isinstance(state, dict) else None
        if not (isinstance(every, int) and not isinstance(every, bool) and every > 0 and isinstance(slow, dict)
                and set(slow) == set(expected) and all(isinstance(v, torch.Tensor) and v.is_floating_point()
                                                       and v.shape == expected[k] for k, v in slow.items())):
            raise ZooError("The checkpoint's Lookahead state (its 'lookahead' entry: the slow weights) does not fit "
                           "this model. Resume from a checkpoint that train.py fit wrote with --model.lookahead on "
                           "(or retrain); do not edit checkpoints by hand.")
        out = cls.__new__(cls)
        out.every, out.slow = every, dict(slow)
        return out

    def state(self) -> dict:
        return {"every": self.every, "slow": self.slow}

    @torch.no_grad()
    def step(self, net: torch.nn.Module, step: int, total: int) -> None:
        """After optimizer step number `step` (1-based) of `total`."""
        if step % self.every == 0:
            self._pull(net, 0.95**self.every * (step / total) ** 3)
        if step >= total:
            self._pull(net, 1.0)  # the run ends on the slow weights

    def _pull(self, net: torch.nn.Module, keep: float) -> None:
        state = net.state_dict()
        for k, slow in self.slow.items():
            if slow.device != state[k].device:  # restored from a checkpoint on the CPU: moved once
                slow = self.slow[k] = slow.to(state[k].device)
            slow.lerp_(state[k], 1 - keep)
            state[k].copy_(slow)


def freeze_finished_groups(optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """Parameter groups a network trains for its first epochs only (`train_epochs`: airbench94's whitening
    bias) train in `epoch` or not: from then on they get no gradient, so the optimizer skips them
    (momentum included). Set from the epoch number, so a resume anywhere agrees."""
    for group in optimizer.param_groups:
        if group.get("train_epochs") is not None:
            for p in group["params"]:
                p.requires_grad_(epoch < group["train_epochs"])


PLAIN_LOSS = (ZooModule.forward, ZooModule._train_loss)  # what mlp_backprop computes


def use_fused(module: torch.nn.Module, trainer=None) -> bool | None:
    """Whether the optimizer should take its fused step: one kernel over all parameters instead of a
    Python loop of small ops per tensor (1.2x faster MLP steps on CPU, see results/bench.md).
    CPU and CUDA only; not under 16-mixed, whose gradient scaler cannot clip fused optimizers' gradients."""
    if trainer is not None and str(trainer.precision).startswith("16-mixed"):
        return None
    return all(p.device.type in ("cpu", "cuda") for p in module.parameters()) or None


def steps_directly(trainer) -> bool:
    """Whether a chunk may step without Lightning's per-step dispatch (ZooModule._step_directly): one
    process, and a precision whose backward and step are the plain ones (no gradient scaler, as under
    16-mixed), and a module that does not override `backward`."""
    plugin = trainer.precision_plugin
    plain = type(plugin) in (Precision, HalfPrecision, DoublePrecision) or (
        type(plugin) is MixedPrecision and plugin.scaler is None)
    return (plain and type(trainer.strategy) is SingleDeviceStrategy
            and type(trainer.lightning_module).backward is L.LightningModule.backward)


def fused_adam_step(opt: torch.optim.Optimizer) -> bool:
    """Adam's or AdamW's fused step straight into torch's kernel: what `opt.step()` runs once every
    parameter has its state, without its per-call Python (hook and profiler dispatch, lazy-state
    checks, grouping by device), which costs more than the kernel itself for a small model (bench/
    hotpath.py). Same kernel and arguments, so the same weights (tests/test_fast_path.py).
    Returns False, having done nothing, wherever that is not plainly so (another optimizer, an option
    this call does not pass, a hook, a state still to create, mixed devices); the caller steps then."""
    if (type(opt) not in (torch.optim.Adam, torch.optim.AdamW) or opt._optimizer_step_pre_hooks
            or opt._optimizer_step_post_hooks or torch_optimizer._global_optimizer_pre_hooks
            or torch_optimizer._global_optimizer_post_hooks or getattr(opt, "grad_scale", None) is not None
            or getattr(opt, "found_inf", None) is not None):
        return False
    # One kernel call per set of hyperparameters, device and dtype, not per group: the kernel updates each
    # tensor on its own, and the default groups (weights; biases without weight decay) often share all of them.
    calls: dict[tuple, list[list]] = {}
    for group in opt.param_groups:
        beta1, beta2 = group["betas"]
        tensor_options = (isinstance(group["lr"], torch.Tensor) or isinstance(group["eps"], torch.Tensor)
                          or isinstance(beta1, torch.Tensor) or isinstance(beta2, torch.Tensor))
        if (not group["fused"] or group["amsgrad"] or group["maximize"] or group["capturable"]
                or group["differentiable"] or tensor_options):
            return False
        params = [p for p in group["params"] if p.grad is not None]
        states = [opt.state.get(p) for p in params]
        if not all(s and "step" in s and "exp_avg" in s and "exp_avg_sq" in s for s in states):
            return False
        # By the parameters alone, as torch's own fused step groups them: a gradient always matches its
        # parameter's device and dtype (torch checks every assignment), and Adam's state follows them.
        devices, dtypes = {p.device for p in params}, {p.dtype for p in params}
        if len(devices) > 1 or len(dtypes) > 1 or any(p.is_complex() or p.grad.is_sparse for p in params):
            return False
        tensors = [params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                   [s["step"] for s in states]]
        if params:
            key = (group["decoupled_weight_decay"], group["lr"], beta1, beta2, group["eps"], group["weight_decay"],
                   *devices, *dtypes)
            for into, ts in zip(calls.setdefault(key, [[], [], [], [], []]), tensors):
                into.extend(ts)
    with torch.no_grad():
        for (decoupled, lr, beta1, beta2, eps, weight_decay, _, _), (*tensors, steps) in calls.items():
            torch._foreach_add_(steps, 1)
            kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
            kernel(*tensors, [], steps, amsgrad=False, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                   weight_decay=weight_decay, maximize=False, grad_scale=None, found_inf=None)
    return True


STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


def mlp_backprop(linears: list[torch.nn.Linear], x: torch.Tensor, y: torch.Tensor,
                 low: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step's logits, mean cross-entropy loss and gradients (left in each parameter's
    .grad) for Flatten, Linear-ReLU blocks and a Linear head, computed with the aten kernels autograd
    itself calls for them, in its order, so the gradients are bitwise autograd's (tests/test_fast_path.py)
    without its graph, whose bookkeeping took a quarter of the lecture MLP's step (779 against 594 us at
    2 threads on a 2-core AVX2 EPYC: results/mlpstep_avx2.txt). The caller checks the network is that
    (ZooModule._backprop_by_hand). low=torch.bfloat16 takes the step as CPU autocast (bf16-mixed) does:
    the Linear layers in bf16 from bf16 copies of the weights, the loss in float32, the gradients cast
    back to the float32 weights' dtype."""
    aten = torch.ops.aten
    with torch.no_grad():
        weights = [fc.weight if low is None else fc.weight.to(low) for fc in linears]
        acts = [x.flatten(1) if low is None else x.flatten(1).to(low)]
        for i, fc in enumerate(linears):  # what F.linear does with a batch
            z = torch.addmm(fc.bias if low is None else fc.bias.to(low), acts[-1], weights[i].t())
            acts.append(z.relu_() if i + 1 < len(linears) else z)
        logits = acts.pop()
        # F.cross_entropy = nll_loss(log_softmax), which autocast runs in float32
        log_p = torch.log_softmax(logits if low is None else logits.float(), 1)
        loss, total_weight = aten.nll_loss_forward(log_p, y, None, 1, -100)  # 1: mean
        g = aten.nll_loss_backward(torch.ones_like(loss), log_p, y, None, 1, -100, total_weight)
        g = aten._log_softmax_backward_data(g, log_p, 1, log_p.dtype)
        g = g if low is None else g.to(low)  # (the backward of autocast's cast to float32 for the loss)
        for i in reversed(range(len(linears))):
            fc, a = linears[i], acts[i]
            grad_w, grad_b = g.t().mm(a), g.sum(0)  # (addmm's backward picks this layout for a transposed weight)
            fc.weight.grad, fc.bias.grad = (grad_w, grad_b) if low is None else (grad_w.float(), grad_b.float())
            if i:  # (the input needs no gradient)
                g = aten.threshold_backward(g.mm(weights[i]), a, 0)  # ReLU's backward, from its output
    return logits, loss


def listened_step_hooks(trainer) -> set[str]:
    """The per-step hooks some callback or the module overrides (zoo.insight's histograms, a user's)."""
    owners = [(cb, L.Callback) for cb in trainer.callbacks] + [(trainer.lightning_module, L.LightningModule)]
    return {h for h in STEP_HOOKS for obj, base in owners if getattr(type(obj), h) is not getattr(base, h)}


def bf16_native(accelerator: str = "auto") -> bool:
    """Whether the device a run will use does bf16 matmuls in hardware: CUDA GPUs from Ampere on,
    x86 CPUs with AMX or AVX512-BF16. Elsewhere bf16 is emulated and slower than fp32."""
    accelerator = str(accelerator)
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if accelerator == "auto" and torch.backends.mps.is_available():
        return False  # MPS: bf16 autocast is partial there, keep fp32
    if accelerator not in ("auto", "cpu"):
        return False
    return cpu_has("amx_tile", "avx512_bf16")


def cpu_has(*features: str) -> bool:
    """Whether the CPU has any of these features, by torch's own probes (torch.cpu._is_<feature>_supported);
    False where this torch lacks the probe."""
    cpu = getattr(torch, "cpu", None)
    return any(getattr(cpu, f"_is_{f}_supported", lambda: False)() for f in features)


# torch.compile's default. On a 2-core AMX Xeon, train.py's ResNet-20 (bf16, channels_last, batch 128)
# ran 1,416 img/s compiled against 1,159 eager over 100 steps (1.22x, 20 ms less a step:
# results/cifar10_conv/compile_fit_xeon.txt), and the compile cost 21-40 s (a 160-epoch run's first epoch
# against its next; the probe's cold fit): repaid after 1,000-2,000 steps. 5,000 steps (14 CIFAR-10
# epochs) keeps the compile a small part of what it saves.
COMPILE_MIN_STEPS = 5000


def compile_by_default(arch: str, precision: str, device: torch.device, steps: float) -> bool:
    """Whether a fit compiles its network when --model.compile is not given: only where that was
    measured to pay, a ResNet in bf16 on a CPU with AMX (results/README.md, issue 16), in a fit of at
    least COMPILE_MIN_STEPS steps, where the compile is a small part of the time it saves. Not elsewhere:
    compiling made the MLP and LeNet-5 slower (results/bench.md, section 7), gained nothing within
    train.py on a CPU with AVX512-BF16 but no AMX (Zen 5), sped MobileNetV2's step on the AMX Xeon by
    1.04x for 78 s of compiling (results/cifar10_conv/compile_mobilenetv2_xeon.txt), and is unmeasured on GPUs."""
    return (arch.startswith("resnet") and str(precision).startswith("bf16") and device.type == "cpu"
            and cpu_has("amx_tile") and steps >= COMPILE_MIN_STEPS)


def default_precision(arch: str, accelerator: str = "auto") -> str:
    """The Trainer precision a run gets when --trainer.precision is not given: bf16-mixed for the conv
    nets where bf16 is native (2x faster ResNet-20 steps on an AMX CPU, same accuracy on the short
    checks of results/bench.md), 32-true otherwise (bf16 made the MLP slower: its matmuls are small)."""
    return "bf16-mixed" if convolutional(arch) and bf16_native(accelerator) else "32-true"


def emulated_bf16_note(precision: str, accelerator: str, flag: str) -> str | None:
    """A notice when a checkpoint's bf16 arithmetic is kept (so numbers match the run's) on a device
    that only emulates bf16, e.g. a bf16 run from an AMX CPU or a GPU evaluated on an AVX2-only CPU,
    where it is many times slower than fp32 (results/README.md); None where bf16 is native or unused."""
    if not str(precision).startswith("bf16") or bf16_native(accelerator):
        return None
    return (f"note: this checkpoint was trained in {precision} and keeps that arithmetic here, so its numbers match "
            f"the run's; this device does not do bf16 in hardware and torch emulates it, many times slower than "
            f"fp32 (6.7x for a MobileNetV2 test pass on an AVX2 CPU). For a faster result that can differ slightly "
            f"from the run's, pass {flag}.")


def init_loss_expected(num_classes: int) -> float:
    """Cross-entropy of a uniform guess: what a well-initialised classifier should start near."""
    return math.log(num_classes)


def skip_gpu_probes() -> None:
    """Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, so every torch.cuda.is_available()
    asks NVML again; on a machine without an NVIDIA driver that is a failed dlopen of libnvidia-ml
    (~160 us here), and torch's Adam and AdamW ask on every step (~10% of an MNIST MLP step). Where no
    GPU is visible, CUDA_VISIBLE_DEVICES="" says so once and the check costs ~6 us. It hides nothing:
    it is set only when CUDA already reports no device, and never over the user's own value."""
    if "CUDA_VISIBLE_DEVICES" not in os.environ and not torch.cuda.is_available():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


# glibc's own switches for the same settings: where the user set any, theirs stand.
MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
MMAP_CEILING = 32 * 2**20  # glibc's largest mmap threshold on 64-bit: a block over it is always mapped anew


def largest_block(network: torch.nn.Module, input_shape, batch: int) -> int:
    """Bytes of the largest output of any of the network's layers for a batch of `batch`, counted as fp32 (the
    widest a step's activations and their gradients are): traced by a forward of a CPU copy on one sample."""
    import copy

    network, most = copy.deepcopy(network).cpu().eval(), 0

    def hook(module, inputs, output) -> None:
        nonlocal most
        if isinstance(output, torch.Tensor):
            most = max(most, output.numel())  # (a batch of one)

    hooks = [m.register_forward_hook(hook) for m in network.modules()]
    with torch.no_grad():
        network(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    return 4 * batch * most


def keep_freed_memory(block_bytes: int) -> bool:
    """glibc's malloc serves a block over its mmap threshold (at most 32 MiB) with a fresh mmap and unmaps it on
    free, so a training step whose activations are larger (MobileNetV2's 128x144x32x32 in bf16 is 38 MiB) gets
    new pages every step and faults on each 4 KiB of them: 4-6 million page faults in a 16-step MobileNetV2
    fit, about half of its time in the kernel. Told to map nothing and to keep what is freed (mallopt M_MMAP_MAX 0,
    M_TRIM_THRESHOLD at its maximum), it hands the same pages back: MobileNetV2 trained 1.14x faster over 200
    steps of train.py on the Zen 5 VM and its evaluate.py ran 2.6x faster (results/README.md). The cost is
    memory kept until the process ends, more of it than the mapped blocks took, so only where the largest block
    (`block_bytes`, from largest_block) is over that ceiling: ResNet-20's training blocks (8 MiB at batch 128),
    which glibc's own adaptive threshold keeps, gained nothing. Linux with glibc only, and never over the
    MALLOC_* variables above or GLIBC_TUNABLES; returns whether it applied."""
    if block_bytes <= MMAP_CEILING or not sys.platform.startswith("linux") \
            or any(k in os.environ for k in MALLOC_ENV) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return all([mallopt(m_mmap_max, 0), mallopt(m_trim_threshold, 2**31 - 1)])  # (both called; 1 is success)
