"""Shared pieces of the benchmark suite: the machine's description, repeat statistics, timed
subprocesses with their peak memory, in-process train.py runs, and the markdown a section is made of.

Every number the suite reports is a median over repeats taken in the same run, printed with its
spread (min-max) and the 1-minute load average beside it: on a shared machine other processes only
ever make a measurement slower, and the load says how much that was happening.
"""
import contextlib
import gc
import io
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `bench.*`, `train`, `zoo`, `datamodules` importable from anywhere

import torch  # noqa: E402

PY = sys.executable
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def data_dir() -> str:
    """The data root the project's commands use: $ZOO_DATA, else ./data (relative to the repo)."""
    return os.environ.get("ZOO_DATA", "data")


def load() -> float:
    """The 1-minute load average (other work on the machine slows every measurement)."""
    return os.getloadavg()[0]


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    cpu, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import lightning
    import torchvision

    try:
        mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")) / 2**20
        memory = f"{mem:.1f} GiB"
    except (OSError, StopIteration):
        memory = "?"
    return {
        "CPU": f"{cpu}, {os.cpu_count()} logical cores, {memory} RAM",
        "CPU flags": ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS),
        "software": (f"torch {torch.__version__}, lightning {lightning.__version__}, torchvision "
                     f"{torchvision.__version__}, Python {platform.python_version()}"),
        "threads": (f"torch.get_num_threads() = {torch.get_num_threads()} "
                    f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); "
                    f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}"),
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def body(doc: str) -> str:
    """A module docstring without its first paragraph (the title): the method text of a section."""
    parts = doc.strip().split("\n\n", 1)
    return parts[1] if len(parts) > 1 else parts[0]


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ---------------------------------------------------------------------------------------------
# Statistics

def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], digits: int = 2, scale: float = 1.0) -> str:
    """'median (min-max)' of repeats; a single value alone."""
    v = [x * scale for x in values]
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{med(v):.{digits}f} ({min(v):.{digits}f}-{max(v):.{digits}f})"


def timeit(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of `repeats` calls of fn after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


@contextlib.contextmanager
def timed_calls(targets: dict[str, tuple[object, str]]):
    """Within the block, every call of each target (a name -> (owner, attribute) of a function or
    method) adds its seconds to the yielded dict under its name; the originals are put back after,
    also when the block fails. Nested targets each count their own time (a caller's includes its callees')."""
    spent = {name: 0.0 for name in targets}
    originals = {name: getattr(owner, attr) for name, (owner, attr) in targets.items()}

    def timed(name, f):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start
        return call

    inherited = {name for name, (owner, attr) in targets.items() if attr not in vars(owner)}  # a base class's method
    for name, (owner, attr) in targets.items():
        setattr(owner, attr, timed(name, originals[name]))
    try:
        yield spent
    finally:
        for name, (owner, attr) in targets.items():
            if name in inherited:
                delattr(owner, attr)
            else:
                setattr(owner, attr, originals[name])


@contextlib.contextmanager
def num_threads(n: int | None):
    """Run a block with torch.set_num_threads(n) (None: leave it), restoring the old count after."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# Processes

@dataclass
class Proc:
    """A finished subprocess: wall seconds, exit status, output, and its peak resident memory."""
    wall: float
    rc: int
    out: str
    err: str
    maxrss_mb: float  # peak resident memory (VmHWM) of the process itself, MiB
    maxanon_mb: float  # peak of its anonymous resident memory (RssAnon, polled): heap, tensors; no mapped files


def run_process(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> Proc:
    """Run `cmd` in the repository root; wall time from just before the start to its exit.

    Peak memory is the child's VmHWM, read from /proc while it runs: wait4's ru_maxrss would also
    count the RSS of this (large) process, which the child inherits at fork."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, env={**os.environ, **(env or {})})
        hwm_kb, anon_kb, delay = 0, 0, 0.001
        while p.poll() is None:
            hwm, anon = _status_kb(p.pid, "VmHWM:", "RssAnon:")
            hwm_kb, anon_kb = max(hwm_kb, hwm), max(anon_kb, anon)
            if time.perf_counter() - start > timeout:
                p.kill()
            time.sleep(delay)
            delay = min(0.01, delay * 2)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        return Proc(wall, p.returncode, out.read(), err.read(), hwm_kb / 1024, anon_kb / 1024)


def run_processes(cmds: list[list[str]], parallel: bool) -> list[Proc]:
    """Run several commands, one after another (for measurements) or all at once (smoke tests)."""
    if not parallel:
        return [run_process(c) for c in cmds]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(cmds)) as pool:
        return list(pool.map(run_process, cmds))


