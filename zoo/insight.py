"""Seeing into training: the lecture's debugging recipe as Lightning callbacks, one flag each.

Before the first step of a fresh run: the loss on one real training batch against ln(C), the loss
of a uniform guess (--sanity, on by default), optionally the number of Adam steps a copy of the
model needs to memorise that batch (--overfit_batch), and Lightning's learning-rate range test
(--lr_find, plot in lr_find.png). During training: the first training batch after augmentation,
labelled; weight and gradient histograms every N epochs (--histograms N); the model graph
(--log_graph). After train.py tests the best checkpoint: the confusion matrix with per-class
accuracy (confusion_matrix.png), the decision boundary on two-moons (decision_boundary.png) and a
projector embedding of test features (--embedding). Pictures go to TensorBoard and, with
--wandb true, to W&B as media, where the confusion matrix is also W&B's interactive chart and the
per-class accuracy a table. evaluate.py and `train.py compare` draw their confusion matrices and
decision boundaries with the same two functions. Nothing here draws from the global RNG or changes
the weights.

    python train.py fit --data mnist --model.arch lenet5 --overfit_batch true --histograms 1
"""

import contextlib
import copy
import io
import math
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeInt
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateFinder
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor, nn

from datamodules.tensor import TensorLoader
from zoo.checkpoint import atomic_write_bytes

INIT_LOSS_TOLERANCE = 0.25  # relative to ln(C) ...
INIT_LOSS_MIN_TOLERANCE = 0.5  # ... but at least this many nats: a linear model on moons starts at 0.65-1.1
OVERFIT_STEPS, OVERFIT_LR = 500, 3e-3
EMBEDDING_SAMPLES = 1000


def add_arguments(parser) -> None:
    """Options of the insight callbacks, added to every train.py subcommand parser."""
    parser.add_argument("--sanity", type=bool, default=True,
                        help="Before training, compare the loss on one real batch with ln(num_classes) and warn "
                             "when it is far off.")
    parser.add_argument("--overfit_batch", type=bool, default=False,
                        help=f"Before training, report how many Adam steps (at most {OVERFIT_STEPS}) a copy of the "
                             f"model needs to classify every example of one batch right; the real model is untouched.")
    parser.add_argument("--lr_find", type=bool, default=False,
                        help="Run Lightning's learning-rate range test before training, train with its suggestion "
                             "and save the plot as lr_find.png in the run directory.")
    parser.add_argument("--histograms", type=NonNegativeInt, default=0,
                        help="Log weight and gradient histograms to TensorBoard every N epochs (0: off).")
    parser.add_argument("--log_graph", type=bool, default=False, help="Log the model graph to TensorBoard.")
    parser.add_argument("--embedding", type=bool, default=False,
                        help=f"Image datasets: log penultimate-layer features of {EMBEDDING_SAMPLES} test images "
                             f"to TensorBoard's projector, with labels and thumbnails.")


def callbacks(cfg, run_dir: Path) -> list[Callback]:
    """The insight callbacks a fit asked for (cfg: the subcommand's parsed config)."""
    out: list[Callback] = []
    if cfg.lr_find:
        out.append(LRFinder(run_dir, quiet=cfg.quiet))
    if cfg.sanity or cfg.overfit_batch:
        out.append(SanityCheck(init_loss=cfg.sanity, overfit_batch=cfg.overfit_batch, quiet=cfg.quiet))
    out.append(TrainingPictures(log_graph=cfg.log_graph))
    if cfg.histograms:  # only then: a callback that listens to every optimizer step costs each step
        out.append(Histograms(every=cfg.histograms))
    out.append(TestPictures(run_dir, embedding=cfg.embedding))
    return out


# ---------------------------------------------------------------------------------------------
# Checks before training

def init_loss_check(model: nn.Module, x: Tensor, y: Tensor, num_classes: int) -> tuple[float, str | None]:
    """The loss of `model` on (x, y) as the first training step sees it, and a warning when it is
    far from ln(num_classes). The forward runs in training mode (BatchNorm in eval mode at
    initialisation has no statistics yet and can blow up a deep ResNet's logits), without
    gradients, with the global RNG and BatchNorm's running statistics put back afterwards."""
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    try:
        with isolate_rng(), torch.no_grad():
            loss = F.cross_entropy(model.train()(x), y).item()
    finally:
        for m, training in modes.items():
            m.train(training)
        state = dict(model.named_buffers())
        for name, b in buffers.items():
            state[name].copy_(b)
    expected = math.log(num_classes)
    tolerance = max(INIT_LOSS_TOLERANCE * expected, INIT_LOSS_MIN_TOLERANCE)
    if not math.isfinite(loss) or loss > expected + tolerance:
        return loss, (f"initial loss {loss:.3g} is far above ln({num_classes}) = {expected:.3f}, the loss of a uniform "
                      f"guess: the network starts confidently wrong. Suspect the initialisation (final-layer "
                      f"weights too large), logits scaled up, unnormalised inputs, or labels that do not match.")
    if loss < expected - tolerance:
        return loss, (f"initial loss {loss:.3g} is far below ln({num_classes}) = {expected:.3f}, before any training: "
                      f"the labels may leak into the inputs, or the model is not freshly initialised.")
    return loss, None


