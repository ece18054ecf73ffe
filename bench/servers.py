"""The servers the benchmark compares, each doing the same bytes-in, bytes-out work.

    python bench/servers.py TARGET --port N [--loop uvloop|asyncio]

Targets:
    bare        asyncio.Protocol: cut frames, decode, encode, frame, write (the ceiling)
    streams     the same work on asyncio streams
    aiohttp     aiohttp JSON POST echo (/echo), same codec
    framework   asyncapy, one echo handler behind one Fields filter
    plain       asyncapy, one echo handler, no filter
    groups      asyncapy, the echo behind 3 groups (two pass-through handlers first)
    seed-echo   asyncapy with the seed's echo (send, then close): one request per connection
    original    AsyncAPY 0.5's design, rebuilt: trio, stdlib json, one request per
                connection (the original is not installable; this is its shape)

Every echo decodes the payload with msgspec and encodes it again in the
encoding of the request, as a real handler would. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from typing import Any

import msgspec

CODECS: tuple[Any, Any] = (
    (msgspec.json.Decoder(dict[Any, Any]), msgspec.json.Encoder()),
    (msgspec.msgpack.Decoder(dict[Any, Any]), msgspec.msgpack.Encoder()),
)


class BareEcho(asyncio.Protocol):
    """The smallest correct AsyncAProto echo: the reference for every ratio."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        view = memoryview(buffer)
        pos, end, out = 0, len(buffer), []
        while end - pos >= 6:
            length = int.from_bytes(view[pos : pos + 4], "big")
            stop = pos + 4 + length
            if stop > end:
                break
            encoding = view[pos + 5]
            decoder, encoder = CODECS[encoding]
            payload = encoder.encode(decoder.decode(view[pos + 6 : stop]))
            out.append((len(payload) + 2).to_bytes(4, "big") + bytes((22, encoding)) + payload)
            pos = stop
        view.release()
        self.buffer = buffer[pos:]
        if out and self.transport is not None:
            self.transport.writelines(out)


async def streams_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            header = await reader.readexactly(6)
            length = int.from_bytes(header[:4], "big")
            body = await reader.readexactly(length - 2)
            encoding = header[5]
            decoder, encoder = CODECS[encoding]
            payload = encoder.encode(decoder.decode(body))
            writer.write((len(payload) + 2).to_bytes(4, "big") + bytes((22, encoding)) + payload)
            if writer.transport.get_write_buffer_size() > 65536:
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve_bare(port: int, streams: bool) -> None:
    loop = asyncio.get_running_loop()
    if streams:
        server = await asyncio.start_server(streams_echo, "127.0.0.1", port, backlog=4096)
    else:
        server = await loop.create_server(BareEcho, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


async def serve_aiohttp(port: int) -> None:
    from aiohttp import web

    decoder, encoder = CODECS[0]

    async def echo(request: web.Request) -> web.Response:
        data = decoder.decode(await request.read())
        return web.Response(body=encoder.encode(data), content_type="application/json")

    app = web.Application()
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    await asyncio.Event().wait()


def make_framework(target: str, port: int) -> Any:
    # BENCH_ASYNCAPY_SRC: another asyncapy's src/ (bench/run.py --baseline)
    src = os.environ.get("BENCH_ASYNCAPY_SRC") or os.path.join(
        os.path.dirname(__file__), "..", "src"
    )
    sys.path.insert(0, src)
    from asyncapy import Server
    from asyncapy.filters import Filters

    server = Server(
        port=port,
        max_connections=0,
        session_limit=0,  # every load comes from 127.0.0.1: 10,000 idle connections too
        backlog=4096,
        logging_level=logging.WARNING,
        timeout=600,
    )
    if target == "seed-echo":

        @server.add_handler()
        async def echo_server(client: Any, packet: Any) -> None:
            await client.send(packet)
            await client.close()

        return server
    if target == "groups":

        @server.add_handler(group=-2)
        async def first(client: Any, packet: Any) -> None:
            return None

        @server.add_handler(group=-1)
        async def second(client: Any, packet: Any) -> None:
            return None

    if target == "typed5":  # issue 11: a 5-field Struct checks and carries the request
        import msgspec

        class Echo5(msgspec.Struct):
            method: str
            id: int
            data: str
            user: str
            n: int

        async def typed_echo(client: Any, packet: Echo5) -> Echo5:
            return packet

        typed_echo.__annotations__.update(packet=Echo5, **{"return": Echo5})
        server.add_handler()(typed_echo)
        return server
    if target == "fields5":  # the same checks as typed5 with a Fields filter, untyped
        five = Filters.Fields(method="^echo$", id=None, data=None, user=None, n=None)

        @server.add_handler(five)
        async def fields_echo(client: Any, packet: Any) -> None:
            await client.send(packet)

        return server
    filters = [] if target == "plain" else [Filters.Fields(method="^echo$")]

    @server.add_handler(*filters)
    async def echo(client: Any, packet: Any) -> None:
        await client.send(packet)

    return server


def serve_original(port: int) -> None:
    """AsyncAPY 0.5's way: a trio task per connection, read one frame, stdlib json,
    reply, close. (Compact separators, so the reply bytes equal the request's.)"""
    import json

    import trio

    async def handle(stream: Any) -> None:
        data = b""
        try:
            while len(data) < 6 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                chunk = await stream.receive_some(1024)
                if not chunk:
                    return
                data += chunk
            end = 4 + int.from_bytes(data[:4], "big")
            payload = json.loads(data[6:end])
            body = json.dumps(payload, separators=(",", ":")).encode()
            await stream.send_all((len(body) + 2).to_bytes(4, "big") + b"\x16\x00" + body)
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()

    async def serve() -> None:
        await trio.serve_tcp(handle, port, host="127.0.0.1", backlog=4096)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "target",
        choices=[
            "bare",
            "streams",
            "aiohttp",
            "framework",
            "plain",
            "groups",
            "seed-echo",
            "original",
        ],
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        factory: Any = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    if args.target == "original":
        serve_original(args.port)
        return
    if args.target in ("bare", "streams"):
        coro: Any = serve_bare(args.port, args.target == "streams")
    elif args.target == "aiohttp":
        coro = serve_aiohttp(args.port)
    else:
        server = make_framework(args.target, args.port)
        coro = server.serve()
    with asyncio.Runner(loop_factory=factory) as runner, contextlib.suppress(KeyboardInterrupt):
        runner.run(coro)


if __name__ == "__main__":
    main()
