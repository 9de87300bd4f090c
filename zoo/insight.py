"""Seeing into training: the lecture's debugging recipe as callbacks and flags (work in progress)."""

from pathlib import Path


def add_arguments(parser) -> None:
    """Options of the insight callbacks, added to every train.py subcommand parser."""


def callbacks(cfg, run_dir: Path) -> list:
    """The insight callbacks a fit asked for (cfg: the subcommand's parsed config)."""
    return []
