"""Helpers shared by the tests."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from asyncapy.codecs import CODECS
from asyncapy.errors import DecodeError
from asyncapy.protocol import Event, Frame, FrameDecoder

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VECTORS = SHARED / "vectors"


def load_vectors(name: str) -> dict[str, Any]:
    """Return ``../shared/vectors/<name>.json``; skip the test when it is absent."""
    path = VECTORS / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared is not beside the project)")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def literal(text: str) -> Any:
    """Parse a vector's Python-literal value."""
    return ast.literal_eval(text)


def vector_params(name: str, section: str) -> list[Any]:
    """Vectors of one section as pytest params (ids = their names); [] when absent."""
    path = VECTORS / f"{name}.json"
    if not path.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{path} is absent"))]
    cases = json.loads(path.read_text(encoding="utf-8"))[section]
    return [pytest.param(case, id=case["name"]) for case in cases]


Outcome = tuple[Any, ...]


def outcomes(events: Iterable[Event]) -> list[Outcome]:
    """Turn decoder events into what a server would do with them.

    ``("packet", encoding_name, payload_dict)`` or ``("error", code, keep_connection)``.
    """
    result: list[Outcome] = []
    for event in events:
        if isinstance(event, Frame):
            try:
                payload = CODECS[event.encoding].decode(event.payload)
            except DecodeError as exc:
                result.append(("error", str(exc.code), True))
            else:
                result.append(("packet", str(event.encoding), payload))
        else:
            result.append(("error", str(event.code), event.keep_connection))
    return result


def feed_chunks(decoder: FrameDecoder, chunks: Iterable[bytes]) -> list[Event]:
    """Feed every chunk, stopping once the decoder is closed; return all events."""
    events: list[Event] = []
    for chunk in chunks:
        if decoder.closed:
            break
        events.extend(decoder.feed(chunk))
    return events


def splits(data: bytes) -> Iterable[list[bytes]]:
    """The ways the tests cut a stream: whole, one byte at a time, and at every offset."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]
