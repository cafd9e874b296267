"""Linux peers run inside testbed hosts for benches and tests: nginx, and waiting until a
server listens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from vtlstack.errors import VtlError

# Run inside a testbed host: waits (bounded) until ip:port accepts a connection, or the
# server process is gone.
_WAIT_LISTEN = r"""
import os, socket, sys, time
ip, port, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        socket.create_connection((ip, port), timeout=1).close()
        sys.exit(0)
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("the server exited")
    time.sleep(0.01)  # polling interval of the connect loop
sys.exit("the server is not listening")
"""


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {access_log};
    client_body_temp_path {d}/t;
    proxy_temp_path {d}/t;
    fastcgi_temp_path {d}/t;
    uwsgi_temp_path {d}/t;
    scgi_temp_path {d}/t;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 1000000;
    server {{
        listen {ip}:{port} backlog=1024;
        root {d}/www;
{extra}
    }}
}}
"""


def wait_listening(tb: Any, host: str, ip: str, port: int, proc: subprocess.Popen) -> None:
    """Until ip:port accepts connections from `host` (VtlError if `proc` died first)."""
    probe = tb.exec(host, [sys.executable, "-c", _WAIT_LISTEN, ip, str(port), str(proc.pid)],
                    capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        raise VtlError(f"nothing listens on {ip}:{port}: {probe.stderr.strip()}")


def start_nginx(tb: Any, host: str, d: Path, ip: str, port: int, *, access_log: bool = False,
                extra: str = "") -> subprocess.Popen:
    """nginx in `host`, serving d/www on ip:port, once it listens (config, logs and pid in
    d; with `access_log`, d/access.log). `extra` goes into its server block."""
    (d / "t").mkdir(exist_ok=True)
    log = f"{d}/access.log" if access_log else "off"
    (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, ip=ip, port=port, extra=extra,
                                                   access_log=log))
    proc = tb.popen(host, ["/usr/sbin/nginx", "-p", str(d), "-c", str(d / "nginx.conf"),
                           "-e", str(d / "error.log")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(tb, host, ip, port, proc)
    except VtlError as exc:
        errors = d / "error.log"
        raise VtlError(f"nginx: {exc}; its error log: "
                       f"{errors.read_text() if errors.exists() else '(none)'}") from None
    return proc
