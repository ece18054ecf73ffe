"""Helpers shared by the tests."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import contextvars
import json
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

from asyncapy.codecs import CODECS
from asyncapy.core import DONE, Client, Packet, Session
from asyncapy.dispatch import Dispatcher
from asyncapy.errors import DecodeError
from asyncapy.protocol import Event, Frame, FrameDecoder, encode_frame
from asyncapy.server import Server

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


class FakePeer(Client):
    """A handler-side Client without a connection: records what handlers send.

    Closing marks it closed, as the real connection does; sending after that
    raises ``ConnectionError``.
    """

    __slots__ = ("sent",)

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.address = address
        self.port = 0
        self.server = None  # type: ignore[assignment]
        self.encoding = None
        self.closed = False
        self.session = Session(uuid.uuid4(), self)
        self.sent: list[dict[Any, Any]] = []

    def send(self, packet: Any, close: bool = False) -> Awaitable[None]:
        if self.closed:
            raise ConnectionError("closed")
        if isinstance(packet, str):
            self.sent.append(json.loads(packet))
        elif isinstance(packet, Mapping):
            self.sent.append(dict(packet))
        else:  # a Struct or a dataclass, as the codecs write it
            self.sent.append(msgspec.to_builtins(packet))
        if close:
            self.closed = True
        return DONE

    def close(self) -> Awaitable[None]:
        self.closed = True
        return DONE

    def get_sessions(self) -> list[Session]:
        return [self.session]


# -- running servers and talking to them on loopback


@contextlib.asynccontextmanager
async def serving(server: Server) -> AsyncIterator[Server]:
    """Run ``server.serve()`` in a task while the block runs; stop it after."""
    task = asyncio.create_task(server.serve())
    started = asyncio.create_task(server.wait_started())
    done, _ = await asyncio.wait({task, started}, timeout=10, return_when="FIRST_COMPLETED")
    if task in done:
        started.cancel()
        task.result()
        raise AssertionError("serve() returned before it started")
    if started not in done:
        raise AssertionError("the server did not start in 10 s")
    try:
        yield server
    finally:
        server.stop()
        await asyncio.wait_for(task, 20)


def run_dispatch(dispatcher: Dispatcher, client: Client, packet: Packet) -> None:
    """Dispatch ``packet`` on a new loop and wait (5 s at most) for the dispatch to end."""

    async def main() -> None:
        task = dispatcher.run(
            client, packet, asyncio.get_running_loop(), contextvars.copy_context()
        )
        if task is not None:
            await asyncio.wait_for(task, 5)

    asyncio.run(main())


@contextlib.contextmanager
def server_thread(server: Server) -> Iterator[Server]:
    """Run ``server.serve()`` on its own loop in a thread while the block runs.

    For the blocking client, which would block a loop the server shared.
    """
    ready = threading.Event()
    failures: list[BaseException] = []

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        started = asyncio.create_task(server.wait_started())
        await asyncio.wait({task, started}, timeout=10, return_when="FIRST_COMPLETED")
        ready.set()
        if not started.done():
            started.cancel()
        await task

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the test below
            failures.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(15), "the server thread did not start"
    if failures:
        raise failures[0]
    try:
        yield server
    finally:
        server.stop()
        thread.join(20)
        assert not thread.is_alive(), "the server thread did not stop"
        if failures:
            raise failures[0]


def echo_server(**kwargs: Any) -> Server:
    """A server on 127.0.0.1, a free port, that echoes every packet (``kwargs``: settings)."""
    server = Server(addr="127.0.0.1", port=0, **kwargs)

    @server.add_handler()
    async def echo(client: Client, packet: Any) -> None:
        await client.send(packet)

    return server


async def ask(server: Server, payload: dict[str, Any], encoding: int = 0) -> dict[Any, Any]:
    """Connect to ``server``, send one request, return its reply, close."""
    peer = await Peer.connect(server.port)
    try:
        await peer.send(payload, encoding)
        return await peer.recv()
    finally:
        await peer.close()


class Peer:
    """A raw AsyncAProto peer over asyncio streams, for integration tests."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        header_size: int = 4,
        byteorder: Any = "big",
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.header_size = header_size
        self.byteorder = byteorder
        self.decoder = FrameDecoder(header_size, byteorder, 1 << 30)
        self.pending: list[Event] = []

    @classmethod
    async def connect(
        cls, port: int, *, ssl: Any = None, host: str = "127.0.0.1", **kwargs: Any
    ) -> Peer:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl, server_hostname="localhost" if ssl else None
        )
        return cls(reader, writer, **kwargs)

    def frame(self, payload: Any, encoding: int = 0) -> bytes:
        """Encode ``payload`` (a dict, or raw bytes) as one frame."""
        if isinstance(payload, dict):
            payload = CODECS[encoding].encode(payload)
        return encode_frame(
            payload, encoding, header_size=self.header_size, byteorder=self.byteorder
        )

    async def send(self, payload: Any, encoding: int = 0) -> None:
        self.writer.write(self.frame(payload, encoding))
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def frame_in(self, timeout: float = 5) -> Frame | None:
        """The next reply frame, or None when the server closed."""
        async with asyncio.timeout(timeout):
            while not self.pending:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.pending.extend(self.decoder.feed(data))
        event = self.pending.pop(0)
        assert isinstance(event, Frame), event
        return event

    async def recv(self, timeout: float = 5) -> dict[Any, Any]:
        """The next reply, decoded by its own Content-Encoding."""
        frame = await self.frame_in(timeout)
        assert frame is not None, "the server closed the connection"
        return CODECS[frame.encoding].decode(frame.payload)

    async def recv_error(self, timeout: float = 5) -> str:
        reply = await self.recv(timeout)
        assert reply.get("status") == "failure", reply
        return str(reply["error"])

    async def closed(self, timeout: float = 5) -> bool:
        """True when the server closes the connection within ``timeout`` (we close too)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    data = await self.reader.read(65536)
                    if not data:
                        break
                    self.pending.extend(self.decoder.feed(data))
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        self.writer.close()
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


# -- hostile payloads

_M64 = (1 << 64) - 1
_XX_P1, _XX_P2, _XX_P5 = 11400714785074694791, 14029467366897019727, 2870177450012600261
_HASH_MODULUS = (1 << 61) - 1


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def colliding_pairs(count: int, target: int = 0x1234_5678_9ABC) -> list[tuple[int, int]]:
    """``count`` pairs of ints whose tuples all have the same ``hash()`` (64-bit CPython).

    CPython hashes a tuple with an xxHash-like mix of its items' hashes (unsalted
    for ints; ``hash(n) == n`` for ``0 <= n < 2**61 - 1``), and every step is
    invertible modulo 2**64: for each second item, solve for the first.
    """
    p1_inv, p2_inv = pow(_XX_P1, -1, 1 << 64), pow(_XX_P2, -1, 1 << 64)
    acc2 = (target - (2 ^ (_XX_P5 ^ 3527539))) & _M64
    pairs: list[tuple[int, int]] = []
    b = 0
    while len(pairs) < count:
        b += 1
        acc1 = (_rotl((acc2 * p1_inv) & _M64, 33) - b * _XX_P2) & _M64
        lane = ((_rotl((acc1 * p1_inv) & _M64, 33) - _XX_P5) * p2_inv) & _M64
        if lane < _HASH_MODULUS:  # a non-negative int whose hash is itself
            pairs.append((lane, b))
    return pairs


def msgpack_map_of_pairs(pairs: list[tuple[int, int]]) -> bytes:
    """A MessagePack map whose keys are the 2-arrays ``pairs`` (values nil)."""
    out = bytearray(b"\xdf" + len(pairs).to_bytes(4, "big"))
    for a, b in pairs:
        out += b"\x92\xcf" + a.to_bytes(8, "big") + b"\xcf" + b.to_bytes(8, "big") + b"\xc0"
    return bytes(out)
