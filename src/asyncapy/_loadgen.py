"""The load engine of ``asyncapy bench``: closed-loop connections on one event loop.

Theory of operation
-------------------
Each of ``connections`` connections keeps ``pipeline`` request frames in
flight: every reply frees a slot that is refilled at once with the same
prebuilt frame (closed loop, as ``bench/loadgen.c``). The connections are
:class:`asyncio.Protocol` objects on uvloop (asyncio's loop without it), and
everything per reply is kept to a few bytes comparisons and integer updates:

* **Replies are compared, not decoded.** The first reply that is not an
  error becomes the *expected reply*; a chunk that is exactly ``n`` copies of
  it (the usual case of an echo: one chunk, ``n`` whole replies) is ``n`` good
  replies after one ``==`` against a prebuilt ``n``-fold copy. Any other
  chunk goes through a :class:`~asyncapy.protocol.FrameDecoder` (frames cut
  anywhere, replies that differ); a reply payload is decoded only when the
  bytes ``failure`` occur in it, to read its ``ERR_*`` code.
* **Latency by batch.** Requests written together share one send time: the
  connection keeps a ring (deque) of ``(send time, count)``, and replies
  complete the oldest first (they come back in request order). ``n`` replies
  read in one chunk cost one histogram update per batch they close, not one
  per reply. Times are ``time.monotonic_ns()``: a latency runs from the
  ``transport.write`` of the request to the read of the chunk holding the
  whole reply, as in loadgen.c.
* **The window.** Replies completed in ``[start + warmup, start + warmup +
  duration)`` are counted; with ``requests`` instead of a duration, the run
  ends after that many counted replies, and no more requests are sent than
  can still be counted. Errors are counted in the same window.

A connection that fails (refused, reset, closed by the server, silent for
``timeout`` seconds with requests in flight, a bad reply frame) is counted by
kind and replaced: at once after a loss, after 10 ms after a failed connect.
A run that cannot connect within ``timeout`` ends with ``connected=False``.

Several processes: ``python -m asyncapy._loadgen`` reads a :class:`LoadSpec`
(one JSON line) on stdin, answers ``ready``, waits for ``go START_NS`` (a
``time.monotonic_ns()`` value, which is system-wide on Linux, so every
process starts its window together), prints ``progress N`` lines (replies
counted so far) and ends with ``result {JSON}``: a
:class:`~asyncapy._loadstats.LoadResult`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Literal

import msgspec

from ._loadstats import NBUCKETS, LoadResult, bucket, sparse
from ._tls import client_context, handshake_error
from .codecs import CODECS, DECODE_FAILURES
from .errors import LocalProtocolError
from .protocol import Encoding, FrameDecoder, FrameEncoder, FrameError

__all__ = ["LoadSpec", "generate", "new_loop", "run_spec"]

_now: Final = time.monotonic_ns
_MAX_REPLY: Final = 64 << 20  # larger replies are garbage, as in loadgen.c
_RETRY: Final = 0.01  # seconds between failed connects
_TICK: Final = 0.25  # seconds between progress reports and silence checks
_COPIES: Final = 64  # prebuilt n-fold copies of the request and of the expected reply


class LoadSpec(msgspec.Struct, kw_only=True, frozen=True):
    """What one load process does (JSON between processes).

    ``request`` is one whole frame; ``duration`` and ``requests``: exactly
    one is set; ``timeout`` bounds a connect and the silence of a connection
    that waits for replies.
    """

    host: str
    port: int
    request: bytes
    connections: int = 1
    pipeline: int = 1
    duration: float | None = 10.0
    requests: int | None = None
    warmup: float = 0.0
    header_size: int = 4
    byteorder: Literal["big", "little"] = "big"
    timeout: float = 10.0
    tls: bool = False
    cafile: str | None = None
    insecure: bool = False
    server_hostname: str | None = None


def _copies(frame: bytes, most: int) -> list[bytes]:
    """``[b"", frame, frame * 2, ...]``: up to ``most`` copies, and at most 8 MiB in all."""
    count = max(1, min(most, _COPIES, math.isqrt((8 << 20) // len(frame))))
    return [frame * n for n in range(count + 1)]


def _failure_code(encoding: Encoding, payload: bytes) -> str | None:
    """The code of an error reply (``{"status": "failure", ...}``), else None."""
    try:
        value = CODECS[encoding].loads(payload)
    except DECODE_FAILURES:
        return None
    if type(value) is not dict or value.get("status") != "failure":
        return None
    code = value.get("error")
    return code if isinstance(code, str) and code else "failure"


def _connect_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "connect timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connect refused"
    if handshake_error(exc) is not None:
        return "server does not speak TLS"
    if isinstance(exc, ssl.SSLError):
        return "TLS handshake failed"
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return f"connect {errno.errorcode[exc.errno]}"
    return f"connect {type(exc).__name__}"


class _Conn(asyncio.Protocol):
    """One closed-loop connection (see the module's theory of operation)."""

    __slots__ = (
        "decoder",
        "failed",
        "inflight",
        "last_rx",
        "partial",
        "ring",
        "run",
        "sending",
        "transport",
    )

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: Any = None
        self.ring: deque[tuple[int, int]] = deque()  # (send time, requests sent then)
        self.inflight = 0
        self.partial = False  # the decoder holds part of a frame
        self.failed = False  # counted already: connection_lost adds nothing
        self.sending = False  # refill freed slots (connected, not failed, not stopping)
        self.decoder = FrameDecoder(run.spec.header_size, run.spec.byteorder, _MAX_REPLY)
        self.last_rx = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        run = self.run
        run.conns.add(self)
        run.connected = True
        self.sending = not run.stopping
        self.last_rx = now = _now()
        self._send(run.allowed(run.spec.pipeline), now)

    def _send(self, count: int, now: int) -> None:
        if count > 0:
            frames = self.run.frames
            self.transport.write(
                frames[count] if count < len(frames) else self.run.spec.request * count
            )
            self.ring.append((now, count))
            self.inflight += count
            self.run.inflight += count

    def data_received(self, data: bytes) -> None:
        self.last_rx = now = _now()
        if not self.partial:
            # n whole expected replies, nothing else: (n, the n-fold copy) by length
            hit = self.run.expected.get(len(data))
            if hit is not None:
                if hit[1] == data and hit[0] <= self.inflight:
                    self._done(hit[0], now)
                    return
            else:
                n = self.run.tiles(data)
                if n and n <= self.inflight:
                    self._done(n, now)
                    return
        self._slow(data, now)

    def _slow(self, data: bytes, now: int) -> None:
        """Cut frames with the decoder; read the code of error replies."""
        try:
            events = self.decoder.feed_fast(data)
        except LocalProtocolError:  # after a fatal frame: the connection is going
            return
        run = self.run
        count = 0
        problem = ""
        for event in events:
            if isinstance(event, FrameError):
                problem = "server speaks TLS" if event.tls else f"bad reply frame ({event.code})"
                break
            if count >= self.inflight:
                problem = "unexpected reply"
                break
            count += 1
            encoding, payload = event
            body = bytes(payload)
            if b"failure" in body:
                code = _failure_code(encoding, body)
                if code is not None:
                    run.error(code, now)
                    continue
            if not run.expected:
                run.learn(run.encoder.encode(body, encoding))
        self.partial = not self.decoder.idle
        if count:
            self._done(count, now)
        if problem:
            self.drop(problem, now)

    def _done(self, n: int, now: int) -> None:
        """``n`` replies are complete: count them (in the window) and refill."""
        run = self.run
        self.inflight -= n
        run.inflight -= n
        ring = self.ring
        sent, k = ring[0]
        if run.warm_end <= now < run.end:
            run.measured += n
            run.last_ns = now
            lat = now - sent  # the oldest request: the largest latency of the batch
            if lat > run.max_ns:
                run.max_ns = lat
            if k == n:  # the usual case: the replies close one batch of requests
                ring.popleft()
                run.hist[lat if lat < 256 else bucket(lat)] += n
            else:
                self._record(n, now)
        elif k == n:
            ring.popleft()
        else:
            self._record(n, 0)
        if run.limit is None:
            if self.sending:
                self._send(n, now)
            return
        if run.measured >= run.limit:
            run.finish()
        elif self.sending:
            self._send(run.allowed(n), now)

    def _record(self, n: int, now: int) -> None:
        """Take ``n`` requests off the ring, oldest first; count their latencies if ``now``."""
        ring = self.ring
        hist = self.run.hist
        while n:
            sent, k = ring[0]
            if k <= n:
                ring.popleft()
            else:
                ring[0] = (sent, k - n)
                k = n
            n -= k
            if now:
                hist[bucket(now - sent)] += k

    def drop(self, kind: str, now: int) -> None:
        """Count ``kind`` and close the connection (it is replaced)."""
        if not self.failed:
            self.failed = True
            self.sending = False
            self.run.error(kind, now)
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        run = self.run
        run.conns.discard(self)
        self.sending = False
        run.inflight -= self.inflight
        self.inflight = 0
        if run.stopping:
            return
        if not self.failed:
            self.failed = True
            kind = "closed by the server" if exc is None else "connection lost"
            if isinstance(exc, ConnectionResetError):
                kind = "connection reset"
            run.error(kind, _now())
        run.reconnect()


class _Run:
    """What the connections of one process share: the frames, the counts, the window."""

    def __init__(self, spec: LoadSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self.frames = _copies(spec.request, spec.pipeline)
        self.encoder = FrameEncoder(spec.header_size, spec.byteorder)
        self.ssl = client_context(
            spec.tls, spec.cafile, not spec.insecure, None, spec.server_hostname
        )
        self.expected: dict[int, tuple[int, bytes]] = {}
        self.block = b""  # the longest copy in expected
        self.reply_size = 0
        self.hist = [0] * NBUCKETS
        self.max_ns = 0
        self.measured = 0
        self.last_ns = 0
        self.inflight = 0
        self.limit = spec.requests
        self.errors: dict[str, int] = {}
        self.conns: set[_Conn] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.connected = False
        self.last_error = ""
        self.warm_end = 0
        self.end = 1 << 63
        self.done: asyncio.Future[None] = loop.create_future()

    def allowed(self, n: int) -> int:
        """How many of ``n`` requests may be sent: all, or what ``requests`` still counts."""
        if self.limit is None:
            return n
        return max(0, min(n, self.limit - self.measured - self.inflight))

    def learn(self, frame: bytes) -> None:
        """Take ``frame`` as the expected reply: a chunk of ``n`` of them is ``n`` good replies."""
        copies = _copies(frame, self.spec.pipeline)
        self.expected = {len(copy): (n, copy) for n, copy in enumerate(copies) if n}
        self.block = copies[-1]
        self.reply_size = len(frame)

    def tiles(self, data: bytes) -> int:
        """``n`` when ``data`` is ``n`` expected replies (beyond :attr:`expected`), else 0."""
        size = self.reply_size
        if not size or len(data) % size:
            return 0
        block = self.block
        step = len(block)
        end = len(data)
        pos = 0
        while end - pos >= step:
            if not data.startswith(block, pos):
                return 0
            pos += step
        if pos < end and not data.startswith(self.expected[end - pos][1], pos):
            return 0
        return end // size

    def error(self, kind: str, now: int) -> None:
        if self.warm_end <= now < self.end:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def reconnect(self, delay: float = 0.0) -> None:
        if not self.stopping:
            task = self.loop.create_task(self._connect(delay))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _connect(self, delay: float) -> None:
        spec = self.spec
        hostname = (spec.server_hostname or spec.host) if self.ssl is not None else None
        while True:
            if delay:
                await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(spec.timeout):
                    await self.loop.create_connection(
                        lambda: _Conn(self),
                        spec.host,
                        spec.port,
                        ssl=self.ssl,
                        server_hostname=hostname,
                    )
                return
            except (OSError, TimeoutError) as exc:
                kind = _connect_error(exc)
                self.last_error = f"{kind}: {exc}" if str(exc) else kind
                self.error(kind, _now())
            delay = _RETRY

    async def tick(self, start: int, progress: Callable[[int], None] | None) -> None:
        """Report progress; drop silent connections; give up when nothing connects."""
        timeout_ns = int(self.spec.timeout * 1e9)
        while True:
            await asyncio.sleep(_TICK)
            now = _now()
            if progress is not None:
                progress(self.measured)
            for conn in list(self.conns):
                if conn.inflight and now - conn.last_rx > timeout_ns:
                    conn.drop("reply timeout", now)
            if not self.connected and now - start > timeout_ns:
                self.finish()

    async def stop(self) -> None:
        """Close every connection and cancel the connects under way."""
        self.stopping = True
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        for conn in list(self.conns):
            conn.sending = False
            conn.transport.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(200):  # connection_lost runs on a later turn of the loop
            if not self.conns:
                break
            await asyncio.sleep(0.005)


async def generate(
    spec: LoadSpec, *, start_ns: int | None = None, progress: Callable[[int], None] | None = None
) -> LoadResult:
    """Run the load ``spec`` describes on the running loop; return its counts.

    Args:
        spec: the load.
        start_ns: a ``time.monotonic_ns()`` at which to start (None: now).
        progress: called about 4 times a second with the replies counted so far.

    Raises:
        ValueError, OSError: for TLS settings that do not build a context (a
            bad ``cafile``). Connection failures are counted, never raised.
    """
    loop = asyncio.get_running_loop()
    run = _Run(spec, loop)
    if start_ns is not None:
        await asyncio.sleep(max(0.0, (start_ns - _now()) / 1e9))
    start = _now()
    run.warm_end = start + int(spec.warmup * 1e9)
    timer = None
    if spec.duration is not None:
        run.end = run.warm_end + int(spec.duration * 1e9)
        timer = loop.call_later((run.end - _now()) / 1e9, run.finish)
    for _ in range(spec.connections):
        run.reconnect()
    ticker = loop.create_task(run.tick(start, progress))
    try:
        await run.done
    finally:
        if timer is not None:
            timer.cancel()
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
        await run.stop()
    if spec.duration is not None:
        seconds = spec.duration
    else:
        seconds = max(run.last_ns - run.warm_end, 1) / 1e9 if run.measured else 0.0
    return LoadResult(
        requests=run.measured,
        seconds=seconds,
        hist=sparse(run.hist),
        max_ns=run.max_ns,
        errors=run.errors,
        connected=run.connected,
        last_error=run.last_error,
    )


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it imports, else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run_spec(
    spec: LoadSpec, *, start_ns: int | None = None, progress: Callable[[int], None] | None = None
) -> LoadResult:
    """:func:`generate` on a new event loop of its own (uvloop's when it imports)."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(generate(spec, start_ns=start_ns, progress=progress))


def _worker() -> int:
    """``python -m asyncapy._loadgen``: one load process (see the theory of operation)."""
    spec = msgspec.json.decode(sys.stdin.buffer.readline(), type=LoadSpec)
    print("ready", flush=True)
    word, _, start = sys.stdin.readline().partition(" ")
    if word != "go":
        return 1

    def progress(count: int) -> None:
        print(f"progress {count}", flush=True)

    result = run_spec(spec, start_ns=int(start), progress=progress)
    print("result", msgspec.json.encode(result).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker())
