"""The optional packages attnref can use and the command that installs each.

attnref itself needs only NumPy and CFFI. The frameworks it compares
against or checks (torch, JAX, ONNX, ONNX Runtime) and the helpers some
dtypes need (ml_dtypes for bfloat16) are imported when first used, through
:func:`import_optional`, so that a missing one is an ImportError naming the
command that installs it.
"""
from __future__ import annotations

import importlib

__all__ = ["INSTALL_COMMANDS", "import_optional"]

# torch from its CPU wheel index: plain `pip install torch` on Linux pulls the
# CUDA build, gigabytes attnref never uses.
INSTALL_COMMANDS = {
    "torch": "pip install torch --index-url https://download.pytorch.org/whl/cpu",
    "jax": "pip install jax jaxlib",
    "onnx": "pip install onnx",
    "onnxruntime": "pip install onnxruntime",
    "ml_dtypes": "pip install ml_dtypes",
}


def import_optional(name, needed_by="this adapter"):
    """Import the optional package ``name`` (a key of :data:`INSTALL_COMMANDS`).

    Raises
    ------
    ImportError
        When it is not installed, saying what needs it (``needed_by``) and
        the command that installs it.
    """
    if name not in INSTALL_COMMANDS:
        raise ValueError(f"name must be one of {sorted(INSTALL_COMMANDS)}, got {name!r}")
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"{needed_by} needs {name}, which is not installed: "
                          f"{INSTALL_COMMANDS[name]}") from error
