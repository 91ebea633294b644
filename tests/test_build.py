"""Building the C kernel (setup.py, csrc/build_ffi.py, attnref/_kernel_sources.py)
and what attnref.kernel makes of the result: a failed build leaves its
reason for `attnref info`; an extension is never reused from other sources.

The builds run ``python setup.py build`` on a copy of the source tree, with a
compiler that fails at once, so each takes a second or two.
"""
import ast
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from attnref import kernel
from attnref._kernel_sources import source_files, sources_sha256

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = "_kernel" + next(suffix for suffix in importlib.machinery.EXTENSION_SUFFIXES
                             if ".abi3" in suffix)
REPORT = "_kernel_build_failure.json"
KERNEL_STATE = ("import attnref; print(repr((attnref.kernel.available(), "
                "attnref.kernel.info()['reason'])))")
INFO = "from attnref.cli import main; raise SystemExit(main(['info']))"



def setuptools_major():
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return 0


# pyproject.toml's build requirement; the test extra installs it
needs_setuptools = pytest.mark.skipif(setuptools_major() < 77,
                                      reason="needs setuptools >= 77 (the test extra)")


def copy_project(destination):
    """The files a build needs, copied from this checkout without build products."""
    ignore = shutil.ignore_patterns("__pycache__", "*.so", REPORT)
    for name in ("attnref", "csrc"):
        shutil.copytree(ROOT / name, destination / name, ignore=ignore)
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(ROOT / name, destination)
    return destination


def environment(**changes):
    """This process's environment (sanitizer runs need their LD_PRELOAD)
    without attnref's own settings, with ``changes``."""
    kept = {name: value for name, value in os.environ.items()
            if name not in ("ATTNREF_REQUIRE_NATIVE", "ATTNREF_DISABLE_KERNEL",
                            "ATTNREF_KERNEL_PATH", "ATTNREF_SANITIZE", "CC")}
    return dict(kept, **changes)


def python(script, cwd):
    """Run ``script`` in a fresh interpreter that imports the attnref in ``cwd``."""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=cwd, env=environment())


def build(tree, **env):
    """``python setup.py build`` of ``tree`` into ``tree/lib``."""
    return subprocess.run([sys.executable, "setup.py", "build", "--build-lib", "lib",
                           "--build-temp", "temp"],
                          capture_output=True, text=True, cwd=tree, env=environment(**env))


def default_compiler():
    return shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0])


# name: (environment, line appended to csrc/attnref.h, pattern the reason must match;
# the alternatives are the messages of setuptools' older and newer command runners)
FAILING_BUILDS = {
    "compiler exits 1": ({"CC": "false"}, None,
                         "false exited with status 1|command 'false' failed with exit code 1"),
    "compiler missing": ({"CC": "/nonexistent/cc"}, None,
                         "No such file or directory.*/nonexistent/cc|"
                         "/nonexistent/cc' failed: No such file or directory"),
    "compile error": ({}, "#error deliberately broken",
                      "csrc/attnref.h:{line}:2: error: #error deliberately broken"),
}


@pytest.fixture(scope="module", params=list(FAILING_BUILDS))
def failed_build(request, tmp_path_factory):
    """A failed build of a copy of the tree, made over an older build whose
    extension is newer than every source (so setuptools' timestamp check
    alone would reuse it): ``(tree, completed build, expected reason text)``."""
    env, broken_line, expected = FAILING_BUILDS[request.param]
    if not env and default_compiler() is None:
        pytest.skip("no C compiler")
    tree = copy_project(tmp_path_factory.mktemp("tree"))
    if broken_line:
        header = tree / "csrc" / "attnref.h"
        expected = expected.format(line=len(header.read_text().splitlines()) + 1)
        with open(header, "a", encoding="utf-8") as stream:
            stream.write(broken_line + "\n")
    stale = tree / "lib" / "attnref" / EXTENSION
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an extension from an older build")
    future = time.time() + 3600
    os.utime(stale, (future, future))
    return tree, build(tree, **env), expected


@needs_setuptools
def test_failed_build_keeps_its_reason_and_attnref_info_shows_it(failed_build):
    tree, run, expected = failed_build
    assert run.returncode == 0, run.stderr   # optional: the package installs without it
    assert "attnref: failed to build the C kernel" in run.stderr
    package = tree / "lib" / "attnref"
    assert not (package / EXTENSION).exists()   # the older extension was not reused
    report = json.loads((package / REPORT).read_text())
    assert re.search(expected, "\n".join([report["error"], *report["output"]]))
    state = python(f"{KERNEL_STATE}\n{INFO}", cwd=tree / "lib")
    assert state.returncode == 0, state.stderr
    available, reason = ast.literal_eval(state.stdout.splitlines()[0])
    assert available is False
    assert reason.startswith("the C kernel failed to build at install: CompileError: ")
    assert re.search(expected, reason)
    assert f"compiler: {report['compiler']}" in reason
    assert f"C kernel: unavailable - {reason}" in state.stdout


