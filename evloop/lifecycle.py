"""A top-level run's lifecycle: its event loop, training thread, drain and interrupts.

``recipe.run()`` in a script starts an event loop for the run's subscribers and trains
in one worker thread; where an event loop already runs in the calling thread (Jupyter,
IPython) the whole run goes to a worker thread with a loop of its own and the caller
blocks until it ends. ``await recipe.arun()`` uses the caller's loop. Either way one
task group holds the subscribers' consumers and the training thread; at the end the
consumers drain what is left, then the run's outcome is raised or returned.

Runs nested in this one (an inline evaluation, a GAN's generator step) have no
lifecycle: their subscribers are adopted by this run's task group.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import anyio
import torch

from .bus import Bus
from .consumers import Consumers
from .context import RunContext
from .distributed import lost_peer, publishes_here
from .preemption import handling_preemption, preempted_line

if TYPE_CHECKING:
    from .recipe import Recipe

__all__ = ["run_blocking", "run_async"]

log = logging.getLogger("evloop")
JOIN_S = 5.0  # at most this long for the training thread to return once it said so


def run_blocking(recipe: Recipe, epochs: int) -> dict[str, Any]:
    """``recipe.run(epochs)`` at the top level: returns once the run ended cleanly."""
    if _loop_running_here():
        return _run_beside_loop(recipe, epochs)
    with _interrupts_stop(recipe) as interrupted, handling_preemption(recipe):
        try:
            state = anyio.run(run_async, recipe, epochs)
        except Exception as error:
            lost = lost_peer(error)
            _report_to_torchrun(lost or error)
            if lost is not None:
                raise lost from error
            raise
    if interrupted():
        raise KeyboardInterrupt(_interrupted_at(recipe))
    if recipe.preempted:
        print(preempted_line(recipe), file=sys.stderr, flush=True)
    return state


async def run_async(recipe: Recipe, epochs: int) -> dict[str, Any]:
    """``await recipe.arun(epochs)``: cancelling the caller stops at the next batch
    boundary; the run still ends cleanly before the cancellation propagates."""
    run = recipe.current_run
    run.begin()
    try:
        await _drive(recipe, epochs)
    finally:
        run.end()
    return recipe.callbacks.state


def _loop_running_here() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        pass
    trio: Any = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
        return True
    except RuntimeError:
        return False


def _run_beside_loop(recipe: Recipe, epochs: int) -> dict[str, Any]:
    """Notebooks: the run gets a thread and a loop of its own; this thread waits.

    Interrupting the kernel stops the run at the next batch boundary and waits for
    its clean end; interrupting again stops waiting (the run still ends at that
    boundary, in the background).
    """
    outcome: dict[str, Any] = {}

    def main() -> None:
        try:
            outcome["state"] = anyio.run(run_async, recipe, epochs)
        except BaseException as error:  # raised in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=main, name="evloop-run", daemon=True)
    thread.start()
    interrupted = False
    while thread.is_alive():
        try:
            thread.join(0.1)
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            recipe.stop("interrupted")
            print(_STOPPING, file=sys.stderr, flush=True)
    if "error" in outcome:
        raise outcome["error"]
    if interrupted:
        raise KeyboardInterrupt(_interrupted_at(recipe))
    return outcome["state"]


_STOPPING = (
    "\nevloop: interrupted; finishing the current batch and ending the run "
    "(interrupt again to stop waiting)"
)


def _interrupted_at(recipe: Recipe) -> str:
    progress = recipe.progress
    return (
        f"training interrupted at epoch {progress.epoch}, iteration {progress.iters}; "
        "the run ended cleanly"
    )


async def _drive(recipe: Recipe, epochs: int) -> None:
    bus = recipe.bus
    bus.bind()
    consumers = Consumers(bus)
    outcome: dict[str, BaseException] = {}
    finished = anyio.Event()
    grad_enabled = torch.is_grad_enabled() if recipe.grad_enabled is None else recipe.grad_enabled

    async def train() -> None:
        with anyio.CancelScope(shield=True):
            try:
                await in_own_thread(_train, recipe, epochs, grad_enabled, consumers.adopt)
            except BaseException as error:  # re-raised below, after the drain
                outcome["error"] = error
            finally:
                finished.set()

    async with anyio.create_task_group() as tg:
        consumers.start(tg)
        tg.start_soon(train)
        try:
            await finished.wait()
        except anyio.get_cancelled_exc_class():
            recipe.stop("cancelled")
            with anyio.CancelScope(shield=True):
                await finished.wait()
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await consumers.drain(recipe.drain_lossy_s, recipe.drain_lossless_s)
    with anyio.CancelScope(shield=True):
        await consumers.finish(recipe.drain_lossy_s)
    if "error" in outcome:
        raise outcome["error"]


async def in_own_thread(fn: Callable[..., object], *args: Any) -> None:
    """``fn(*args)`` in a thread of its own that ends with it, awaited without blocking
    the event loop (AnyIO's worker pool would keep an idle thread alive after the run,
    one per run that was ever concurrent, for as long as the app lives)."""
    done = anyio.Event()
    token = anyio.lowlevel.current_token()
    outcome: dict[str, BaseException] = {}
    context = contextvars.copy_context()

    def main() -> None:
        try:
            context.run(fn, *args)
        except BaseException as error:  # raised in the awaiting task
            outcome["error"] = error
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone (RunFinishedError)
                anyio.from_thread.run_sync(done.set, token=token)

    thread = threading.Thread(target=main, name="evloop-train", daemon=True)
    thread.start()
    await done.wait()
    # The thread is returning; joined so that it frees nothing (the context's copy,
    # the arguments) while the process ends, which a daemon thread cannot do safely.
    thread.join(JOIN_S)
    if thread.is_alive():
        log.warning("thread %s had not returned %.0f s after its work ended", thread.name, JOIN_S)
    if "error" in outcome:
        raise outcome["error"]


def _train(recipe: Recipe, epochs: int, grad_enabled: bool, adopt: Callable[[Bus], None]) -> None:
    """The training thread of a top-level run."""
    recipe.training_thread = threading.get_ident()
    try:
        run = recipe.current_run
        checks = run.start_plugins()
        recipe.bus.muted = not publishes_here(recipe.publish_on_all_ranks)
        ctx = RunContext(recipe, adopt=adopt)
        run.execute(ctx, epochs, grad_enabled, checks)
    finally:
        recipe.training_thread = None


@contextlib.contextmanager
def _interrupts_stop(recipe: Recipe) -> Iterator[Callable[[], bool]]:
    """In a script's main thread: the first Ctrl-C stops the run cleanly, the second
    aborts."""
    hits: list[int] = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield lambda: False
        return

    def on_sigint(signum: int, frame: Any) -> None:
        hits.append(signum)
        if len(hits) > 1:
            # The training thread may be inside a long step: do not wait for it.
            print("\nevloop: aborted by a second Ctrl-C", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(130)
        print(
            "\nevloop: interrupted; finishing the current batch and ending the run "
            "(Ctrl-C again to abort at once)",
            file=sys.stderr,
            flush=True,
        )
        recipe.stop("Ctrl-C")

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _report_to_torchrun(error: BaseException) -> None:
    """Under torchrun, record the error so that its summary names this rank and shows
    this traceback as the root cause (the other ranks are then stopped)."""
    if "TORCHELASTIC_ERROR_FILE" not in os.environ:
        return
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    handler = ErrorHandler()
    handler.initialize()
    handler.record_exception(error)
