"""The package's layering, read from the source (every import, also those inside functions):

- the math rooms (``data/``, ``models/``, ``methods/``, ``labeling/``) import neither the engine, Tune, the
  commands nor the CLI;
- the engine is handed its method: it imports no method module (type hints under ``TYPE_CHECKING`` aside);
- Ray is imported only by the engine, the labelling pipeline, ``tune/`` and the commands;
- no module imports another module's private name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rayseg"
MATH_ROOMS = ("data", "models", "methods", "labeling")
RAY_ALLOWED = ("engine/", "labeling/pipeline.py", "tune/", "commands/")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import in ``path`` outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def test_the_walker_sees_imports_inside_functions_and_skips_type_checking(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ray\n"
                      "def f():\n    from rayseg.engine import loop\n")
    assert [m for m, _ in _imports(source)] == ["typing", "rayseg.engine"]


@pytest.mark.parametrize("path", [p for p in MODULES if _rel(p).split("/")[0] in MATH_ROOMS], ids=_rel)
def test_math_rooms_import_no_engine_tune_or_command(path):
    upward = [m for m, _ in _imports(path)
              if m.startswith(("rayseg.engine", "rayseg.tune", "rayseg.commands", "rayseg.cli"))]
    assert not upward, f"{_rel(path)} imports {upward}"


@pytest.mark.parametrize("path", [p for p in MODULES if _rel(p).startswith("engine/")], ids=_rel)
def test_the_engine_is_handed_its_method(path):
    methods = [m for m, _ in _imports(path) if m.startswith(("rayseg.methods", "rayseg.commands"))]
    assert not methods, f"{_rel(path)} imports {methods}"


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_ray_only_in_engine_pipeline_tune_and_commands(path):
    uses_ray = [m for m, _ in _imports(path) if m == "ray" or m.startswith("ray.")]
    if uses_ray:
        assert _rel(path).startswith(RAY_ALLOWED), f"{_rel(path)} imports {uses_ray}"


@pytest.mark.parametrize("path", [*MODULES, *sorted(PACKAGE.parent.joinpath("tests").glob("*.py")),
                                  *sorted(PACKAGE.parent.joinpath("bench").glob("*.py"))],
                         ids=lambda p: p.name)
def test_no_private_name_crosses_modules(path):
    private = [f"{m}.{n}" for m, names in _imports(path) if m.startswith("rayseg")
               for n in names if n.startswith("_") and not n.startswith("__")]
    assert not private, f"{path.name} imports private names {private}"


def test_the_cli_parser_imports_neither_torch_nor_ray():
    """``rayseg --help`` and argument errors stay fast: building the parser imports no heavy library."""
    import subprocess
    import sys

    code = ("import sys; from rayseg.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'ray', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=True)
    assert out.stdout.strip() == "[]"


def test_the_labelling_cpu_stages_import_no_torch():
    """The decode/encode tasks' workers unpickle functions of rayseg.labeling.stages: they start without torch's
    ~2.5 s import."""
    import subprocess
    import sys

    code = "import sys, rayseg.labeling.stages; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_files_are_written_atomically_by_storage_only(path):
    """One atomic writer: temp-name-and-rename lives in rayseg/storage.py (and the checkpoint folder commit)."""
    if _rel(path) in ("storage.py", "engine/checkpoint.py"):
        return
    source = path.read_text()
    assert "os.replace(" not in source and ".rename(" not in source, f"{_rel(path)} renames files itself"
