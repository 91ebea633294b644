"""What the C kernel is built from: one sha256 over the sources in ``csrc/``.

``csrc/build_ffi.py`` compiles the digest into the extension (its
``attnref_build_sources()``), and :mod:`attnref.kernel`, when it runs from a
checkout, recomputes it from the checkout's ``csrc/`` and refuses an extension
built from other sources (one left over from before an edit or a ``git pull``).

Standard library only: the builder loads this file by its path, at build time,
where neither attnref nor NumPy can be imported.
"""
import hashlib
import os

__all__ = ["SOURCE_SUFFIXES", "source_files", "sources_sha256"]

#: The files of ``csrc/`` that the extension depends on: the C sources and
#: headers, and the builder itself (it sets the flags and the declarations).
SOURCE_SUFFIXES = (".c", ".h", ".py")


def source_files(csrc):
    """The names of the source files in directory ``csrc``, sorted."""
    return sorted(name for name in os.listdir(csrc)
                  if name.endswith(SOURCE_SUFFIXES) and os.path.isfile(os.path.join(csrc, name)))


def sources_sha256(csrc):
    """The hex sha256 of the source files of ``csrc``: each file's name, its
    length and its bytes, in name order (so that a renamed, added or removed
    file changes the digest as an edited one does)."""
    digest = hashlib.sha256()
    for name in source_files(csrc):
        with open(os.path.join(csrc, name), "rb") as stream:
            content = stream.read()
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()
