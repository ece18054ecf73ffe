# ruff: noqa: PT009 - a unittest test case uses unittest's assert methods
"""A user's tests of examples/app.py, with asyncapy.testing (see docs/testing.md).

``pytest examples`` runs them. No port is opened: each TestClient talks to
the server over a socket pair, through its real framing, codecs and limits.
"""

import asyncio
import unittest

from app import server

from asyncapy.testing import BlockingTestClient, TestClient

# -- pytest: an async scenario run by asyncio.run (with pytest-asyncio or
# anyio's plugin, write `async def test_...` and await directly).


def test_put_then_get():
    async def scenario():
        async with TestClient(server) as client:
            await client.send({"method": "put", "key": "colour", "value": "blue"})
            assert await client.receive() == {"status": "success"}
            await client.send({"method": "get", "key": "colour"})
            assert await client.receive() == {"status": "success", "value": "blue"}
            await client.send({"method": "get", "key": "size"})
            assert await client.receive() == {"status": "failure", "error": "no such key"}
        assert server.requests == 3
        assert not server.open  # shutdown() ran

    asyncio.run(scenario())


def test_a_remote_peer_can_read_but_not_write():
    async def scenario():
        async with TestClient(server) as local:
            await local.send({"method": "put", "key": "k", "value": 1})
            assert await local.receive() == {"status": "success"}
            remote = await local.connect(address="203.0.113.9", encoding="ziproto")
            await remote.send({"method": "put", "key": "k", "value": 2})
            assert await remote.receive() == {"status": "failure", "error": "forbidden"}
            await remote.send({"method": "get", "key": "k"})
            assert await remote.receive() == {"status": "success", "value": 1}

    asyncio.run(scenario())


# -- pytest, plain function: the blocking client


def test_bye_closes_the_connection():
    with BlockingTestClient(server) as client:
        client.send({"method": "get", "key": "nothing"})
        client.receive()
        client.send({"method": "bye"})
        assert client.receive() == {"status": "success", "requests": 1}
        client.wait_closed()
        assert client.closed


# -- unittest


class StoreTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.client = await self.enterAsyncContext(TestClient(server))

    async def test_setup_opened_an_empty_store(self):
        self.assertTrue(server.open)
        await self.client.send({"method": "get", "key": "colour"})
        self.assertEqual(await self.client.receive(), {"status": "failure", "error": "no such key"})

    async def test_what_no_handler_takes_is_an_error(self):
        await self.client.send({"method": "delete", "key": "colour"})
        self.assertEqual(
            await self.client.receive(), {"status": "failure", "error": "ERR_NO_HANDLER"}
        )
        await self.client.send_raw(self.client.frame(b"{not json"))
        reply = await self.client.receive()
        self.assertEqual(reply["error"], "ERR_REQUEST_MALFORMED")
        await self.client.send({"method": "put", "key": "bad key!", "value": 1})  # key must be \w+
        self.assertEqual((await self.client.receive())["error"], "ERR_NO_HANDLER")
