"""Tests of examples/typed.py (``pytest examples``): typed replies and ERR_REQUEST_INVALID."""

import asyncio

from typed import server

from asyncapy.testing import TestClient


def test_an_order_gets_its_receipt():
    async def scenario():
        async with TestClient(server) as client:
            await client.send({"order_id": 7, "items": [{"sku": "tea", "qty": 2}]})
            assert await client.receive() == {
                "order_id": 7,
                "total_cents": 600,
                "unknown_skus": [],
            }
            await client.send({"status_of": 7})
            assert await client.receive() == {"order_id": 7, "state": "shipped"}

    asyncio.run(scenario())


def test_every_error_at_once():
    async def scenario():
        async with TestClient(server) as client:
            await client.send({"order_id": "7", "items": [{"sku": "tea", "qty": 0}]})
            return await client.receive()

    reply = asyncio.run(scenario())
    assert reply["error"] == "ERR_REQUEST_INVALID"
    paths = [error["path"] for error in reply["errors"]]
    assert ["order_id"] in paths
    assert ["items", 0, "qty"] in paths
