"""Sphinx configuration of the asyncapy documentation (Markdown pages, furo theme).

Build it as CI does (``scripts/test``): warnings are errors, and every
cross-reference must resolve (``-n``)::

    .venv/bin/pip install -e '.[docs]'
    .venv/bin/sphinx-build -W --keep-going -n -b html docs docs/_build/html

The API reference (``api.md``) is read from the docstrings of the checkout's
``src/asyncapy`` (Google style, through napoleon), whether or not the package
is installed.

Nitpicky mode and what it does not check: the build is offline (CI has no
network), so there is no intersphinx inventory of the standard library, and
references to names outside asyncapy (``str``, ``asyncio.Transport``,
``ssl.SSLContext``, click's and msgspec's types...) cannot resolve; they are
ignored by name (``nitpick_ignore*`` below). Every reference to an asyncapy
object must resolve. A name re-exported under another path
(``asyncapy.Server``, ``asyncapy.config.ConfigError``) resolves to the object
where it is documented (``_resolve_reexport``).
"""

from __future__ import annotations

import builtins
import importlib
import sys
from pathlib import Path
from typing import Any

from sphinx.addnodes import pending_xref
from sphinx.ext.napoleon.docstring import GoogleDocstring

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import asyncapy  # noqa: E402  (after the path above)

project = "asyncapy"
author = "asyncapy developers"
copyright = "asyncapy developers"
release = asyncapy.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md"]

# -- Markdown (MyST) -------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links, checked by the build

# -- API reference ---------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = False
# Bases are shown where they say something (api/errors.md, api/filters.md):
# Sphinx 9 writes "Bases:" for every class otherwise, "object" included.
# Google-style docstrings, converted by napoleon's GoogleDocstring in
# _google_docstring below rather than by napoleon's own hook (off here), so
# that attribute and property docstrings stay prose.
napoleon_google_docstring = False
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- Nitpicky: what lies outside asyncapy ----------------------------------------
nitpicky = True
_THIRD_PARTY = ("click", "msgspec", "msgpack", "orjson", "prometheus_client", "uvloop")
_OUTSIDE = "|".join(sorted({*sys.stdlib_module_names, *_THIRD_PARTY}))
nitpick_ignore = [
    (role, name)
    for name in dir(builtins)
    for role in ("py:class", "py:exc", "py:obj", "py:func", "py:data")
]
nitpick_ignore_regex = [
    (r"py:.*", rf"(?:{_OUTSIDE})(?:\..+)?"),
    # Type variables and parameters of generic signatures.
    (r"py:.*", r"(?:.+\.)?(?:[A-Z]|[A-Z]_co|_?P)"),
    # Private names (a base class such as asyncapy.client._ClientCore) are
    # not part of the API and not documented.
    (r"py:.*", r"(?:asyncapy(?:\.\w+)*\.)?_[A-Za-z]\w*(?:\.\w+)*"),
]
# TEMPORARY: two "Raises:" entries of server.py are prose, not "Type: why"
# (wait_started: "Nothing; it waits until serve() has started listening.";
# run_sync_task: "Whatever ``sync_fn`` raises."), so napoleon makes them
# exception names. Remove these once server.py's docstrings say it otherwise.
nitpick_ignore += [
    ("py:exc", "Nothing; it waits until serve"),
    ("py:exc", "has started listening."),
    ("py:exc", "Whatever sync_fn raises."),
]

# -- HTML --------------------------------------------------------------------------
html_theme = "furo"
html_title = f"asyncapy {release}"
html_static_path: list[str] = []
html_show_sourcelink = False


def _google_docstring(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Convert a Google-style docstring to reStructuredText, in place.

    napoleon reads the first line of an attribute's or a property's docstring
    as ``type: description``; ours are prose ("The port listened on: ...")
    and their types come from the annotations, so they are converted as
    plain docstrings.
    """
    kind = "" if what in {"attribute", "property", "data"} else what
    lines[:] = GoogleDocstring(lines, app.config, app, kind, name, obj, options).lines()
    if what == "module":
        lines[:] = _rubrics(lines)


def _rubrics(lines: list[str]) -> list[str]:
    """Turn the section titles of a module docstring into rubrics.

    A title such as "Theory of operation" (underlined with ``-``) would be a
    section, and so a label of the page, which several modules share; a
    rubric looks like a heading and is no target.
    """
    out: list[str] = []
    for line in lines:
        title = out[-1] if out else ""
        underline = line.strip()
        if (
            title.strip()
            and not title.startswith(" ")
            and len(set(underline)) == 1
            and underline[0] in "-=~^"
            and len(underline) >= len(title.strip())
        ):
            out[-1] = f".. rubric:: {title.strip()}"
            out.append("")
            continue
        out.append(line)
    return out


def _peer_client(app: Any, doctree: Any) -> None:
    """A bare ``Client`` in an annotation is the handler's peer, ``asyncapy.core.Client``.

    Modules below ``core`` import it under ``TYPE_CHECKING`` only, so autodoc
    cannot evaluate the annotation and Sphinx's fuzzy search would also find
    the network client ``asyncapy.client.Client``; in that module ``Client``
    is its own class and resolves as written.
    """
    for node in doctree.findall(pending_xref):
        if (
            node.get("refdomain") == "py"
            and node.get("reftarget") == "Client"
            and node.get("py:module") != "asyncapy.client"
        ):
            node["reftarget"] = "asyncapy.core.Client"
            node["refspecific"] = False


def _resolve_reexport(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve a Python reference to a re-exported name where it is documented.

    ``asyncapy.Server`` is ``asyncapy.server.Server``; a docstring of
    ``asyncapy.config`` that says ``ConfigError`` means
    ``asyncapy.errors.ConfigError``. The name is looked up in the module the
    reference was written in (or taken as a full path), and the object's own
    ``__module__.__qualname__`` is resolved instead. Anything else stays
    unresolved (and nitpicky mode reports it).
    """
    if node.get("refdomain") != "py":
        return None
    target: str = node["reftarget"]
    candidates = [target]
    module = node.get("py:module")
    if module:
        candidates.insert(0, f"{module}.{target}")
    domain = env.get_domain("py")
    for candidate in candidates:
        obj = _lookup(candidate)
        if obj is None or isinstance(obj, _VALUES):
            continue
        for documented in _documented_as(domain, obj):
            if documented == candidate:
                continue
            new = node.deepcopy()
            new["reftarget"] = documented
            new["refspecific"] = False
            found = domain.resolve_xref(
                env, node["refdoc"], app.builder, "obj", documented, new, contnode
            )
            if found is not None:
                return found
    return None


# Values whose identity says nothing (small ints and strings are shared).
_VALUES = (int, float, str, bytes, bool, tuple, type(None))


def _documented_as(domain: Any, obj: Any) -> list[str]:
    """The documented asyncapy names whose runtime object is ``obj``."""
    names = [
        name
        for name, *_ in domain.objects.items()
        if name.startswith("asyncapy.") and _lookup(name) is obj
    ]
    return sorted(names, key=lambda name: (name.count("._"), len(name)))


def _lookup(path: str) -> Any:
    """The asyncapy object at dotted ``path``, or None."""
    if not path.startswith("asyncapy"):
        return None
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def setup(app: Any) -> None:
    app.connect("autodoc-process-docstring", _google_docstring)
    app.connect("doctree-read", _peer_client)
    app.connect("missing-reference", _resolve_reexport)
