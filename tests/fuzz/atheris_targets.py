"""Fuzz targets: bytes in, AssertionError out when a documented invariant breaks.

A target is ``target(data: bytes) -> None``. It hands ``data`` to one part of
asyncapy and checks what comes back against the documented contract (the
module docstrings of ``asyncapy.protocol`` and ``asyncapy.codecs``, and
protocol.md). A broken invariant raises ``AssertionError``; any exception the
contract does not allow is turned into one, with the original chained.

This module does not import atheris: ``python -m tests.fuzz.run_atheris``
fuzzes a target with atheris (Python 3.11), and ``tests/fuzz/test_atheris.py``
replays the seed corpus through every target on every Python.

Registry: :data:`TARGETS` maps a target's name to its function, :data:`SEEDS`
to the function that builds its seed inputs from the shared vectors, and
:data:`MAX_LEN` to the ``-max_len`` it is fuzzed with. A new target (PROXY
protocol sniffing, say) is one function plus one entry in each.

Every target also bounds its own cost (see :data:`FIXED_COST_S`): each
measured step must take at most a generous linear function of the input size,
so input that makes asyncapy work superlinearly (a quadratic re-scan, a hash
flood) is a finding even when the answer is right.
"""

from __future__ import annotations

import functools
import inspect
import reprlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from asyncapy import codecs
from asyncapy.codecs import JSON, ZIPROTO, Codec
from asyncapy.errors import DecodeError, EncodeError, ErrorCode, LocalProtocolError
from asyncapy.protocol import (
    DEFAULT_MAX_PACKET_SIZE,
    MIN_CONTENT_LENGTH,
    PROTOCOL_VERSION,
    ByteOrder,
    Encoding,
    Frame,
    FrameDecoder,
    FrameError,
    looks_like_tls,
)

__all__ = [
    "DECODER_CONFIGS",
    "MAX_LEN",
    "SEEDS",
    "TARGETS",
    "DecoderConfig",
    "Vectors",
    "expected_outcomes",
    "frames_input",
    "seed_inputs",
]

T = TypeVar("T")
Target = Callable[[bytes], None]

# -- the cost bound

FIXED_COST_S: Final = 2e-3
"""Allowance of every measured step, whatever its size (2 ms): a fresh decoder,
a garbage collection that happens to start inside the step, a scheduler tick
on a busy machine. Measured steps of small inputs take 5 to 50 µs."""

PER_BYTE_COST_S: Final = 20e-6
"""Allowance per input byte (20 µs). Feeding the decoder in bulk costs at most
0.8 µs a byte (a stream of 2-byte frames, one event each), 3 µs under atheris'
instrumentation; the codecs well under 0.1 µs a byte. So only work that grows
faster than the input (or a constant gone wild) exceeds it."""

PER_CALL_COST_S: Final = 100e-6
"""Allowance per ``feed()`` call (100 µs). A call costs about 3 µs (14 µs
instrumented), whatever it is given: fed one byte at a time, or asked for one
event at a time (``limit=1``), a stream pays that per byte or per event. The
calls are at most twice the bytes plus one, so the bound stays linear."""

COST_ATTEMPTS: Final = 3
"""A step over its bound is measured again, up to this many times in all, and
fails only when every attempt is over: a genuinely superlinear step is slow
every time, a step that met a preempted CPU or a GC pass is not."""


_REPR: Final = reprlib.Repr()
_REPR.maxlevel = 4  # decoded values nest deeply: repr() itself would recurse too far
_REPR.maxstring = _REPR.maxother = 120
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 12


def _short(value: Any) -> str:
    """A bounded repr for messages (safe on deeply nested values)."""
    return _REPR.repr(value)


def cost_bound(size: int, calls: int = 1) -> float:
    """Seconds a measured step over ``size`` input bytes, in ``calls`` calls, may take."""
    return FIXED_COST_S + PER_BYTE_COST_S * size + PER_CALL_COST_S * calls


