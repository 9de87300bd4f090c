"""The environment doctor: is this machine ready to train the zoo, and if not, what fixes it.

Checks the Python packages the project needs (with versions); the OS, torch's build and the CPU's
name as torch's own report gives them (`python -m torch.utils.collect_env`); the devices (CPU, CUDA
GPUs, Apple MPS; names, memory, torch's thread count) with a tiny forward/backward pass on each; which
datasets are in the data directory and whether they load (each datamodule's own loader and error
messages), and whether W&B would log online or offline. Prints one table, then the fixes. Exit
status 1 when something required is missing or broken (a package, a device that fails its test,
a corrupted dataset; a missing dataset too with --require_data true), else 0.

    python train.py doctor                        # or: python -m zoo.commands.doctor
    python train.py doctor --data_dir /data/zoo --require_data true
"""

import importlib
import os
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

INSTALL_FIX = "reinstall the project in its virtual environment: `pip install -e .` (or `make setup`)."

# (import name, distribution name, what it is needed for: None = required by every run)
PACKAGES = [
    ("torch", "torch", None),
    ("lightning", "lightning", None),
    ("torchmetrics", "torchmetrics", None),
    ("tensorboard", "tensorboard", None),
    ("jsonargparse", "jsonargparse", None),
    ("numpy", "numpy", None),
    ("sklearn", "scikit-learn", None),
    ("matplotlib", "matplotlib", None),
    ("rich", "rich", None),
    ("torchvision", "torchvision", None),  # make_grid draws the sample images of every image run
    ("wandb", "wandb", "--wandb true"),
]


@dataclass
class Row:
    section: str
    name: str
    status: str  # ok, info, warning, FAIL
    detail: str
    fix: str | None = None


def check_packages() -> list[Row]:
    rows = [Row("software", "python", "ok", f"{platform.python_version()} ({sys.executable})")]
    for module, dist, needed_for in PACKAGES:
        try:
            version = getattr(importlib.import_module(module), "__version__", None) or metadata.version(dist)
            rows.append(Row("software", module, "ok", str(version)))
        except Exception as e:  # ImportError, or a broken install failing inside the import
            status = "FAIL" if needed_for is None else "warning"
            why = "" if needed_for is None else f" (only needed for {needed_for})"
            rows.append(Row("software", module, status, f"cannot import: {type(e).__name__}: {e}{why}",
                            f"{module} is missing or broken: {INSTALL_FIX}"))
    return rows


