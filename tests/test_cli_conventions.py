"""The command line as users of other segmentation tools expect it: --version, examples in --help, choices, one
section of --explain, pointers for familiar flags, and config errors that need no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

import rayseg
from rayseg.cli import EXAMPLES, FAMILIAR_FLAGS, SUBCOMMANDS, main
from tests.engine_helpers import REPO


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: --help, --version, usage errors
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version(capsys):
    code, out, _ = _run(["--version"], capsys)
    assert (code, out.strip()) == (0, f"rayseg {rayseg.__version__}")


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_every_help_shows_examples(command, capsys):
    code, out, _ = _run([command, "--help"], capsys)
    examples = out.split("examples:\n", 1)[1].splitlines()
    assert code == 0 and 1 <= len(examples) == len(EXAMPLES[command]) <= 3
    assert all(line.startswith(f"  rayseg {command}") for line in examples)


def test_method_lists_its_choices(capsys):
    from rayseg.config.sections import METHOD_NAMES

    code, _, err = _run(["pretrain", "--method", "simclr"], capsys)
    choices = err.split("invalid choice: 'simclr' (choose from ", 1)[1]
    assert code == 2 and all(name in choices for name in METHOD_NAMES)


def test_explain_one_section_with_its_header(capsys):
    code, out, _ = _run(["config", "--explain", "label"], capsys)
    lines = [line for line in out.splitlines() if line]
    assert code == 0 and lines[0] == "[label]"
    assert all(line.startswith("  label.") for line in lines[1:]) and len(lines) > 20
    assert any(line.startswith("  label.explainer.samples (int, default 50; >= 1): ") for line in lines)
    code, out, _ = _run(["config", "--explain"], capsys)
    headers = [line for line in out.splitlines() if line.startswith("[")]
    assert code == 0 and headers[:3] == ["[run]", "[data]", "[model]"] and "[label]" in headers
    code, _, err = _run(["config", "--explain", "lable"], capsys)
    assert code == 2 and err.startswith("error: --explain: no section 'lable' (did you mean 'label'?)")


@pytest.mark.parametrize("flag", ["--work-dir", "--resume", "--cfg-options", "--load-from"])
def test_familiar_flags_get_a_pointer(flag, capsys):
    code, _, err = _run(["pretrain", flag, "x"], capsys)
    assert code == 2 and err == f"error: {flag} is not a rayseg flag; {FAMILIAR_FLAGS[flag]}\n"


def test_config_errors_import_no_torch():
    """A config error is reported before torch (seconds to import) or Ray is loaded."""
    code = ("import sys; from rayseg.cli import main; rc = main(['pretrain', 'train.epochs=0']); "
            "print(rc, 'torch' in sys.modules, 'ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.stdout.split() == ["2", "False", "False"], done.stderr
    assert done.stderr == "error: train.epochs: must be >= 1, got 0\n"
