"""The listening sockets of a multi-worker ``cxr-serve``: one per worker, in one SO_REUSEPORT group, so that the
kernel spreads new connections over the workers.

uvicorn shares one listening socket among its workers: whichever worker's event loop wakes first accepts every
connection waiting. A client that opens its connections at once (a pool, a load test) then often lands on one
worker: 64 of 64 after a lone request had kept one worker's loop awake, which then served on one core while the
other idled (benchmarks/README.md, issue 23). In a SO_REUSEPORT group (Linux 3.9+) the kernel hashes each new
connection to one member, so each worker gets its share whoever is awake.

The supervisor binds the first member before any worker starts: a port in use fails at once, and the port stays
the service's while workers are replaced. That socket never listens, so it is given no connections. Each worker
receives, in place of a copy of it, a socket of its own bound to the same address (``__reduce__``: uvicorn
pickles the supervisor's sockets into the workers it spawns).

Where SO_REUSEPORT does not balance (other systems: BSD and macOS give one member everything), or with
``CXR_REUSE_PORT=false``, the workers share one socket, as uvicorn does.

A worker's own queue goes with it: connections the kernel gave a worker that is exiting, not yet accepted,
are reset, unless ``net.ipv4.tcp_migrate_req=1`` (Linux 5.14+) hands them to the other workers. Workers accept
eagerly, so that queue is short, but a worker killed outright keeps its socket for the ~50 ms the kernel takes
to tear it down: measured, 3-4 of ~12,000 new connections in 3 s reset per ``kill -9`` (0-1 with one shared
socket, 0-1 with the migration on; benchmarks/README.md).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn

# the kernels where SO_REUSEPORT balances connections over the group, rather than giving one member all of them
BALANCED = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


def _bound(sock: socket.socket, host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """``sock`` bound to ``(host, port)``, inheritable, not yet listening; closed if that fails."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def bind_member(family: int, host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` in that address's SO_REUSEPORT group (not yet listening)."""
    return _bound(socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP), host, port, reuse_port=True)


class GroupSocket(socket.socket):
    """The supervisor's member of the group. Sent to a spawned worker, it arrives as a new member bound to the
    same address, not as a copy of this socket."""

    def __reduce__(self) -> tuple[Any, tuple[int, str, int]]:
        host, port = self.getsockname()[:2]  # the port the kernel chose, where the setting was 0
        return bind_member, (int(self.family), host, port)


def group_socket(host: str, port: int, *, per_worker: bool = True) -> socket.socket:
    """The supervisor's socket for ``host:port``: with ``per_worker``, where the kernel balances SO_REUSEPORT
    groups, the first member of one; else one plain socket that every worker shares. OSError where the address
    is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn tells an IPv6 address
    if per_worker and BALANCED:
        return _bound(GroupSocket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP), host, port, reuse_port=True)
    return _bound(socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP), host, port, reuse_port=False)


def migrates_queued_connections(path: Path = Path("/proc/sys/net/ipv4/tcp_migrate_req")) -> bool:
    """Whether the kernel hands connections queued on a closing member to the others (Linux 5.14+, a setting of
    the network namespace, off by default)."""
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return False


def supervise(config: uvicorn.Config, sock: socket.socket) -> None:
    """uvicorn's supervisor (what ``uvicorn.run`` runs for several workers) on ``sock`` (from
    ``group_socket``), which it closes at the end."""
    from uvicorn.supervisors import Multiprocess

    try:
        Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:  # as uvicorn.run: the workers have been told to stop
        pass
    finally:
        sock.close()
