"""The seed's "Hello, world!": an echo server (AsyncAPY manual, Getting started).

Run it with ``python examples/echo.py`` and talk to it with
``python examples/testclient.py``. ``ASYNCAPY_PORT`` / ``ASYNCAPY_ADDR``
override the address below without editing the file.
"""

from asyncapy import Server

server = Server(addr="0.0.0.0", port=1500)


async def echo_server(client, packet):
    print(f"Hello world from {client}!")
    print(f"Echoing back {packet}...")
    await client.send(packet)
    await client.close()


server.register_handler(echo_server)  # Register our handler

server.start()  # Start the server
