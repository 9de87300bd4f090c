"""Benchmark 7: the candidate fast options, one at a time, measured.

Training-step times come from the bare loop over the datamodule's tensors (BareLoop: the recipe's
optimizer, the whole data path), batch 128; the configurations are timed in rounds, so a change in
the machine's load hits them alike. Accuracy checks run `train.py fit` in this process.
"""
import contextlib
import os
import time
from unittest import mock

import torch

from bench.common import Section, body, load, med, num_threads, read_metrics, run_cli, spread, tmpdir
from bench.loops import BareLoop, setup_data

MODELS = {"mlp": "mnist", "lenet5": "mnist", "resnet20": "cifar10"}  # model -> dataset
STEPS = {"mlp": 100, "lenet5": 40, "resnet20": 6}


def rounds(configs: dict[str, callable], repeats: int) -> dict[str, list[float]]:
    """Call every configuration's timer once per round, `repeats` rounds."""
    out: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(repeats):
        for k, fn in configs.items():
            out[k].append(fn())
    return out


def layout_precision(s: Section, data: dict, quick: bool, repeats: int) -> dict[str, dict[str, float]]:
    rows, meds = [], {}
    for arch, dataset in MODELS.items():
        dm, steps = data[dataset], 2 if quick else STEPS[arch]
        conv = arch != "mlp"

        def loop(channels_last=False, bf16=False, fused=False):  # plain unless told, one change at a time
            return BareLoop(dm, arch, total_steps=10**6, channels_last=channels_last, bf16=bf16, fused=fused)

        loops = {"plain": loop(), "bf16 autocast": loop(bf16=True)}
        if conv:
            loops["channels_last"] = loop(channels_last=True)
            loops["channels_last + bf16"] = loop(channels_last=True, bf16=True)
        loops["fused optimizer"] = loop(fused=True)
        loops["train.py's defaults"] = BareLoop(dm, arch, total_steps=10**6)
        res = rounds({k: (lambda loop=loop: loop.seconds_per_step(steps)) for k, loop in loops.items()}, repeats)
        base = med(res["plain"])
        meds[arch] = {k: med(v) for k, v in res.items()}
        for k, v in res.items():
            rows.append([arch, k, spread(v, 2, 1000), f"{base / med(v):.2f}x", f"{load():.1f}"])
    from zoo.module import default_precision

    s.text("**Memory layout, precision and fused optimizer step** (training step incl. data path, batch "
           f"{data['mnist'].batch_size}; `plain` = fp32, NCHW, the optimizer's for-loop step; each other row "
           "changes one thing, `train.py's defaults` is what a run now gets on this machine (channels_last for "
           "the conv nets, the fused step, and precision "
           + ", ".join(f"{a}: {default_precision(a, 'cpu')}" for a in MODELS) + "); "
           "`fused optimizer` = `torch.optim.Adam/SGD(..., fused=True)`, available on CPU since torch 2.4):")
    s.table(["model", "option", "ms/step", "speed-up vs plain", "load avg"], rows)
    return meds