def _status_kb(pid: int, *keys: str) -> list[int]:
    """Fields of /proc/<pid>/status in kB (0 where absent or the process is gone)."""
    found = dict.fromkeys(keys, 0)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0] + ":"
                if key in found:
                    found[key] = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return list(found.values())


def tmpdir() -> tempfile.TemporaryDirectory:
    """A temporary runs_root. Loggers may still close files in it while it is removed: ignore that."""
    return tempfile.TemporaryDirectory(prefix="bench-", ignore_cleanup_errors=True)


def check(proc: Proc, what: str) -> Proc:
    if proc.rc != 0:
        raise RuntimeError(f"{what} failed with exit status {proc.rc}:\n{proc.err[-3000:]}")
    return proc


def read_metrics(runs_root: Path) -> tuple[dict, Path]:
    """metrics.json (and its run directory) of the only run under runs_root."""
    paths = list(Path(runs_root).glob("*/*/*/metrics.json"))
    if len(paths) != 1:
        raise RuntimeError(f"expected one metrics.json under {runs_root}, found {len(paths)}")
    return json.loads(paths[0].read_text()), paths[0].parent


def run_cli(args: list[str], runs_root: str | Path, *, rich_tty: bool = False):
    """`train.py <args>` in this process (cli.cli_main), its printing swallowed; returns the CLI
    object (cli.trainer, cli.model, cli.datamodule). rich_tty=True makes Rich believe it writes to an
    interactive terminal, so the progress bar renders and refreshes as a user would see it."""
    from zoo import cli

    gc.collect()  # the previous runs' trainers, models and datasets (reference cycles), before timing a new one
    sink = io.StringIO()
    env = ({"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "TERM": "xterm-256color", "COLUMNS": "120"}
           if rich_tty else {})
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # its info lines go to the terminal's stderr, not to sys.stderr
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            return cli.cli_main([*args, "--runs_root", str(runs_root)])
    except BaseException:
        sys.stderr.write(sink.getvalue()[-3000:])
        raise
    finally:
        lightning_log.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def timed_lecture_fit(targets: dict[str, tuple[object, str]], epochs: int = 4) -> tuple[dict[str, float], dict]:
    """The lecture's Fashion-MNIST MLP, `train.py fit` in this process with the defaults and --quiet, its
    printing swallowed, under timed_calls(targets): the seconds per target and the run's metrics.json."""
    import train

    with timed_calls(targets) as spent, tmpdir() as root, contextlib.redirect_stdout(io.StringIO()):
        assert train.main(["fit", "--data", "fashion_mnist", "--data.data_dir", data_dir(), "--model.arch", "mlp",
                           "--trainer.max_epochs", str(epochs), "--quiet", "true", "--runs_root", root]) == 0
        return spent, read_metrics(Path(root))[0]


def callback(trainer, name: str):
    """The trainer's callback of class `name`."""
    return next(c for c in trainer.callbacks if type(c).__name__ == name)


# ---------------------------------------------------------------------------------------------
# Report

@dataclass
class Section:
    """One benchmark's part of results/bench.md: markdown blocks in order, plus its goal rows for
    the summary at the top of the report."""
    title: str
    blocks: list[str] = field(default_factory=list)
    goals: list[tuple[str, str, str, str]] = field(default_factory=list)  # what, measured, goal, met

    def text(self, s: str) -> None:
        self.blocks.append(s.strip())

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.blocks.append(table(header, rows))

    def goal(self, what: str, measured: str, goal: str, met: bool | None) -> None:
        self.goals.append((what, measured, goal, "n/a" if met is None else ("yes" if met else "**no**")))

    def markdown(self) -> str:
        return f"## {self.title}\n\n" + "\n\n".join(self.blocks) + "\n"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; numbers right-aligned."""
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    numeric = re.compile(r"[+-]?\d+(\.\d+)?[x%KMG]?(\s*\(|$)")  # 1.2 (1.1-1.3), +5%, 2.00x, 41M: right-aligned
    align = ["---:" if rows and numeric.match(str(rows[0][i])) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
