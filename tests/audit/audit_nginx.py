"""Debian's nginx as the load balancer in front of ``cxr-serve`` replicas, without root: the configuration, pid,
logs and temporary folders all live in one temporary folder, on a free loopback port.

The proxy settings are the ones docs/operations.md recommends ("Replicas behind a load balancer"): retry a
request on the next replica when one cannot be reached, resets the connection or answers 502/503 (a prediction
is idempotent, so retrying a POST is safe: ``non_idempotent``), and take a failed replica out for a few seconds.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
from app_harness import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = """\
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
daemon off;
events {{ worker_connections 1024; }}
http {{
    log_format upstreams '$status|$upstream_addr|$upstream_status';
    access_log {root}/access.log upstreams;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;

    upstream cxr_serve {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        # uploads stay in memory (no X-ray on the proxy's disk) up to the service's own limit
        client_max_body_size 21m;
        client_body_buffer_size 21m;
        location / {{
            proxy_pass http://cxr_serve;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
            # a replica that is stopping, killed or not ready yet: the request goes to the next one
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 3;
            proxy_next_upstream_timeout 30s;
        }}
    }}
}}
"""


def config_text(root: Path, port: int, upstreams: list[int]) -> str:
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in upstreams)
    return CONFIG.format(root=root, port=port, servers=servers)


class Nginx:
    def __init__(self, root: Path, upstreams: list[int]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = root / "nginx.conf"
        self.conf.write_text(config_text(root, self.port, upstreams))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        subprocess.run([NGINX, "-t", "-p", str(self.root), "-c", str(self.conf)], check=True, capture_output=True,
                       timeout=30)
        self.process = subprocess.Popen([NGINX, "-p", str(self.root), "-c", str(self.conf)],
                                        stdout=subprocess.DEVNULL, stderr=(self.root / "stderr.log").open("wb"))
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, (self.root / "stderr.log").read_text()
            try:
                httpx.get(f"{self.url}/health/live", timeout=2)
                return
            except httpx.TransportError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)

    def upstream_log(self) -> list[tuple[str, list[str], list[str]]]:
        """(status sent to the client, the replicas tried in order, what each answered) per request."""
        path = self.root / "access.log"
        entries = []
        for line in path.read_text().splitlines() if path.exists() else []:
            status, tried, answered = [*line.split("|"), "", ""][:3]
            entries.append((status, [a.strip() for a in tried.split(",")],
                            [a.strip() for a in answered.split(",")]))
        return entries

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
