"""rayseg installs by name: the wheel declares every runtime dependency, and a wheel installed into a fresh
virtual environment gives a working ``rayseg`` command."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.engine_helpers import REPO


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_pyproject_pins_equal_requirements_txt():
    pins = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert sorted(p for p in pins if p) == sorted(_project()["dependencies"])


def test_every_third_party_import_is_a_declared_dependency():
    """Each module rayseg imports (at any depth) comes from a distribution the wheel declares, required or extra."""
    declared = {_name(r) for r in _project()["dependencies"]}
    declared |= {_name(r) for extra in _project()["optional-dependencies"].values() for r in extra}
    distributions = importlib.metadata.packages_distributions()
    imported = set()
    for path in (REPO / "rayseg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = sorted(m for m in imported if m not in sys.stdlib_module_names and m != "rayseg")
    undeclared = {m: distributions.get(m, ["?"]) for m in third_party
                  if not {_name(d) for d in distributions.get(m, [])} & declared}
    assert undeclared == {}


def test_a_built_wheel_installs_into_a_fresh_environment(tmp_path):
    """Built without network: dependencies resolve from this interpreter's site-packages (the venv sees them) and
    pip may not download anything (--no-index)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what is installed counts
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("rayseg-*.whl"))
    # without its own pip and setuptools, whose bundled versions would shadow the ones torch requires
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(tmp_path / "venv")],
                   check=True, timeout=120)
    bin_dir = tmp_path / "venv" / "bin"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install",
                              "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300, env=env)
    assert install.returncode == 0, install.stderr[-2000:]
    version = subprocess.run([str(bin_dir / "rayseg"), "--version"], capture_output=True, text=True, timeout=60,
                             cwd=tmp_path, env=env)  # not the repository: the installed package answers
    assert version.stdout.strip() == f"rayseg {importlib.metadata.version('rayseg')}"
    where = subprocess.run([str(bin_dir / "python"), "-c", "import rayseg; print(rayseg.__file__)"], text=True,
                           capture_output=True, cwd=tmp_path, timeout=60, env=env).stdout
    assert Path(where.strip()).is_relative_to(tmp_path / "venv")