@needs_setuptools
def test_required_native_build_fails_the_install_and_keeps_its_reason(tmp_path):
    tree = copy_project(tmp_path)
    run = build(tree, CC="false", ATTNREF_REQUIRE_NATIVE="1")
    assert run.returncode != 0
    report = json.loads((tree / "lib" / "attnref" / REPORT).read_text())
    assert report["compiler"].startswith("false ")


def test_unreadable_build_report_is_said_so(tmp_path):
    package = tmp_path / "attnref"
    shutil.copytree(ROOT / "attnref", package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", REPORT))
    (package / REPORT).write_text(json.dumps({"error": "CompileError", "output": [1, 2]}))
    state = python(KERNEL_STATE, cwd=tmp_path)
    assert state.returncode == 0, state.stderr
    assert ast.literal_eval(state.stdout) == (
        False, f"the C kernel failed to build, and its build report is unreadable: "
               f"{package / REPORT}: the field 'output' must be an array of strings, got [1, 2]")


@pytest.mark.skipif(not kernel.available() or not kernel.info()["module"],
                    reason="needs the compiled kernel")
def test_extension_built_from_other_sources_is_refused(tmp_path):
    """A checkout whose csrc/ changed after its extension was built (an edit,
    a pull without a rebuild) does not load that extension."""
    tree = copy_project(tmp_path)
    shutil.copy(kernel.info()["module"], tree / "attnref")
    assert ast.literal_eval(python(KERNEL_STATE, cwd=tree).stdout) == (True, None)   # as built
    with open(tree / "csrc" / "attnref.c", "a", encoding="utf-8") as stream:
        stream.write("/* edited after the build */\n")
    state = python(f"{KERNEL_STATE}\n{INFO}", cwd=tree)
    available, reason = ast.literal_eval(state.stdout.splitlines()[0])
    assert available is False
    assert reason.startswith(f"the compiled extension {tree / 'attnref' / EXTENSION} was built "
                             f"from other sources than {tree / 'csrc'} (sha256 ")
    assert f"C kernel: unavailable - {reason.splitlines()[0]}" in state.stdout


@pytest.mark.skipif(not kernel.available(), reason="needs the compiled kernel")
def test_extension_records_how_it_was_built():
    build = kernel.info()["build"]
    assert build["sources"] == sources_sha256(ROOT / "csrc")
    assert "-ffp-contract=off" in build["flags"].split()
    assert build["compiler"].split()[0] in ("gcc", "clang", "msvc")


def test_sources_digest_covers_every_source_file(tmp_path):
    for name, text in (("a.c", "int a;"), ("a.h", "int a;"), ("build.py", "x = 1"),
                       ("notes.txt", "not a source")):
        (tmp_path / name).write_text(text)
    assert source_files(tmp_path) == ["a.c", "a.h", "build.py"]
    digests = {sources_sha256(tmp_path)}
    (tmp_path / "a.h").write_text("int b;")                      # an edit
    digests.add(sources_sha256(tmp_path))
    (tmp_path / "b.h").write_text("")                            # an added file, even empty
    digests.add(sources_sha256(tmp_path))
    (tmp_path / "a.h").rename(tmp_path / "c.h")                  # a rename
    digests.add(sources_sha256(tmp_path))
    (tmp_path / "notes.txt").write_text("edited")                # not a source
    digests.add(sources_sha256(tmp_path))
    assert len(digests) == 4


def load_builder():
    spec = importlib.util.spec_from_file_location("build_ffi", ROOT / "csrc" / "build_ffi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("value, flags", [
    ("", ([], [])),
    ("address,undefined", (["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                            "-fno-omit-frame-pointer", "-g"], ["-fsanitize=address,undefined"])),
    (" thread ", (["-fsanitize=thread", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
                   "-g"], ["-fsanitize=thread"])),
])
def test_sanitizer_flags(value, flags):
    assert load_builder().sanitizer_flags(value) == flags


@pytest.mark.parametrize("value, message", [
    ("adress", "ATTNREF_SANITIZE must be a comma-separated list of address, undefined, "
               "thread; got 'adress'"),
    ("thread,address", "ATTNREF_SANITIZE: thread cannot be combined with other sanitizers; "
                       "got 'thread,address'"),
])
def test_sanitizer_names_are_checked(value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        load_builder().sanitizer_flags(value)
