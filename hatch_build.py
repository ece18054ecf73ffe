"""Hatch build hook: compile asyncapy's hot modules with mypyc (docs/compiled.md).

Theory of operation
-------------------
hatchling builds the wheel from ``src/asyncapy`` as usual; this hook, run
before it (``[tool.hatch.build.targets.wheel.hooks.custom]`` in
pyproject.toml), may add compiled extension modules to it:

1. Nothing happens for an editable install (``pip install -e .``: source edits
   must take effect), for any target but the wheel, when ``ASYNCAPY_NO_COMPILE``
   is set to anything but ``""`` or ``"0"``, or on an interpreter mypyc does
   not support (not CPython). The wheel is then pure Python,
   ``py3-none-any``.
2. A probe compiles and links a one-line C file that includes ``Python.h``
   with the compiler setuptools would use (``$CC`` or the one Python was
   built with). If that fails there is no working compiler (or no Python
   headers): one warning line goes to stderr and the wheel is pure Python.
3. Otherwise the source tree is copied to a temporary directory (nothing is
   written under src/), mypyc compiles the modules listed in
   ``src/asyncapy/_compiled.py`` (``COMPILED_MODULES``, read with
   :func:`ast.literal_eval`: the one list of them), with the project's
   ``[tool.mypy]`` settings, and setuptools' ``build_ext`` builds the
   extensions. Any failure here is a bug and fails the build, loudly.
4. The extension files join the wheel next to the ``.py`` files (an
   extension module wins over a ``.py`` file of the same name at import), the
   wheel is marked not pure, and hatchling tags it for this interpreter and
   platform (e.g. ``cp311-cp311-linux_x86_64``).

Steps 2 and 3 run in child processes of this interpreter (``python
hatch_build.py probe|compile``), so that setuptools' distutils patching and
mypy's memory stay out of the build backend's process.
"""

from __future__ import annotations

import ast
import importlib.machinery
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

LIST_FILE = Path("src", "asyncapy", "_compiled.py")  # holds COMPILED_MODULES
SOURCE_ROOT = Path("src")
NO_COMPILE_VARIABLE = "ASYNCAPY_NO_COMPILE"
PROBE_C = "#include <Python.h>\nint asyncapy_probe(void) { return Py_IsInitialized(); }\n"


def hot_modules(root: Path) -> tuple[str, ...]:
    """Read ``COMPILED_MODULES`` from ``src/asyncapy/_compiled.py`` without importing it.

    Raises:
        ValueError: if the file has no literal tuple of module names by that name.
    """
    tree = ast.parse((root / LIST_FILE).read_text(encoding="utf-8"))
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        elif isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        if any(isinstance(name, ast.Name) and name.id == "COMPILED_MODULES" for name in targets):
            names = ast.literal_eval(value)
            if isinstance(names, tuple) and all(isinstance(name, str) for name in names):
                return names
    raise ValueError(f"{LIST_FILE}: no literal tuple COMPILED_MODULES of module names")


def no_compile_requested() -> bool:
    """True if ``ASYNCAPY_NO_COMPILE`` is set to anything but ``""`` or ``"0"``."""
    return os.environ.get(NO_COMPILE_VARIABLE, "") not in ("", "0")


def warn(message: str) -> None:
    """One line on stderr (pip shows it with ``-v``, ``python -m build`` always)."""
    print(f"asyncapy build: {message}", file=sys.stderr, flush=True)


def _child(command: str, cwd: Path, *args: str, capture: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), command, *args],
        cwd=cwd,
        text=True,
        capture_output=capture,
        check=False,
    )


def compiler_problem(workdir: Path) -> str | None:
    """Try the C compiler on a file that includes Python.h.

    Returns:
        None if it compiles and links, else a one-line reason.
    """
    probe = _child("probe", workdir, capture=True)
    if probe.returncode == 0:
        return None
    lines = [line.strip() for line in (probe.stdout + probe.stderr).splitlines() if line.strip()]
    return lines[-1] if lines else f"the compiler probe exited with status {probe.returncode}"


