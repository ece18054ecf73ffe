"""``asyncapy keys``: issue, list, revoke and reissue API keys in a store.

Every subcommand takes ``--store URL`` (default: ``$ASYNCAPY_STORE``, else
an error: a memory store would forget the keys when the command exits) and
reads the pepper, if the app uses one, from the environment variable that
``--pepper-env`` names (``ASYNCAPY_KEY_PEPPER`` by default), never from the
command line, where ``ps`` would show it. A key is printed once, by ``issue``
and ``reissue``; ``list`` shows each key's id (the start of its digest), its
hint, when it was issued and its metadata, never a key. ``revoke`` and
``reissue`` take a key or an id (8 or more hex digits, unique).

Exit status: 0 on success, 1 when the store fails or the key is unknown, 2 on
a usage error; errors are one line on stderr.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

import click

from .stores import KeyRecord, StoreError
from .util import APIKeyFactory

__all__ = ["keys"]

ID_LENGTH = 12
"""Hex digits of a digest that ``list`` shows as the key's id."""

MIN_ID = 8
"""The fewest hex digits that ``revoke`` and ``reissue`` accept as an id."""


def _factory(store: str | None, size: int, prefix: str, pepper_env: str) -> APIKeyFactory:
    if not store:
        raise click.UsageError(
            "--store (or ASYNCAPY_STORE) is required: sqlite:///... or redis://..."
        )
    if store.startswith("memory:"):
        raise click.UsageError("a memory:// store forgets its keys when the command exits")
    try:
        return APIKeyFactory(size, store=store, prefix=prefix, pepper=os.environ.get(pepper_env))
    except (StoreError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None


def _find(factory: APIKeyFactory, key_or_id: str) -> KeyRecord:
    """The record of a key, or of a unique id (digest prefix)."""
    keys = factory.backend.keys
    text = key_or_id.strip()
    if factory.well_formed(text):
        record = keys.get(factory.digest(text))
        if record is not None:
            return record
    lowered = text.lower()
    if len(lowered) >= MIN_ID and all(c in "0123456789abcdef" for c in lowered):
        found = [r for r in keys.records() if r.digest.startswith(lowered)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise click.ClickException(f"id {text} matches {len(found)} keys: give more digits")
    raise click.ClickException("no such key or id in the store")


def _metadata(pairs: tuple[str, ...], as_json: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    if as_json is not None:
        try:
            loaded = json.loads(as_json)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--json") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--json")
        metadata.update(loaded)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="-m")
        metadata[name] = value
    return metadata


def _common(function: Any) -> Any:
    options = [
        click.option(
            "--store",
            envvar="ASYNCAPY_STORE",
            metavar="URL",
            help="sqlite:///path.db or redis://host:port/db  [env: ASYNCAPY_STORE]",
        ),
        click.option(
            "--pepper-env",
            default="ASYNCAPY_KEY_PEPPER",
            show_default=True,
            metavar="NAME",
            help="Environment variable holding the app's pepper (unset: no pepper).",
        ),
        click.option("--size", type=click.IntRange(8), default=32, show_default=True),
        click.option("--prefix", default="aapy", show_default=True),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _run(action: Any) -> None:
    try:
        action()
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def keys() -> None:
    """Issue, list, revoke and reissue API keys in a store (SQLite or Redis)."""


@keys.command()
@_common
@click.option(
    "-m",
    "--meta",
    "pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="A metadata field (repeatable).",
)
@click.option("--json", "as_json", metavar="OBJECT", help="Metadata as a JSON object.")
def issue(
    store: str | None,
    pepper_env: str,
    size: int,
    prefix: str,
    pairs: tuple[str, ...],
    as_json: str | None,
) -> None:
    """Issue a key and print it (once: only its digest is stored)."""
    factory = _factory(store, size, prefix, pepper_env)
    metadata = _metadata(pairs, as_json)
    _run(lambda: click.echo(factory.issue(metadata)))


@keys.command(name="list")
@_common
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_keys(store: str | None, pepper_env: str, size: int, prefix: str, as_json: bool) -> None:
    """List the keys: id, hint, issued, metadata (never a key)."""
    factory = _factory(store, size, prefix, pepper_env)

    def show() -> None:
        for record in factory.backend.keys.records():
            issued = datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="seconds"
            )
            row = {
                "id": record.digest[:ID_LENGTH],
                "hint": record.hint,
                "issued": issued,
                "metadata": dict(record.metadata),
            }
            if as_json:
                click.echo(json.dumps(row, sort_keys=True))
            else:
                meta = json.dumps(row["metadata"], sort_keys=True)
                click.echo(f"{row['id']}  {record.hint or '-':<16} {issued}  {meta}")

    _run(show)


@keys.command()
@_common
@click.argument("key_or_id")
def revoke(store: str | None, pepper_env: str, size: int, prefix: str, key_or_id: str) -> None:
    """Revoke a key, given as the key or its id."""
    factory = _factory(store, size, prefix, pepper_env)

    def act() -> None:
        record = _find(factory, key_or_id)
        if not factory.backend.keys.delete(record.digest):
            raise click.ClickException("no such key or id in the store")
        click.echo(f"revoked {record.digest[:ID_LENGTH]}", err=True)

    _run(act)


@keys.command()
@_common
@click.argument("key_or_id")
def reissue(store: str | None, pepper_env: str, size: int, prefix: str, key_or_id: str) -> None:
    """Replace a key by a new one with its metadata; print the new key."""
    factory = _factory(store, size, prefix, pepper_env)

    def act() -> None:
        record = _find(factory, key_or_id)
        new_key = factory._new_key()
        fresh = factory._record(new_key, record.metadata)
        if not factory.backend.keys.replace(record.digest, fresh):
            raise click.ClickException("no such key or id in the store")
        click.echo(new_key)
        click.echo(f"revoked {record.digest[:ID_LENGTH]}", err=True)

    _run(act)
