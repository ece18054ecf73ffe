"""``asyncapy schema MODULE:SERVER``, and the check of ``asyncapy send --validate``.

The app is imported as ``asyncapy run`` imports it
(:func:`asyncapy.supervisors._worker.load_app`: from the current directory,
a ``server.start()`` at import time does nothing), and the document that
:func:`asyncapy._schema.build_schema` makes is printed as indented JSON with
sorted keys, or written to ``-o FILE``.

Exit status: 0 on success; 1 when the app does not load, a handler's type
has no JSON Schema or the file cannot be written, with one line on stderr;
2 on a usage error.

:func:`request_errors` checks a payload against such a document with the
``jsonschema`` package (an optional dependency: ``asyncapy[schema]``).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ._schema import DIALECT, build_schema, dump_schema
from .errors import ConfigError
from .server import Server

__all__ = ["payload_refused", "request_errors", "schema"]


def _load(app: str) -> Server:
    """The app's server, imported as ``asyncapy run`` does, without staying "supervised".

    Raises:
        ConfigError: with one line, when the app does not load.
    """
    from .supervisors._worker import load_app

    supervised = Server._supervised
    try:
        return load_app(app)
    finally:
        Server._supervised = supervised  # load_app sets it: start() at import is a no-op


@click.command()
@click.argument("app", metavar="MODULE:SERVER")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the document to FILE instead of stdout.",
)
def schema(app: str, output: str | None) -> int:
    """Print the JSON Schema (draft 2020-12) of MODULE:SERVER's handlers.

    The document validates a request against the typed handlers' request
    types (anyOf); its "x-asyncapy" object lists every handler in dispatch
    order with its group, filters, request and reply schemas and the ERR_*
    codes it can answer with, the server's own codes, and how JSON and
    ZiProto differ. `asyncapy send --validate FILE` checks a payload with it.
    """
    server = _load(app)
    try:
        text = dump_schema(build_schema(server, title=f"Requests of {app}"))
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    if output is None:
        click.echo(text, nl=False)
        return 0
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {output!r}: {exc.strerror or exc}") from None
    return 0


def _request_schema(document: dict[str, Any], handler: str | None) -> dict[str, Any] | None:
    """The schema to check a request with: the document's, or one handler's (None: untyped)."""
    if handler is None:
        return document
    extension = document.get("x-asyncapy")
    entries = extension.get("handlers") if isinstance(extension, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the document has no x-asyncapy handlers: is it from asyncapy schema?")
    found = [entry for entry in entries if isinstance(entry, dict) and entry.get("name") == handler]
    if not found:
        names = ", ".join(sorted({str(entry.get("name")) for entry in entries})) or "none"
        raise ValueError(f"no handler named {handler!r} in the document (it has: {names})")
    requests = [entry.get("request") for entry in found]
    if any(request != requests[0] for request in requests):
        raise ValueError(f"{len(found)} handlers are named {handler!r}, with different requests")
    request = requests[0]
    if request is None:
        return None
    return {"$schema": DIALECT, "$defs": document.get("$defs", {}), **request}


def _leaves(error: Any) -> Iterator[Any]:
    """The innermost errors under ``error`` (an ``anyOf`` failure has one set per branch)."""
    if error.context:
        for inner in error.context:
            yield from _leaves(inner)
    else:
        yield error


def _lines(errors: Any) -> list[str]:
    """``"$.path: message"``, sorted by path then message, without repeats."""
    return sorted(
        {f"{leaf.json_path}: {leaf.message}" for error in errors for leaf in _leaves(error)}
    )


def request_errors(document: dict[str, Any], payload: Any, handler: str | None = None) -> list[str]:
    """Every reason ``payload`` is not a request that ``document`` accepts; [] when it is.

    Checked with the ``jsonschema`` package (draft 2020-12) against the
    document itself (any typed handler's request), or with ``handler``
    against that handler's request schema only (an untyped handler takes any
    payload). Each line is ``"$.json.path: message"``; when no typed handler
    takes the payload, the errors of each candidate come prefixed with
    ``[handler names]``.

    Raises:
        ModuleNotFoundError: ``jsonschema`` is not installed.
        ValueError: the document is not a valid JSON Schema, or names no
            (or more than one different) ``handler``.
    """
    jsonschema = importlib.import_module("jsonschema")
    schema = _request_schema(document, handler)
    if schema is None:
        return []
    validator_class = jsonschema.Draft202012Validator
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"not a valid JSON Schema: {exc.json_path}: {exc.message}") from None
    branches: list[Any] = schema.get("anyOf", []) if handler is None else []
    extension = document.get("x-asyncapy")
    entries = extension.get("handlers", []) if isinstance(extension, dict) else []
    plain: list[Any] = []
    lines: list[str] = []
    for error in validator_class(schema).iter_errors(payload):
        if not (branches and list(error.relative_schema_path) == ["anyOf"]):
            plain.append(error)
            continue
        by_branch: dict[int, list[Any]] = {}
        for inner in error.context:
            by_branch.setdefault(inner.relative_schema_path[0], []).append(inner)
        for index, branch in enumerate(branches):
            names = [
                str(entry.get("name"))
                for entry in entries
                if isinstance(entry, dict) and entry.get("request") == branch
            ]
            label = "[" + ", ".join(names or [f"anyOf[{index}]"]) + "] "
            lines.extend(label + line for line in _lines(by_branch.get(index, [])))
    return _lines(plain) + lines


def payload_refused(schema_path: str, payload: dict[Any, Any], handler: str | None) -> bool:
    """Check ``payload`` against the document in ``schema_path``; print why it fails.

    Returns:
        True when the payload does not conform or cannot be checked (the
        reason is on stderr, one line each), False when it conforms.
    """
    try:
        document = json.loads(Path(schema_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        click.echo(f"asyncapy send: --validate: cannot read {schema_path!r}: {exc}", err=True)
        return True
    if not isinstance(document, dict):
        click.echo(f"asyncapy send: --validate: {schema_path!r} is not a JSON Schema", err=True)
        return True
    try:
        errors = request_errors(document, payload, handler)
    except ModuleNotFoundError as exc:
        if exc.name != "jsonschema":
            raise
        click.echo(
            "asyncapy send: --validate needs the jsonschema package:"
            " pip install 'asyncapy[schema]'",
            err=True,
        )
        return True
    except ValueError as exc:
        click.echo(f"asyncapy send: --validate: {schema_path!r}: {exc}", err=True)
        return True
    if errors:
        target = "the request of handler " + repr(handler) if handler else "a request"
        click.echo(
            f"asyncapy send: the payload is not {target} of {schema_path!r}"
            f" ({len(errors)} error{'s' if len(errors) > 1 else ''}); nothing was sent:",
            err=True,
        )
        for line in errors:
            click.echo(f"  {line}", err=True)
    return bool(errors)
