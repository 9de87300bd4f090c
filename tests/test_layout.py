"""The architecture as a test: floors that import one way down, no cycles, an inference path
without Lightning, and the packages pyproject.toml installs.

    floor 0  zoo.errors                                   (imports nothing of the project)
    floor 1  datamodules, zoo.models                      (data and networks)
    floor 2  zoo: the training core (module, run, checkpoint, weights, loggers, insight, ...)
    floor 3  zoo.commands                                 (compare, evaluate, doctor, predict, export, ...)
    floor 4  train.py, evaluate.py, hubconf.py            (entry points)
"""

import ast
import dataclasses
import inspect
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import tomllib

from zoo.models.registry import HParams

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("train", "evaluate", "hubconf")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(name: str) -> int | None:
    """The floor of a project module, None for anything else (torch, the standard library)."""
    top = name.split(".")[0]
    if name == "zoo.errors":
        return 0
    if top == "datamodules" or name == "zoo.models" or name.startswith("zoo.models."):
        return 1
    if name == "zoo.commands" or name.startswith("zoo.commands."):
        return 3
    if top == "zoo":
        return 2
    if name in ENTRY_POINTS:
        return 4
    return None


def project_files() -> list[Path]:
    files = [ROOT / f"{name}.py" for name in ENTRY_POINTS]
    for package in ("zoo", "datamodules"):
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def imports(path: Path) -> list[tuple[str, int]]:
    """Every project module `path` imports, at the top or inside a function, with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from zoo import weights` imports the module zoo.weights; `from zoo import ZooError` the package
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                    (ROOT / Path(*sub.split(".")) / "__init__.py").is_file()
                found.append((sub if is_module else node.module, node.lineno))
    return [(name, line) for name, line in found if floor(name) is not None]


GRAPH = {module_name(p): imports(p) for p in project_files()}


def test_the_layout_is_the_documented_one():
    assert set(GRAPH) >= {"zoo.errors", "zoo.models.registry", "datamodules.images", "zoo.module", "zoo.checkpoint",
                          "zoo.weights", "zoo.commands.evaluate", "zoo.commands.predict", "train", "evaluate"}
    assert all(floor(name) is not None for name in GRAPH)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    """Nothing imports a module on a higher floor: not at the top, not inside a function."""
    up = [f"{name} (line {line}, floor {floor(name)})" for name, line in GRAPH[module] if floor(name) > floor(module)]
    assert not up, f"{module} (floor {floor(module)}) imports upward: {', '.join(up)}"


def test_no_import_cycles():
    """No cycle between modules, counting imports inside functions too: a function-level import may
    save start-up time, never hide a cycle."""
    edges = {m: {name for name, _ in deps if name in GRAPH and name != m} for m, deps in GRAPH.items()}
    # a package's __init__ importing its own submodules, and a submodule importing a sibling through the
    # package, are Python's normal package mechanics: the package node is not part of a cycle
    for m in edges:
        edges[m] = {d for d in edges[m] if not (m.startswith(d + ".") or d.startswith(m + "."))}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(edges[m]):
            assert state.get(d) != 1, f"import cycle: {' -> '.join(path[path.index(d):] + [d]) if d in path else d}"
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


def test_a_planted_upward_import_is_caught(tmp_path):
    """The checker itself: a datamodule importing the training core is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from zoo.module import ZooModule\n")
    assert [name for name, _ in imports(bad)] == ["zoo.module"] and floor("zoo.module") > floor("datamodules.mnist")


def test_no_module_imports_the_entry_points():
    users = [m for m, deps in GRAPH.items() for name, _ in deps if name in ENTRY_POINTS and m not in ENTRY_POINTS]
    assert not users


def test_inference_needs_no_lightning(tmp_path):
    """`train.py --help`, `evaluate.py --help`, predict and a TorchScript export with the shipped
    weights, and zoo.create, run with torch alone: no Lightning, torchmetrics or tensorboard is imported."""
    (tmp_path / "points.csv").write_text("0.5,0.2\n-1,0.3\n")
    points, out_file = str(tmp_path / "points.csv"), str(tmp_path / "m.pt")
    shipped = ["--pretrained", "moons", "--model", "mlp"]
    code = ("import sys, contextlib, io, train, zoo, evaluate\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert train.main(['--help']) == 0\n"
            "    try:\n        evaluate.main(['--help'])\n    except SystemExit as e:\n        assert e.code == 0\n"
            f"    assert train.main(['predict', *{shipped!r}, '--inputs', {points!r}]) == 0\n"
            f"    assert train.main(['export', *{shipped!r}, '--out', {out_file!r}]) == 0\n"
            "net = zoo.create('mlp', pretrained='moons')\n"
            "print([m for m in ('lightning', 'torchmetrics', 'tensorboard') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
    assert (tmp_path / "m.pt").is_file()


def test_zoo_module_takes_exactly_hparams():
    """ZooModule's arguments (what LightningCLI shows) are the HParams that checkpoints are checked
    against without Lightning: same names, types and defaults."""
    from zoo.module import ZooModule

    params = list(inspect.signature(ZooModule.__init__).parameters.values())[1:]
    hints = typing.get_type_hints(ZooModule.__init__)
    fields = dataclasses.fields(HParams)
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert (hints[p.name], p.default) == (typing.get_type_hints(HParams)[f.name], default), p.name


def test_pyproject_installs_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {module_name(p.parent / "__init__.py") for package in ("zoo", "datamodules")
                for p in (ROOT / package).rglob("__init__.py")}
    assert set(config["packages"]) == packages
    assert set(config["py-modules"]) >= {"train", "evaluate"}
