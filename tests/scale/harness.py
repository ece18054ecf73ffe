"""Two hosts behind a real HAProxy, sharing a real redis-server: the scale-out test bed.

Theory of operation
-------------------
:func:`cluster` builds, and always takes down again, in this order:

1. **Two hosts.** Where this process may create network namespaces (root,
   and ``ip netns add`` works: probed once, :func:`netns_unavailable`), each
   host is a namespace joined to the root namespace by a veth pair, its side
   ``10.200.N.2/30``, the root side ``10.200.N.1/30`` (N random, not
   overlapping any address or route of the root namespace; names carry a
   random suffix). Otherwise, or with ``SCALE_TEST_NETNS=0``, the hosts are
   two ports of 127.0.0.1.
2. **One redis-server** on a free port, bound to the root side of the first
   veth pair (and 127.0.0.1); both hosts reach it through their default
   route. The store URL is ``redis://<that address>:<port>/0``.
3. **Each host** runs ``python -m asyncapy run tests.scale.app:server
   --workers 2 --host H --port 0 --store URL --proxy-protocol
   --trusted-proxy G`` (through ``ip netns exec`` in its namespace), in its
   own process group; ready when the supervisor logged its port and two
   ready workers. G, the only trusted source, is the address HAProxy connects
   from: the root side of the host's veth pair, or 127.0.0.1.
4. **One HAProxy** (``-db``: foreground) with :func:`haproxy_config`: TCP
   mode, ``leastconn``, ``send-proxy-v2`` to both hosts, and a health check
   that sends the app a real ``ping`` frame and expects its exact reply,
   every 200 ms. Its frontend is a socket this process bound on 127.0.0.1
   (port 0) and passes as ``fd@N``, so no port is guessed. Ready when its
   stats socket shows both servers UP after a passing check.

Clients connect from their own loopback address (127.0.0.2 ... in the root
namespace) so that per-address limits of one test do not see another's
connections, and so that the address the hosts report is told apart from
HAProxy's. Every wait has a deadline; every process is killed (its whole
process group) and every namespace and link deleted in teardown, whatever
happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import functools
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncapy.codecs import JSON
from asyncapy.protocol import encode_frame
from asyncapy.proxy import encode_v2
from tests.helpers import Peer

REPO = Path(__file__).resolve().parents[2]
APP = "tests.scale.app:server"

# -- what the app and the tests agree on
REVOCATION_TTL = 1.0
"""Seconds a worker may keep trusting a key it checked (``Filters.APIFactory(cache_ttl=)``)."""
RATE, RATE_PER, RATE_BURST = 1, 1.0, 5
"""``Filters.RateLimit``: 1 request per second per key, 5 at once."""
SESSION_LIMIT = 4
"""``session_limit``: sessions per client address, over the whole cluster."""
PING = {"request_type": "ping"}
PONG = {"status": "success", "request_type": "pong"}

WORKERS = 2
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
CHECK_INTERVAL_MS = 200
NETNS_ENV = "SCALE_TEST_NETNS"


def ping_frame() -> bytes:
    """The health check's request: ``PING`` as one JSON frame (4-byte big-endian length)."""
    return encode_frame(JSON.encode(PING), 0)


def pong_frame() -> bytes:
    """The app's exact reply to :func:`ping_frame`."""
    return encode_frame(JSON.encode(PONG), 0)


