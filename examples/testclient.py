"""The seed's test client for examples/echo.py.

The seed wrote ``import asyncapy.client`` and then used ``client.Client``,
which is a NameError; ``from asyncapy import client`` is what it meant.
``ASYNCAPY_PORT`` overrides the port, like it does for the server.
"""

import os

from asyncapy import client

client = client.Client(tls=False, encoding="json")
client.connect("0.0.0.0", int(os.environ.get("ASYNCAPY_PORT", 1500)))
client.send({"test": 1})
response = client.receive()
print(response)
