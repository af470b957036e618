"""A real visdom server for tests, started without its CDN download step."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from contextlib import contextmanager

START = (
    "import sys; from visdom.server.run_server import main; "
    "sys.argv = ['visdom', '-port', sys.argv[1], '-bind_local', '-env_path', sys.argv[2], "
    "'-logging_level', 'WARNING']; main()"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"visdom did not start on port {port}")


@contextmanager
def visdom_server(port: int, env_path: str):
    proc = subprocess.Popen(
        [sys.executable, "-c", START, str(port), env_path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until_listening(port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def silent_server(port: int):
    """Accepts connections and never answers: a hung server."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    try:
        yield listener
    finally:
        listener.close()
