"""Helpers for the tests that run real peers (nginx, curl...) and compare what arrived."""

import hashlib
import subprocess
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class ProxyBed:
    """A testbed whose `proxy_host` runs `vtl proxy` on listen_ip:port for clients on the
    client host; the proxies started are kept for kill_left()."""

    def __init__(self, tb, proxy_host: str, listen_ip: str, port: int,
                 timeout: float) -> None:
        self.tb, self.proxy_host = tb, proxy_host
        self.listen_ip, self.port, self.timeout = listen_ip, port, timeout
        self.started: list[subprocess.Popen] = []

    def start_proxy(self, argv: list[str]) -> tuple[subprocess.Popen, dict]:
        """The proxy, once it said it listens, and that line."""
        from vtlstack.apps._common import json_line

        proc = self.tb.popen(self.proxy_host, argv, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.started.append(proc)
        line = json_line(proc, 30, "vtl proxy")
        assert line["event"] == "listening", line
        return proc, line

    def url(self, path: str) -> str:
        return f"http://{self.listen_ip}:{self.port}{path}"

    def client(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        kw.setdefault("timeout", self.timeout)
        return self.tb.exec("client", argv, capture_output=True, text=True, **kw)


def kill_left(started: list[subprocess.Popen]) -> None:
    """Kill the processes a failed test left running (a proxy would hold the interface
    for the next test), and forget them all."""
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    started.clear()
