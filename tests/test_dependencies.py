"""The run-time dependencies in pyproject.toml are what cage_cli imports, no more (issue 27.5:
decord was one that only tests used), and every command starts with the dev extra's packages
made unimportable, as after `pip install cage-cli` without `[dev]`."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys

import pytest
from conftest import CLIP, ROOT, SINGLE

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

#: Distributions cage_cli uses without an import statement: facenet-pytorch ships the MTCNN
#: weights, found with importlib.util.find_spec (cage_cli/annotation/detection/mtcnn_nets.py).
DATA_ONLY = {"facenet-pytorch"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(spec: str) -> str:
    return _norm(re.split(r"[\s\[<>=!~;]", spec.strip(), maxsplit=1)[0])


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _imported_distributions() -> set[str]:
    """Distributions of every top-level module that cage_cli imports anywhere (module level or
    inside functions), the standard library left out."""
    modules: set[str] = set()
    for path in (ROOT / "cage_cli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    modules -= set(sys.stdlib_module_names) | {"cage_cli"}
    owners = importlib.metadata.packages_distributions()
    missing = {m for m in modules if m not in owners}
    assert not missing, f"cage_cli imports modules no installed distribution provides: {missing}"
    return {_norm(d) for m in modules for d in owners[m]}


def test_runtime_dependencies_are_what_the_package_imports() -> None:
    project = _project()
    runtime = {_requirement(s) for s in project["dependencies"]}
    optional = {_requirement(s) for s in project["optional-dependencies"]["ray"]}
    imported = _imported_distributions()
    unused = runtime - imported - DATA_ONLY
    assert not unused, f"run-time dependencies cage_cli never imports (dev extra?): {unused}"
    undeclared = imported - runtime - optional
    assert not undeclared, f"cage_cli imports undeclared distributions: {undeclared}"


def test_every_command_runs_without_the_dev_extra(tmp_path) -> None:
    """Every cage_cli module imports and every command's --help works in a fresh interpreter
    where the dev extra's packages (decord, pillow-heif, pandas, ...) cannot be imported; then
    a real annotate run on a photo and two frames of a video."""
    project = _project()
    runtime = {_requirement(s) for s in project["dependencies"]}
    dev_only = {_requirement(s) for s in project["optional-dependencies"]["dev"]} - runtime
    owners = importlib.metadata.packages_distributions()
    blocked = sorted({m for m, ds in owners.items() for d in ds if _norm(d) in dev_only}
                     - {"pytest", "_pytest"} - set(sys.stdlib_module_names))
    assert "decord" in blocked and "pillow_heif" in blocked
    code = f"""
import importlib, pkgutil, sys
BLOCKED = set({blocked!r})
class NotInstalled:  # imports of these fail as if they were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, NotInstalled())
import cage_cli
for m in pkgutil.walk_packages(cage_cli.__path__, "cage_cli."):
    # cluster needs ray (the [ray] extra); __main__ runs the CLI
    if m.name not in ("cage_cli.annotation.running.cluster", "cage_cli.__main__"):
        importlib.import_module(m.name)
from typer.main import get_command
from typer.testing import CliRunner
from cage_cli.cli import app
names = sorted(get_command(app).commands)
for name in names:
    r = CliRunner().invoke(app, [name, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output, (name, r.output)
r = CliRunner().invoke(app, ["annotate", {str(SINGLE)!r}, {str(CLIP)!r}, "--max-frames", "2",
                             "-o", {str(tmp_path / "out.parquet")!r}, "-q"])
assert r.exit_code == 0, r.output
assert not BLOCKED & set(sys.modules), BLOCKED & set(sys.modules)
print(" ".join(names))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    commands = r.stdout.split()
    assert {"annotate", "train", "evaluate", "export", "render", "plot", "summary"} <= \
        set(commands), commands