def overfit_one_batch(model: nn.Module, x: Tensor, y: Tensor, max_steps: int = OVERFIT_STEPS,
                      lr: float = OVERFIT_LR) -> tuple[int | None, float, float]:
    """Train a copy of `model` with Adam on the batch (x, y) alone until it classifies every example
    right. Returns (steps needed or None, last accuracy, last loss); `model` itself is untouched."""
    net = copy.deepcopy(model).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    acc = loss = float("nan")
    with isolate_rng(), torch.enable_grad():
        for step in range(1, max_steps + 1):
            logits = net(x)
            loss_t = F.cross_entropy(logits, y)
            acc, loss = (logits.argmax(1) == y).float().mean().item(), loss_t.item()
            if acc == 1.0:
                return step - 1, acc, loss  # right on every example before this step's update
            opt.zero_grad(set_to_none=True)
            loss_t.backward()
            opt.step()
    return None, acc, loss


class SanityCheck(Callback):
    """Runs the init-loss check (and optionally the overfit test) on the first training batch of a
    fresh run, just before the first step; resumed runs skip it."""

    def __init__(self, init_loss: bool = True, overfit_batch: bool = False, quiet: bool = False) -> None:
        self.init_loss, self.overfit_batch, self.quiet = init_loss, overfit_batch, quiet
        self.loss: float | None = None  # results, for callers and tests
        self.warning: str | None = None
        self.overfit: tuple[int | None, float, float] | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step > 0 or trainer.datamodule is None:
            return
        x, y = first_batch(trainer, pl_module.device)
        x = trainer.datamodule.on_after_batch_transfer((x, y), 0)[0]
        precision = trainer.precision_plugin  # the dtype and autocast training runs with
        x = precision.convert_input(x)
        with precision.forward_context():
            if self.init_loss:
                self.check_init_loss(pl_module, x, y, trainer.datamodule.num_classes)
            if self.overfit_batch and trainer.is_global_zero:  # one rank is enough: it trains a copy
                self.overfit = overfit_one_batch(pl_module.model, x, y)
        if self.overfit is not None:
            self.report_overfit(len(y))

    def report_overfit(self, n: int) -> None:
        steps, acc, loss = self.overfit
        if steps is not None:
            say(f"overfit one batch: 100% of {n} examples after {steps} Adam steps (lr {OVERFIT_LR:g}, "
                f"loss {loss:.3g}): the model and labels can be learned.")
        else:
            say(f"warning: overfit one batch: {acc:.1%} of {n} examples after {OVERFIT_STEPS} Adam steps "
                f"(loss {loss:.3g}), not 100%: too little capacity, a bug in the model, or inputs and labels "
                f"that do not match.", err=True)

    def check_init_loss(self, pl_module: LightningModule, x: Tensor, y: Tensor, num_classes: int) -> None:
        self.loss, self.warning = init_loss_check(pl_module, x, y, num_classes)
        if self.warning:
            say(f"warning: {self.warning}", err=True)
        elif not self.quiet:
            say(f"sanity check: initial loss {self.loss:.3f}, close to ln({num_classes}) = "
                f"{math.log(num_classes):.3f} (ok).")


