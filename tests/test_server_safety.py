"""The websocket server under hostile and careless clients: real sockets, real handshakes."""

import asyncio
import base64
import gc
import json
import os
import socket
import threading
import time
import weakref

import pytest
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import evloop.callbacks as ecb
from evloop import Recipe


def _recipe(n, step_s=0.0):
    def forward(batch):
        if step_s:
            time.sleep(step_s)
        return {"loss": torch.tensor(float(batch))}

    recipe = Recipe(forward, range(n))
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Log("loss", "loss")])
    return recipe


def _handshake(port, host="127.0.0.1", extra="", path="/ws"):
    """A raw websocket handshake; returns the socket and the response's status line."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return sock, head.split(b"\r\n", 1)[0].decode()


def _http_status(port, request, address="127.0.0.1"):
    with socket.create_connection((address, port), timeout=10) as sock:
        sock.sendall(request.encode())
        return sock.recv(4096).split(b"\r\n", 1)[0].decode(), sock


def _fds():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
def test_clients_that_never_read_are_dropped_and_their_memory_freed():
    recipe = _recipe(2_000_000, step_s=0.002)

    report = "x" * 20_000  # 10 MB/s to every client

    class BigReport:
        def on_batch_end(self, state):
            state["metrics"]["report"] = report

    recipe.callbacks.add_callback(BigReport())
    server = recipe.serve(quiet=True, every=1, send_timeout=2.0, handshake_burst=200)
    server.max_buffer = 2**30  # only the time budget may drop them (a stuck closing too)
    fds = _fds()
    thread = threading.Thread(target=recipe.run, args=(1,))
    socks = []
    try:
        for _ in range(100):
            sock, status = _handshake(server.port)
            assert status == "HTTP/1.1 101 Switching Protocols"
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            socks.append(sock)  # never read from again
        thread.start()
        while len(server.clients) < 100:
            time.sleep(0.01)
        connected = weakref.WeakSet(server.clients)
        deadline = time.monotonic() + 30
        while server.clients and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not server.clients, f"{len(server.clients)} never-reading clients still there"
        assert server.disconnected_slow == 100
        for sock in socks:
            sock.close()
        socks = []
        deadline = time.monotonic() + 15
        while (len(connected) or _fds() > fds + 5) and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.2)
        assert _fds() <= fds + 5  # the server's descriptors are back
        assert len(connected) == 0  # nothing holds the clients, their outboxes, their frames
    finally:
        for sock in socks:
            sock.close()
        recipe.stop()
        thread.join(60)
        server.close()


def test_a_client_flooding_messages_is_closed_with_a_reason():
    recipe = _recipe(10)
    server = recipe.serve(quiet=True)

    async def flood():
        async with connect(server.ws_url) as ws:
            await ws.recv()
            message = json.dumps({"type": "subscribe", "every": 5})
            try:
                for _ in range(10_000):
                    await ws.send(message)
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as closed:
                return closed.rcvd.code, closed.rcvd.reason

    try:
        code, reason = asyncio.run(flood())
    finally:
        server.close()
    assert code == 1008 and reason.startswith("too many messages from this address")


def test_a_client_flooding_pings_is_closed_and_one_keeping_alive_is_not():
    recipe = _recipe(10)
    server = recipe.serve(quiet=True)

    async def pings(count, pause):
        async with connect(server.ws_url, ping_interval=None) as ws:
            await ws.recv()
            try:
                for _ in range(count):
                    await ws.ping()
                    await asyncio.sleep(pause)
                pong = await ws.ping()
                await asyncio.wait_for(pong, 10)  # answered: the connection is still open
                return None
            except ConnectionClosed as closed:
                return closed.rcvd.code, closed.rcvd.reason

    try:
        assert asyncio.run(pings(30, 0.2)) is None  # 5 a second, for 6 s
        assert asyncio.run(pings(100_000, 0)) == (1008, "too many pings")
    finally:
        server.close()


def test_dns_rebinding_is_refused():
    recipe = _recipe(10)
    server = recipe.serve(quiet=True)
    try:
        port = server.port
        origin = f"Origin: http://evil.example:{port}\r\n"
        sock, status = _handshake(port, host="evil.example", extra=origin)
        sock.close()
        assert status.startswith("HTTP/1.1 403")
        status, _ = _http_status(port, f"GET / HTTP/1.1\r\nHost: evil.example:{port}\r\n\r\n")
        assert status.startswith("HTTP/1.1 403")
        # the names of this machine's loopback work, from its own page too
        for host in ("127.0.0.1", "localhost", "[::1]"):
            status, _ = _http_status(port, f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n")
            assert status.startswith("HTTP/1.1 200"), host
        origin = f"Origin: http://localhost:{port}\r\n"
        sock, status = _handshake(port, host="localhost", extra=origin)
        sock.close()
        assert status == "HTTP/1.1 101 Switching Protocols"
        # a page of another port of this machine is another site
        sock, status = _handshake(port, extra=f"Origin: http://127.0.0.1:{port + 1}\r\n")
        sock.close()
        assert status.startswith("HTTP/1.1 403")
    finally:
        server.close()


def test_extra_names_can_be_allowed():
    server = _recipe(1).serve(quiet=True, allowed_hosts=["box.lan"])
    try:
        req = f"GET / HTTP/1.1\r\nHost: box.lan:{server.port}\r\n\r\n"
        status, _ = _http_status(server.port, req)
        assert status.startswith("HTTP/1.1 200")
    finally:
        server.close()


def test_malformed_requests_get_400_never_500():
    server = _recipe(1).serve(quiet=True)
    try:
        port = server.port
        twice = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: localhost:{port}\r\n\r\n"
        status, _ = _http_status(port, twice)
        assert status.startswith("HTTP/1.1 400")
    finally:
        server.close()


def test_a_bad_filter_closes_with_1007():
    server = _recipe(1).serve(quiet=True)

    async def main():
        async with connect(server.ws_url) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "subscribe", "types": "batch_ended"}))
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            return closed.value.rcvd.code

    try:
        assert asyncio.run(main()) == 1007  # malformed ($.types), not an unknown type
    finally:
        server.close()


def test_an_empty_token_is_refused_and_addresses_print_right():
    with pytest.raises(ValueError, match="empty token would let anyone in"):
        _recipe(1).serve(host="0.0.0.0", token="")
    everywhere = _recipe(1).serve(host="", quiet=True)
    try:
        assert everywhere.host == "0.0.0.0" and everywhere.token  # one address, a token
        assert everywhere.url.startswith(f"http://127.0.0.1:{everywhere.port}/?token=")
    finally:
        everywhere.close()
    if socket.has_ipv6:
        try:
            v6 = _recipe(1).serve(host="::1", quiet=True)
        except OSError:
            return  # no IPv6 loopback here
        try:
            assert v6.url == f"http://[::1]:{v6.port}/"
        finally:
            v6.close()


def test_the_number_of_clients_is_capped():
    server = _recipe(1).serve(quiet=True, max_clients=2)

    async def main():
        async with connect(server.ws_url) as first, connect(server.ws_url) as second:
            await first.recv()
            await second.recv()
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.ws_url):
                    pass
            return refused.value.response.status_code

    try:
        assert asyncio.run(main()) == 503
    finally:
        server.close()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"every": 0}, "every must be an int of at least 1, got 0"),
        ({"max_clients": 0}, "max_clients must be an int of at least 1, got 0"),
        ({"messages_per_s": -1}, "messages_per_s must be positive, got -1"),
        ({"history_points": 1.5}, "history_points must be an int of at least 1"),
        ({"port": "8080"}, r"port must be an int from 0 \(any free port\) to 65535, got '8080'"),
        ({"port": 70000}, "port must be an int from 0 .* got 70000"),
        ({"port": -1}, "port must be an int from 0 .* got -1"),
    ],
)
def test_a_server_with_a_limit_that_cannot_work_is_refused(setting, message):
    with pytest.raises(ValueError, match=message):
        _recipe(1).serve(quiet=True, **setting)


def test_the_runs_page_refuses_a_port_out_of_range(tmp_path):
    from evloop.remote import RunsServer

    with pytest.raises(ValueError, match="port must be an int from 0"):
        RunsServer([tmp_path], port=65536)


def test_a_never_reading_client_is_dropped_soon_after_its_first_unsent_byte():
    recipe = _recipe(2_000_000, step_s=0.005)
    report = "x" * 1000  # about 200 KB/s to a client that wants every step

    class Report:
        def on_batch_end(self, state):
            state["metrics"]["report"] = report

    recipe.callbacks.add_callback(Report())
    server = recipe.serve(quiet=True, every=1, send_timeout=2.0)
    thread = threading.Thread(target=recipe.run, args=(1,))
    thread.start()
    try:
        while recipe.progress.iters < 10:
            time.sleep(0.01)
        sock, status = _handshake(server.port, path="/ws?types=batch_ended&every=1")
        assert status == "HTTP/1.1 101 Switching Protocols"
        # with the kernel's own send buffer (megabytes), 2 s would start ~15 s later
        deadline = time.monotonic() + 10
        while server.disconnected_slow == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        sock.close()
        assert server.disconnected_slow == 1
    finally:
        recipe.stop()
        thread.join(60)
        server.close()


@pytest.mark.parametrize("host", ["0", "0.0", "0x0", "000.000.000.000", "", "::", "[::]", "0::0"])
def test_every_spelling_of_every_interface_is_a_wildcard_for_the_host_check(host):
    try:
        server = _recipe(1).serve(host=host, token="t0k", quiet=True)
    except OSError:
        pytest.skip(f"cannot listen on {host!r} here (no IPv6?)")
    try:
        assert server.host in ("0.0.0.0", "::") and server.url.endswith("/?token=t0k")
        port, v6 = server.port, server.host == "::"
        address = "::1" if v6 else "127.0.0.1"
        names = (host.strip("[]") or "0", "::1" if v6 else "127.0.0.1", "box.lan")
        for name in names:
            shown = f"[{name}]" if ":" in name else name
            request = f"GET /?token=t0k HTTP/1.1\r\nHost: {shown}:{port}\r\n\r\n"
            status, _ = _http_status(port, request, address)
            assert status.startswith("HTTP/1.1 200"), (name, status)
        request = f"GET /?token=bad HTTP/1.1\r\nHost: box.lan:{port}\r\n\r\n"
        assert _http_status(port, request, address)[0].startswith("HTTP/1.1 401")
    finally:
        server.close()


def test_a_request_without_host_is_a_400(tmp_path):
    from evloop.remote.runs import RunsServer

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "events.jsonl").write_text("")
    live = _recipe(1).serve(quiet=True)
    runs = RunsServer([tmp_path / "run"]).start(warm=False)
    try:
        for port in (live.port, runs.port):
            for request in ("GET / HTTP/1.0\r\n\r\n", "GET / HTTP/1.1\r\n\r\n"):
                status, _ = _http_status(port, request)
                assert status.startswith("HTTP/1.1 400"), (port, request, status)
    finally:
        live.close()
        runs.close()
