"""Which build these tests run on: compiled with mypyc, or pure Python.

scripts/test sets ``ASYNCAPY_EXPECT_BUILD=compiled`` for the suite it runs
on a normal (compiled) install and ``pure`` for the editable one, so each run
proves which build it tested, and that it imported the installed package
rather than src/. Without the variable only consistency is checked. The
build hook's own logic (``hatch_build.py``) is tested here too, without
building (a build takes about 25 s; scripts/test does one per Python).
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

import asyncapy
from asyncapy import _compiled
from asyncapy._compiled import COMPILED_MODULES, compiled_modules, describe, is_extension
from asyncapy.cli import cli

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "asyncapy"
EXPECT = os.environ.get("ASYNCAPY_EXPECT_BUILD", "")
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.fixture(scope="module")
def hook() -> ModuleType:
    """hatch_build.py, loaded from the checkout (it is not part of the package)."""
    pytest.importorskip("hatchling", reason="hatchling is in the test extra")
    spec = importlib.util.spec_from_file_location("asyncapy_hatch_build", ROOT / "hatch_build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_expected_build_is_known() -> None:
    assert EXPECT in ("", "compiled", "pure"), f"ASYNCAPY_EXPECT_BUILD={EXPECT!r}"


def test_the_build_is_all_or_nothing() -> None:
    """A build compiles every listed module or none: a mix is a stale install."""
    assert compiled_modules() in ((), COMPILED_MODULES)


@pytest.mark.skipif(EXPECT != "compiled", reason="ASYNCAPY_EXPECT_BUILD is not 'compiled'")
def test_compiled_build_runs_every_hot_module_compiled() -> None:
    assert compiled_modules() == COMPILED_MODULES
    for name in COMPILED_MODULES:
        path = Path(sys.modules[name].__file__ or "")
        assert path.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), path
    # The installed package, not the checkout: src/ would be pure Python.
    assert not Path(asyncapy.__file__).resolve().is_relative_to(SOURCE.parent)


@pytest.mark.skipif(EXPECT != "pure", reason="ASYNCAPY_EXPECT_BUILD is not 'pure'")
def test_pure_build_runs_the_source() -> None:
    assert compiled_modules() == ()
    for name in COMPILED_MODULES:
        path = Path(sys.modules[name].__file__ or "").resolve()
        assert path == SOURCE / f"{name.split('.')[1]}.py"
    assert Path(asyncapy.__file__).resolve() == SOURCE / "__init__.py"


def test_every_listed_module_has_its_source() -> None:
    assert COMPILED_MODULES
    assert len(set(COMPILED_MODULES)) == len(COMPILED_MODULES)
    for name in COMPILED_MODULES:
        package, _, module = name.partition(".")
        assert package == "asyncapy"
        assert (SOURCE / f"{module}.py").is_file(), name


def test_no_compiled_module_awaits() -> None:
    """mypyc passes a cancellation into an awaited object with the three-argument
    throw(), which 3.12+ deprecate: code that awaits stays in plain-Python modules
    (asyncapy._suspended)."""
    for name in COMPILED_MODULES:
        tree = ast.parse((SOURCE / f"{name.partition('.')[2]}.py").read_text())
        awaits = [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.AsyncFunctionDef | ast.Await | ast.AsyncFor | ast.AsyncWith)
        ]
        assert awaits == [], f"{name} awaits at lines {awaits}"


def test_is_extension() -> None:
    assert not is_extension(None)
    assert not is_extension("/x/asyncapy/protocol.py")
    assert not is_extension("/x/asyncapy/protocol.pyc")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        assert is_extension(f"/x/asyncapy/protocol{suffix}")


def test_describe_names_compiled_and_pure_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compiled, "compiled_modules", lambda: ())
    assert describe() == "pure Python"
    monkeypatch.setattr(_compiled, "compiled_modules", lambda: COMPILED_MODULES)
    assert describe() == "compiled: " + ", ".join(n.split(".")[1] for n in COMPILED_MODULES)
    monkeypatch.setattr(_compiled, "compiled_modules", lambda: COMPILED_MODULES[1:])
    assert describe() == (
        "compiled: "
        + ", ".join(n.split(".")[1] for n in COMPILED_MODULES[1:])
        + "; pure Python: "
        + COMPILED_MODULES[0].split(".")[1]
    )


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_cli_version_says_which_build(flag: str) -> None:
    result = CliRunner().invoke(cli, [flag])
    assert result.exit_code == 0, result.output
    expected = "compiled: protocol" if compiled_modules() else "pure Python"
    assert result.output.startswith(f"asyncapy {asyncapy.__version__} ({expected}")
    assert result.output == f"asyncapy {asyncapy.__version__} ({describe()})\n"


# --- hatch_build.py -------------------------------------------------------------


def test_hook_reads_the_one_list(hook: ModuleType) -> None:
    assert hook.hot_modules(ROOT) == COMPILED_MODULES


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("COMPILED_MODULES = ['asyncapy.protocol']\n", "no literal tuple"),
        ("COMPILED_MODULES: tuple[str, ...] = ('asyncapy.protocol', 1)\n", "no literal tuple"),
        ("OTHER = ('asyncapy.protocol',)\n", "no literal tuple"),
        ("COMPILED_MODULES = tuple(NAMES)\n", "malformed"),
    ],
)
def test_hook_refuses_a_list_it_cannot_read(
    hook: ModuleType, tmp_path: Path, source: str, message: str
) -> None:
    (tmp_path / "src" / "asyncapy").mkdir(parents=True)
    (tmp_path / "src" / "asyncapy" / "_compiled.py").write_text(source, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        hook.hot_modules(tmp_path)


@pytest.mark.parametrize(
    ("value", "pure"),
    [(None, False), ("", False), ("0", False), ("1", True), ("yes", True), ("00", True)],
)
def test_hook_no_compile_variable(
    hook: ModuleType, monkeypatch: pytest.MonkeyPatch, value: str | None, pure: bool
) -> None:
    if value is None:
        monkeypatch.delenv("ASYNCAPY_NO_COMPILE", raising=False)
    else:
        monkeypatch.setenv("ASYNCAPY_NO_COMPILE", value)
    assert hook.no_compile_requested() is pure


def test_hook_finds_built_modules(hook: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "asyncapy").mkdir()
    for name in ("asyncapy/protocol", "asyncapy/codecs", "abc123__mypyc"):
        (tmp_path / f"{name}{SUFFIX}").write_bytes(b"")
    (tmp_path / "asyncapy" / "protocol.c").write_bytes(b"")
    (tmp_path / "asyncapy" / f"dir{SUFFIX}").mkdir()
    assert hook.built_modules(tmp_path) == {
        "asyncapy.protocol": tmp_path / "asyncapy" / f"protocol{SUFFIX}",
        "asyncapy.codecs": tmp_path / "asyncapy" / f"codecs{SUFFIX}",
        "abc123__mypyc": tmp_path / f"abc123__mypyc{SUFFIX}",
    }


def _probe(where: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``python hatch_build.py probe`` in ``where`` with ``env``."""
    return subprocess.run(
        [sys.executable, str(ROOT / "hatch_build.py"), "probe"],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hook_probe_without_a_compiler(hook: ModuleType, tmp_path: Path) -> None:
    """The probe that decides compiled vs pure: a compiler that does not exist fails it."""
    pytest.importorskip("setuptools", reason="setuptools is in the test extra")
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc")}
    result = _probe(tmp_path, env)
    assert result.returncode == 1
    assert "no-such-cc" in result.stderr
    assert not list(tmp_path.glob(f"*{SUFFIX}"))


def test_hook_probe_with_the_compiler_python_was_built_with(
    hook: ModuleType, tmp_path: Path
) -> None:
    """Where this interpreter's compiler is installed, the probe builds an extension."""
    pytest.importorskip("setuptools", reason="setuptools is in the test extra")
    compiler = str(sysconfig.get_config_var("CC") or "").split()
    if not compiler or not any(
        (Path(directory) / compiler[0]).is_file()
        for directory in os.environ.get("PATH", "").split(os.pathsep)
    ):
        pytest.skip(f"no {compiler[:1]} on PATH")
    env = {key: value for key, value in os.environ.items() if key != "CC"}
    result = _probe(tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / f"probe{SUFFIX}").is_file()
