"""The benchmark suite's smoke test: `bench/run.py --quick` runs every benchmark for a few steps and
writes a well-formed report. Nothing is timed here: benchmarks are commands (`python bench/run.py`),
not tests."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, require_data

sys.path.insert(0, str(REPO))  # bench/ is a folder of scripts, not an installed package

# The smoke runs as one background process from the end of collection (pytest_collection_modifyitems in
# conftest.py), on the core the single-threaded suite leaves idle, and its test, moved to the end of the
# run, waits for it: the suite's wall time then hardly grows with the bench.
SECTIONS = {"textbook": "1.", "overhead": "2.", "peak": "3.", "cifar": "4.", "scaling": "5.", "memory": "6.",
            "options": "7.", "startup": "8.", "firststep": "9."}


def tables(markdown: str) -> list[list[str]]:
    """The markdown tables of a report, each as its lines."""
    found, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append(current)
            current = []
    return found


def cells(line: str) -> int:
    return len(re.split(r"(?<!\\)\|", line.strip())) - 2


def check_report(text: str, names: list[str]) -> None:
    assert text.startswith("# Benchmarks (QUICK SMOKE RUN")
    for needed in ("Command: `python bench/run.py --quick", "- CPU:", "- CPU flags:", "avx512_bf16", "load average",
                   "## Goals (issues 7 and 18)"):
        assert needed in text
    assert "FAILED" not in text
    assert re.search(r"Date: [^,]+, commit [0-9a-f]{7,}", text)  # the commit measured
    headings = re.findall(r"^## (.*)$", text, re.M)
    for name in names:
        assert any(h.startswith(SECTIONS[name]) for h in headings), (name, headings)
    found = tables(text)
    assert len(found) >= len(names) + 1  # the goals, and at least one table per section
    for t in found:
        assert len(t) >= 3, t  # header, separator, at least one row
        assert re.fullmatch(r"\|(-{3,}:?\|)+", t[1]), t[1]
        assert {cells(line) for line in t} == {cells(t[0])}, t
        assert not any(re.search(r"\|\s*(nan|inf)\b", line) for line in t[2:]), t


def start_smoke(report: Path) -> subprocess.Popen:
    """`bench/run.py --quick` of every benchmark, writing `report`; started before the tests run."""
    return subprocess.Popen([sys.executable, "bench/run.py", "--quick", "--out", str(report)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_quick_suite_runs_every_benchmark_and_writes_a_well_formed_report(request, tmp_path):
    for dataset in ("mnist", "fashion_mnist", "cifar10"):
        require_data(dataset)
    started = getattr(request.config, "bench_smoke", None)  # (proc, report), from conftest
    proc, report = started or (start_smoke(tmp_path / "bench.md"), tmp_path / "bench.md")
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-4000:]
    check_report(report.read_text(), list(SECTIONS))


def test_every_benchmark_is_in_the_smoke_test():
    from bench.run import BENCHMARKS

    assert sorted(BENCHMARKS) == sorted(SECTIONS)


def test_unknown_benchmark_name_is_refused_with_the_list(capsys):
    from bench.run import parse

    with pytest.raises(SystemExit):
        parse(["--only", "textbok"])
    assert "textbook" in capsys.readouterr().err


def test_table_is_markdown_with_numbers_right_aligned():
    from bench.common import table

    t = table(["a", "b"], [["x|y", 1.5]])
    assert t.splitlines() == ["| a | b |", "|---|---:|", "| x\\|y | 1.5 |"]
    assert cells(t.splitlines()[2]) == 2


@pytest.mark.parametrize("stride", [1, 2])
def test_the_depthwise_probe_computes_a_depthwise_convolution(stride):
    """bench/depthwise.py times its nine-shift depthwise conv against torch's: they must agree."""
    import torch
    import torch.nn.functional as F

    from bench.depthwise import ShiftDepthwise

    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 9, requires_grad=True).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 1, 3, 3, requires_grad=True)
    ref = F.conv2d(x, w, None, stride, 1, 1, 8)
    got = ShiftDepthwise.apply(x, w, stride)
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-5)
    grads = [torch.autograd.grad(out.square().sum(), (x, w)) for out in (ref, got)]
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(*grads))


def test_the_chunk_probe_measures_every_variant_and_restores_the_direct_step():
    """bench/chunks.py (issue 18): a few steps of each variant, smoke only (the numbers are results/')."""
    import zoo.module
    from bench.chunks import VARIANTS, run

    direct = zoo.module.steps_directly
    times = run(1, "mlp", epochs=2, quick=True)
    assert list(times) == ["bare loop", *VARIANTS] and all(len(t) == 1 and t[0] > 0 for t in times.values())
    assert zoo.module.steps_directly is direct


def test_the_hot_path_probe_times_each_piece_and_its_reference(capsys):
    """bench/hotpath.py (issue 18): one round, smoke only; the two pictures are both drawn."""
    from bench.hotpath import main, variants

    work = variants()
    assert all(f() > 0 for _, f in work.values())
    main(1)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(work) and all(float(r.split("|")[3].split()[0]) > 0 for r in rows[1:])


