"""What each way a run ends fires — the table in docs/design.md, checked: the ordered
lane's ``on_run_end``, the final event, the final checkpoint, the run's state, and
that every lossless subscriber got every event."""

import signal
import threading
import time

import anyio
import pytest
import torch

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.checkpoint_io import load_latest
from evloop.events import BatchEnded, RunFailed, RunFinished, RunStarted, RunStateChanged

STEPS = 40
STOP_AT = 7


class Ending:
    """Ends the run at STOP_AT the way asked; records on_run_end."""

    def __init__(self, way, recipe):
        self.way, self.recipe = way, recipe
        self.run_end_called = False

    def on_batch_end(self, state):
        if state["iters"] != STOP_AT:
            return
        if self.way == "stop":
            self.recipe.stop("asked")
        elif self.way == "command":
            from evloop.control import Command

            self.recipe.controls.submit(Command(op="stop", client="test"))
        elif self.way == "failure":
            raise RuntimeError("the step broke")
        elif self.way == "ctrl-c":
            # what a terminal's Ctrl-C does: the signal reaches the main thread
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            deadline = time.monotonic() + 30
            while not self.recipe.stop_requested and time.monotonic() < deadline:
                time.sleep(0.001)
        elif self.way == "cancelled":
            self.reached.set()
            self.wait_for_cancel.wait(30)

    def on_run_end(self, state):
        self.run_end_called = True


def _recipe(tmp_path, way):
    recipe = Recipe(lambda b: {"loss": torch.tensor(float(b))}, range(STEPS))
    recipe.register("w", torch.nn.Linear(1, 1))
    ending = Ending(way, recipe)
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Log("loss", "loss"),
            ending,
            ecb.Checkpoint(str(tmp_path / "c_{iters}.pth"), recipe),
        ]
    )
    log = []
    recipe.bus.subscribe(log.append, policy="block")
    return recipe, ending, log


def _run(recipe, ending, way):
    """Run it; returns the exception that left run()/arun(), if any."""
    try:
        if way == "cancelled":
            ending.reached, ending.wait_for_cancel = threading.Event(), threading.Event()

            async def app():
                async with anyio.create_task_group() as group:
                    group.start_soon(recipe.arun, 1)
                    await anyio.to_thread.run_sync(ending.reached.wait, 30)
                    group.cancel_scope.cancel()
                    ending.wait_for_cancel.set()

            anyio.run(app)
        else:
            recipe.run(1)
    except BaseException as error:  # noqa: BLE001 - what left the run is the point
        return error
    return None


# way: (exception type left, final event, stopped, final state, final checkpoint's step)
CONTRACT = {
    "finished": (None, RunFinished, False, "finished", STEPS - 1),
    "stop": (None, RunFinished, True, "stopped", STOP_AT),
    "command": (None, RunFinished, True, "stopped", STOP_AT),
    "ctrl-c": (KeyboardInterrupt, RunFinished, True, "stopped", STOP_AT),
    "cancelled": (None, RunFinished, True, "stopped", STOP_AT),
    "failure": (RuntimeError, RunFailed, None, "failed", None),
}


@pytest.mark.parametrize("way", list(CONTRACT))
def test_what_each_way_a_run_ends_fires(tmp_path, way):
    left, final_event, stopped, final_state, saved_at = CONTRACT[way]
    recipe, ending, log = _recipe(tmp_path, way)
    error = _run(recipe, ending, way)
    assert (type(error) if error is not None else None) is left, repr(error)
    assert ending.run_end_called is (way != "failure")  # hooks: not after a failure
    assert isinstance(log[0], RunStarted) and isinstance(log[-1], final_event)
    if stopped is not None:
        assert log[-1].stopped is stopped
    assert recipe.run_state.now == final_state
    stopping = [e for e in log if isinstance(e, RunStateChanged)]
    assert [e.state for e in stopping] == (["stopping"] if stopped else [])
    # the lossless subscriber got every step's event, in order (drained)
    steps = [e.iters for e in log if isinstance(e, BatchEnded)]
    assert steps == list(range(len(steps))) and len(steps) >= STOP_AT
    found = load_latest(str(tmp_path))
    if saved_at is None:
        assert found is None  # a failed step's state is never saved as a checkpoint
    else:
        assert found is not None and found[1]["progress"]["iters"] == saved_at
