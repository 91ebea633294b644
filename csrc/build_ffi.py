"""CFFI builder of ``attnref._kernel`` (out-of-line API mode).

setup.py names it through ``cffi_modules=["csrc/build_ffi.py:ffibuilder"]``.
The declarations come from ``attnref.h``, between its ``/* CFFI_BEGIN */``
and ``/* CFFI_END */`` markers, so the header is their single source
(``cdef`` cannot parse the ``#include``/``#define`` lines around them).

Run it directly to build the module into the current directory.
"""
import os
import sys

from cffi import FFI

CSRC = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(CSRC, "attnref.h")


def _declarations(path):
    """The header text between the CFFI markers."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    begin, end = "/* CFFI_BEGIN */", "/* CFFI_END */"
    return text[text.index(begin) + len(begin):text.index(end)]


ffibuilder = FFI()
ffibuilder.cdef(_declarations(HEADER))
ffibuilder.set_source(
    "attnref._kernel",
    '#include "attnref.h"',
    # setuptools wants sources relative to the project root, the cwd of a build
    sources=[os.path.relpath(os.path.join(CSRC, "attnref.c"))],
    include_dirs=[os.path.relpath(CSRC)],
    depends=[os.path.relpath(os.path.join(CSRC, name))
             for name in ("attnref.h", "sdpa_impl.h", "simd.h", "tiled_impl.h")],
    # no FP contraction: the exact-product and exact-sum steps of the score
    # dot product rely on every operation being rounded on its own
    extra_compile_args=[] if sys.platform == "win32" else ["-O3", "-std=c99", "-ffp-contract=off"],
    libraries=["m", "pthread"] if os.name == "posix" else [],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