def within_budget(
    what: str | Callable[[], str],
    size: int,
    step: Callable[[], T],
    calls: Callable[[T], int] | None = None,
) -> T:
    """Run ``step`` (deterministic, repeatable); fail when it is always over budget.

    ``calls(result)`` tells how many calls into asyncapy the step made (1
    when not given); the bound is :func:`cost_bound` of ``size`` and that.

    Raises:
        AssertionError: when every one of :data:`COST_ATTEMPTS` runs took
            longer than the bound.
    """
    best = float("inf")
    bound = 0.0
    for _ in range(COST_ATTEMPTS):
        start = time.perf_counter()
        result = step()
        elapsed = time.perf_counter() - start
        bound = cost_bound(size, calls(result) if calls is not None else 1)
        if elapsed <= bound:
            return result
        best = min(best, elapsed)
    described = what if isinstance(what, str) else what()
    raise AssertionError(
        f"{described}: {size} input bytes took {best * 1e3:.3f} ms at best of {COST_ATTEMPTS} runs,"
        f" over the linear bound {bound * 1e3:.3f} ms ({FIXED_COST_S * 1e3:g} ms"
        f" + {PER_BYTE_COST_S * 1e6:g} µs per byte + {PER_CALL_COST_S * 1e6:g} µs per call)"
    )


# -- the frame decoder: configurations, input layout, reference model


@dataclass(frozen=True)
class DecoderConfig:
    """One framing configuration the decoder targets run with."""

    header_size: int
    byteorder: ByteOrder
    max_packet_size: int

    @property
    def head_size(self) -> int:
        """Bytes of a whole frame header: Content-Length and the two one-byte headers."""
        return self.header_size + 2

    def decoder(self) -> FrameDecoder:
        return FrameDecoder(self.header_size, self.byteorder, self.max_packet_size)


DECODER_CONFIGS: Final = (
    DecoderConfig(4, "big", DEFAULT_MAX_PACKET_SIZE),  # the defaults (most vectors)
    DecoderConfig(4, "little", DEFAULT_MAX_PACKET_SIZE),  # a TLS-looking header can be valid
    DecoderConfig(3, "big", DEFAULT_MAX_PACKET_SIZE),  # no struct code: int.from_bytes
    DecoderConfig(2, "little", 1024),  # a vector's format
    DecoderConfig(8, "big", 300),  # a vector's format, a limit inputs cross
    DecoderConfig(1, "big", MIN_CONTENT_LENGTH),  # the smallest header and limit
    DecoderConfig(4, "big", 64),  # the default format, a limit inputs cross easily
    DecoderConfig(5, "little", 4096),  # an odd size, little-endian
)
"""Input byte 0 picks one (``data[0] % 8``) for the frames target; the TLS
target checks every one."""

_CUT_COUNT: Final = 0x0F  # byte 1, bits 0-3: how many 2-byte cut offsets follow
_CHUNK_TYPE: Final = 0x30  # bits 4-5: chunks as bytes, bytearray, memoryview, bytes
_FAST: Final = 0x40  # bit 6: the split feeding uses feed_fast()
_BYTEWISE: Final = 0x80  # bit 7: the split feeding goes one byte at a time


@dataclass(frozen=True)
class FramesCase:
    """What the frames target makes of its input."""

    config: DecoderConfig
    stream: bytes
    chunks: list[bytes | bytearray | memoryview]
    fast: bool
    limit: int
    drain_each: bool