@rank_zero_only
def say(message: str, err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


def first_batch(trainer: Trainer, device: torch.device) -> tuple[Tensor, Tensor]:
    """The first training batch of the current epoch as the loader yields it (augmented, uint8 for
    images), on `device`. The loader seeds its own generator per epoch, so reading it here does
    not shift the batches training will see."""
    loader = trainer.datamodule.train_dataloader()
    batch = loader.first() if isinstance(loader, TensorLoader) else next(iter(loader))
    x, y = batch[0] if isinstance(batch, list) else batch  # a chunk (--steps_per_execution): its first
    return x.to(device), y.to(device)


class LRFinder(LearningRateFinder):
    """Lightning's learning-rate range test at fit start: 100 steps from 1e-8 to 1 on copies of the
    weights, then training starts afresh with the suggested rate. The plot is saved as lr_find.png
    and the rate kept in the checkpoint: a resumed run does not search again."""

    def __init__(self, run_dir: Path, quiet: bool = False) -> None:
        super().__init__(update_attr=False)  # we set the rate ourselves: see suggest_lr
        self.run_dir, self.quiet = Path(run_dir), quiet
        self.lr: float | None = None

    def state_dict(self) -> dict:
        return {"lr": self.lr}

    def load_state_dict(self, state_dict: dict) -> None:
        self.lr = state_dict.get("lr")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path:  # resumed; the optimizer state in the checkpoint holds the lr already
            if self.lr is not None:
                pl_module.hparams.lr = self.lr  # so checkpoints and logs keep saying which lr trains
            return
        configured = pl_module.hparams.lr
        # The search takes 100 steps; let it cross epoch boundaries whatever max_epochs says.
        max_epochs, trainer.fit_loop.max_epochs = trainer.fit_loop.max_epochs, -1
        try:
            with contextlib.redirect_stderr(io.StringIO()) if self.quiet else contextlib.nullcontext():
                self.lr_find(trainer, pl_module)  # quiet: hide Lightning's tqdm bar for the search
        finally:
            trainer.fit_loop.max_epochs = max_epochs
        if self.optimal_lr is None:  # fast_dev_run: Lightning skips the search
            return
        lrs, losses = self.optimal_lr.results["lr"], self.optimal_lr.results["loss"]
        best = suggest_lr(lrs, losses)
        self.lr = None if best is None else lrs[best]
        fig = new_figure(6, 4)
        ax = fig.add_subplot()
        ax.plot(lrs, losses)
        ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)")
        if best is not None:
            ax.plot(lrs[best], losses[best], marker="o", markersize=10, color="red")
        ax.set_title(f"LR range test: suggestion {self.lr:.3g} (steepest descent)" if self.lr else
                     "LR range test: no suggestion")
        fig.tight_layout()
        if trainer.is_global_zero:
            log_picture(trainer, "lr_find", fig, self.run_dir / "lr_find.png")
        if self.lr is None:
            say(f"warning: the learning-rate finder could not suggest a rate (the loss diverged too early?); "
                f"training with lr {configured:g}. Plot: {self.run_dir / 'lr_find.png'}", err=True)
            return
        pl_module.hparams.lr = self.lr
        # configure_optimizers again, so every schedule (OneCycle's max_lr too) is built on the new rate.
        trainer.strategy.setup_optimizers(trainer)
        if trainer.is_global_zero:
            record_lr(self.run_dir / "config.yaml", self.lr)
        if not self.quiet:
            say(f"lr finder: suggested lr {self.lr:.3g} (configured {configured:g}); training with it. "
                f"Plot: {self.run_dir / 'lr_find.png'}")


def record_lr(config: Path, lr: float) -> None:
    """Write the rate the finder chose into the run's config.yaml (saved before the search ran), so
    the resolved config, the hyperparameters and a resume all say which rate trains."""
    if not config.is_file():
        return
    text = config.read_text()
    new = re.sub(r"(?m)^(model:\n(?:  .*\n)*?  lr: ).*$", lambda m: m.group(1) + repr(float(lr)), text, count=1)
    if new != text:
        atomic_write_bytes(config, new.encode())


def suggest_lr(lrs: list[float], losses: list[float], skip_begin: int = 10, skip_end: int = 1) -> int | None:
    """Index of the steepest descent of the loss against log(lr), Lightning's rule without its bug:
    Lightning 2.6 differentiates against lr itself, which on log-spaced rates picks the flat start of
    the curve (Lightning-AI/pytorch-lightning#21141). None when too few finite points."""
    idx = torch.arange(len(losses))[skip_begin:-skip_end]
    idx = idx[torch.isfinite(torch.tensor(losses)[idx])]
    if len(idx) < 3:
        return None
    slope = torch.gradient(torch.tensor(losses)[idx], spacing=[torch.tensor(lrs)[idx].log10()])[0]
    return int(idx[slope.argmin()])


# ---------------------------------------------------------------------------------------------
# Pictures: figures rendered once, saved as PNG and/or logged to TensorBoard and W&B