def memory_gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def smoke_test(device: str) -> tuple[bool, str]:
    """A tiny conv net's forward and backward pass on `device`: (passed, what happened)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    try:
        start = time.perf_counter()
        net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).to(device)
        x = torch.randn(8, 1, 8, 8, device=device)
        y = torch.arange(8, device=device) % 3
        F.cross_entropy(net(x), y).backward()
        grads = torch.cat([p.grad.flatten() for p in net.parameters()])
        ok = bool(torch.isfinite(grads).all())  # .item() on the device also waits for it to finish
        ms = (time.perf_counter() - start) * 1000
        return ok, f"forward/backward {'ok' if ok else 'gave non-finite gradients'} ({ms:.0f} ms)"
    except Exception as e:
        return False, f"forward/backward failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def cpu_name(cpu_info: str) -> str:
    """The CPU's model in collect_env's cpu_info: lscpu's "Model name" (Linux), "Name" (Windows) or
    sysctl's one line (macOS); platform's guess when there is none (lscpu not installed)."""
    for line in cpu_info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "Name") and value.strip():
            return value.strip()
    if platform.system() == "Darwin" and cpu_info.strip():
        return cpu_info.strip()
    return platform.processor() or platform.machine()


def check_system(env) -> list[Row]:
    """The OS and torch's build, from `env`: torch's own environment report (collect_env's SystemEnv)."""
    cuda = f"built with CUDA {env.cuda_compiled_version}" if env.cuda_compiled_version else "CPU-only build"
    return [Row("software", "os", "ok", env.os), Row("software", "torch build", "ok", f"{env.torch_version}, {cuda}")]


def check_devices(env) -> list[Row]:
    """CPU, CUDA and MPS devices, each with a smoke test; names and versions from `env` (collect_env)."""
    import torch

    rows = []
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = torch.get_num_threads()
    try:
        ram = f", {memory_gib(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))} RAM"
    except (ValueError, OSError, AttributeError):
        ram = ""
    ok, test = smoke_test("cpu")
    rows.append(Row("devices", "cpu", "ok" if ok else "FAIL",
                    f"{cpu_name(env.cpu_info)}, {usable} usable cores{ram}; {test}",
                    None if ok else "PyTorch cannot compute on the CPU: " + INSTALL_FIX))
    status = "ok" if threads <= usable else "warning"
    rows.append(Row("devices", "threads", status, f"torch uses {threads} threads for {usable} usable cores",
                    None if status == "ok" else (f"set OMP_NUM_THREADS={usable}: more threads than cores "
                                                 "slow training.")))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            ok, test = smoke_test(f"cuda:{i}")
            rows.append(Row("devices", f"cuda:{i}", "ok" if ok else "FAIL",
                            f"{p.name}, {memory_gib(p.total_memory)}, compute capability {p.major}.{p.minor}; {test}",
                            None if ok else f"cuda:{i} is visible but cannot train: check the driver "
                                            f"({env.nvidia_driver_version}) against torch's CUDA "
                                            f"{env.cuda_compiled_version}."))
    else:
        build = (f"torch built with CUDA {env.cuda_compiled_version}" if env.cuda_compiled_version
                 else "CPU-only torch build")
        rows.append(Row("devices", "cuda", "info", f"no CUDA GPU visible ({build})"))
    if torch.backends.mps.is_available():
        ok, test = smoke_test("mps")
        rows.append(Row("devices", "mps", "ok" if ok else "FAIL", f"Apple GPU (Metal); {test}",
                        None if ok else "MPS is visible but cannot train: update macOS and PyTorch."))
    elif platform.system() == "Darwin":
        rows.append(Row("devices", "mps", "info", "Apple GPU (MPS) not available"))
    return rows


def check_data(data_dir: str | None, require: bool) -> list[Row]:
    """Every registered dataset: present in data_dir, and loading with the datamodule's own reader."""
    from datamodules import DATAMODULES
    from zoo.errors import ZooError

    rows, missing = [], "FAIL" if require else "warning"
    root = Path(data_dir or os.environ.get("ZOO_DATA") or "data")
    where = "--data_dir" if data_dir else ("$ZOO_DATA" if os.environ.get("ZOO_DATA") else "default ./data")
    if not root.is_dir():
        rows.append(Row("data", "data_dir", missing, f"{root.resolve()} does not exist ({where})",
                        "create it with `make data` (project developers), or point --data_dir / ZOO_DATA at "
                        "the folder that holds the datasets."))
    else:
        rows.append(Row("data", "data_dir", "ok", f"{root.resolve()} ({where})"))
    for name, cls in DATAMODULES.items():
        if not cls.num_classes:  # its classes come from a folder the user names (image_folder)
            rows.append(Row("data", name, "info", "your own images: checked when you train on their folder"))
            continue
        dm = cls(data_dir=str(root))
        files = dm.files()  # what load() reads from data_dir, as far as the datamodule declares
        absent = [p for p in files if not p.is_file()]
        start = time.perf_counter()
        try:  # reads and validates every file (headers, sizes); a missing file is the datamodule's own error
            train_x, _, test_x, _ = dm.load()
        except Exception as e:  # ZooError from ours; anything at all from a datamodule of your own
            fix = str(e) if isinstance(e, ZooError) else f"{type(e).__name__}: {e}"
            if absent or isinstance(e, FileNotFoundError):
                what = f"missing {len(absent)} of {len(files)} files, e.g. {absent[0]}" if absent else "file missing"
                rows.append(Row("data", name, missing, what, fix))
            else:
                rows.append(Row("data", name, "FAIL", "present but does not load" if files else "does not load", fix))
            continue
        seconds = time.perf_counter() - start
        # Not "generated in memory" without declared files: load() may read them from elsewhere.
        rows.append(Row("data", name, "ok", f"{len(train_x):,} train / {len(test_x):,} test, input "
                                            f"{tuple(train_x.shape[1:])}, loaded in {seconds:.1f} s"
                                            + ("" if files else "; lists no files to download")))
    return rows


def wandb_mode() -> tuple[str, str]:
    """('online' | 'offline' | 'disabled', why), by the rule train.py's W&B logger follows."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled"):
        return mode, f"WANDB_MODE={mode}"
    if os.environ.get("WANDB_API_KEY"):
        return "online", "API key in WANDB_API_KEY"
    try:
        if "api.wandb.ai" in (Path.home() / ".netrc").read_text():
            return "online", "API key in ~/.netrc"
    except OSError:
        pass
    return "offline", "no API key: set WANDB_API_KEY or run `wandb login` to log online"


def check_logging() -> list[Row]:
    mode, why = wandb_mode()
    project = os.environ.get("WANDB_PROJECT", "lightning-zoo")
    detail = {
        "online": f"--wandb true logs online to project {project} ({why}); falls back to offline without network",
        "offline": f"--wandb true logs offline into <run>/wandb, upload later with `wandb sync` ({why})",
        "disabled": f"--wandb true logs nothing ({why})",
    }[mode]
    return [Row("logging", "tensorboard", "ok", "always on: `tensorboard --logdir checkpoints`"),
            Row("logging", "wandb", "info", detail)]


STYLES = {"ok": "green", "info": "cyan", "warning": "yellow", "FAIL": "bold red"}


def render(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="lightning-zoo doctor", title_justify="left", show_lines=False)
    for column in ("", "check", "status", "details"):
        table.add_column(column, overflow="fold")
    section = None
    for row in rows:
        if row.section != section and section is not None:
            table.add_section()
        table.add_row(row.section if row.section != section else "", row.name,
                      f"[{STYLES[row.status]}]{row.status}[/]", row.detail)
        section = row.section
    console.print(table)
    fixes = [row for row in rows if row.fix]
    for row in fixes:
        console.print(f"[{STYLES[row.status]}]{row.status}[/] {row.name}: {row.fix}", soft_wrap=True, highlight=False)
    failed = [row.name for row in rows if row.status == "FAIL"]
    if failed:
        console.print(f"[bold red]Not ready:[/] fix {', '.join(failed)} (above).", soft_wrap=True)
    else:
        console.print("[green]Ready to train.[/]" + (" Warnings above are optional." if fixes else ""), soft_wrap=True)


def main(args: list[str] | None = None) -> int:
    from zoo.errors import command_parser  # here, like jsonargparse (which it imports): doctor checks packages

    parser = command_parser("train.py doctor", __doc__.split("\n")[0])
    parser.add_argument("--data_dir", type=str | None, default=None,
                        help="Data directory to check (default: $ZOO_DATA, else ./data).")
    parser.add_argument("--require_data", type=bool, default=False,
                        help="Fail (exit 1) when a dataset is missing, not just warn.")
    cfg = parser.parse_args(sys.argv[1:] if args is None else args)
    rows = check_packages()
    if any(row.status == "FAIL" and row.name in ("torch", "lightning") for row in rows):
        render(rows)  # devices and data cannot be checked without them
        return 1
    from torch.utils.collect_env import get_env_info  # here: torch imports, checked above

    env = get_env_info()  # what `python -m torch.utils.collect_env` reports: versions, OS, CPU, driver
    rows += check_system(env) + check_devices(env) + check_data(cfg.data_dir, cfg.require_data) + check_logging()
    render(rows)
    return 1 if any(row.status == "FAIL" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
