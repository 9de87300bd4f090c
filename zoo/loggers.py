"""The loggers of a fit: TensorBoard always, Weights & Biases with --wandb true, and what they record.

Both get what a run really trained with: the model's and the data's hyperparameters (Lightning logs
those at fit start) plus the dataset, max_epochs, precision, seed and number of processes
(RunSettings). After the test of the best checkpoint, `log_final` adds the best validation score
and the test metrics, so runs across datasets and recipes compare in one table: TensorBoard's
HParams tab, W&B's runs table and sweeps.

    python train.py fit --data mnist --wandb true --wandb_project zoo --wandb_group lenet --wandb_tags [mnist]
"""

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

PROJECT = "lightning-zoo"  # the W&B project when neither --wandb_project nor $WANDB_PROJECT names one


def add_arguments(parser) -> None:
    """The --wandb options, added to every train.py subcommand parser."""
    parser.add_argument("--wandb", type=bool, default=False,
                        help="Also log to Weights & Biases: online when an API key is configured and the server "
                             "answers, offline otherwise (upload later with `wandb sync`).")
    parser.add_argument("--wandb_project", type=str | None, default=None,
                        help=f"W&B project (default: $WANDB_PROJECT, else {PROJECT}).")
    parser.add_argument("--wandb_entity", type=str | None, default=None,
                        help="W&B team or user that owns the project (default: $WANDB_ENTITY, else your default).")
    parser.add_argument("--wandb_group", type=str | None, default=None,
                        help="W&B group, to view related runs together (default: $WANDB_RUN_GROUP).")
    parser.add_argument("--wandb_tags", type=list[str] | None, default=None,
                        help="W&B tags, e.g. [baseline,mnist] (default: $WANDB_TAGS, comma-separated).")
    parser.add_argument("--wandb_name", type=str | None, default=None,
                        help="W&B run name (default: the run directory's name, which is also the W&B run id).")
    parser.add_argument("--wandb_log_model", type=bool, default=False,
                        help="After the test, upload best.ckpt as a W&B model artifact (model-<run id>, aliases "
                             "best and latest; offline runs upload it with `wandb sync`).")


def make_loggers(cfg, run_dir: Path) -> list[Logger]:
    """TensorBoard in the run directory; W&B too with --wandb true (cfg: the fit's parsed config)."""
    loggers: list[Logger] = [TensorBoardLogger(save_dir=run_dir, name="", version="", default_hp_metric=False)]
    if cfg.wandb:
        loggers.append(make_wandb_logger(cfg, run_dir))
    return loggers


def make_wandb_logger(cfg, run_dir: Path) -> WandbLogger:
    """W&B online when an API key is configured and the server answers, offline otherwise: never a
    prompt, never a crash. The W&B id is the run directory's name, so a resumed run continues it
    (under a sweep agent, the id the agent chose: $WANDB_RUN_ID)."""
    os.environ.setdefault("WANDB_SILENT", "true")
    has_key = bool(os.environ.get("WANDB_API_KEY")) or "api.wandb.ai" in _read(Path.home() / ".netrc")
    offline = not has_key or os.environ.get("WANDB_MODE") in ("offline", "disabled")
    if not offline and not reachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")):
        print("W&B: the server cannot be reached; logging offline instead.", file=sys.stderr)
        offline = True
    # entity, group and tags left None: wandb.init reads $WANDB_ENTITY, $WANDB_RUN_GROUP, $WANDB_TAGS.
    logger = WandbLogger(offline=offline, project=cfg.wandb_project or os.environ.get("WANDB_PROJECT") or PROJECT,
                         entity=cfg.wandb_entity, group=cfg.wandb_group, tags=cfg.wandb_tags,
                         name=cfg.wandb_name or run_dir.name, id=os.environ.get("WANDB_RUN_ID") or run_dir.name,
                         save_dir=str(run_dir))
    # Lightning 2.6 always passes anonymous=None to wandb.init, and wandb 0.31 warns on every run that
    # the setting has no effect (wandb/wandb#10909): leave it out.
    logger._wandb_init.pop("anonymous", None)
    if offline and not cfg.quiet:
        print(f"W&B: offline run in {run_dir / 'wandb'} (no API key, no network or WANDB_MODE=offline); "
              f"upload it later with `wandb sync {run_dir / 'wandb'}/offline-run-*`.", file=sys.stderr)
    return logger


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the host of `url`? (W&B itself would wait 90 s to find out.)"""
    u = urlparse(url)
    try:
        socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def run_settings(trainer: Trainer, data_name: str) -> dict:
    """What a fit runs with beyond the model's and the data's own hyperparameters."""
    return {"data": data_name, "max_epochs": trainer.max_epochs, "precision": str(trainer.precision),
            "seed": int(os.environ.get("PL_GLOBAL_SEED", "-1")), "devices": trainer.world_size}


class RunSettings(Callback):
    """Logs run_settings at fit start, beside the hyperparameters Lightning logs then (W&B's config,
    TensorBoard's hparams.yaml), so a run that never finishes records them too."""

    def __init__(self, data_name: str) -> None:
        self.data_name = data_name

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(run_settings(trainer, self.data_name))


# metrics.json keys not repeated in W&B's summary: final renames the first three; W&B records the versions itself.
SAID_IN_FINAL = ("best_score", "test_acc", "test_loss", "versions")


def log_final(trainer: Trainer, metrics: dict, model: Path | None = None) -> None:
    """After the test of the best checkpoint (`metrics`: metrics.json): the final metrics beside all
    the run trained with, one row per run in TensorBoard's HParams tab and in W&B's runs table (its
    config and summary); `model` as a W&B model artifact if given; then every logger flushed and closed.

    The final metrics go by the names of the curves: `<monitor>_best` (val/loss_best: metrics.json's
    best_score), test/acc and test/loss (its test_acc and test_loss)."""
    final = {f"{metrics['monitor']}_best": metrics["best_score"], "test/acc": metrics["test_acc"],
             "test/loss": metrics["test_loss"]}
    final = {k: v for k, v in final.items() if v is not None}  # no best score without a validation epoch
    hparams = {**trainer.datamodule.hparams, **trainer.lightning_module.hparams,
               **run_settings(trainer, metrics["data"])}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            # At the test's step, where test/acc and test/loss are already: no second point at step 0.
            logger.log_hyperparams(hparams, final, step=trainer.global_step)
            logger.finalize("success")  # flushed and closed now, not by a writer thread after we return
        elif isinstance(logger, WandbLogger):
            run = logger.experiment
            run.config.update(hparams, allow_val_change=True)  # the lr --lr_find chose, ...
            run.summary.update({**{k: v for k, v in metrics.items() if k not in SAID_IN_FINAL}, **final})
            if model is not None:
                log_model(run, model, final)
            run.finish()  # flush now: in-process callers may start another run


def log_model(run, path: Path, metadata: dict) -> None:
    """`path` as the W&B model artifact model-<run id>, aliases best and latest: the names Lightning's
    WandbLogger(log_model=True) gives, which we cannot use: it refuses offline runs and uploads
    last.ckpt as well."""
    import wandb  # only with --wandb true: it takes seconds to import

    artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=metadata)
    artifact.add_file(str(path), name=path.name)
    run.log_artifact(artifact, aliases=["best", "latest"])
