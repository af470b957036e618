"""recipe.run() in a real Jupyter kernel (jupyter_client + ipykernel), where an event
loop already runs in the thread of every cell."""

import queue
import sys
import time

import pytest

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")
pytestmark = pytest.mark.slow

SETUP = """
import time
import torch
import evloop.callbacks as ecb
from evloop import Recipe
from evloop.events import RunFinished

def make(n, step_s=0.0):
    def forward(batch):
        time.sleep(step_s)
        return {"loss": torch.tensor(1.0 / (1 + batch))}
    recipe = Recipe(forward, range(n))
    recipe.drain_lossy_s = 30.0  # the loggers' last lines, however loaded the machine
    finished = []
    recipe.bus.subscribe(finished.append, types=[RunFinished])
    recipe.callbacks.add_callbacks(
        [ecb.Counter(), ecb.Log("loss", "loss"), ecb.StdoutLogger(log_every=-1), ecb.ProgressBar()]
    )
    return recipe, finished
"""


@pytest.fixture
def kernel():
    manager = jupyter_client.KernelManager(kernel_name="python3")
    manager.kernel_spec.argv[0] = sys.executable  # this environment's Python
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    try:
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def _execute(client, code, timeout=60, on_output=None):
    """Runs a cell; returns (reply content, outputs: list of (msg_type, content))."""
    msg_id = client.execute(code)
    outputs = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the cell did not finish within {timeout} s: {code[:60]!r}")
        try:
            message = client.get_iopub_msg(timeout=remaining)
        except queue.Empty:
            continue
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = message["msg_type"], message["content"]
        if kind == "status" and content["execution_state"] == "idle":
            break
        outputs.append((kind, content))
        if on_output is not None:
            on_output(kind, content)
    reply = client.get_shell_msg(timeout=timeout)
    return reply["content"], outputs


def _late_outputs(client, outputs, until, timeout=10.0):
    """Stream messages arriving after the last cell's end (nothing else runs), until
    ``until(its stdout with them)`` or ``timeout`` seconds."""
    late = []
    deadline = time.monotonic() + timeout
    while not until(_stdout(outputs + late)) and time.monotonic() < deadline:
        try:
            message = client.get_iopub_msg(timeout=0.1)
        except queue.Empty:
            continue
        if message["msg_type"] == "stream":
            late.append((message["msg_type"], message["content"]))
    return late


def _stdout(outputs):
    return "".join(c["text"] for kind, c in outputs if kind == "stream" and c["name"] == "stdout")


def test_run_trains_in_a_notebook_cell_with_a_notebook_progress_bar(kernel):
    _, client = kernel
    reply, _ = _execute(client, SETUP)
    assert reply["status"] == "ok", reply
    reply, outputs = _execute(
        client, "recipe, finished = make(40)\nstate = recipe.run(2)\nprint('iters', state['iters'])"
    )
    assert reply["status"] == "ok", reply
    # the kernel may send a line written by the logger's thread after the cell's end
    outputs += _late_outputs(client, outputs, until=lambda text: text.count("Ep. ") >= 2)
    text = _stdout(outputs)
    assert "iters 79" in text
    stderr = "".join(c["text"] for k, c in outputs if k == "stream" and c["name"] == "stderr")
    assert text.count("Ep. ") == 2, stderr  # the loggers ran; the run drained them
    widgets = [
        c
        for kind, c in outputs
        if kind == "display_data" and "application/vnd.jupyter.widget-view+json" in c["data"]
    ]
    assert widgets  # tqdm's notebook bar, one per epoch
    reply, outputs = _execute(client, "print(finished[-1].stopped, recipe.progress.epoch)")
    assert _stdout(outputs).split() == ["False", "1"]


def test_interrupting_the_kernel_ends_the_run_cleanly(kernel):
    manager, client = kernel
    _execute(client, SETUP)
    started = []

    def watch(kind, content):
        # the progress bar's widget is displayed once the run has started
        if kind in ("comm_open", "display_data"):
            started.append(time.monotonic())

    msg_id = client.execute(
        "recipe, finished = make(100_000, step_s=0.005)\nprint('go', flush=True)\nrecipe.run(1)"
    )
    deadline = time.monotonic() + 60
    while not started and time.monotonic() < deadline:
        try:
            message = client.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if message["parent_header"].get("msg_id") == msg_id:
            watch(message["msg_type"], message["content"])
    assert started, "the cell never started training (no progress bar shown)"
    manager.interrupt_kernel()
    reply = client.get_shell_msg(timeout=30)["content"]
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert "ended cleanly" in reply["evalue"]
    reply, outputs = _execute(
        client,
        "print(finished[-1].stopped, 0 <= recipe.progress.iters < 99_999, recipe.running)",
    )
    assert _stdout(outputs).split() == ["True", "True", "False"]