def new_figure(width: float, height: float):
    """A matplotlib Figure with an Agg canvas: no pyplot, no global backend, nothing to close."""
    # matplotlib is imported when a picture is drawn, not with the module: a second of start-up
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def figure_rgb(fig) -> np.ndarray:
    """The rendered figure as an (H, W, 3) uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def log_picture(trainer: Trainer, tag: str, picture, png: Path | None = None) -> None:
    """Log a matplotlib figure or an (H, W, 3) uint8 array to every TensorBoard and W&B logger; save
    the figure as `png` too, if given."""
    image = picture if isinstance(picture, np.ndarray) else figure_rgb(picture)
    if png is not None:
        picture.savefig(png)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, trainer.global_step, dataformats="HWC")
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[image], step=trainer.global_step)
    return image


def tensorboard(trainer: Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def samples_picture(x: Tensor, y: Tensor, class_names: list[str], cols: int = 8) -> np.ndarray:
    """Training images (uint8, as the model receives them before normalisation) with their labels, as
    an (H, W, 3) uint8 array. Drawn with PIL, not matplotlib: it is drawn inside the timed fit, and
    matplotlib's text layout took ~0.1 s for 32 labels, PIL's ~0.01 s (bench/hotpath.py)."""
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.utils import make_grid  # here: a second to import, and only image runs draw samples

    x, y = x[: 4 * cols].cpu(), y[: 4 * cols].cpu()
    h, w = x.shape[2:]
    scale = max(1, round(96 / max(h, w)))  # tiles of about 96 pixels, pixels kept sharp (nearest)
    grid = make_grid(x, nrow=cols, padding=2).permute(1, 2, 0).numpy()  # (H, W, 3): grey images become RGB
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    top = 18  # the title's strip
    image = Image.new("RGB", (grid.shape[1], grid.shape[0] + top), "white")
    image.paste(Image.fromarray(grid), (0, top))
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=11)
    draw.text((grid.shape[1] // 2, top // 2), "first training batch after augmentation, with labels",
              fill="black", font=font, anchor="mm")
    for i, label in enumerate(y.tolist()):  # each label in a black box at its image's top left corner
        r, c = divmod(i, cols)
        left, upper = (c * (w + 2) + 2) * scale + 1, (r * (h + 2) + 2) * scale + 1 + top
        box = draw.textbbox((left + 2, upper + 1), class_names[label], font=font)
        draw.rectangle((left, upper, box[2] + 2, box[3] + 2), fill="black")
        draw.text((left + 2, upper + 1), class_names[label], fill="yellow", font=font)
    return np.asarray(image)


def confusion_figure(cm: Tensor, class_names: list[str], title: str):
    """Row-normalised confusion matrix (rows: true class) with counts, per-class accuracy on the rows."""
    cm = cm.double().cpu()
    frac = cm / cm.sum(1, keepdim=True).clamp(min=1)
    k = len(class_names)
    fig = new_figure(2.5 + 0.55 * k, 1.4 + 0.5 * k)
    ax = fig.add_subplot()
    ax.imshow(frac.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), [f"{name} ({frac[i, i]:.0%})" for i, name in enumerate(class_names)])
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true class (per-class accuracy)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


@torch.no_grad()
def decision_boundary_png(model: nn.Module, datamodule, path: str | Path, detail: str = "") -> np.ndarray:
    """Plot the classes `model` predicts over the plane of a 2-feature dataset (two-moons), with the
    training and test points on top and the test accuracy in the title, after "<arch> on <data>" and
    `detail` (e.g. " (best checkpoint, seed 0)"); save it as a PNG at `path` and return it as an RGB
    array. Fit's TestPictures and compare's per-model plots both draw this one picture. `datamodule`
    must be set up (it gives the points, class names and normalisation)."""
    dm = datamodule
    param = next(model.parameters())
    device, dtype = param.device, param.dtype  # bf16-true / 16-true runs hold half-precision weights
    modes = {m: m.training for m in model.modules()}
    model.eval()
    points = torch.cat([dm.train_x, dm.test_x]).float().cpu()
    lo, hi = points.min(0).values - 0.5, points.max(0).values + 0.5
    n = 200
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], n), torch.linspace(lo[1], hi[1], n), indexing="xy")
    grid = torch.stack([gx.flatten(), gy.flatten()], 1)  # (n*n, 2)
    probs = torch.cat([model(dm.normalize(chunk.to(device)).to(dtype)).float().softmax(1).cpu()
                       for chunk in grid.split(10_000)])
    test_pred = model(dm.normalize(dm.test_x.float().to(device)).to(dtype)).argmax(1).cpu()
    for m, training in modes.items():
        m.train(training)
    test_acc = (test_pred == dm.test_y.cpu()).float().mean().item()

    fig = new_figure(6, 5)
    ax = fig.add_subplot()
    k = probs.shape[1]
    if k == 2:  # the probability of class 1 shows how confident the boundary is
        surface = ax.contourf(gx.numpy(), gy.numpy(), probs[:, 1].view(n, n).numpy(), levels=np.linspace(0, 1, 21),
                              cmap="RdBu_r", alpha=0.8)  # fixed levels: the colour bar always spans 0..1
        ax.contour(gx.numpy(), gy.numpy(), probs[:, 1].view(n, n).numpy(), levels=[0.5], colors="k", linewidths=1)
        fig.colorbar(surface, ax=ax, label=f"P(class {dm.class_names[1]})")
    else:
        ax.contourf(gx.numpy(), gy.numpy(), probs.argmax(1).view(n, n).numpy(), levels=k, cmap="tab10", alpha=0.5)
    for xs, ys, marker, size, label in ((dm.train_x, dm.train_y, "o", 18, "train"),
                                        (dm.test_x, dm.test_y, "^", 28, "test")):
        xs, ys = xs.cpu(), ys.cpu()
        ax.scatter(xs[:, 0], xs[:, 1], c=ys, cmap="RdBu_r" if k == 2 else "tab10", marker=marker, s=size,
                   edgecolors="k", linewidths=0.5, label=label, vmin=0, vmax=k - 1)
    ax.legend(loc="upper right", fontsize=8)
    arch = getattr(getattr(model, "hparams", None), "arch", type(model).__name__)
    ax.set_title(f"{arch} on {dm.name}{detail}: decision boundary, test acc {test_acc:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return figure_rgb(fig)


def log_wandb_confusion(logger: WandbLogger, cm: Tensor, class_names: list[str], title: str, step: int) -> None:
    """W&B's interactive confusion matrix (test/confusion_matrix_chart) and per-class accuracy as a
    table (test/acc_per_class), beside the picture, from the (true, predicted) counts `cm`."""
    import wandb  # only with --wandb true: it takes seconds to import

    k = len(class_names)
    pairs = torch.arange(k * k).repeat_interleave(cm.flatten())  # true * k + predicted, once per test example
    chart = wandb.plot.confusion_matrix(y_true=(pairs // k).tolist(), preds=(pairs % k).tolist(),
                                        class_names=class_names, title=title)
    total = cm.sum(1)
    rows = [[name, int(cm[i, i]), int(total[i]), cm[i, i].item() / max(1, total[i].item())]
            for i, name in enumerate(class_names)]
    table = wandb.Table(columns=["class", "correct", "examples", "accuracy"], data=rows)
    logger.log_metrics({"test/confusion_matrix_chart": chart, "test/acc_per_class": table}, step)


def safe_tag(name: str) -> str:
    """A class name usable as a metric name ('T-shirt/top' -> 'T-shirt_top')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ---------------------------------------------------------------------------------------------

