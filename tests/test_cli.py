"""The `evloop` command as a user runs it: real processes, exit codes, what it prints."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import evloop
import evloop.callbacks as ecb
from evloop import Recipe

CLI = [sys.executable, "-m", "evloop.cli"]


def _cli(*args, timeout=120, **kwargs):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def test_version():
    result = _cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"evloop {evloop.__version__}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--epochs", "0"], "must be at least 1, got 0"),
        (["demo", "--epochs", "-1"], "must be at least 1, got -1"),
        (["demo", "--epochs", "many"], "expected a whole number, got 'many'"),
        (["demo", "--run-dir", "a", "--resume", "b"], "not allowed with argument"),
        (["attach", "ws://127.0.0.1:1", "--to", "printer"], "--to takes stdout"),
        (["attach", "ws://127.0.0.1:1", "--to", "jsonl"], "--to takes stdout"),
        (["attach", "not a url at all", "--to", "stdout"], "not a server address"),
        (["serve", "--port", "99999", "."], "must be from 0 (any free port) to 65535"),
        (["serve", "--port", "http", "."], "expected a port number, got 'http'"),
        (["serve", "--token", "", "http://127.0.0.1:1"], "an empty token would let anyone in"),
        (["ctl", "http://[::1", "pause"], "Invalid IPv6 URL"),
        (["ctl", "127.0.0.1:1", "pause", "--timeout", "nan"], "positive number of seconds"),
        (["ctl", "127.0.0.1:1", "set", "lr=fast"], "lr: 'fast' is not a number"),
        (["attach", "127.0.0.1:1", "--to", "stdout", "--retry-for", "-1"], "positive number"),
    ],
)
def test_usage_errors_exit_2_with_a_message(args, message):
    result = _cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"usage: evloop {args[0]} ")  # its own usage


def test_ctl_refused_or_unreachable_says_so_in_one_line():
    recipe = _served_training(n=5)
    server = recipe.serve(quiet=True, token="read", control_token="steer")
    try:
        without = _cli("ctl", server.ws_url, "pause")
        wrong = _cli("ctl", server.ws_url, "pause", "--token", "wrong")
        reader = _cli("ctl", server.ws_url, "pause", "--token", "read")
    finally:
        server.close()
    with socket_bound() as port:
        away = _cli("ctl", f"127.0.0.1:{port}", "pause")
    for result, said in [
        (without, "refused the connection: HTTP 401 missing or wrong token"),
        (wrong, "refused the connection: HTTP 401 missing or wrong token"),
        (reader, "this connection may only watch"),
        (away, f"cannot reach 127.0.0.1:{port}"),
    ]:
        assert result.returncode == 1, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("evloop ctl: ") and said in lines[0]


def test_serve_on_an_address_it_cannot_take_says_so_in_one_line(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "events.jsonl").write_text("")
    result = _cli("serve", str(folder), "--host", "192.0.2.1")  # TEST-NET: not this machine
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("evloop serve: cannot listen on 192.0.2.1")


def _served_training(n=150, step_s=0.01):
    def forward(batch):
        time.sleep(step_s)
        return {"loss": torch.tensor(float(batch))}

    test_loop = Recipe(lambda b: {"loss": torch.tensor(0.25)}, range(2))
    test_loop.callbacks.add_callback(ecb.Log("loss", "loss"))
    recipe = Recipe(forward, range(n))
    recipe.callbacks.add_callbacks(
        [ecb.Counter(), ecb.Log("loss", "loss"), ecb.CallRecipe(test_loop, 50)]
    )
    return recipe


def _welcomed(server, count):
    """``count`` clients past their first frame: events from then on reach them live."""
    clients = list(server.clients)
    return len(clients) >= count and all(client.joined for client in clients)


def _wait_for_clients(server, count, timeout=60):
    deadline = time.monotonic() + timeout
    while not _welcomed(server, count) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _welcomed(server, count), "the attached process never connected"


def test_attach_runs_several_loggers_shows_evaluations_and_takes_host_port(tmp_path):
    recipe = _served_training()
    server = recipe.serve(quiet=True, every=1)
    out = tmp_path / "remote.jsonl"
    attach = subprocess.Popen(
        [*CLI, "attach", f"127.0.0.1:{server.port}", "--to", "stdout", "--to", "jsonl", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_clients(server, 1)
        recipe.run(1)
        printed, errors = attach.communicate(timeout=60)
    finally:
        attach.kill()
        server.close()
    assert attach.returncode == 0, errors
    assert "test | Ep. 1/1 iteration 50 | loss=0.25" in printed  # evaluation results are shown
    assert "Ep. 1/1 It 150 | loss=149" in printed
    assert "the run finished in epoch 1, at iteration 149" in printed
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert events[-1]["type"] == "run_finished"


def test_attach_reconnects_when_the_server_comes_back(tmp_path):
    recipe = _served_training(n=300, step_s=0.01)
    server = recipe.serve(quiet=True, every=1)
    port = server.port
    attach = subprocess.Popen(
        [*CLI, "attach", server.ws_url, "--to", "stdout", "--retry-for", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    servers = [server]
    try:
        _wait_for_clients(server, 1)
        thread = threading.Thread(target=recipe.run, args=(1,))
        thread.start()
        while recipe.progress.iters < 50:
            time.sleep(0.01)
        server.close()  # the server goes away mid-run…
        time.sleep(1.0)
        servers.append(recipe.serve(port=port, quiet=True, every=1))  # …and comes back
        thread.join()
        printed, errors = attach.communicate(timeout=60)
    finally:
        attach.kill()
        for each in servers:
            each.close()
    assert attach.returncode == 0, errors
    assert "retrying in" in errors
    assert "the run finished in epoch 1, at iteration 299" in printed


def test_attach_says_why_it_gave_up_and_exits_non_zero():
    with socket_bound() as port:  # nothing answers there
        result = _cli("attach", f"127.0.0.1:{port}", "--to", "stdout", "--retry-for", "1")
    assert result.returncode == 1
    assert f"cannot reach 127.0.0.1:{port}" in result.stderr
    assert "gave up after 1 s" in result.stderr and "Traceback" not in result.stderr


def test_attach_with_a_wrong_token_is_refused_at_once():
    recipe = _served_training(n=5)
    server = recipe.serve(quiet=True, token="right")
    try:
        result = _cli("attach", server.ws_url, "--token", "wrong", "--to", "stdout")
    finally:
        server.close()
    assert result.returncode == 1 and "refused the connection: HTTP 401" in result.stderr


class socket_bound:
    """A port nothing listens on (bound, never accepting, then closed)."""

    def __enter__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        port = self.sock.getsockname()[1]
        self.sock.close()
        return port

    def __exit__(self, *exc):
        return False


@pytest.mark.slow
def test_ctrl_c_in_the_demo_says_how_to_resume_and_resume_continues(tmp_path):
    run_dir = tmp_path / "run"
    demo = subprocess.Popen(
        [*CLI, "demo", "--epochs", "3", "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in demo.stdout:
            if line.startswith("Ep. 1/3 It 21"):  # training is under way
                break
        demo.send_signal(signal.SIGINT)
        printed, errors = demo.communicate(timeout=120)
    finally:
        demo.kill()
    assert demo.returncode == 130
    said = re.search(r"continue with: evloop (demo --resume \S+ --epochs 3)\n", printed)
    assert said, printed[-2000:]
    assert "Traceback" not in errors
    resumed = _cli(*said.group(1).split(), timeout=300)  # what it said, word for word
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout and "after 3 epochs" in resumed.stdout
    assert "typo" not in resumed.stderr
    again = _cli("demo", "--resume", str(run_dir), timeout=300)  # the epochs it was asked
    assert again.returncode == 1
    assert "has trained 3 epochs already, nothing is left of --epochs 3" in again.stderr


@pytest.mark.slow
def test_a_reused_run_folder_gets_a_new_folder_inside(tmp_path):
    run_dir = tmp_path / "run"
    first = _cli("demo", "--epochs", "1", "--run-dir", str(run_dir), timeout=300)
    second = _cli("demo", "--epochs", "1", "--run-dir", str(run_dir), timeout=300)
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-2000:]
    assert "already holds a run" in second.stdout
    inner = [p for p in run_dir.iterdir() if p.is_dir() and p.name not in ("checkpoints", "media")]
    assert len(inner) == 1 and (inner[0] / "events.jsonl").stat().st_size > 0
    first_log = (run_dir / "events.jsonl").read_text().splitlines()
    assert sum('"type":"run_started"' in line for line in first_log) == 1  # not mixed
    assert os.path.isdir(run_dir / "checkpoints")
