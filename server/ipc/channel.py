"""Framed messages on a stream socket between two of the server's processes (a worker and the engine).

Each message is a tuple whose first item names it, pickled and preceded by its length (4 bytes, little
endian). Why pickle: both ends are this program, joined by a socketpair that the engine creates before it
starts the worker, so nothing else can write to it; the messages are small tuples of str, int, float and
bytes (tensors cross in shared memory, ipc/arena.py), which pickle encodes in a few microseconds with no
dependency and no schema to keep in step. A message larger than `MAX_MESSAGE` ends the connection: it can
only come from a bug.

`Frames` cuts messages from whatever one read returns (under load, many messages per system call). The
worker's end is `Channel`, an asyncio Protocol that hands each message to `on_message` in order; the engine's
end reads on a thread of its own (server/engine/host.py), so that a request reaches the batcher without a trip
through the engine's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any, Final, cast

log = logging.getLogger(__name__)

_HEADER: Final = struct.Struct("<I")
MAX_MESSAGE: Final = (1 << 31) - 1
_PROTOCOL: Final = pickle.HIGHEST_PROTOCOL

Message = tuple[Any, ...]


class CorruptStream(ConnectionError):
    """The bytes on the socket are not this program's framing: the connection cannot go on (a bug)."""


def frame(message: Message) -> bytes:
    """One message as it goes on the wire: its length, then its pickle."""
    payload = pickle.dumps(message, _PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


class Frames:
    """Cuts the messages out of a byte stream, whatever the reads' boundaries."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """The whole messages that `data` completes (the rest is kept for the next call). `data` may be a
        view of the caller's read buffer: it is not kept."""
        held = self._buffer
        if held:
            held += data
            source = memoryview(held)
        else:  # the usual case: the read holds whole messages; parse them where they are
            source = memoryview(data).cast("B")
        messages: list[Message] = []
        start = 0
        end = len(source)
        try:
            while end - start >= 4:
                (size,) = _HEADER.unpack_from(source, start)
                if size > MAX_MESSAGE:
                    raise CorruptStream(f"a message of {size} bytes: the stream is corrupt")
                if end - start - 4 < size:
                    break
                messages.append(pickle.loads(source[start + 4 : start + 4 + size]))
                start += 4 + size
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise CorruptStream(f"a message that does not unpickle ({exc}): the stream is corrupt") from exc
        finally:
            if held:
                source.release()
        if held:
            del held[:start]
        elif start < end:
            held += source[start:]
        return messages


class Channel(asyncio.Protocol):
    """One end of a worker ↔ engine connection, on an event loop (the worker's)."""

    def __init__(self, on_message: Callable[[Message], None], on_lost: Callable[[], None]) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._frames = Frames()
        self._transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but is one

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._frames.feed(data)
        except CorruptStream:
            log.exception("closing the connection to the other process")
            self.close()
            return
        for message in messages:
            try:
                self._on_message(message)
            except Exception:  # a handler's bug must not end the connection that every request shares
                log.exception("failed to handle a %r message", message[0] if message else None)

    def send(self, message: Message) -> None:
        self.write(frame(message))

    def write(self, frames: bytes) -> None:
        """Framed messages (`frame`), as they are."""
        if self._transport is None or self.closed:
            raise ConnectionError("the connection to the other process is closed")
        self._transport.write(frames)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_lost()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def connect(
    sock: socket.socket, on_message: Callable[[Message], None], on_lost: Callable[[], None]
) -> Channel:
    """A Channel on a connected stream socket (one end of a socketpair), on the running event loop."""
    loop = asyncio.get_running_loop()
    _, channel = await loop.create_unix_connection(lambda: Channel(on_message, on_lost), sock=sock)
    return channel