def tool(name: str) -> str | None:
    """The path of ``name`` on PATH or in /usr/sbin, /usr/bin, /sbin (as scripts/test looks)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])
    return shutil.which(name, path=path)


REDIS_SERVER = tool("redis-server")
HAPROXY = tool("haproxy")
IP = tool("ip")


def missing_tools() -> list[str]:
    """The programs the cluster needs that this machine lacks."""
    wanted = {"redis-server": REDIS_SERVER, "haproxy": HAPROXY}
    return [name for name, path in wanted.items() if path is None]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert IP is not None
    return subprocess.run(
        [IP, *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=check,
        stdin=subprocess.DEVNULL,
    )


@functools.cache
def netns_unavailable() -> str | None:
    """Why hosts cannot be network namespaces here (None: they can). Probed once per process."""
    if os.environ.get(NETNS_ENV) == "0":
        return f"{NETNS_ENV}=0"
    if os.geteuid() != 0:
        return "not root"
    if IP is None:
        return "no ip command (iproute2)"
    name = f"ascprobe{secrets.token_hex(4)}"
    result = _ip("netns", "add", name, check=False)
    if result.returncode != 0:
        return f"ip netns add failed: {result.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


# -- the hosts' network


@dataclass(frozen=True)
class HostNet:
    """Where one host listens, and the one address it trusts (HAProxy's side)."""

    name: str
    address: str
    gateway: str
    netns: str | None = None

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the host's namespace (as is without one)."""
        if self.netns is None:
            return list(argv)
        assert IP is not None
        return [IP, "netns", "exec", self.netns, *argv]


def _free_subnets(count: int) -> list[ipaddress.IPv4Network]:
    """``count`` random 10.200.N.0/30 networks that overlap no address or route here."""
    taken: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for line in _ip("-4", "-o", "addr", "show").stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            taken.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        first = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if first not in ("default", "broadcast", "local", "unreachable"):
                taken.append(ipaddress.ip_network(first, strict=False))
    choices = [n for n in range(256) if ipaddress.ip_network(f"10.200.{n}.0/30") not in taken]
    picked: list[ipaddress.IPv4Network] = []
    for n in secrets.SystemRandom().sample(choices, len(choices)):
        net = ipaddress.IPv4Network(f"10.200.{n}.0/30")
        if not any(net.overlaps(other) for other in taken):
            picked.append(net)
            if len(picked) == count:
                return picked
    raise AssertionError("no free 10.200.N.0/30 network for the test hosts")


@contextlib.contextmanager
def host_network(names: Sequence[str]) -> Iterator[list[HostNet]]:
    """One namespace per name (or loopback, see the module's docstring); deleted after."""
    if netns_unavailable() is not None:
        yield [HostNet(name, "127.0.0.1", "127.0.0.1") for name in names]
        return
    suffix = secrets.token_hex(3)
    made: list[tuple[str, str]] = []  # (namespace, root-side link)
    try:
        hosts = []
        for name, net in zip(names, _free_subnets(len(names)), strict=True):
            gateway, address = (str(ip) for ip in list(net.hosts())[:2])
            netns, outer, inner = f"asc{suffix}{name}", f"as{suffix}{name}r", f"as{suffix}{name}n"
            _ip("netns", "add", netns)
            made.append((netns, outer))
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", netns)
            _ip("addr", "add", f"{gateway}/30", "dev", outer)
            _ip("link", "set", outer, "up")
            _ip("-n", netns, "addr", "add", f"{address}/30", "dev", inner)
            _ip("-n", netns, "link", "set", inner, "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            _ip("-n", netns, "route", "add", "default", "via", gateway)
            hosts.append(HostNet(name, address, gateway, netns))
        yield hosts
    finally:
        for netns, outer in made:
            _ip("link", "del", outer, check=False)
            _ip("netns", "del", netns, check=False)


# -- processes


def _environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCAPY_", "SCALE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class Process:
    """A subprocess in its own process group, its output in ``log``."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=_environment, repr=False)
    pass_fds: tuple[int, ...] = ()
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=self.pass_fds,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def output(self, tail: int = 3000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ({self.log}) ---\n{text[-tail:]}"

    def kill(self) -> None:
        """SIGKILL the whole process group at once, and reap the leader."""
        self.stop(grace=0.0)

    def stop(self, grace: float = STOP_TIMEOUT) -> None:
        """SIGTERM the group, SIGKILL what is left after ``grace`` seconds; wait for the leader."""
        if self.popen is None:
            return
        if grace > 0 and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # the workers too, whatever happened
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(STOP_TIMEOUT)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = START_TIMEOUT) -> list[str]:
        """Wait until ``pattern`` matches ``count`` times in the output; return the matches."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.findall(pattern, self.log.read_text(errors="replace"))
            if len(found) >= count:
                return found
            if not self.alive():
                raise AssertionError(f"{self.name} exited before {pattern!r}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not seen in {timeout} s:\n{self.output()}")
            time.sleep(0.02)


def _wait(what: str, ready: Callable[[], bool], process: Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if not process.alive():
            raise AssertionError(f"{process.name} exited before {what}:\n{process.output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s:\n{process.output()}")
        time.sleep(0.02)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_pings(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(directory: Path, bind: Sequence[str]) -> Iterator[str]:
    """A redis-server bound to ``bind`` on a free port; yields its URL (first address)."""
    assert REDIS_SERVER is not None
    for attempt in range(3):  # a free port may be taken before redis binds it
        port = _free_port()
        argv = [REDIS_SERVER, "--port", str(port), "--bind", *bind, "--save", ""]
        argv += ["--appendonly", "no", "--protected-mode", "no", "--dir", str(directory)]
        process = Process(f"redis-server :{port}", argv, directory / f"redis-{attempt}.log")
        process.start()
        try:
            pings = functools.partial(_redis_pings, bind[0], port)
            _wait("PONG", pings, process, START_TIMEOUT)
        except AssertionError:
            process.stop(grace=0.0)
            if attempt == 2 or "Address already in use" not in process.output():
                raise
            continue
        try:
            yield f"redis://{bind[0]}:{port}/0"
        finally:
            process.stop(grace=1.0)
        return


@dataclass
class Host:
    """One ``asyncapy run`` (a supervisor and its workers) on one host."""

    net: HostNet
    process: Process
    port: int = 0

    @property
    def name(self) -> str:
        return self.net.name

    @property
    def address(self) -> str:
        return self.net.address


def start_host(
    net: HostNet, directory: Path, app: str, store: str | None, proxy_protocol: bool
) -> Host:
    """Start ``asyncapy run`` for ``net`` and wait until its workers are ready.

    ``store`` None and ``proxy_protocol`` False leave those options out
    (a bare server, to look at the harness itself).
    """
    argv = [sys.executable, "-m", "asyncapy", "run", app, "--workers", str(WORKERS)]
    argv += ["--host", net.address, "--port", "0", "--graceful-timeout", "2"]
    argv += ["-s", f"session_limit={SESSION_LIMIT}", "--no-access-log"]
    if store is not None:
        argv += ["--store", store]
    if proxy_protocol:
        argv += ["--proxy-protocol", "--trusted-proxy", net.gateway]
    log = directory / f"host-{net.name}.log"
    process = Process(
        f"host {net.name}", net.command(argv), log, _environment({"SCALE_HOST": net.name})
    )
    host = Host(net, process.start())
    try:
        listening = rf"Listening on {re.escape(net.address)}:(\d+)"
        host.port = int(process.wait_for(listening)[0])
        process.wait_for(r"Worker \d+ \(pid \d+\) is ready", WORKERS)
    except BaseException:
        process.stop(grace=1.0)
        raise
    return host


# -- HAProxy


def haproxy_config(
    bind: str,
    servers: Sequence[tuple[str, str, int]],
    stats_socket: Path | None = None,
    source: str | None = None,
    proxy_protocol: bool = True,
) -> str:
    """The test's haproxy.cfg (``docs/deployment.md`` shows the same, for production).

    Args:
        bind: the frontend's address (``fd@3``, ``:1500``).
        servers: ``(name, address, port)`` of each host.
        stats_socket: where to put the runtime API socket (admin level).
        source: the address HAProxy connects to the servers from.
        proxy_protocol: send a PROXY v2 header first (health checks send LOCAL).
    """
    per_server = f"check inter {CHECK_INTERVAL_MS}ms fastinter 100ms downinter 500ms rise 2 fall 2"
    per_server += " on-marked-down shutdown-sessions"
    if proxy_protocol:
        per_server += " send-proxy-v2"
    if source is not None:
        per_server += f" source {source}"
    lines = ["global", "    maxconn 4096"]
    if stats_socket is not None:
        lines.append(f"    stats socket {stats_socket} mode 600 level admin")
    lines += [
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 2s",
        "    timeout client 75s",
        "    timeout server 75s",
        "    timeout check 1s",
        "    retries 3",
        "    option redispatch",
        "",
        "frontend asyncapy",
        f"    bind {bind}",
        "    default_backend asyncapy_servers",
        "",
        "backend asyncapy_servers",
        "    balance leastconn",
        "    option tcp-check",
        f"    tcp-check send-binary {ping_frame().hex()}",
        f"    tcp-check expect binary {pong_frame().hex()}",
        f"    default-server {per_server}",
    ]
    lines += [f"    server {name} {address}:{port}" for name, address, port in servers]
    return "\n".join(lines) + "\n"


def haproxy_servers(stats_socket: Path) -> dict[str, dict[str, str]]:
    """``show stat`` over the runtime API: each server's row, by server name."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(2)
        sock.connect(str(stats_socket))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    text = data.decode().lstrip("# ")
    rows = csv.DictReader(text.splitlines())
    return {row["svname"]: row for row in rows if row["svname"] not in ("FRONTEND", "BACKEND")}


def servers_up(stats_socket: Path, names: Sequence[str]) -> bool:
    """True when every named server is UP after a passing check (not merely not checked yet)."""
    try:
        rows = haproxy_servers(stats_socket)
    except OSError:
        return False
    return all(
        rows.get(n, {}).get("status") == "UP" and rows[n].get("check_status") == "L7OK"
        for n in names
    )


@dataclass
class Cluster:
    """What :func:`cluster` yields."""

    hosts: dict[str, Host]
    frontend: tuple[str, int]
    store: str | None
    haproxy: Process
    stats_socket: Path
    netns: bool

    def host(self, name: str) -> Host:
        return self.hosts[name]

    def logs(self) -> str:
        """Every process's output, for an assertion message."""
        parts = [h.process.output() for h in self.hosts.values()]
        return "\n".join([*parts, self.haproxy.output()])


@contextlib.contextmanager
def cluster(
    directory: Path,
    names: Sequence[str] = ("a", "b"),
    app: str = APP,
    store: bool = True,
    proxy_protocol: bool = True,
) -> Iterator[Cluster]:
    """Hosts, redis-server and HAProxy, started and ready; all taken down after the block."""
    assert HAPROXY is not None
    with contextlib.ExitStack() as stack:
        nets = stack.enter_context(host_network(names))
        url = None
        if store:
            bind = list(dict.fromkeys([nets[0].gateway, "127.0.0.1"]))
            url = stack.enter_context(redis_server(directory, bind))
        hosts: dict[str, Host] = {}
        for net in nets:
            host = start_host(net, directory, app, url, proxy_protocol)
            stack.callback(host.process.stop, 2.0)
            hosts[net.name] = host
        listener = socket.socket()
        stack.callback(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        stats = directory / "haproxy.sock"
        servers = [(h.name, h.address, h.port) for h in hosts.values()]
        source = nets[0].gateway if nets[0].netns is None else None
        config = haproxy_config(
            f"fd@{listener.fileno()}", servers, stats, source, proxy_protocol=proxy_protocol
        )
        (directory / "haproxy.cfg").write_text(config)
        argv = [HAPROXY, "-db", "-f", str(directory / "haproxy.cfg")]
        haproxy = Process("haproxy", argv, directory / "haproxy.log", pass_fds=(listener.fileno(),))
        haproxy.start()
        stack.callback(haproxy.stop, 1.0)
        _wait("servers UP", lambda: servers_up(stats, list(hosts)), haproxy, START_TIMEOUT)
        yield Cluster(
            hosts, listener.getsockname(), url, haproxy, stats, netns=nets[0].netns is not None
        )


# -- clients

SOURCES = iter(range(2, 255))
"""Loopback addresses handed out by :func:`client_address` (127.0.0.1 is HAProxy's)."""


def client_address() -> str:
    """A loopback address no other client of this process uses (127.0.0.2, .3...)."""
    return f"127.0.0.{next(SOURCES)}"


async def connect(
    address: str,
    port: int,
    source: str | None = None,
    header: bytes = b"",
    timeout: float = 5.0,
) -> Peer:
    """Connect to ``address:port`` from ``source`` (any port); send ``header`` first if given."""
    local = (source, 0) if source is not None else None
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(address, port, local_addr=local)
    peer = Peer(reader, writer)
    if header:
        await peer.send_raw(header)
    return peer


async def via_haproxy(cluster: Cluster, source: str) -> Peer:
    """A connection through HAProxy's frontend, from ``source``."""
    return await connect(*cluster.frontend, source=source)


async def direct(cluster: Cluster, name: str, client: tuple[str, int]) -> Peer:
    """A connection straight to host ``name``, as HAProxy makes one: from its trusted
    address, with a PROXY v2 header that names ``client``."""
    host = cluster.host(name)
    header = encode_v2(client, (host.address, host.port))
    return await connect(host.address, host.port, source=host.net.gateway, header=header)


async def ask(peer: Peer, payload: dict[str, Any], timeout: float = 5.0) -> dict[Any, Any]:
    """Send one request on ``peer`` and return its reply."""
    await peer.send(payload)
    return await peer.recv(timeout)


async def on_host(cluster: Cluster, name: str, source: str, attempts: int = 6) -> Peer:
    """A connection through HAProxy that landed on host ``name`` (its ``whoami`` says so).

    Connections that land elsewhere stay open until one lands on ``name``,
    so that ``leastconn`` sends the next one to another host; then they are
    closed.
    """
    others: list[Peer] = []
    try:
        for _ in range(attempts):
            peer = await via_haproxy(cluster, source)
            if (await ask(peer, {"request_type": "whoami"}))["host"] == name:
                return peer
            others.append(peer)
        raise AssertionError(f"{attempts} connections through HAProxy, none on host {name}")
    finally:
        for peer in others:
            await peer.close()
