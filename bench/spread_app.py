"""The app of bench/spread.py: answers the pid of the worker that took the connection."""

import os

from asyncapy import Server

server = Server()


@server.add_handler()
async def whoami(client, packet):
    await client.send({"pid": os.getpid()})
