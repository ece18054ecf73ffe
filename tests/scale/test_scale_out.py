"""Scale-out: two hosts (``asyncapy run --workers 2`` each) behind HAProxy, state in Redis.

Issue 10, item 9. Every request goes through HAProxy (``send-proxy-v2``,
``leastconn``, a health check in the frame protocol) unless a test says it
connects straight to a host, which it then does as HAProxy would: from the
host's one trusted address, with a PROXY v2 header (``proxy.encode_v2``).
A reply's ``host`` field says which host answered. ``harness.py`` builds the
cluster and says how.

The test that kills a host runs last: the module's cluster has one host
fewer after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from asyncapy.codecs import JSON
from asyncapy.protocol import Frame
from asyncapy.proxy import encode_v2
from tests.conftest import Runner
from tests.helpers import Peer
from tests.scale import harness
from tests.scale.harness import (
    RATE,
    RATE_BURST,
    RATE_PER,
    REVOCATION_TTL,
    SESSION_LIMIT,
    WORKERS,
    Cluster,
    ask,
    client_address,
    connect,
    direct,
    on_host,
    via_haproxy,
)

pytestmark = pytest.mark.scale

DOCS = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
MARGIN = 0.5
"""Seconds allowed on top of a stated time: a few round trips and the polling step."""
POLL = 0.02
FORGED = ("192.0.2.77", 4242)
"""A client address that only a PROXY header can carry (TEST-NET-1)."""


async def issue_key(peer: Peer, owner: str) -> str:
    reply = await ask(peer, {"request_type": "issue", "owner": owner})
    assert reply["status"] == "success", reply
    key: str = reply["key"]
    return key


# -- the guide's configuration


def test_documented_haproxy_config_is_valid(tmp_path: Path) -> None:
    """The haproxy.cfg of docs/deployment.md is the test's, and HAProxy accepts it (``-c``)."""
    if harness.HAPROXY is None:
        pytest.skip("haproxy is not installed (scripts/test installs it as root)")
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Scaling out behind HAProxy", 1)[1].split("\n## ", 1)[0]
    config = re.search(r"```text\n(global\n.*?)```", section, re.S)
    assert config is not None, "no haproxy.cfg block in the section"
    body = config.group(1)
    assert f"tcp-check send-binary {harness.ping_frame().hex()}" in body
    assert f"tcp-check expect binary {harness.pong_frame().hex()}" in body
    for line in ("balance leastconn", "send-proxy-v2", "option redispatch", "mode tcp"):
        assert line in body, line
    (tmp_path / "haproxy.cfg").write_text(body)
    checked = subprocess.run(
        [harness.HAPROXY, "-c", "-f", str(tmp_path / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- the cluster


def test_each_host_reaches_redis(cluster: Cluster) -> None:
    """The harness's topology: redis-server answers PING from inside each host."""
    url = re.fullmatch(r"redis://(.+):(\d+)/0", cluster.store or "")
    assert url is not None, cluster.store
    address, port = url.groups()
    probe = (
        "import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 2);"
        " s.sendall(b'PING\\r\\n'); sys.exit(0 if s.recv(64).startswith(b'+PONG') else 1)"
    )
    for host in cluster.hosts.values():
        argv = host.net.command([sys.executable, "-c", probe, address, port])
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        assert result.returncode == 0, (host.name, result.stderr)


def test_servers_see_the_client_address_not_haproxys(cluster: Cluster, arun: Runner[Any]) -> None:
    async def body() -> None:
        source = client_address()
        for name in cluster.hosts:
            peer = await on_host(cluster, name, source)
            try:
                sockname = peer.writer.get_extra_info("sockname")
                reply = await ask(peer, {"request_type": "whoami"})
            finally:
                await peer.close()
            assert sockname[0] == source
            assert (reply["address"], reply["port"]) == (sockname[0], sockname[1]), reply
            assert reply["address"] != cluster.host(name).net.gateway  # HAProxy's side

            # Straight to the host, from its trusted address: the header is believed.
            peer = await direct(cluster, name, FORGED)
            try:
                reply = await ask(peer, {"request_type": "whoami"})
            finally:
                await peer.close()
            assert (reply["address"], reply["port"]) == FORGED, reply

            # From any other address, the same header closes the connection unanswered.
            untrusted = client_address()
            if cluster.netns:  # the root side of the other host's link: routable, not trusted
                untrusted = next(h.net.gateway for h in cluster.hosts.values() if h.name != name)
            host = cluster.host(name)
            header = encode_v2(FORGED, (host.address, host.port))
            peer = await connect(host.address, host.port, untrusted)
            with contextlib.suppress(ConnectionError):  # it may be closed before this is sent
                await peer.send_raw(header + peer.frame({"request_type": "whoami"}))
            assert await peer.closed(timeout=5), "an untrusted PROXY header was not refused"
            replies = [JSON.decode(e.payload) for e in peer.pending if isinstance(e, Frame)]
            assert not [r for r in replies if r.get("status") == "success"], replies

    arun(body())


def test_key_issued_on_one_host_authorises_on_the_other(
    cluster: Cluster, arun: Runner[Any]
) -> None:
    async def body() -> None:
        source = client_address()
        a = await on_host(cluster, "a", source)
        b = await on_host(cluster, "b", source)
        try:
            key = await issue_key(a, "issued-on-a")
            assert await ask(b, {"request_type": "private", "key": key}) == {
                "status": "success",
                "host": "b",
            }
            mangled = key[:-1] + ("B" if key.endswith("A") else "A")
            unknown = await ask(b, {"request_type": "private", "key": mangled})
            assert unknown == {"status": "failure", "error": "ERR_NO_HANDLER"}
            key_b = await issue_key(b, "issued-on-b")
            assert (await ask(a, {"request_type": "private", "key": key_b}))["host"] == "a"
        finally:
            await a.close()
            await b.close()
        # Every worker of each host, not only those connections landed on:
        # straight to each host until both its workers answered (SO_REUSEPORT
        # spreads connections by a hash of their ports).
        for name in cluster.hosts:
            pids: set[int] = set()
            for port in range(40000, 40032):
                if len(pids) == WORKERS:
                    break
                peer = await direct(cluster, name, (source, port))
                try:
                    reply = await ask(peer, {"request_type": "private", "key": key})
                    pids.add((await ask(peer, {"request_type": "whoami"}))["pid"])
                finally:
                    await peer.close()
                assert reply == {"status": "success", "host": name}, reply
            assert len(pids) == WORKERS, (name, pids)

    arun(body())


def test_revoked_key_is_refused_by_both_within_the_cache_ttl(
    cluster: Cluster, arun: Runner[Any]
) -> None:
    async def body() -> dict[str, float]:
        source = client_address()
        peers = {name: await on_host(cluster, name, source) for name in cluster.hosts}
        try:
            key = await issue_key(peers["a"], "to-revoke")
            request = {"request_type": "private", "key": key}
            for name, peer in peers.items():  # each worker now holds the key in its cache
                assert (await ask(peer, request))["status"] == "success", name
            reply = await ask(peers["a"], {"request_type": "revoke", "key": key})
            assert reply["revoked"] is True, reply
            revoked_at = time.perf_counter()
            refused_after: dict[str, float] = {}
            deadline = revoked_at + REVOCATION_TTL + MARGIN
            while len(refused_after) < len(peers) and time.perf_counter() < deadline:
                for name, peer in peers.items():
                    if name not in refused_after:
                        reply = await ask(peer, request)
                        if reply["status"] != "success":
                            assert reply == {"status": "failure", "error": "ERR_NO_HANDLER"}
                            refused_after[name] = time.perf_counter() - revoked_at
                await asyncio.sleep(POLL)
            for name, peer in peers.items():  # and it stays refused
                assert (await ask(peer, request))["status"] == "failure", name
        finally:
            for peer in peers.values():
                await peer.close()
        return refused_after

    refused_after = arun(body())
    assert set(refused_after) == set(cluster.hosts), (
        f"still authorised {REVOCATION_TTL + MARGIN} s after the revocation on"
        f" {set(cluster.hosts) - set(refused_after)}; refused on {refused_after}"
    )
    assert max(refused_after.values()) <= REVOCATION_TTL + MARGIN, refused_after


def test_session_limit_holds_across_both_hosts(cluster: Cluster, arun: Runner[Any]) -> None:
    async def body() -> None:
        source = client_address()
        held: list[Peer] = []
        try:
            hosts = []
            for _ in range(SESSION_LIMIT):
                peer = await via_haproxy(cluster, source)
                held.append(peer)
                reply = await ask(peer, {"request_type": "whoami"})
                assert reply["status"] == "success", reply
                hosts.append(reply["host"])
            assert set(hosts) == set(cluster.hosts), f"leastconn did not spread them: {hosts}"

            extra = await via_haproxy(cluster, source)
            try:
                try:
                    error = await extra.recv_error(timeout=2.0)
                except TimeoutError:
                    reply = await ask(extra, {"request_type": "whoami"})
                    raise AssertionError(
                        f"session {SESSION_LIMIT + 1} of {source} was accepted: {reply}"
                    ) from None
                assert error == "ERR_SESSION_LIMIT_REACHED"
                assert await extra.closed()
            finally:
                await extra.close()

            # One session fewer, and a newcomer is let in again (soon: the
            # release goes through the store).
            await held.pop().close()
            deadline = time.monotonic() + 2.0
            while True:
                peer = await via_haproxy(cluster, source)
                held.append(peer)
                reply = await ask(peer, {"request_type": "whoami"})
                if reply["status"] == "success":
                    break
                assert reply["error"] == "ERR_SESSION_LIMIT_REACHED", reply
                await held.pop().close()
                assert time.monotonic() < deadline, "a released session still counts after 2 s"
                await asyncio.sleep(0.05)
        finally:
            for peer in held:
                await peer.close()

    arun(body())


def test_rate_limit_holds_across_both_hosts(cluster: Cluster, arun: Runner[Any]) -> None:
    interval = RATE_PER / RATE

    async def body() -> None:
        source = client_address()
        a = await on_host(cluster, "a", source)
        b = await on_host(cluster, "b", source)
        try:
            key = await issue_key(a, "limited")
            request = {"request_type": "limited", "key": key}
            started = time.perf_counter()
            for i in range(RATE_BURST):  # the burst, split between the hosts
                peer = (a, b)[i % 2]
                assert (await ask(peer, request))["status"] == "success", i
            elapsed = time.perf_counter() - started
            assert elapsed < interval / 2, f"the burst took {elapsed:.3f} s: too slow to test"
            refusals = [await ask(a, request), await ask(b, request)]
            for reply in refusals:
                assert reply["status"] == "failure", reply
                assert reply["error"] == "ERR_RATE_LIMITED", reply
                assert 0 < reply["retry_after"] <= interval, reply
            # Once retry_after has passed, exactly one more conforms, on either host.
            await asyncio.sleep(refusals[-1]["retry_after"] + 0.05)
            assert await ask(b, request) == {"status": "success", "host": "b"}
            assert (await ask(a, request))["error"] == "ERR_RATE_LIMITED"
        finally:
            await a.close()
            await b.close()

    arun(body())


# -- last: one host dies


@dataclass
class Caller:
    """A client that retries a request on a new connection when its connection fails."""

    cluster: Cluster
    source: str
    peer: Peer | None = None
    host: str | None = None
    answers: list[tuple[int, str, float]] = field(default_factory=list)
    retries: int = 0

    async def call(self, ident: int, deadline: float) -> None:
        while True:
            assert time.monotonic() < deadline, f"request {ident} unanswered at the deadline"
            try:
                if self.peer is None:
                    self.peer = await via_haproxy(self.cluster, self.source)
                await self.peer.send({"request_type": "whoami", "id": ident})
                frame = await self.peer.frame_in(timeout=2.0)
            except (OSError, TimeoutError):
                frame = None
            if frame is None:  # the connection failed: retry on a new one
                self.retries += 1
                await self.drop()
                await asyncio.sleep(0.02)
                continue
            reply = JSON.decode(frame.payload)
            assert reply["status"] == "success", reply
            assert reply["id"] == ident, reply
            self.host = reply["host"]
            self.answers.append((ident, reply["host"], time.monotonic()))
            return

    async def drop(self) -> None:
        if self.peer is not None:
            await self.peer.close()
            self.peer = None


def test_killing_one_host_loses_no_request(cluster: Cluster, arun: Runner[Any]) -> None:
    requests, callers_count = 40, 4
    victim = cluster.host("b")

    async def body() -> tuple[list[Caller], float, set[int]]:
        callers = [Caller(cluster, client_address()) for _ in range(callers_count)]
        deadline = time.monotonic() + 20.0
        killed = asyncio.Event()
        killed_at = 0.0
        on_victim: set[int] = set()

        async def run(caller: Caller) -> None:
            for ident in range(requests):
                await caller.call(ident, deadline)
                await asyncio.sleep(0.01)
            await caller.drop()

        async def kill_when_busy() -> None:
            nonlocal killed_at
            while not (
                all(len(c.answers) >= requests // 4 for c in callers)
                and any(c.host == victim.name for c in callers)
            ):
                assert time.monotonic() < deadline, "no caller ever reached the victim"
                await asyncio.sleep(0.005)
            on_victim.update(i for i, c in enumerate(callers) if c.host == victim.name)
            killed_at = time.monotonic()
            os.killpg(victim.process.pid, signal.SIGKILL)  # the supervisor and its workers
            killed.set()

        await asyncio.gather(kill_when_busy(), *(run(c) for c in callers))
        assert killed.is_set()
        return callers, killed_at, on_victim

    callers, killed_at, on_victim = arun(body())
    assert on_victim, "no caller was on the killed host"
    for index, caller in enumerate(callers):
        idents = [ident for ident, _, _ in caller.answers]
        assert idents == list(range(requests)), (index, idents)  # each answered exactly once
        late = {host for _, host, at in caller.answers if at > killed_at + 0.1}
        assert late <= {"a"}, (index, late)
    assert all(callers[i].retries >= 1 for i in on_victim), [c.retries for c in callers]
    victim.process.popen.wait(5)  # type: ignore[union-attr]
    deadline = time.monotonic() + 3.0
    while harness.haproxy_servers(cluster.stats_socket)[victim.name]["status"] != "DOWN":
        assert time.monotonic() < deadline, "HAProxy's health check did not mark the host DOWN"
        time.sleep(0.05)
