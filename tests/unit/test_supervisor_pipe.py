"""The worker → supervisor pipe: whole messages, bounded, never blocking the reader."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import msgspec
import pytest

from asyncapy.supervisors._pipe import MAX_MESSAGE, PipeError, Reader, Writer


@pytest.fixture
def pipe() -> Iterator[tuple[Reader, Writer]]:
    read_fd, write_fd = os.pipe()
    reader, writer = Reader(read_fd), Writer(write_fd)
    yield reader, writer
    reader.close()
    with contextlib.suppress(OSError):
        writer.close()


def test_messages_round_trip(pipe: tuple[Reader, Writer]) -> None:
    reader, writer = pipe
    writer.send("ready", {"pid": 12})
    writer.send("beat", {"metrics": {"a": [1, 2.5]}, "open": 3})
    assert reader.read() == [
        ("ready", {"pid": 12}),
        ("beat", {"metrics": {"a": [1, 2.5]}, "open": 3}),
    ]
    assert reader.read() == []  # nothing more: no block
    assert not reader.eof


def test_a_message_split_across_reads_waits_for_its_end(pipe: tuple[Reader, Writer]) -> None:
    reader, writer = pipe
    payload = msgspec.msgpack.encode(("beat", {"x": "y" * 100}))
    data = len(payload).to_bytes(4, "big") + payload
    for cut in (1, 3, 4, 5, len(data) - 1):
        os.write(writer._fd, data[:cut])
        assert reader.read() == []
        os.write(writer._fd, data[cut:])
        assert reader.read() == [("beat", {"x": "y" * 100})]


def test_a_large_message_in_many_chunks(pipe: tuple[Reader, Writer]) -> None:
    reader, writer = pipe
    body = {"k": "v" * 200_000}  # more than the pipe holds at once
    import threading

    sender = threading.Thread(target=writer.send, args=("beat", body))
    sender.start()
    got: list[tuple[str, object]] = []
    while not got:
        got = reader.read()
    sender.join(5)
    assert got == [("beat", body)]


@pytest.mark.parametrize("size", [MAX_MESSAGE + 1, 2**32 - 1])
def test_a_message_over_the_limit_is_an_error(pipe: tuple[Reader, Writer], size: int) -> None:
    reader, writer = pipe
    os.write(writer._fd, size.to_bytes(4, "big") + b"\x00" * 10)
    with pytest.raises(PipeError, match="bytes"):
        reader.read()


def test_garbage_is_an_error(pipe: tuple[Reader, Writer]) -> None:
    reader, writer = pipe
    os.write(writer._fd, (3).to_bytes(4, "big") + b"\xc1\xc1\xc1")
    with pytest.raises(PipeError, match="does not decode"):
        reader.read()


def test_end_of_file(pipe: tuple[Reader, Writer]) -> None:
    reader, writer = pipe
    writer.send("bye", None)
    writer.close()
    assert reader.read() == [("bye", None)]
    assert reader.eof


def test_a_writer_whose_reader_is_gone_raises_broken_pipe() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    writer = Writer(write_fd)
    try:
        with pytest.raises(BrokenPipeError):
            writer.send("beat", {})
    finally:
        writer.close()
