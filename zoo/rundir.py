"""Run directories: checkpoints/<data>/<model>/<run-id>/, each owned by one run at a time.

A directory holds one run. It is written by a new fit, continued only by a resume of that run, or
shared by the processes of one multi-node job (README: every node passes the same --run_dir; they
recognise each other by the launcher's job id). A lock file names the process training in it, so
two resumes of one run cannot interleave their checkpoints and logs; a lock whose process is gone
(kill -9, a crash) is taken over with a notice.

    run = claim_run_dir(Path("checkpoints/mnist/mlp/job-42"), resuming=False)
    lock = RunLock(run); lock.acquire(); ...; lock.release()
"""

import json
import os
import socket
import sys
import time
from pathlib import Path

from zoo.checkpoint import atomic_write_bytes
from zoo.errors import ZooError

JOB_FILE = ".job"  # the launcher's job id of the job that made the directory
LOCK_FILE = ".lock"  # {"pid", "host", "started"} of the process training in it


def job_id() -> str | None:
    """An id shared by every process of one multi-node launch, None for a plain process.
    torchrun: its rendezvous id and master address (the id alone defaults to 'none');
    SLURM: the job id."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return "torchrun:" + ":".join(os.environ.get(k, "") for k in
                                      ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE"))
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm:{os.environ['SLURM_JOB_ID']}"
    return None


def global_rank() -> int:
    """This process's rank in a multi-process launch (torchrun, SLURM), before Lightning knows it."""
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


NOTES = ("compare-args.json",)  # what `train.py compare` writes into a run directory before its fit


def _holds_a_run(run_dir: Path) -> list[str]:
    """What is already in `run_dir` besides our own markers and compare's notes. A fit writes a dozen
    files (checkpoints, config.yaml, logs, pictures), so it only takes a new or empty directory: a
    folder of other things (a project's results/, a home directory) is never mixed with a run."""
    return sorted(p.name for p in run_dir.iterdir()
                  if p.name not in (JOB_FILE, LOCK_FILE, *NOTES) and not p.name.startswith(".write-test-"))


def claim_run_dir(run_dir: Path, resuming: bool) -> Path:
    """Make `run_dir` this run's directory, or refuse when it holds another run. Allowed: a new or
    empty directory, a resume of the run it holds, or a directory that another process of this same
    multi-node job made and that holds no checkpoint yet (all ranks meet before the first one)."""
    job = job_id()
    if run_dir.is_dir() and not resuming:
        theirs = _read(run_dir / JOB_FILE)
        files = _holds_a_run(run_dir)
        same_job = job is not None and theirs == job
        finished = any(f.endswith(".ckpt") or f == "metrics.json" for f in files)
        if files and not (same_job and not finished):
            listed = f"{', '.join(files[:4])}{', ...' if len(files) > 4 else ''}"
            resume = (f"continue that run with --config {run_dir / 'config.yaml'} --ckpt_path {run_dir}"
                      if any(f.endswith(".ckpt") for f in files) else "pass a new or empty directory")
            raise ZooError(f"--run_dir {run_dir} already holds a run or other files ({listed}); refusing to write a "
                           f"run into it. Start a new run without --run_dir (or with a new directory), or {resume}.")
    elif run_dir.exists() and not run_dir.is_dir():
        raise ZooError(f"--run_dir {run_dir} is a file, not a directory. Pass a directory path.")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if job is not None and not (run_dir / JOB_FILE).exists():
            atomic_write_bytes(run_dir / JOB_FILE, job.encode())  # same bytes from every rank: races are harmless
    except OSError as e:
        raise ZooError(f"Cannot create the run directory {run_dir} ({e.strerror or e}). Choose a writable "
                       f"place with --runs_root DIR or --run_dir DIR.") from None
    return run_dir


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Temporary files of atomic writes cut short by a kill -9 (`.last.ckpt.x1y2.tmp`): garbage once
    this process holds the run's lock, since nobody else writes there."""
    ours = ("last.ckpt", "best.ckpt", "metrics.json", "config.yaml", JOB_FILE)  # what a fit writes atomically
    stale = [p for name in ours for p in run_dir.glob(f".{name}.*.tmp") if p.is_file()]
    stale += [p for p in run_dir.glob(".write-test-*") if p.is_file()]  # check_writable's probe, cut short
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class RunLock:
    """A PID lock file in a run directory: taken before training writes anything, released on exit."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale(me)
                continue
            except OSError as e:
                raise ZooError(f"Cannot create the lock file {self.path} ({e.strerror or e}). The run directory must "
                               f"be writable: free some space or choose another --runs_root.") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise ZooError(f"Could not lock {self.path.parent}: another process keeps taking the lock. Try again.")

    def _take_over_if_stale(self, me: dict) -> None:
        text = _read(self.path)
        try:
            other = json.loads(text)
            pid, host, since = other["pid"], str(other["host"]), str(other.get("started", "?"))[:40]
            if type(pid) is not int or not 0 < pid < 1 << 22:  # Linux's largest pid_max; and never `kill -1`
                raise ValueError(pid)
        except (ValueError, KeyError, TypeError):
            other, pid, host, since = None, None, None, None  # empty or garbled: its writer died while writing
        if other is not None and host != me["host"]:
            raise ZooError(f"The run in {self.path.parent} is locked by process {pid} on host {host[:64]} (since "
                           f"{since}). Two processes must not train one run at once: wait for "
                           f"it to finish, or, if it is no longer running, delete {self.path}.")
        if other is not None and pid != me["pid"] and _alive(pid):
            raise ZooError(f"The run in {self.path.parent} is being trained by process {pid} (since "
                           f"{since}); two processes must not train one run at once. Wait for "
                           f"it to finish or stop it (kill {pid}), then resume with --ckpt_path {self.path.parent}.")
        why = f"process {pid} that held it is no longer running" if other else "its lock file was unreadable or garbled"
        print(f"Taking over the lock of {self.path.parent}: {why}.", file=sys.stderr)
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                info = json.loads(_read(self.path) or "{}")
                if isinstance(info, dict) and info.get("pid") == os.getpid():
                    self.path.unlink(missing_ok=True)
            except (OSError, ValueError):
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return ""
