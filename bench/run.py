"""The benchmark suite: runs the benchmarks and writes results/bench.md (machine, command, tables).

    python bench/run.py                              # all of them, ~25 min on 2 cores; writes results/bench.md
    python bench/run.py --only textbook,overhead     # some of them (names below)
    python bench/run.py --quick --out /tmp/bench.md  # a smoke test of every benchmark (seconds per benchmark)
    python bench/run.py --threads 1                  # one torch thread everywhere: stable on a shared machine

Benchmarks: textbook (1), overhead (2), peak (3), cifar (4), scaling (5), memory (6), options (7),
startup (8), firststep (9).
A quick run writes no file unless --out is given. A benchmark that fails is reported in the file
and the command exits with status 1 after running the others.
"""
import argparse
import importlib
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402

from bench.common import REPO, Section, load, machine, now_utc, table  # noqa: E402
from zoo.module import skip_gpu_probes  # noqa: E402

BENCHMARKS = {  # name -> module with run(quick: bool) -> Section
    "textbook": "bench.textbook",
    "overhead": "bench.overhead",
    "peak": "bench.peak",
    "cifar": "bench.cifar",
    "scaling": "bench.scaling",
    "memory": "bench.memory",
    "options": "bench.options",
    "startup": "bench.startup",
    "firststep": "bench.firststep",
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a few steps of every benchmark: checks they run, measures nothing")
    p.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    p.add_argument("--out", default=None, help="report path (default results/bench.md; none for --quick)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads for every measurement, this process and its subprocesses (OMP_NUM_THREADS); "
                        "default: torch's own choice. 1 keeps timings stable on a machine other jobs share")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    args.names = names
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # subprocesses, and DDP workers, inherit it
        torch.set_num_threads(args.threads)
    # As train.py does: where no GPU is visible, stop torch's per-step GPU probe that Lightning's import makes
    # slow (zoo.module.skip_gpu_probes), for every loop measured here (the bare one too) and every subprocess.
    skip_gpu_probes()
    command = "python bench/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    started, load_before, date, commit = time.perf_counter(), load(), now_utc(), git_commit()
    sections, failed = [], []
    for name in args.names:
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            section = importlib.import_module(BENCHMARKS[name]).run(args.quick)
        except Exception:
            failed.append(name)
            section = Section(f"{name}: FAILED")
            section.text("```\n" + traceback.format_exc()[-4000:] + "\n```")
            traceback.print_exc()
        section.text(f"_{name}: {time.perf_counter() - t0:.0f} s, load average at the end {load():.2f}._")
        sections.append(section)
        print(f"[bench] {name} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    report = render(sections, args, command, f"{date}, commit {commit}", load_before, time.perf_counter() - started)
    out = args.out or (None if args.quick else str(REPO / "results" / "bench.md"))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(report)
        print(f"wrote {out}", file=sys.stderr)
    else:
        print(report)
    return 1 if failed else 0


def git_commit() -> str:
    """The commit measured, marked when the tree had changes beyond it ("unknown" outside a git checkout)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        sha, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
        return (sha + (" + uncommitted changes" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def render(sections: list[Section], args, command: str, date: str, load_before: float, seconds: float) -> str:
    m = machine()
    head = [
        "# Benchmarks" + (" (QUICK SMOKE RUN: a few steps each, the numbers mean nothing)" if args.quick else ""),
        "",
        f"Command: `{command}` (from the repository root). Date: {date}. Suite time: {seconds / 60:.1f} min.",
        "",
        *[f"- {k}: {v}" for k, v in m.items()],
        f"- 1-minute load average: {load_before:.2f} at the start, {load():.2f} at the end "
        f"(on {os.cpu_count()} cores; other processes slow every number below, both sides of each comparison alike).",
        "",
        *([f"Every process measured with {args.threads} torch thread(s) (`--threads {args.threads}`: "
           "OMP_NUM_THREADS for subprocesses and DDP workers too); the thread-count table in section 7 compares "
           "1 and 2.", ""] if args.threads else []),
        "Every comparison is between numbers taken in this one run, alternating the sides where it can; a cell "
        "`a (b-c)` is the median a with the minimum b and maximum c of the repeats.",
        "",
    ]
    goals = [g for s in sections for g in s.goals]
    if goals:
        head += ["## Goals (issues 7 and 18)", "", table(["what", "measured", "goal", "met"], goals), ""]
    return "\n".join(head) + "\n" + "\n".join(s.markdown() for s in sections)


if __name__ == "__main__":
    sys.exit(main())
