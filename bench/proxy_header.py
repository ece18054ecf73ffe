"""What reading a PROXY protocol header costs (issue 10): microseconds per header.

    python bench/proxy_header.py [--number 20000]

Decodes typical headers with asyncapy.proxy.ProxyHeaderDecoder, each followed
by one frame, as a connection's first read would hold them, and prints the
median of 5 timings per kind. Once per connection, not per request: compare
it with the cost of a connection (accept, session, first reply), not of a
frame. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from asyncapy.proxy import ProxyHeaderDecoder, encode_v1, encode_v2

FRAME = b"\x00\x00\x00\x0d\x16\x00" + b'{"test": 1}'
HEADERS = {
    "v1 TCP4": encode_v1(("192.0.2.7", 56324), ("198.51.100.1", 1500)),
    "v1 TCP6": encode_v1(("2001:db8::7", 56324), ("2001:db8::1", 1500)),
    "v2 IPv4": encode_v2(("192.0.2.7", 56324), ("198.51.100.1", 1500)),
    "v2 IPv6": encode_v2(("2001:db8::7", 56324), ("2001:db8::1", 1500)),
    "v2 IPv4 + CRC32C": encode_v2(("192.0.2.7", 56324), ("198.51.100.1", 1500), checksum=True),
    "v2 LOCAL": encode_v2(None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=20_000)
    args = parser.parse_args()
    for name, header in HEADERS.items():
        data = header + FRAME

        def once(data: bytes = data) -> None:
            ProxyHeaderDecoder().feed(data)

        runs = timeit.repeat(once, number=args.number, repeat=5)
        us = statistics.median(runs) / args.number * 1e6
        print(f"{name:18} {len(header):3} bytes  {us:6.2f} us per header")


if __name__ == "__main__":
    main()