def compiled(s: Section, data: dict, quick: bool, repeats: int) -> None:
    import torch._inductor.config as inductor

    rows = []
    runs = [("mlp", "step")] if quick else [("mlp", "model"), ("mlp", "step"), ("lenet5", "model"),
                                            ("lenet5", "step"), ("resnet20", "model")]
    for arch, what in runs:
        dm, steps = data[MODELS[arch]], 2 if quick else STEPS[arch]
        eager = BareLoop(dm, arch, total_steps=10**6)
        with contextlib.ExitStack() as stack:
            stack.enter_context(inductor.patch(force_disable_caches=True))  # cold, as a user's first run
            if quick:  # the smoke test checks the code path, not the (slow) compiler
                stack.enter_context(mock.patch.object(torch, "compile", lambda fn, **kw: fn))
            # The compiled optimizer update replaces the fused kernel: it is generated code itself.
            comp = BareLoop(dm, arch, total_steps=10**6, compile=what,
                            fused=None if what == "model" else False)
            x, y = next(iter(comp.loader()))
            start = time.perf_counter()
            comp.step(x, y)
            comp.step(x, y)  # the optimizer's first step builds its state: the second traces the steady one
            first = time.perf_counter() - start
        res = rounds({"eager": lambda: eager.seconds_per_step(steps),
                      "compiled": lambda: comp.seconds_per_step(steps)}, repeats)
        compile_s = first - 2 * med(res["compiled"])
        gain = med(res["eager"]) - med(res["compiled"])
        breakeven = f"{compile_s / gain:.0f}" if gain > 0 else "never"
        rows.append([arch, {"model": "the network", "step": "the whole step"}[what], spread(res["eager"], 2, 1000),
                     spread(res["compiled"], 2, 1000), f"{med(res['eager']) / med(res['compiled']):.2f}x",
                     f"{compile_s:.1f}", breakeven, f"{load():.1f}"])
    s.text("**torch.compile** (default inductor backend, caches disabled: the compile time a first run pays; "
           "steady state after the first two steps). `the network`: torch.compile(model), as "
           "`--model.compile true` does; `the whole step`: normalisation, forward, loss and their backward in "
           "one compiled graph and the optimizer update in another (only the backward call stays in Python; "
           "the eager side keeps its fused optimizer step). For scale: the lecture's Fashion-MNIST MLP run "
           "is 2,200 steps" + (" [quick: not compiled, the code path only]" if quick else "") + ":")
    s.table(["model", "compiled", "eager ms/step", "compiled ms/step", "speed-up", "compile s",
             "steps to break even", "load avg"], rows)


def threads(s: Section, data: dict, quick: bool, repeats: int) -> None:
    rows = []
    counts = sorted({1, os.cpu_count() or 1, torch.get_num_threads()})
    for arch, dataset in list(MODELS.items())[:1] if quick else MODELS.items():
        loop, steps = BareLoop(data[dataset], arch, total_steps=10**6), 2 if quick else STEPS[arch]

        def timer(n, loop=loop, steps=steps):
            with num_threads(n):
                return loop.seconds_per_step(steps)

        res = rounds({n: (lambda n=n: timer(n)) for n in counts}, repeats)
        base = med(res[counts[0]])
        rows += [[arch, n, spread(v, 2, 1000), f"{base / med(v):.2f}x", f"{load():.1f}"] for n, v in res.items()]
    s.text("**Threads** (torch.set_num_threads; the default is one per core):")
    s.table(["model", "threads", "ms/step", "speed-up vs 1", "load avg"], rows)


def evaluation(s: Section, data: dict, quick: bool, repeats: int) -> dict[str, float]:
    rows, val_pass = [], {}
    for arch, dataset in MODELS.items():
        dm = data[dataset]
        loop = BareLoop(dm, arch, total_steps=10**6)
        n = 5000 if arch != "resnet20" else 2000
        if quick:
            n = 64
        dm.bench_x, dm.bench_y = dm.val_x[:n], dm.val_y[:n]  # a fixed slice of the validation split ("bench")
        sizes = (32, 64) if quick else (256, 1000, n)
        configs = {(mode, 1000 if not quick else 64): None for mode in ("grad", "no_grad", "inference_mode")}
        configs.update({("inference_mode", b): None for b in sizes})
        res = rounds({k: (lambda k=k: loop.evaluate("bench", batch_size=k[1], mode=k[0])[0]) for k in configs}, repeats)
        ref = med(res[("inference_mode", 1000 if not quick else 64)])
        val_pass[arch] = ref * len(dm.val_y) / n
        rows += [[arch, n, mode, b, spread(v, 3), f"{ref / med(v):.2f}x", f"{load():.1f}"]
                 for (mode, b), v in res.items()]
    s.text("**Evaluation** (a pass over a fixed slice of the validation split computing loss and accuracy; "
           "`grad` = autograd on, as if validation forgot both; Lightning validates under inference_mode at "
           "the datamodule's eval_batch_size, 1000 by default):")
    s.table(["model", "images", "mode", "eval batch", "s/pass", "speed-up vs inference_mode @1000", "load avg"], rows)
    return val_pass


