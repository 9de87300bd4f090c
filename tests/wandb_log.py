"""Read a W&B offline run (`run-<id>.wandb`) with wandb's own reader, so tests check what W&B would
upload: `wandb leet inspect --json [--summary] FILE`, the transaction-log inspector of wandb 0.31.

The CLI only resolves the paths and hands over to the wandb-core binary; we call that binary the
same way directly, which saves the CLI's two seconds of imports per read."""
import json
import subprocess
from pathlib import Path

from wandb.util import get_core_path


def inspect(path: Path, *flags: str) -> str:
    """What `wandb leet inspect FLAGS PATH` prints (see `wandb leet inspect --help`)."""
    path = Path(path).resolve()
    cmd = [get_core_path(), "leet", "inspect", "--no-observability", *flags, "--run-file", str(path),
           str(path.parent.parent)]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout


def records(path: Path) -> list[dict]:
    """Every record of the log in order, as JSON: {"type": "history", "history": {...}}, ..."""
    return [json.loads(line) for line in inspect(path, "--json").splitlines()]


def run(path: Path) -> dict:
    """The run's final state: config, summary, project, name, tags, state, exit code, console tail."""
    return json.loads(inspect(path, "--summary", "--json"))


def summary(path: Path) -> tuple[dict, dict, list[dict]]:
    """(config, final summary, history rows) of an offline run, as W&B stores them. Nested values
    are dicts in the summary; history rows name their parts with dots (`test/confusion_matrix._type`)."""
    state = run(path)
    history = [r["history"]["item"] for r in records(path) if r["type"] == "history"]
    return state["config"], state["summary"], history
