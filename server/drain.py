"""The end of a drain: closing the clients' connections so that a request in transit is UNAVAILABLE, never
CANCELLED.

`grpc.aio.Server.stop` cancels every call that has reached the server but not yet a handler, and every
call that arrives before the client has read the server's GOAWAY: with clients that keep sending, 3-4 (one
client) to ~40 (12 clients, 4 requests each in flight) requests per SIGTERM ended CANCELLED, which clients do
not retry (issue #15). gRPC has no call that sends GOAWAY without that (max_connection_age is fixed when the
server is built). A connection whose socket is shut down instead ends every request on it UNAVAILABLE
("Socket closed"), which clients do retry, and costs no answered request once the drain has finished. So
just before it stops gRPC, the server stops its listening socket from taking connections (else clients
reconnect within ~50 ms and the stop cancels their requests), lets gRPC accept what had already connected,
and then shuts down, at the socket level, the connections accepted on its port. Measured with 12 clients
keeping 48 requests in flight through SIGTERM (tests/test_drain.py): 30-48 CANCELLED per shutdown before,
0 in 12 runs after.

The listener is stopped with a socket filter that drops every packet (`refuse_connections`), not by
shutting the socket down, as the server first did: gRPC then failed its next accept4 with EINVAL and
printed `E… posix_engine_listener.cc:186] Closing acceptor. Failed accept4: Invalid argument` to stderr
at every clean stop, outside the server's log format. With the filter the socket stays a listener until
gRPC's stop closes it, without an error. (Leaving the listener to gRPC's stop alone, closing only the
connections just before it, was not enough: 1 drain run in ~50 saw a request end otherwise.)

Linux only (/proc); elsewhere nothing is closed and gRPC's own stop decides, as before.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

_PROC_NET = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_LISTEN = "0A"  # /proc/net/tcp state of a listening socket
SO_ATTACH_FILTER: Final = getattr(socket, "SO_ATTACH_FILTER", 26)  # Linux's value; Python names it in 3.12
# A classic BPF program of one instruction, `ret #0` (BPF_RET | BPF_K, k = 0): keep 0 bytes of every
# packet, i.e. drop it.
_DROP_ALL: Final = struct.pack("HBBI", 0x06, 0, 0, 0)


def _socket_inodes(port: int, listening: bool) -> set[str]:
    """The socket inodes of this host's TCP sockets whose local port is `port`: its listeners, or the
    connections accepted on it."""
    inodes: set[str] = set()
    for table in _PROC_NET:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if (state == _LISTEN) == listening and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def _descriptors(inodes: set[str]) -> Iterator[int]:
    """This process's file descriptors of the sockets `inodes`."""
    if not inodes:
        return
    for entry in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            yield int(entry.name)


def refuse_connections(port: int) -> int:
    """Stop this process's listening sockets on `port` from taking connections: a socket filter that
    drops every packet makes the kernel drop clients' SYNs (and the last packets of handshakes in
    progress), while the socket stays a healthy listener for gRPC, which closes it at its stop. A client
    that tries meanwhile retransmits its SYN (after ~1 s) and is refused once the port is closed. The
    number of listeners filtered."""
    program = ctypes.create_string_buffer(_DROP_ALL)
    fprog = struct.pack("HL", 1, ctypes.addressof(program))  # struct sock_fprog {len; *filter}
    filtered = 0
    for fd in _descriptors(_socket_inodes(port, listening=True)):
        try:
            with socket.socket(fileno=os.dup(fd)) as sock:
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            filtered += 1
        except OSError as exc:  # closed meanwhile
            log.debug("could not filter listener fd %d: %s", fd, exc)
    return filtered


def close_sockets(port: int) -> int:
    """Shut down (both directions) every connection this process accepted on `port`; the number shut
    down.

    The descriptors stay open for gRPC, which sees the socket end and releases it."""
    closed = 0
    for fd in _descriptors(_socket_inodes(port, listening=False)):
        try:
            with socket.socket(fileno=os.dup(fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
            closed += 1
        except OSError as exc:  # closed meanwhile
            log.debug("could not shut down connection fd %d: %s", fd, exc)
    return closed