def test_the_mlp_step_probe_times_each_way_to_the_same_weights(capsys):
    """bench/mlpstep.py (issue 18): one round; its own checks that the float32 ways, and the two bf16 ones,
    end bitwise level must say yes."""
    from bench.mlpstep import WAYS, main

    main(1)
    out = capsys.readouterr().out
    assert all(re.search(rf"^{re.escape(name)}\s+\d+ \(\d+-\d+\)\s+[\d.]+x$", out, re.M) for name in WAYS), out
    assert "the same weights after 550 steps each, float32 ways: yes, bitwise" in out, out
    assert "the same weights after 550 steps each, bf16 ways: yes, bitwise" in out, out
    import torch
    assert torch.backends.mkldnn.matmul.fp32_precision != "bf16"  # the bf16-products way put the setting back


def test_the_ceiling_probe_counts_a_resnet_step_as_three_forwards_and_times_a_product():
    """bench/ceiling.py (issue 16): its bound takes a step as 3 forwards; FlopCounterMode's count of a real
    ResNet-20 forward + backward (no grouped convolutions, where its count is right) must agree."""
    import math

    import torch

    from bench.ceiling import matmul_gflops, step_flops
    from zoo.models.profile import profile
    from zoo.models.registry import create_model

    forward = profile(create_model("resnet20", (3, 32, 32), 10), (3, 32, 32))["flops"]
    assert 2.9 * forward < step_flops("resnet20") <= 3 * forward
    g = matmul_gflops(64, torch.float32, seconds=0.01)
    assert math.isfinite(g) and g > 0


def test_the_denormals_probe_flushes_during_its_fit_and_restores_everything_after(monkeypatch):
    """bench/denormals.py (issue 18): subnormals are flushed inside the fit it asks for, and the timing
    wrappers and the flush setting are undone after it, also after a failed fit, so nothing leaks."""
    import torch

    from bench import denormals

    def subnormal() -> float:  # 1e-40 is below float32's normal range: 0 when flushed
        return (torch.tensor([1e-30]) * 1e-10).item()

    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormals (torch.set_flush_denormal: x86 with SSE3 only)")
    seen = []
    import train

    monkeypatch.setattr(train, "main", lambda argv: seen.append(subnormal()) or 1)  # a failed fit
    originals = {name: getattr(owner, attr) for name, (owner, attr) in denormals.TIMED.items()}
    with pytest.raises(AssertionError):
        denormals.fit(True)
    assert seen == [0.0] and subnormal() > 0
    assert {name: getattr(owner, attr) for name, (owner, attr) in denormals.TIMED.items()} == originals


def test_timed_calls_times_each_target_and_puts_back_what_it_replaced():
    """bench.common.timed_calls: a module function and a method a subclass inherits are timed inside the
    block; after it, also after an error, the function is the original again and the subclass again
    inherits (no copy of the base's method left on it)."""
    import types

    from bench.common import timed_calls

    class Base:
        def work(self):
            return sum(range(1000))

    class Sub(Base):
        pass

    mod = types.SimpleNamespace(f=lambda x: x + 1)
    original = mod.f
    with pytest.raises(ZeroDivisionError):
        with timed_calls({"f": (mod, "f"), "work": (Sub, "work")}) as spent:
            assert mod.f(1) == 2 and Sub().work() == 499500 and Base.work is not Sub.work
            1 / 0
    assert spent["f"] > 0 and spent["work"] > 0
    assert mod.f is original and "work" not in vars(Sub) and Sub.work is Base.work


def test_the_fit_step_probe_finds_every_piece_it_times():
    """bench/fitstep.py (issue 18): a real one-epoch fit; every timed piece was called (a method Lightning
    renamed would read 0), and the nesting its rows assume holds."""
    require_data("fashion_mnist")
    from bench.fitstep import ROWS, TIMED, fit

    t = fit(epochs=1)
    assert all(t[name] > 0 for name in TIMED), t
    assert t["fit_seconds"] >= t["fit loop"] >= t["Lightning steps"] >= t["chunks"]
    assert t["chunks"] >= t["mlp_backprop"] + t["fused Adam"] + t["normalisation"]
    assert len({name for name, _, _ in ROWS}) == len(ROWS)