def built_modules(out: Path) -> dict[str, Path]:
    """The extension modules under ``out``, by dotted module name."""
    suffixes = sorted(importlib.machinery.EXTENSION_SUFFIXES, key=len, reverse=True)
    found = {}
    for path in out.rglob("*"):
        relative = path.relative_to(out).as_posix()
        for suffix in suffixes:
            if relative.endswith(suffix) and path.is_file():
                found[relative.removesuffix(suffix).replace("/", ".")] = path
                break
    return found


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Add the mypyc-compiled hot modules to a wheel when a compiler works."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Compile the hot modules, or leave the wheel pure Python (see the module docstring).

        Raises:
            RuntimeError: if mypyc or the C compiler fails on the hot modules
                although the probe compiled: a bug in the source or the build.
        """
        self._workdir: Path | None = None
        if self.target_name != "wheel" or version == "editable":
            return
        if no_compile_requested():
            warn(f"{NO_COMPILE_VARIABLE} is set: building the pure-Python wheel")
            return
        if sys.implementation.name != "cpython":
            warn(f"mypyc needs CPython, not {sys.implementation.name}: building pure Python")
            return
        root = Path(self.root)
        modules = hot_modules(root)
        workdir = self._workdir = Path(tempfile.mkdtemp(prefix="asyncapy-mypyc-"))
        problem = compiler_problem(workdir)
        if problem is not None:
            warn(f"no working C compiler ({problem}): building the pure-Python wheel")
            return
        tree = workdir / "src"
        shutil.copytree(
            root / SOURCE_ROOT / "asyncapy",
            tree / "asyncapy",
            ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "*.pyc"),
        )
        out = workdir / "lib"
        paths = [str(Path(*name.split(".")).with_suffix(".py")) for name in modules]
        started = time.monotonic()
        config = str(root / "pyproject.toml")
        done = _child("compile", tree, config, str(out), *paths, capture=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"mypyc could not compile {', '.join(modules)} (exit status {done.returncode},"
                f" output above); this is a bug. {NO_COMPILE_VARIABLE}=1 builds pure Python."
            )
        built = built_modules(out)
        missing = [name for name in modules if name not in built]
        if missing:
            raise RuntimeError(f"mypyc built no extension module for {', '.join(missing)}")
        for path in built.values():
            build_data["force_include"][str(path)] = path.relative_to(out).as_posix()
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        warn(f"compiled {len(modules)} modules with mypyc in {time.monotonic() - started:.0f} s")

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        """Remove the temporary build directory once the wheel is written."""
        workdir = getattr(self, "_workdir", None)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _probe() -> int:
    """Child: build PROBE_C as an extension in the current directory; exit status 0 if it works.

    It goes through setuptools' ``build_ext`` like the real build, so it uses
    the same compiler, flags and headers.
    """
    from setuptools import Distribution, Extension

    Path("probe.c").write_text(PROBE_C, encoding="utf-8")
    extension = Extension("probe", ["probe.c"])
    dist = Distribution({"name": "asyncapy-probe", "ext_modules": [extension]})
    command: Any = dist.get_command_obj("build_ext")
    command.build_lib = "."
    command.build_temp = "obj"
    try:
        dist.run_command("build_ext")
    except Exception as exc:  # any failure means: no working compiler here
        print(f"{type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    return 0


def _compile(config: str, out: str, paths: list[str]) -> int:
    """Child, in a copy of src/: mypyc-compile ``paths`` and build the extensions into ``out``."""
    from mypyc.build import mypycify
    from setuptools import Distribution

    work = Path.cwd().parent
    try:
        extensions = mypycify(
            [
                *("--config-file", config, "--cache-dir", str(work / "mypy-cache")),
                # Errors only in the compiled modules: the others are analysed
                # for their types, but one may import an optional package
                # (redis) that this environment lacks; mypy --strict src checks them.
                "--follow-imports=silent",
                *paths,
            ],
            target_dir=str(work / "c"),
        )
    except SystemExit as exc:  # mypyc exits on type errors, after printing them
        print(f"asyncapy build: mypyc failed ({exc.code})", file=sys.stderr)
        return 1
    dist = Distribution({"name": "asyncapy-mypyc", "ext_modules": extensions})
    command: Any = dist.get_command_obj("build_ext")
    command.build_lib = out
    command.build_temp = str(work / "obj")
    dist.run_command("build_ext")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["probe"]:
        sys.exit(_probe())
    if sys.argv[1:2] == ["compile"] and len(sys.argv) > 4:
        sys.exit(_compile(sys.argv[2], sys.argv[3], sys.argv[4:]))
    sys.exit("usage: python hatch_build.py probe | compile CONFIG OUT_DIR MODULE.py...")
