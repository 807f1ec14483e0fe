"""Starting, watching and stopping the control plane's processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a component in its own session (so it outlives `modelfleet cluster up`), logging to a file."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def running(pid: int, expected: str) -> bool:
    """`pid` is alive and `expected` appears in its command line (a recycled pid that now belongs to something
    else does not count)."""
    return alive(pid) and expected in command_line(pid)


def stop(pid: int, expected: str, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; only while `running(pid, expected)`, so a recycled pid that now
    belongs to something else is never signalled."""
    if not running(pid, expected):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not alive(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    while alive(pid):
        _reap(pid)
        time.sleep(0.05)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def poll_until(check: Callable[[], T], deadline: float, on_timeout: str, guard: Callable[[], None] = lambda: None,
               interval: float = 0.2) -> T:
    """Call `check` until it returns something truthy, and return that. `guard` raises when what is waited
    for can no longer come (its process died); past `deadline` (time.monotonic()) raise TimeoutError."""
    while True:
        guard()
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(on_timeout)
        time.sleep(interval)
