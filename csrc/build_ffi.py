"""CFFI builder of ``attnref._kernel`` (out-of-line API mode).

setup.py names it through ``cffi_modules=["csrc/build_ffi.py:ffibuilder"]``.
The declarations come from ``attnref.h``, between its ``/* CFFI_BEGIN */``
and ``/* CFFI_END */`` markers, so the header is their single source
(``cdef`` cannot parse the ``#include``/``#define`` lines around them).

The extension also says how it was built, for ``attnref.kernel.info()``:
``attnref_build_sources()`` is the sha256 of the sources in ``csrc/``
(:mod:`attnref._kernel_sources`), ``attnref_build_flags()`` the extra compiler
flags, ``attnref_build_compiler()`` the compiler's name and version.

Environment:
``ATTNREF_SANITIZE``: build with sanitizers, a comma-separated list of
:data:`SANITIZERS` (``address,undefined`` or ``thread``; docs/sanitizers.md
says how to run the result).

Run it directly to build the module into the current directory.
"""
import importlib.util
import json
import os
import sys

from cffi import FFI

CSRC = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(CSRC, "attnref.h")
#: What ATTNREF_SANITIZE may name (the compilers' -fsanitize= names).
SANITIZERS = ("address", "undefined", "thread")

BUILD_DECLARATIONS = """
const char *attnref_build_sources(void);
const char *attnref_build_flags(void);
const char *attnref_build_compiler(void);
"""


def _declarations(path):
    """The header text between the CFFI markers."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    begin, end = "/* CFFI_BEGIN */", "/* CFFI_END */"
    return text[text.index(begin) + len(begin):text.index(end)]


def _kernel_sources():
    """attnref/_kernel_sources.py, loaded by path: the package itself cannot
    be imported at build time (its dependencies may not be installed yet)."""
    path = os.path.join(os.path.dirname(CSRC), "attnref", "_kernel_sources.py")
    spec = importlib.util.spec_from_file_location("_attnref_kernel_sources", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sanitizer_flags(value):
    """Compiler and linker flags for ATTNREF_SANITIZE=``value`` ("" for none).

    Sanitizer errors abort (``-fno-sanitize-recover=all``: UBSan would
    otherwise print and go on) and keep frame pointers and debug lines, so
    that reports have stack traces; the optimisation level stays the one
    shipped, so that the code checked is the code released.
    """
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in SANITIZERS]
    if unknown:
        raise ValueError(f"ATTNREF_SANITIZE must be a comma-separated list of "
                         f"{', '.join(SANITIZERS)}; got {value!r}")
    if "thread" in names and len(names) > 1:
        raise ValueError(f"ATTNREF_SANITIZE: thread cannot be combined with other "
                         f"sanitizers; got {value!r}")
    if not names:
        return [], []
    sanitize = "-fsanitize=" + ",".join(names)
    return [sanitize, "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"], [sanitize]


def _c_string(text):
    """``text`` (ASCII) as a C string literal."""
    return json.dumps(text, ensure_ascii=True)


kernel_sources = _kernel_sources()
sanitize_compile, sanitize_link = sanitizer_flags(os.environ.get("ATTNREF_SANITIZE", ""))
# no FP contraction: the exact-product and exact-sum steps of the score
# dot product rely on every operation being rounded on its own
compile_flags = ([] if sys.platform == "win32" else ["-O3", "-std=c99", "-ffp-contract=off"]
                 ) + sanitize_compile

ffibuilder = FFI()
ffibuilder.cdef(_declarations(HEADER) + BUILD_DECLARATIONS)
ffibuilder.set_source(
    "attnref._kernel",
    f"""#include "attnref.h"
static const char *attnref_build_sources(void)
{{
    return {_c_string(kernel_sources.sources_sha256(CSRC))};
}}
static const char *attnref_build_flags(void)
{{
    return {_c_string(" ".join(compile_flags))};
}}
static const char *attnref_build_compiler(void)
{{
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "gcc " __VERSION__;
#elif defined(_MSC_VER)
    return "msvc";
#else
    return "unknown";
#endif
}}
""",
    # setuptools wants sources relative to the project root, the cwd of a build
    sources=[os.path.relpath(os.path.join(CSRC, name))
             for name in kernel_sources.source_files(CSRC) if name.endswith(".c")],
    include_dirs=[os.path.relpath(CSRC)],
    depends=[os.path.relpath(os.path.join(CSRC, name))
             for name in kernel_sources.source_files(CSRC) if name.endswith(".h")],
    extra_compile_args=compile_flags,
    extra_link_args=sanitize_link,
    libraries=["m", "pthread"] if os.name == "posix" else [],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
