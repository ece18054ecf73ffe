"""The app of bench/workers.py: bench/servers.py's ``framework`` echo, for ``asyncapy run``.

The echo behind one ``Filters.Fields(method="^echo$")`` filter, built by the
same function as the single-process target, so both measure the same handler.
``asyncapy run`` listens where its options say; the port given here is the
default one, so that the worker does not warn that the app asks for another.
"""

from servers import make_framework

from asyncapy.config import Settings

server = make_framework("framework", Settings().port)
