"""README.md: every python block runs on its own, and every command a bash
block names exists, so the README cannot drift from the code.

Each python block runs alone in a fresh interpreter (nothing carries over
from the block before), skipped only when it imports a package that is not
installed or asks for the C kernel where it was not built. Bash blocks are
not run (they install packages): each command they name must be a shell
builtin or on PATH, and each ``attnref`` command line must parse with
attnref's own parser.
"""
import ast
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attnref import cli, kernel

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK_TIMEOUT = 600  # seconds; the oracle block runs the 37-case standard suite
SHELL_BUILTINS = {".", "source", "cd", "export"}
COMMAND_SEPARATORS = {"&&", "||", "|", ";"}


def blocks(language):
    """(first line number, code) of each fenced block of ``language``."""
    text = README.read_text(encoding="utf-8")
    return [(text[:match.start()].count("\n") + 2, match.group(1))
            for match in re.finditer(rf"^```{language}\n(.*?)^```", text, re.S | re.M)]


def block_id(block):
    return f"README.md:{block[0]}"


def imported_packages(code):
    """The top-level packages ``code`` imports."""
    packages = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            packages.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            packages.add(node.module.split(".")[0])
    return packages


def test_the_readme_has_blocks_of_both_kinds():
    assert len(blocks("python")) >= 4 and len(blocks("bash")) >= 3


@pytest.mark.parametrize("block", blocks("python"), ids=block_id)
def test_python_block_runs_on_its_own(block, tmp_path):
    line, code = block
    missing = sorted(package for package in imported_packages(code)
                     if importlib.util.find_spec(package) is None)
    if missing:
        pytest.skip(f"README.md:{line} imports {missing}, not installed")
    if 'backend="c"' in code and not kernel.available():
        pytest.skip(f"README.md:{line} uses the C kernel: {kernel.info()['reason']}")
    # the block imports the attnref these tests import (installed, or this checkout)
    importing = Path(kernel.__file__).resolve().parent.parent
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(importing), os.environ.get("PYTHONPATH", "")]), "MPLBACKEND": "Agg"}
    finished = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment,
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    assert finished.returncode == 0, (
        f"the python block at README.md:{line} fails when run alone:\n{finished.stderr}")


def commands(code):
    """Each command of a bash block as its list of words."""
    found = []
    for line in code.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)  # "a;b" -> a ; b
        lexer.whitespace_split = True
        words = list(lexer)
        while words:
            end = next((i for i, word in enumerate(words) if word in COMMAND_SEPARATORS),
                       len(words))
            command = words[:end]
            while command and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", command[0]):
                command.pop(0)                     # VAR=value before the command
            if command:
                found.append(command)
            words = words[end + 1:]
    return found


@pytest.mark.parametrize("block", blocks("bash"), ids=block_id)
def test_bash_block_names_commands_that_exist(block, capsys):
    line, code = block
    for command in commands(code):
        name = command[0]
        if name == "attnref":
            try:
                cli.build_parser().parse_args(command[1:])
            except SystemExit as exited:
                pytest.fail(f"README.md:{line}: `{shlex.join(command)}` does not parse: "
                            f"{capsys.readouterr().err} (exit status {exited.code})")
        else:
            assert name in SHELL_BUILTINS or shutil.which(name), (
                f"README.md:{line} runs {name!r}, which is not on PATH")


def test_commands_splits_a_line_at_separators_and_drops_assignments():
    assert commands('A=1 attnref report "a b" && pip install x | tee y  # a comment\n'
                    'cd docs; pytest') == [
        ["attnref", "report", "a b"], ["pip", "install", "x"], ["tee", "y"], ["cd", "docs"],
        ["pytest"]]