def parse_frames_input(data: bytes) -> FramesCase:
    """Split the frames target's input into a configuration, the stream and its chunks.

    Layout: byte 0 picks the configuration (and, above it, a per-call event
    limit and whether to drain after each chunk, for decoders that take a
    limit); byte 1 holds the flags above and the number N of cuts; 2N bytes
    of big-endian cut offsets (modulo the stream's length + 1); the rest is
    the stream. Empty chunks are dropped: a transport never delivers ``b""``.
    """
    selector = data[0] if data else 0
    flags = data[1] if len(data) > 1 else 0
    count = flags & _CUT_COUNT
    offsets = data[2 : 2 + 2 * count]
    stream = data[2 + 2 * count :]
    if flags & _BYTEWISE:
        pieces = [stream[i : i + 1] for i in range(len(stream))]
    else:
        cuts = sorted(
            {
                int.from_bytes(offsets[i : i + 2], "big") % (len(stream) + 1)
                for i in range(0, len(offsets) - 1, 2)
            }
        )
        pieces = []
        last = 0
        for cut in [*cuts, len(stream)]:
            if cut > last:
                pieces.append(stream[last:cut])
                last = cut
    kind = (flags & _CHUNK_TYPE) >> 4
    chunks: list[bytes | bytearray | memoryview] = list(pieces)
    if kind == 1:
        chunks = [bytearray(piece) for piece in pieces]
    elif kind == 2:
        chunks = [memoryview(b"\xaa" + piece)[1:] for piece in pieces]  # a slice, not the start
    return FramesCase(
        config=DECODER_CONFIGS[selector % len(DECODER_CONFIGS)],
        stream=stream,
        chunks=chunks,
        fast=bool(flags & _FAST),
        limit=1 + (selector // len(DECODER_CONFIGS)) % 3,
        drain_each=not (selector // (3 * len(DECODER_CONFIGS))) % 2,
    )


def frames_input(
    stream: bytes,
    config_index: int = 0,
    cuts: Iterable[int] = (),
    *,
    fast: bool = False,
    bytewise: bool = False,
    chunk_type: int = 0,
) -> bytes:
    """The frames target's input that feeds ``stream`` this way (the inverse of parsing)."""
    offsets = list(cuts)[:_CUT_COUNT]
    flags = len(offsets) | (chunk_type & 3) << 4 | (_FAST if fast else 0)
    flags |= _BYTEWISE if bytewise else 0
    head = bytes((config_index % len(DECODER_CONFIGS), flags))
    return head + b"".join(cut.to_bytes(2, "big") for cut in offsets) + stream


def spec_looks_like_tls(head: bytes) -> bool:
    """protocol.py's TLS record test, restated: content type 20-23, version 3.0-3.4."""
    return len(head) >= 3 and 20 <= head[0] <= 23 and head[1] == 3 and head[2] <= 4


Outcome = tuple[Any, ...]
"""``("frame", encoding, payload bytes)`` or ``("error", code, keep_connection, tls)``."""


@dataclass(frozen=True)
class Expected:
    """What the reference model says a decoder fed a stream reports."""

    outcomes: list[Outcome]
    closed: bool
    idle: bool


def _header_ok(config: DecoderConfig, head: bytes) -> bool:
    length = int.from_bytes(head[: config.header_size], config.byteorder)
    version, encoding = head[config.header_size], head[config.header_size + 1]
    return (
        MIN_CONTENT_LENGTH <= length <= config.max_packet_size
        and version == PROTOCOL_VERSION
        and encoding in (0, 1)
    )


def expected_outcomes(stream: bytes, config: DecoderConfig, first_feed: int) -> Expected:
    """The events of a decoder fed ``stream`` whose first feed was ``first_feed`` bytes long.

    Written from protocol.md section 1 and protocol.py's theory of operation,
    independently of the decoder: a Content-Length over ``max_packet_size`` is
    fatal as soon as it is read; one under 5 is rejected and its declared
    bytes skipped; a bad version or encoding is rejected as soon as the two
    one-byte headers are read, and the rest of the frame skipped. The first
    feed alone, when it holds a whole frame header, is checked for TLS.
    """
    hs, head = config.header_size, config.head_size
    if (
        first_feed >= head
        and spec_looks_like_tls(stream[:3])
        and not _header_ok(config, stream[:head])
    ):
        return Expected([("error", ErrorCode.ERR_HEADER_INVALID, False, True)], True, False)
    outcomes: list[Outcome] = []
    pos, end = 0, len(stream)
    while True:
        if end - pos < hs:
            return Expected(outcomes, False, pos == end)
        length = int.from_bytes(stream[pos : pos + hs], config.byteorder)
        pos += hs
        if length > config.max_packet_size:
            outcomes.append(("error", ErrorCode.ERR_PACKET_TOO_LARGE, False, False))
            return Expected(outcomes, True, False)
        if length < MIN_CONTENT_LENGTH:
            outcomes.append(("error", ErrorCode.ERR_REQUEST_MALFORMED, True, False))
        elif end - pos < 2:
            return Expected(outcomes, False, False)
        elif stream[pos] != PROTOCOL_VERSION or stream[pos + 1] not in (0, 1):
            outcomes.append(("error", ErrorCode.ERR_HEADER_INVALID, True, False))
        elif end - pos >= length:
            outcomes.append(("frame", stream[pos + 1], stream[pos + 2 : pos + length]))
        if end - pos < length:
            return Expected(outcomes, False, False)
        pos += length


def _event_outcome(event: Any, config: DecoderConfig, fast: bool) -> Outcome:
    """Check one decoder event's shape; return it as an :data:`Outcome`."""
    if isinstance(event, FrameError):
        assert isinstance(event.code, ErrorCode), event
        assert event.code in (
            ErrorCode.ERR_HEADER_INVALID,
            ErrorCode.ERR_REQUEST_MALFORMED,
            ErrorCode.ERR_PACKET_TOO_LARGE,
        ), event
        assert isinstance(event.detail, str), event
        fatal = event.code == ErrorCode.ERR_PACKET_TOO_LARGE or event.tls
        assert event.keep_connection is not fatal, event
        return ("error", event.code, event.keep_connection, event.tls)
    if fast:
        assert type(event) is tuple, event  # a frame is a plain (encoding, payload) tuple
        assert len(event) == 2, event
        encoding, payload = event
    else:
        assert isinstance(event, Frame), event
        assert event.version == PROTOCOL_VERSION, event
        encoding, payload = event.encoding, event.payload
    assert isinstance(encoding, Encoding), event
    assert isinstance(payload, (bytes, bytearray, memoryview)), event
    assert MIN_CONTENT_LENGTH <= len(payload) + 2 <= config.max_packet_size, event
    return ("frame", int(encoding), bytes(payload))


@dataclass
class _Fed:
    """A decoder after a feeding, and what each of its feed() calls returned."""

    decoder: FrameDecoder
    batches: list[list[Any]]
    most_buffered: int
    """The most ``buffered`` seen while nothing was left unread (see ``limit``)."""


def _feed(
    config: DecoderConfig,
    chunks: list[Any],
    fast: bool,
    limit: int = 0,
    drain_each: bool = True,
) -> _Fed:
    """Feed ``chunks`` to a fresh decoder until it closes.

    With ``limit`` (decoders that take one), each call asks for at most that
    many events; a call that returns ``limit`` events may leave input unread,
    which ``feed(b"", limit)`` goes on with: after every chunk when
    ``drain_each``, else only after the last (the new chunks are appended to
    what is unread, as a server does when data arrives before it caught up).
    """
    decoder = config.decoder()
    feed: Callable[..., list[Any]] = decoder.feed_fast if fast else decoder.feed
    batches: list[list[Any]] = []
    most = 0
    total = sum(map(len, chunks))

    def drain() -> None:
        rounds = 0
        while batches and len(batches[-1]) >= limit and not decoder.closed:
            rounds += 1
            assert rounds <= total + 1, "feed(b'', limit=...) makes no progress"
            batches.append(feed(b"", limit=limit))
        assert not getattr(decoder, "pending", False), "pending after a short feed(b'')"

    try:
        for chunk in chunks:
            if decoder.closed:
                break
            if not limit:
                batches.append(feed(chunk))
            else:
                batches.append(feed(chunk, limit=limit))
                if not drain_each:
                    continue
                drain()
            most = max(most, decoder.buffered)
        if limit and not drain_each:
            drain()
            most = max(most, decoder.buffered)
    except LocalProtocolError as exc:
        raise AssertionError(f"LocalProtocolError from an open decoder: {exc}") from exc
    except Exception as exc:
        raise AssertionError(f"feed() raised {exc!r}: only events may come out") from exc
    return _Fed(decoder, batches, most)


def _calls(fed: _Fed) -> int:
    """How many times a feeding called ``feed()``."""
    return len(fed.batches)


def _check_fed(fed: _Fed, config: DecoderConfig, fast: bool, limit: int = 0) -> list[Outcome]:
    """Check the decoder contract over one feeding; return its outcomes."""
    decoder = fed.decoder
    hold = config.header_size + config.max_packet_size
    assert fed.most_buffered <= hold, (
        f"the decoder held {fed.most_buffered} bytes, over header_size + max_packet_size = {hold}"
    )
    outcomes: list[Outcome] = []
    fatal_seen = False
    for batch in fed.batches:
        assert not limit or len(batch) <= limit, f"{len(batch)} events with limit={limit}"
        assert not fatal_seen, "events after a fatal error"
        for index, event in enumerate(batch):
            outcome = _event_outcome(event, config, fast)
            if outcome[0] == "error" and not outcome[2]:
                fatal_seen = True
                assert index == len(batch) - 1, "a fatal error is not the last event of its feed"
            outcomes.append(outcome)
    assert decoder.closed is fatal_seen, "closed after no fatal error, or open after one"
    if decoder.closed:
        for junk in (b"\x00", b"\x16\x03\x01"):
            try:
                decoder.feed(junk)
            except LocalProtocolError:
                continue
            except Exception as exc:
                raise AssertionError(f"a closed decoder raised {exc!r}") from exc
            raise AssertionError("a closed decoder accepted more input")
    return outcomes


def _describe(case: FramesCase, name: str = "") -> str:
    """What a frames target's feeding was, for messages."""
    kind = type(case.chunks[0]).__name__ if case.chunks else "-"
    feed = "feed_fast" if case.fast else "feed"
    limit = f", limit {case.limit} ({'drained' if case.drain_each else 'not drained'})"
    return f"{name} feeding: {case.config}, {len(case.chunks)} chunk(s) of {kind}, {feed}{limit}"


def _takes_limit() -> bool:
    try:
        return "limit" in inspect.signature(FrameDecoder.feed).parameters
    except ValueError:  # compiled with mypyc: no signature, and newer than issue 8
        return True


_TAKES_LIMIT: Final = _takes_limit()
"""Whether ``feed`` takes ``limit`` (max events per call), added by issue 8."""


def frames_target(data: bytes) -> None:
    """The frame decoder, fed the stream whole and split, against the reference model.

    Invariants: only Frame / FrameError events come out (no exception but
    LocalProtocolError, and that only once closed); a fatal error is the last
    event and closes the decoder; the decoder never holds more than
    ``header_size + max_packet_size`` bytes; ``idle`` is true exactly between
    frames; whole and split feeding give what :func:`expected_outcomes` says
    (so the same outcomes, unless a first chunk too short to sniff hides a
    TLS record); each feeding costs at most :func:`cost_bound`.
    """
    case = parse_frames_input(data)
    config, stream = case.config, case.stream
    passes: list[tuple[str, list[Any], bool, int, bool]] = [
        ("whole", [stream], False, 0, True),
        ("split", case.chunks, case.fast, 0, True),
    ]
    if _TAKES_LIMIT:
        passes.append(("split, limited", case.chunks, not case.fast, case.limit, case.drain_each))
    for name, chunks, fast, limit, drain_each in passes:
        fed = within_budget(
            functools.partial(_describe, case, name),
            len(stream),
            functools.partial(_feed, config, chunks, fast, limit, drain_each),
            _calls,
        )
        got = _check_fed(fed, config, fast, limit)
        first = len(chunks[0]) if chunks else 0
        want = expected_outcomes(stream, config, first)
        assert got == want.outcomes, (
            f"{_describe(case, name)} gave {_short(got)}, the model expects {_short(want.outcomes)}"
        )
        if not fed.decoder.closed:
            assert fed.decoder.idle is want.idle, f"{name}: idle is {fed.decoder.idle}"


# -- the codecs


def _walk(value: Any, json_only: bool) -> dict[str, int]:
    """Visit a decoded value (without recursion); count its nodes by kind.

    Checks JSON's types when ``json_only``. Run instrumented under atheris,
    its branches (one per kind of node) are the coverage signal of the codec
    targets: the codecs are C extensions, which atheris cannot see into, so
    without this an input that decodes to a new shape would look like
    nothing new.
    """
    counts: dict[str, int] = {}
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, is_key = stack.pop()
        if isinstance(node, dict):
            kind = "map"
            for key, item in node.items():
                stack.append((key, True))
                stack.append((item, False))
        elif isinstance(node, (list, tuple)):
            kind = "array" if type(node) is list else "tuple"
            stack.extend((item, False) for item in node)
        elif isinstance(node, bool):
            kind = "bool"
        elif isinstance(node, int):
            kind = "int" if -(2**63) <= node < 2**64 else "bigint"
        elif isinstance(node, float):
            kind = "float" if node == node else "nan"
        elif isinstance(node, str):
            kind = "ascii" if node.isascii() else "text"
        elif isinstance(node, (bytes, bytearray)):
            kind = "bin"
        elif node is None:
            kind = "nil"
        else:
            kind = type(node).__name__  # an ext type, ...
        if is_key:
            kind += " key"
            # A map key is never a container: tuples of ints have hashes that can
            # be made to collide (docs/threat-model.md, T1).
            assert kind not in _CONTAINER_KEYS, f"a {kind} decoded as a map key"
        if json_only:
            assert kind in _JSON_KINDS, f"JSON decoded a {kind}: {type(node).__name__}"
        counts[kind] = counts.get(kind, 0) + 1
    return counts


_CONTAINER_KEYS: Final = frozenset({"map key", "array key", "tuple key"})
_JSON_KINDS: Final = frozenset(
    {"map", "array", "bool", "int", "bigint", "float", "ascii", "text", "nil"}
    | {"ascii key", "text key"}
)


def _same(a: Any, b: Any) -> bool:
    """Structural equality, without recursion (decoded values nest deeply), NaN equal to NaN."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, dict):
            if len(x) != len(y):
                return False
            for (kx, vx), (ky, vy) in zip(x.items(), y.items(), strict=True):
                stack += [(kx, ky), (vx, vy)]
        elif isinstance(x, (list, tuple)):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif x != y and (x == x or y == y):  # NaN is not equal to itself
            return False
    return True


def _decode(codec: Codec, data: bytes | bytearray | memoryview) -> dict[Any, Any] | DecodeError:
    """``codec.decode(data)``: its map, or the DecodeError it raised; nothing else."""
    try:
        value = codec.decode(data)
    except DecodeError as exc:
        error = exc
    except Exception as exc:
        raise AssertionError(f"{codec.name} decode raised {exc!r}, not DecodeError") from exc
    else:
        assert isinstance(value, dict), f"{codec.name} decode returned {type(value).__name__}"
        return value
    assert error.code == ErrorCode.ERR_REQUEST_MALFORMED, error.code
    assert error.keep_connection, error
    return error


def _raw_decode(codec: Codec, data: bytes) -> dict[Any, Any] | Exception:
    """``codec.raw_decode(data)``: a map, or one of ``codecs.DECODE_FAILURES`` (the hot path)."""
    failures = codecs.DECODE_FAILURES  # read now: the tuple may grow
    try:
        value = codec.raw_decode(data)
    except failures as exc:
        return exc
    except Exception as exc:
        raise AssertionError(
            f"{codec.name} raw_decode raised {exc!r}, outside DECODE_FAILURES: the server's"
            " hot path would let it escape"
        ) from exc
    assert isinstance(value, dict), f"{codec.name} raw_decode returned {type(value).__name__}"
    return value


def _encode(codec: Codec, value: dict[Any, Any]) -> bytes | EncodeError:
    try:
        body = codec.encode(value)
    except EncodeError as exc:
        return exc
    except Exception as exc:
        raise AssertionError(f"{codec.name} encode raised {exc!r}, not EncodeError") from exc
    assert isinstance(body, bytes), f"{codec.name} encode returned {type(body).__name__}"
    return body


def _codec_target(codec: Codec, data: bytes) -> None:
    """Invariants of one codec on arbitrary input.

    ``decode`` returns a dict or raises DecodeError, nothing else, and the same
    for every buffer type a frame's payload comes as (bytes, bytearray, a
    memoryview slice); ``raw_decode`` agrees with it and raises only
    DECODE_FAILURES. A decoded map re-encodes with ``encode`` or raises
    EncodeError (lone surrogates, ext types, ... may not re-encode); what
    ``encode`` writes, ``decode`` reads back as a map (a server's echo reply
    must be readable). Each step costs at most :func:`cost_bound`.
    """
    size = len(data)
    value = within_budget(f"{codec.name} decode", size, lambda: _decode(codec, data))
    for other in (bytearray(data), memoryview(b"\x00" + data)[1:]):
        again = _decode(codec, other)
        if type(again) is not type(value) or not (
            isinstance(value, DecodeError) or _same(again, value)
        ):
            raise AssertionError(
                f"{codec.name} decode of a {type(other).__name__} gave {_short(again)},"
                f" of bytes {_short(value)}"
            )
    raw = _raw_decode(codec, data)
    assert isinstance(raw, dict) is isinstance(value, dict), (
        f"{codec.name}: raw_decode gave {_short(raw)}, decode {_short(value)}"
    )
    if not isinstance(value, dict):
        return
    _walk(value, json_only=codec is JSON)
    assert _same(raw, value), f"{codec.name}: raw_decode gave {_short(raw)}, decode {_short(value)}"
    body = within_budget(f"{codec.name} encode", size, lambda: _encode(codec, value))
    if isinstance(body, EncodeError):
        return
    back = _decode(codec, body)
    assert isinstance(back, dict), (
        f"{codec.name} cannot read what it wrote for {_short(value)}:"
        f" {_short(body)} -> {_short(back)}"
    )
    padded = codec.encode_payload(value)
    assert len(padded) >= codecs.MIN_PAYLOAD, f"encode_payload gave {_short(padded)}"


def json_target(data: bytes) -> None:
    """The JSON codec on arbitrary bytes (see :func:`_codec_target`)."""
    _codec_target(JSON, data)


def ziproto_target(data: bytes) -> None:
    """The ZiProto (MessagePack) codec on arbitrary bytes (see :func:`_codec_target`)."""
    _codec_target(ZIPROTO, data)


# -- TLS sniffing

_TLS_ERROR: Final = ("error", ErrorCode.ERR_HEADER_INVALID, False, True)


def tls_target(data: bytes) -> None:
    """``looks_like_tls`` and the decoder's first-feed TLS check, in every configuration.

    ``looks_like_tls`` is a bool that matches the record test of protocol.py
    for every buffer type and never raises. A fresh decoder fed ``data`` in
    one call reports a TLS mismatch (a fatal ERR_HEADER_INVALID with
    ``tls=True``, its only event, and closes) exactly when ``data`` holds a
    whole frame header, looks like TLS and is not a valid frame header; no
    other event ever has ``tls=True``.
    """
    want = spec_looks_like_tls(data[:3])
    for buffer in (data, bytearray(data), memoryview(data), memoryview(b"\x00" + data)[1:]):
        try:
            says = looks_like_tls(buffer)
        except Exception as exc:
            raise AssertionError(f"looks_like_tls raised {exc!r}") from exc
        assert says is want, f"looks_like_tls({type(buffer).__name__}) is {says!r}, not {want}"
    for config in DECODER_CONFIGS:
        for fast in (False, True):
            fed = within_budget(
                f"tls sniffing ({config})",
                len(data),
                functools.partial(_feed, config, [data], fast),
                _calls,
            )
            got = _check_fed(fed, config, fast)
            is_tls = want and len(data) >= config.head_size and not _header_ok(config, data)
            if is_tls:
                assert got == [_TLS_ERROR], f"{config}: a TLS record gave {got!r}"
            else:
                assert not [o for o in got if o[0] == "error" and o[3]], (
                    f"{config}: tls=True on a stream that is not a TLS record: {got!r}"
                )


# -- seeds


@dataclass(frozen=True)
class Vectors:
    """The shared vectors (``../shared/vectors/*.json``), when present."""

    frames: Mapping[str, Any] | None = None
    ziproto: Mapping[str, Any] | None = None

    def frame_cases(self) -> list[tuple[bytes, int, str]]:
        """``(frame bytes, header_size, byteorder)`` of every frames vector."""
        if self.frames is None:
            return []
        return [
            (bytes.fromhex(case["hex"]), case["header_size"], case["byteorder"])
            for section in ("valid", "rejected")
            for case in self.frames.get(section, [])
        ]

    def payloads(self, encoding: int) -> list[bytes]:
        """Payloads of the frames vectors whose Content-Encoding is ``encoding``."""
        found = []
        for frame, header_size, _ in self.frame_cases():
            if len(frame) > header_size + 2 and frame[header_size + 1] == encoding:
                found.append(frame[header_size + 2 :])
        return found

    def ziproto_values(self) -> list[bytes]:
        """Every ZiProto vector's bytes (round-trip, decode-only and invalid)."""
        if self.ziproto is None:
            return []
        return [
            bytes.fromhex(case["hex"])
            for section in ("roundtrip", "decode_only", "invalid")
            for case in self.ziproto.get(section, [])
        ]


_CLIENT_HELLO: Final = (
    bytes.fromhex("16030100f4010000f00303") + bytes(range(32)) + b"\x00\x02\x13\x01"
)
_TLS_RECORDS: Final = (
    _CLIENT_HELLO,
    bytes.fromhex("1503030002022800"),  # an alert
    bytes.fromhex("170303001000"),  # application data
    bytes.fromhex("14030300010116"),  # change_cipher_spec
    bytes.fromhex("8040010301"),  # an SSLv2 hello: not a TLS record
    bytes.fromhex("1603010116010000"),  # little-endian 4-byte header 0x00010316, version 22
)


def _frames_seeds(vectors: Vectors) -> list[bytes]:
    seeds = []
    for frame, header_size, byteorder in vectors.frame_cases():
        for index, config in enumerate(DECODER_CONFIGS):
            if (config.header_size, config.byteorder) != (header_size, byteorder):
                continue
            seeds.append(frames_input(frame, index))
            seeds.append(frames_input(frame, index, [len(frame) // 2], fast=True, chunk_type=1))
            seeds.append(frames_input(frame, index, bytewise=True, chunk_type=2))
    pipelined = b"".join(f for f, hs, order in vectors.frame_cases() if (hs, order) == (4, "big"))
    if pipelined:
        seeds.append(frames_input(pipelined, 0, [3, 17, 40, 41]))
        seeds.append(frames_input(pipelined, 6, [1, 100], fast=True))
    seeds += [frames_input(record, 0) for record in _TLS_RECORDS]
    seeds.append(frames_input(_CLIENT_HELLO, 0, [2]))  # too short to sniff
    one = b"\x00\x00\x00\x0d\x16\x00" + b'{"test": 1}'
    seeds.append(frames_input(one * 400, 0, [5000], fast=True))  # big, pipelined
    return seeds


def _json_seeds(vectors: Vectors) -> list[bytes]:
    return [
        *vectors.payloads(Encoding.JSON),
        b'{"a": [1, 2.5, -3e10, true, false, null, "x\\u00e9\\ud83d\\ude00"], "b": {"c": {}}}',
        b'{"n": ' + b"1" * 5000 + b"}",
        b'{"f": 0.' + b"3" * 5000 + b"e-7}",
        b'{"d": ' + b"[" * 300 + b"]" * 300 + b"}",
        b'{"s": "' + b"\\n\\u0001" * 500 + b'"}',
        b"{" + b",".join(b'"k%d": %d' % (i, i) for i in range(500)) + b"}",
    ]


def _ziproto_seeds(vectors: Vectors) -> list[bytes]:
    return [
        *vectors.payloads(Encoding.ZIPROTO),
        *vectors.ziproto_values(),
        bytes.fromhex("81910101"),  # an array as a map key
        bytes.fromhex("82c0c0c3c2"),  # nil and bool keys
        bytes.fromhex("81a161d6ff00000001"),  # a timestamp ext
        bytes.fromhex("81a161c7020aabcd"),  # an ext8
        bytes.fromhex("81a161") + b"\x91" * 300 + b"\xc0",  # deep nesting
        b"\xde\x01\xf4" + b"".join(b"\xcd" + i.to_bytes(2, "big") + b"\x01" for i in range(500)),
    ]


def _tls_seeds(vectors: Vectors) -> list[bytes]:
    return [frame for frame, _, _ in vectors.frame_cases()] + list(_TLS_RECORDS)


TARGETS: Final[dict[str, Target]] = {
    "frames": frames_target,
    "json": json_target,
    "ziproto": ziproto_target,
    "tls": tls_target,
}
"""The fuzz targets by name."""

SEEDS: Final[dict[str, Callable[[Vectors], list[bytes]]]] = {
    "frames": _frames_seeds,
    "json": _json_seeds,
    "ziproto": _ziproto_seeds,
    "tls": _tls_seeds,
}
"""Each target's seed inputs, built from the shared vectors (and a few of its own)."""

MAX_LEN: Final[dict[str, int]] = {
    "frames": 16384,
    "json": 16384,
    "ziproto": 16384,
    "tls": 1024,
}
"""Each target's ``-max_len``: long enough for the cost bound to matter."""

assert TARGETS.keys() == SEEDS.keys() == MAX_LEN.keys()


def seed_inputs(name: str, vectors: Vectors) -> list[bytes]:
    """The seed corpus of target ``name``, without duplicates, in a stable order."""
    return list(dict.fromkeys(SEEDS[name](vectors)))