class TrainingPictures(Callback):
    """Sample images and the graph when a fresh run starts."""

    def __init__(self, log_graph: bool = False) -> None:
        self.log_graph = log_graph

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = trainer.datamodule
        if trainer.global_step > 0 or dm is None or not trainer.is_global_zero or not trainer.loggers:
            return
        x, y = first_batch(trainer, pl_module.device)
        if len(dm.input_shape) == 3:
            log_picture(trainer, "samples/train", samples_picture(x, y, dm.class_names))
        tb = tensorboard(trainer)
        if self.log_graph and tb is not None:
            example = trainer.precision_plugin.convert_input(dm.on_after_batch_transfer(x[:1], 0))
            modes = {m: m.training for m in pl_module.model.modules()}
            try:
                with warnings.catch_warnings():  # TensorBoard's add_graph still traces with torch.jit
                    warnings.filterwarnings("ignore", ".*torch.jit.trace.*is deprecated", FutureWarning)
                    tb.experiment.add_graph(pl_module.model.eval(), example)  # eval mode: no BatchNorm update
            finally:
                for m, training in modes.items():
                    m.train(training)


class Histograms(Callback):
    """TensorBoard histograms of the weights and gradients every `every` epochs (--histograms)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        # The epoch's last step, before its update: later, validation sets the gradients to None.
        tb = tensorboard(trainer)
        last = getattr(pl_module, "last_step_in_epoch", False)  # set by ZooModule before each step
        if not last or (trainer.current_epoch + 1) % self.every or tb is None or not trainer.is_global_zero:
            return
        for name, p in pl_module.model.named_parameters():
            for tag, values in ((f"weights/{name}", p.detach()), (f"grads/{name}", p.grad)):
                # Finite values only: TensorBoard raises on a tensor with none (a diverged step, which the
                # NaN stop then reports; an overflowed 16-mixed step, which the gradient scaler skips).
                values = values[torch.isfinite(values)] if values is not None else None
                if values is not None and values.numel():
                    tb.experiment.add_histogram(tag, values, trainer.global_step)


class TestPictures(Callback):
    """When train.py tests the best checkpoint after fit: the confusion matrix with per-class
    accuracy (logged as test/acc_class/<name> too), the decision boundary for 2-feature data and,
    optionally, the projector embedding. The test step's logits are caught with a forward hook,
    so the test set is not run twice."""

    def __init__(self, run_dir: Path, embedding: bool = False) -> None:
        self.run_dir, self.embedding = Path(run_dir), embedding
        self.confusion: Tensor | None = None  # (true, predicted) counts of the last test
        self._hook = self._logits = None

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.confusion = None
        if trainer.datamodule is None:  # tested on bare dataloaders: no class names to show
            return
        k = trainer.datamodule.num_classes
        self.confusion = torch.zeros(k, k, dtype=torch.long, device=pl_module.device)
        self._hook = pl_module.register_forward_hook(self._keep_logits)

    def _keep_logits(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        self._logits = output

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        if self.confusion is None:
            return
        y = batch[1]
        k = self.confusion.shape[0]
        self.confusion += torch.bincount(y * k + self._logits.argmax(1), minlength=k * k).view(k, k)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.confusion is None:
            return
        self._hook.remove()
        # Each DDP process tested a shard: the sum over processes counts the whole test set (an
        # all-reduce: Lightning's all_gather goes through a deprecated torch function).
        self.confusion = trainer.strategy.reduce(self.confusion, reduce_op="sum").cpu()
        dm = trainer.datamodule
        per_class = self.confusion.diag() / self.confusion.sum(1).clamp(min=1)
        per_class = {f"test/acc_class/{safe_tag(name)}": acc for name, acc in zip(dm.class_names, per_class.tolist())}
        # sync_dist: the numbers are the same in every process; without it Lightning warns that they are not synced.
        pl_module.log_dict(per_class, sync_dist=True)
        if trainer.is_global_zero:
            acc = self.confusion.diag().sum().item() / max(1, self.confusion.sum().item())
            title = f"{pl_module.hparams.get('arch', '')} on {dm.name}: test acc {acc:.4f}"
            log_picture(trainer, "test/confusion_matrix", confusion_figure(self.confusion, dm.class_names, title),
                        self.run_dir / "confusion_matrix.png")
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    log_wandb_confusion(logger, self.confusion, dm.class_names, title, trainer.global_step)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = trainer.datamodule
        if dm is None or not trainer.is_global_zero:
            return
        if tuple(dm.input_shape) == (2,):
            image = decision_boundary_png(pl_module, dm, self.run_dir / "decision_boundary.png")
            log_picture(trainer, "test/decision_boundary", image)
        tb = tensorboard(trainer)
        if self.embedding and len(dm.input_shape) == 3 and tb is not None:
            x, y = dm.test_x[:EMBEDDING_SAMPLES], dm.test_y[:EMBEDDING_SAMPLES].cpu()
            tb.experiment.add_embedding(penultimate_features(pl_module, dm, x),
                                        metadata=[dm.class_names[i] for i in y.tolist()],
                                        label_img=x.float().cpu() / 255, global_step=trainer.global_step,
                                        tag="test_features")


@torch.no_grad()
def penultimate_features(pl_module: LightningModule, dm, x: Tensor) -> Tensor:
    """What the last nn.Linear (the classifier) receives, for uint8 images x (N, C, H, W)."""
    last = [m for m in pl_module.model.modules() if isinstance(m, nn.Linear)][-1]
    caught: list[Tensor] = []
    hook = last.register_forward_pre_hook(lambda module, inputs: caught.append(inputs[0].flatten(1).float().cpu()))
    dtype = last.weight.dtype  # bf16-true / 16-true runs hold half-precision weights
    try:
        for chunk in x.split(250):
            pl_module(dm.normalize(chunk.to(pl_module.device)).to(dtype))
    finally:
        hook.remove()
    return torch.cat(caught)  # (N, features)
