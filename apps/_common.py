"""Small helpers shared by the apps: JSON lines out, and running until a signal or deadline."""

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from vtlstack.errors import VtlError


def pinned(cpu: int, argv: list[str], on: bool = True) -> list[str]:
    """argv run on one core (taskset), when `on` and the machine has two or more. Where a
    process lands moves its round trip by ~4x on a small VM (a wakeup across cores costs
    tens of microseconds), so benchmarks pin both paths alike."""
    return ["taskset", "-c", str(cpu), *argv] if on and (os.cpu_count() or 1) >= 2 else argv


def vtl_argv(*args: str) -> list[str]:
    """argv that runs `vtl ARGS` with this interpreter, e.g. inside `ip netns exec`.

    -P keeps the working directory off sys.path: run from a source checkout, `-m` would
    otherwise import the uncompiled source tree instead of the installed package.
    """
    return [sys.executable, "-P", "-m", "vtlstack.cli", *args]


def emit(obj: dict[str, Any]) -> None:
    """One JSON object per line on stdout, flushed (other processes wait on these lines)."""
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def json_line(proc: subprocess.Popen, timeout: float, who: str) -> dict[str, Any]:
    """The next JSON line `proc` (started with text pipes) prints; VtlError naming `who`
    and what it wrote to stderr if nothing comes within `timeout` seconds."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        raise VtlError(f"{who} said nothing in {timeout:.0f} s: "
                       f"{proc.stderr.read().strip() if proc.poll() is not None else ''}")
    return json.loads(line)


class RunUntil:
    """True until SIGINT/SIGTERM arrives or `duration` seconds (None: no limit) pass.

    Used as a context manager so the previous signal handlers come back afterwards.
    """

    def __init__(self, duration: float | None) -> None:
        self._deadline = None if duration is None else time.monotonic() + duration
        self._stop = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "RunUntil":
        for s in (signal.SIGINT, signal.SIGTERM):
            self._previous[s] = signal.signal(s, lambda *_: self._stop.set())
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def __bool__(self) -> bool:
        if self._stop.is_set():
            return False
        return self._deadline is None or time.monotonic() < self._deadline

    def wait(self) -> None:
        """Block until stopped."""
        left = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
        self._stop.wait(left)
