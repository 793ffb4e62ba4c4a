"""app/listener.py: the supervisor's socket and the worker's own member of its SO_REUSEPORT group (the spread of
connections over real workers: tests/app/test_multiworker.py)."""

from __future__ import annotations

import io
import os
import pickle
import socket
import subprocess
import sys
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import pytest

from app import listener

pytestmark = pytest.mark.skipif(not listener.BALANCED, reason="SO_REUSEPORT balances connections on Linux only")


def reuseport(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))


def test_a_worker_receives_a_member_of_its_own_bound_to_the_supervisors_address():
    supervisor = listener.group_socket("127.0.0.1", 0)
    with supervisor:
        buffer = io.BytesIO()
        ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump([supervisor])  # as a spawned worker's arguments go
        [member] = pickle.loads(buffer.getvalue())
        with member:
            assert member.fileno() != supervisor.fileno()
            assert type(member) is socket.socket, "a plain socket: a worker's worker would not rebind"
            assert member.getsockname() == supervisor.getsockname()
            assert reuseport(member) and reuseport(supervisor)
            member.listen()
            assert not supervisor.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            with socket.create_connection(member.getsockname(), timeout=5):
                accepted, _ = member.accept()  # the supervisor's socket never listens: the member gets it
                accepted.close()


def test_an_address_taken_by_another_listener_is_refused_before_any_worker_starts():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(OSError):
            listener.group_socket("127.0.0.1", other.getsockname()[1])


def test_an_ipv6_host_gets_an_ipv6_socket():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        sock = listener.group_socket("::1", 0)
    except OSError as exc:  # a kernel or container without IPv6 loopback
        pytest.skip(f"::1 cannot be bound here: {exc}")
    with sock:
        assert sock.family == socket.AF_INET6


def test_cxr_serve_with_workers_on_a_taken_port_says_so_and_starts_none(tmp_path):
    serve = Path(sys.executable).with_name("cxr-serve")
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env = {**os.environ, "CXR_WORKERS": "2", "CXR_HOST": "127.0.0.1", "CXR_PORT": str(port),
               "CXR_AUDIT_PATH": str(tmp_path / "audit.db")}
        done = subprocess.run([str(serve)], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 3, done.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Started server process" not in done.stderr, "no worker is started"
