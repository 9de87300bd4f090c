"""Shared test fixtures: where the real datasets live, and how tests that need them behave when
they are absent (skip on a laptop, fail in CI, where missing data is a setup bug)."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """$ZOO_DATA if set, else <repo>/data (made by `make data`)."""
    return Path(os.environ.get("ZOO_DATA", REPO / "data"))


@pytest.fixture(scope="session")
def tiny_moons_run(tmp_path_factory) -> Path:
    """A 3-epoch MLP-on-two-moons run (real best.ckpt and metrics.json), shared by the tests that
    only need some trained checkpoint."""
    import train

    root = tmp_path_factory.mktemp("tiny_moons")
    assert train.main(["fit", "--runs_root", str(root), "--quiet", "true", "--data", "moons",
                       "--trainer.max_epochs", "3"]) == 0
    (run,) = root.glob("moons/mlp/*")
    return run


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return data_root()


def require_data(name: str) -> Path:
    """Return the data root if dataset `name`'s files are there; otherwise skip the test, or fail
    it when CI=true."""
    from datamodules import get_datamodule_class

    missing = [p for p in get_datamodule_class(name)(data_dir=str(data_root())).files() if not p.is_file()]
    if missing:
        reason = f"{name} data missing under {data_root()} ({missing[0]} ...): run `make data` or set ZOO_DATA"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return data_root()


# One thread per test process: the suite shares 2 cores with itself (DDP workers, subprocesses)
# and with whatever else runs; oversubscribed OpenMP threads spin-wait and make small models 10x
# slower. Subprocesses inherit it through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import lightning.pytorch  # noqa: E402,F401  (see below)
import torch  # noqa: E402

torch.set_num_threads(1)
# train.py imports Lightning lazily, so without the import above the first test to fit would import
# it under capsys, and Lightning's console log handler would keep that test's captured stderr, closed
# after it: later tests then print "--- Logging error ---" tracebacks. Imported here, the handler
# writes to the session's stream, whatever tests run and in whatever order.


SMOKE = "test_quick_suite_runs_every_benchmark_and_writes_a_well_formed_report"  # tests/test_bench.py


def pytest_collection_modifyitems(session, config, items):
    """The bench smoke test goes last, and its benchmark process starts now, so it runs beside the rest
    of the suite (which uses one thread) instead of after it."""
    smoke = [item for item in items if item.name == SMOKE]
    if not smoke or config.getoption("collectonly"):
        return
    items.remove(smoke[0])
    items.append(smoke[0])
    if all((data_root() / name).exists() for name in ("MNIST", "FashionMNIST", "cifar-10-batches-py")):
        from test_bench import start_smoke

        report = Path(tempfile.mkdtemp(prefix="bench_smoke_")) / "bench.md"
        config.bench_smoke = (start_smoke(report), report)


def pytest_unconfigure(config):
    """However the run ended (-x, Ctrl-C), no benchmark process outlives it."""
    proc, report = getattr(config, "bench_smoke", (None, None))
    if proc is not None:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        shutil.rmtree(report.parent, ignore_errors=True)
