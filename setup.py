"""Build the C kernel through CFFI; everything else is in pyproject.toml.

The extension is optional: without a working C compiler the package installs
as pure NumPy. The build then writes why (the error, the compiler and the
first lines it printed) to ``attnref/_kernel_build_failure.json`` beside where
the extension would be, so that ``attnref info`` and
``attnref.kernel.info()["reason"]`` show it. Set ATTNREF_REQUIRE_NATIVE=1 to
make a failed native build fail the install (CI does).

No build reuses an extension: setuptools' timestamp check would keep one
built from other sources or with other flags (an older checkout's ``build/``,
a header it does not list, ATTNREF_SANITIZE or CFLAGS changed), so the kernel
is always recompiled (about 10 s), and a failed build deletes the extension
it would have replaced.
"""
import contextlib
import json
import os
import subprocess
import sys
import threading

from setuptools import setup
from setuptools.command.build_ext import build_ext

KERNEL = "attnref._kernel"
#: Written next to the extension when its build fails; attnref.kernel reads it.
FAILURE_REPORT = "_kernel_build_failure.json"
#: How many lines of the compiler's output the report keeps.
REPORT_LINES = 15


@contextlib.contextmanager
def teed_output(kept):
    """Copy everything written to file descriptors 1 and 2 (by this process
    and by the compilers it runs) to the original stderr as it comes, and
    append it to the list ``kept``: distutils raises errors that say only
    "exit code 1", the reason is in what the compiler printed."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    saved = (os.dup(1), os.dup(2))

    def pump():
        while chunk := os.read(read_end, 65536):
            os.write(saved[1], chunk)
            kept.append(chunk)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        reader.join()
        for fd in (*saved, read_end):
            os.close(fd)


def first_error_lines(output):
    """Up to REPORT_LINES lines of ``output``, from the first that mentions an
    error (or the last lines, which hold the failing command, when none
    does), each cut to 300 characters."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "error" in line.lower()),
                 max(len(lines) - REPORT_LINES, 0))
    return [line[:300] for line in lines[start:start + REPORT_LINES]]


class optional_build_ext(build_ext):
    def finalize_options(self):
        super().finalize_options()
        self.force = True   # see the module docstring: never reuse an extension

    def run(self):
        # where the extension goes (the source tree with --inplace), taken
        # before a failure leaves setuptools' inplace flag switched off
        extension = self.get_ext_fullpath(KERNEL)
        report = os.path.join(os.path.dirname(extension), FAILURE_REPORT)
        if os.path.exists(report):
            os.remove(report)
        output = []
        try:
            with teed_output(output):
                super().run()
        except Exception as error:  # any compiler/linker failure
            self._give_up(error, b"".join(output).decode(errors="replace"), extension, report)

    def _give_up(self, error, output, extension, report):
        if os.path.exists(extension):  # built from other sources: never install it
            os.remove(extension)
        compiler = getattr(self.compiler, "compiler_so", None) or getattr(self.compiler, "cc", None)
        details = {
            "error": f"{type(error).__name__}: {error}",
            "compiler": " ".join(compiler) if isinstance(compiler, list) else compiler,
            "output": first_error_lines(output),
        }
        failed = error.args[0] if error.args else None
        if isinstance(failed, subprocess.CalledProcessError):  # say the command once, readably
            command = [os.fsdecode(part) for part in failed.cmd]
            details["error"] = (f"{type(error).__name__}: {command[0]} exited with status "
                                f"{failed.returncode}")
            details["command"] = subprocess.list2cmdline(command)
        os.makedirs(os.path.dirname(report), exist_ok=True)
        with open(report, "w", encoding="utf-8") as stream:
            json.dump(details, stream, indent=1)
        if os.environ.get("ATTNREF_REQUIRE_NATIVE", "") not in ("", "0"):
            raise error
        sys.stderr.write(
            "*" * 72 + "\n"
            f"attnref: failed to build the C kernel ({error}).\n"
            "attnref will use its NumPy reference only; attnref.kernel.info() "
            "and `attnref info` say why.\nSet ATTNREF_REQUIRE_NATIVE=1 to make this "
            "an error.\n" + "*" * 72 + "\n")


setup(cffi_modules=["csrc/build_ffi.py:ffibuilder"],
      cmdclass={"build_ext": optional_build_ext})