def validation_share(s: Section, data: dict, step_s: dict, val_pass: dict) -> None:
    rows = []
    for arch, dataset in MODELS.items():
        dm = data[dataset]
        steps = len(BareLoop(dm, "linear").loader())
        train = step_s[arch]["train.py's defaults"] * steps
        share = val_pass[arch] / (train + val_pass[arch])
        rows.append([arch, f"{train:.1f}", f"{val_pass[arch]:.2f}", f"{share:.1%}", f"{share / 2:.1%}",
                     f"{share * 4 / 5:.1%}"])
    s.text("**Validation every N epochs** (`--trainer.check_val_every_n_epoch N`), derived from the numbers above: "
           "the share of an epoch spent validating 5,000 images, and what validating every 2nd or 5th epoch saves:")
    s.table(["model", "train s/epoch (defaults)", "val s/pass", "validation share", "saved, N=2", "saved, N=5"], rows)


def bf16_accuracy(s: Section, quick: bool) -> dict[str, tuple[float, float, float, float]]:
    """Test accuracy and fit time of short train.py runs in fp32 and bf16-mixed."""
    runs = {
        "mlp on fashion_mnist, 4 epochs": ["--data", "fashion_mnist", "--model.arch", "mlp",
                                           "--trainer.max_epochs", "4"],
        "lenet5 on mnist, 2 epochs": ["--data", "mnist", "--model.arch", "lenet5", "--trainer.max_epochs", "2"],
        "resnet20 on cifar10, 1 epoch on 1/4 of the data": ["--data", "cifar10", "--model.arch", "resnet20",
                                                            "--trainer.max_epochs", "1",
                                                            "--data.train_fraction", "0.25"],
    }
    quick_limits = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                    "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]
    rows, out = [], {}
    for name, args in runs.items():
        if quick and "mlp" not in name:
            continue
        res = {}
        for precision in ("32-true", "bf16-mixed"):
            with tmpdir() as tmp:
                run_cli(["fit", *args, *(quick_limits if quick else []), "--patience", "0", "--quiet", "true",
                         "--trainer.precision", precision], tmp)
                metrics, _ = read_metrics(tmp)
            res[precision] = (metrics["test_acc"], metrics["fit_seconds"])
        (a32, t32), (a16, t16) = res["32-true"], res["bf16-mixed"]
        out[name] = (a32, a16, t32, t16)
        rows.append([name, f"{a32:.2%}", f"{a16:.2%}", f"{(a16 - a32) * 100:+.2f}", f"{t32:.1f}", f"{t16:.1f}",
                     f"{t32 / t16:.2f}x", f"{load():.1f}"])
    s.text("**bf16-mixed: accuracy on short runs** (`train.py fit --trainer.precision bf16-mixed` vs 32-true, "
           "seed 42, one run each; a short-run check, not a proof for long schedules):")
    s.table(["run", "test acc fp32", "test acc bf16", "difference (points)", "fit s fp32", "fit s bf16",
             "fit speed-up", "load avg"], rows)
    return out


def run(quick: bool) -> Section:
    repeats = 1 if quick else 3
    s = Section("7. Options: channels_last, bf16, fused optimizer, torch.compile, threads, evaluation, "
                "validation frequency")
    s.text(body(__doc__))
    data = {"mnist": setup_data("mnist"),
            "cifar10": setup_data("cifar10", 16 if quick else None)}
    step_s = layout_precision(s, data, quick, repeats)
    threads(s, data, quick, repeats)
    val_pass = evaluation(s, data, quick, repeats)
    validation_share(s, data, step_s, val_pass)
    compiled(s, data, quick, repeats)
    acc = bf16_accuracy(s, quick)
    recommend(s, step_s, acc)
    return s


def recommend(s: Section, steps: dict[str, dict[str, float]], acc: dict) -> None:
    """What the numbers above suggest as defaults (the lead decides; the thresholds are stated)."""
    def gain(arch, option):
        return steps[arch]["plain"] / steps[arch][option]

    lines = []
    for option in ("channels_last", "bf16 autocast", "channels_last + bf16", "fused optimizer", "train.py's defaults"):
        gains = {arch: gain(arch, option) for arch in steps if option in steps[arch]}
        lines.append(f"- {option}: " + ", ".join(f"{a} {g:.2f}x" for a, g in gains.items()))
    worst = min((a16 - a32 for a32, a16, _, _ in acc.values()), default=0.0)
    lines.append(f"- bf16-mixed accuracy on the short runs: worst difference {worst * 100:+.2f} points.")
    s.text("**Summary of step speed-ups vs plain** (fp32 NCHW, for-loop optimizer step; an option became a default "
           "where it won by more than the noise, ~5%, and did not cost accuracy):\n\n" + "\n".join(lines))
