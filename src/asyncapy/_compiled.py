"""Which of asyncapy's hot modules this installation runs compiled.

A normal ``pip install`` on a machine with a C compiler compiles the modules
named in :data:`COMPILED_MODULES` with mypyc (``hatch_build.py`` reads the
list from this file, so it lives in one place); an editable install, a build
with ``ASYNCAPY_NO_COMPILE=1`` or one without a compiler runs the same source
as plain Python. ``asyncapy --version`` prints the answer of
:func:`compiled_modules` (docs/compiled.md).

This module must stay importable without importing the hot modules, and its
list must stay a literal tuple of strings: the build reads it with
:func:`ast.literal_eval`, before any dependency is installed.
"""

from __future__ import annotations

import importlib
import importlib.machinery

#: The modules the build compiles with mypyc, in import order.
COMPILED_MODULES: tuple[str, ...] = (
    "asyncapy.protocol",
    "asyncapy.codecs",
    "asyncapy._eager",
    "asyncapy.dispatch",
    "asyncapy._connection",
    "asyncapy._match",
)


def is_extension(path: str | None) -> bool:
    """Tell whether a module file is a compiled extension module.

    Args:
        path: A module's ``__file__`` (None for a namespace or built-in module).

    Returns:
        True if ``path`` ends with one of this interpreter's extension-module
        suffixes (``.cpython-311-x86_64-linux-gnu.so``, ``.abi3.so``, ``.pyd``...).
    """
    return path is not None and path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def compiled_modules() -> tuple[str, ...]:
    """The modules of :data:`COMPILED_MODULES` that run compiled here.

    Each is imported (they are imported by ``import asyncapy`` anyway) and
    counted when it was loaded from an extension module rather than a ``.py``
    file.

    Returns:
        The compiled ones, in the order of :data:`COMPILED_MODULES`: all of
        them for a compiled build, none for a pure-Python one.

    Raises:
        ImportError: if a hot module cannot be imported (a broken install).
    """
    return tuple(
        name
        for name in COMPILED_MODULES
        if is_extension(getattr(importlib.import_module(name), "__file__", None))
    )


def describe() -> str:
    """One line for ``asyncapy --version``: which hot modules run compiled.

    Returns:
        ``"compiled: protocol, codecs, ..."`` naming the compiled modules
        (with ``"; pure Python: ..."`` for any of the list that is not), or
        ``"pure Python"`` when none is compiled.
    """
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    text = "compiled: " + ", ".join(name.rpartition(".")[2] for name in compiled)
    pure = [name.rpartition(".")[2] for name in COMPILED_MODULES if name not in compiled]
    if pure:
        text += "; pure Python: " + ", ".join(pure)
    return text