def test_gpu_bundle_gives_back_every_byte_the_cifar10_build_reads(tmp_path):
    """bench/gpu_bundle.py shrinks the shared CIFAR-10 sources 72 MiB -> ~30 MB to send them to a GPU
    machine, claiming no loss: every JPEG the build decodes and every original-pixel prefix come back
    byte for byte (the build on the GPU machine then matched SHA256SUMS)."""
    shared = REPO.parent / "shared" / "data"  # where `make data` finds the offline copies
    if not (shared / "cifar10_src" / "cifar10_jpegs.pack").is_file():
        pytest.skip(f"no shared CIFAR-10 sources at {shared}")
    from bench.gpu_bundle import pack, unpack

    pack(shared, tmp_path / "bundle")
    assert sum(p.stat().st_size for p in (tmp_path / "bundle").rglob("*")) < 40e6
    unpack(tmp_path / "bundle", tmp_path / "full.pack")
    sys.path.insert(0, str(shared / "tools"))
    from build_cifar10 import Pack

    before, after = Pack(shared / "cifar10_src" / "cifar10_jpegs.pack"), Pack(tmp_path / "full.pack")
    kept = [i for i in range(60_000) if after.get(i)]
    assert len(kept) == 60_000 - 6 * 1017  # all but the images whose original pixels the prefixes hold
    assert all(after.get(i) == before.get(i) for i in kept)
    for prefix in (shared / "cifar10_src" / "orig_prefix").iterdir():
        assert (tmp_path / "orig_prefix" / prefix.name).read_bytes() == prefix.read_bytes()


def test_memory_baseline_imports_every_package_a_fit_imports(tmp_path):
    """Section 6 subtracts a process that only imports what a run imports; when train.py's imports became
    lazy, that process lost Lightning, torchmetrics and torchvision, and every run looked ~100 MiB heavier."""
    from bench.memory import BASELINE

    script = f"""
import sys
{BASELINE}
def packages():
    return {{m.split(".")[0] for m in sys.modules if not m.startswith("_")}} - set(sys.stdlib_module_names)
before = packages()
train.main(["fit", "--trainer.max_epochs", "1", "--quiet", "true", "--runs_root", {str(tmp_path)!r}])
print(sorted(packages() - before))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # attrs: jsonargparse's, a few hundred kB, imported while it parses the command line
    assert set(ast.literal_eval(out.stdout.strip().splitlines()[-1])) <= {"attr", "attrs"}, out.stdout


def test_steptimer_counts_the_steps_after_the_warm_up(tmp_path, capsys):
    """bench/code_vs_code.sh's callback: the images/s of the optimizer steps after the first 3, as one JSON line."""
    import json

    import train

    assert train.main(["fit", "--trainer.max_steps", "7", "--quiet", "true", "--runs_root", str(tmp_path),
                       "--trainer.callbacks+=bench.steptimer.StepTimer"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if '"img_per_s"' in x)
    result = json.loads(line)
    assert result["steps"] == 4 and result["images"] > 0 and result["img_per_s"] > 0


@pytest.mark.filterwarnings("ignore:.*could not find the monitored key")  # 3 steps: no validation epoch
def test_steptimer_says_when_nothing_was_timed(tmp_path, capsys):
    import train

    assert train.main(["fit", "--trainer.max_steps", "3", "--quiet", "true", "--runs_root", str(tmp_path),
                       "--trainer.callbacks+=bench.steptimer.StepTimer"]) == 0
    out, err = capsys.readouterr()
    assert '"img_per_s"' not in out and "no step after the 3 warm-up steps was timed" in err


def test_the_conv_bound_probe_counts_batchnorm_outputs_and_splits_a_step(capsys):
    """bench/conv_bound.py (issue 16): BatchNorm outputs of ResNet-20 at batch 128 in bf16, the convolutions'
    share of a profiled step, and its usage line for a malformed target."""
    import torch

    from bench.conv_bound import BATCH, batchnorm_block_ms, batchnorm_outputs, conv_share, copy_bandwidth, main
    from zoo.models.registry import create_model

    total, largest = batchnorm_outputs(create_model("resnet20", (3, 32, 32), 10), [3, 32, 32])
    # 7 BatchNorms at 16x32x32, 6 at 32x16x16 and 6 at 64x8x8 (stem, 3 stages of 3 blocks x 2; no BN on shortcuts)
    assert largest == (BATCH, 16, 32, 32)
    assert total == BATCH * 2 * (7 * 16 * 32 * 32 + 6 * 32 * 16 * 16 + 6 * 64 * 8 * 8)

    class Loop:  # a conv and a ReLU, as BareLoop times a step
        conv = torch.nn.Conv2d(8, 8, 3, padding=1)

        def seconds_per_step(self, steps, warmup):
            for _ in range(steps):
                torch.relu(self.conv(torch.randn(4, 8, 16, 16))).sum().backward()

    assert 0 < conv_share(Loop()) < 1
    assert copy_bandwidth(2**20) > 0
    assert batchnorm_block_ms((2, 4, 3, 3), relu6=True, compiled=False) > 0
    for bad in ([], ["resnet20"], ["resnet20:0"], ["resnet20:x"], ["resnet20:100", "two"]):
        assert main(bad) == 2
        assert "usage: python bench/conv_bound.py MODEL:IMAGES_PER_S" in capsys.readouterr().err
    assert main(["resnet21:100"]) == 2  # refused by name, before any data is loaded
    assert "bench/conv_bound.py: unknown model 'resnet21'" in capsys.readouterr().err
