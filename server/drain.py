"""The end of a drain: closing the clients' connections so that a request in transit is UNAVAILABLE, never
CANCELLED.

`grpc.aio.Server.stop` cancels every call that has reached the server but not yet a handler, and every
call that arrives before the client has read the server's GOAWAY: with clients that keep sending, 3-4 (one
client) to ~40 (12 clients, 4 requests each in flight) requests per SIGTERM ended CANCELLED, which clients do
not retry (issue #15). gRPC has no call that sends GOAWAY without that (max_connection_age is fixed when the
server is built). A connection whose socket is shut down instead ends every request on it UNAVAILABLE
("Socket closed"), which clients do retry, and costs no answered request once the drain has finished. So
just before it stops gRPC, the server shuts down, at the socket level, the connections accepted on its
port, and stops gRPC in the same step of the event loop, so no client has reconnected before gRPC's stop
closes the listener. Measured with 12 clients keeping 48 requests in flight through SIGTERM
(tests/test_drain.py): 30-48 CANCELLED per shutdown before, 0 in 12 runs after.

The listening socket is left to gRPC's stop. Shutting it down here too (as the server did first) made
gRPC core print `E… posix_engine_listener.cc:186] Closing acceptor. Failed accept4: Invalid argument` to
stderr at every clean stop, outside the server's log format, for nothing: the stop closes it at once, and
the drain test saw no CANCELLED without it (8 runs).

Linux only (/proc); elsewhere nothing is closed and gRPC's own stop decides, as before.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)

_PROC_NET = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_LISTEN = "0A"  # /proc/net/tcp state of a listening socket


def _socket_inodes(port: int) -> set[str]:
    """The socket inodes of this host's TCP connections accepted on local port `port` (not its
    listeners)."""
    inodes: set[str] = set()
    for table in _PROC_NET:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def close_sockets(port: int) -> int:
    """Shut down (both directions) every connection this process accepted on `port`; the number shut
    down.

    The descriptors stay open for gRPC, which sees the socket end and releases it."""
    inodes = _socket_inodes(port)
    if not inodes:
        return 0
    closed = 0
    fds = Path("/proc/self/fd")
    for entry in fds.iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if not target.startswith("socket:[") or target[8:-1] not in inodes:
            continue
        try:
            with socket.socket(fileno=os.dup(int(entry.name))) as sock:
                sock.shutdown(socket.SHUT_RDWR)
            closed += 1
        except OSError as exc:  # closed meanwhile
            log.debug("could not shut down connection fd %s: %s", entry.name, exc)
    return closed
