"""Offload: a subscriber run in a process of its own, fed through a pipe.

A logger in the training process shares its interpreter lock: each time it wakes it
takes the lock from the training thread, and one that blocks on slow I/O takes it back
after every write. ``Offload(StdoutLogger())`` runs the same logger class in a child
process instead; the training process only encodes each delivery's events (the
MessagePack wire of :mod:`evloop.events`, host copies of device tensors made as for
any subscriber) and writes them to the child's standard input, from a worker thread
that holds no lock while the pipe is full.

The child (``python -c``, so that the user's script is not run again there) is started
at the run's start, which waits until its subscriber is ready (``import torch`` there
takes a second or two), in a session of its own (a Ctrl-C ends the run, which then ends the
child), and ends with the run: its subscriber gets every event, then ``finish()``. It
inherits stdout and stderr. The subscriber must be picklable, its class importable
from a module (not defined in the script being run).
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import struct
import subprocess
import sys
from typing import IO, Any

import anyio

from .. import context
from ..bus import Subscriber
from ..codec import decode_msgpack_batch, encode_msgpack_batch
from ..consumers import maybe_await
from ..events import Event

__all__ = ["Offload", "serve_stdin"]

log = logging.getLogger("evloop")
CHILD = "import sys; from evloop.loggers.offload import serve_stdin; serve_stdin(int(sys.argv[1]))"
_LENGTH = struct.Struct(">I")


class Offload(Subscriber):
    """``Offload(subscriber)``: the same events, policy and filter as ``subscriber``,
    handled in a child process. Lossy subscribers stay lossy (a child that cannot keep
    up fills the pipe, then the mailbox, which drops and counts as usual); lossless
    ones make training wait, as in process. A child that dies detaches this subscriber
    and is reported as ``SubscriberFailed``; the run goes on."""

    blocking = True  # writes to a full pipe wait in a worker thread, not on the loop
    host_copies = True

    def __init__(
        self, subscriber: Subscriber, start_timeout: float = 60.0, finish_timeout: float = 30.0
    ) -> None:
        if not isinstance(subscriber, Subscriber):
            raise TypeError(f"Offload runs a Subscriber, got {type(subscriber).__name__}")
        if not (start_timeout > 0 and finish_timeout > 0):
            raise ValueError(
                "start_timeout and finish_timeout must be positive, got "
                f"{start_timeout} and {finish_timeout}"
            )
        if type(subscriber).__module__ == "__main__":
            raise TypeError(
                f"Offload runs {subscriber.name} in another process, which cannot import "
                "a class defined in the script being run: define it in a module"
            )
        try:
            self._pickled = pickle.dumps(subscriber)
        except Exception as error:
            raise TypeError(
                f"Offload sends {subscriber.name} to another process, but it cannot be "
                f"pickled ({error}); give it a file path instead of an open stream "
                "(StdoutLogger() without stream= writes to this process's stdout)"
            ) from error
        self.subscriber = subscriber
        self.types = subscriber.types
        self.every = subscriber.every
        self.nested = subscriber.nested
        self.policy = subscriber.policy
        self.maxsize = subscriber.maxsize
        self.start_timeout = start_timeout
        self.finish_timeout = finish_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._events: list[Event] = []
        self._start_error: RuntimeError | None = None
        self.sent = 0
        """Events written to the pipe so far."""

    @property
    def name(self) -> str:
        return f"Offload[{self.subscriber.name}]"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The child process of the current run (None before it starts)."""
        return self._process

    # -- the training process -----------------------------------------------------------
    def on_run_start(self, state: dict[str, Any]) -> None:
        """Start the child and wait until its subscriber is ready: one that cannot
        start (its class cannot be imported there) fails the run before training."""
        self._start_error = None
        if not context.current().bus.muted:  # ranks that publish nothing need no child
            self._start()

    def _start(self) -> None:
        if self._process is not None:
            return
        if self._start_error is not None:  # not again for every delivery
            raise self._start_error
        ready, told = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(told)],
                stdin=subprocess.PIPE,
                pass_fds=(told,),
                start_new_session=True,
            )
            os.close(told)
            self._send(pickle.dumps((sys.path, self._pickled)))
            self._wait_ready(ready)
        finally:
            os.close(ready)

    def _wait_ready(self, ready: int) -> None:
        assert self._process is not None
        readable, _, _ = select.select([ready], [], [], self.start_timeout)
        if readable and os.read(ready, 1) == b"1":
            return
        process, self._process = self._process, None
        if not readable:
            process.kill()
        self._start_error = RuntimeError(
            f"{self.name}: its process did not start within {self.start_timeout:.0f} s"
            if not readable
            else f"{self.name}: its process could not start: it "
            f"{_status(process, wait=5.0)} (its error is on stderr)"
        )
        raise self._start_error

    def _send(self, data: bytes) -> None:
        process = self._process
        assert process is not None and process.stdin is not None
        try:
            _write_all(process.stdin.fileno(), _LENGTH.pack(len(data)) + data)
        except OSError as error:  # the child is gone: say how it ended
            process.stdin.close()
            raise RuntimeError(
                f"the process running {self.subscriber.name} ended ({_status(process, wait=1.0)})"
            ) from error

    def handle(self, event: Event) -> None:
        self._events.append(event)

    def flush(self) -> None:
        if not self._events:
            return
        self._start()  # subscribed to a bus directly: no run start was seen
        events, self._events = self._events, []
        self._send(encode_msgpack_batch(events))
        self.sent += len(events)

    async def finish(self) -> None:
        """Close the pipe and wait (up to ``finish_timeout``, past the run's drain
        deadline: the child holds the last events) for the child to handle what it
        holds and exit; one still running then is killed."""
        process, self._process = self._process, None
        if process is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close, process)

    def detached(self, reason: str) -> None:
        """The bus gave up on this subscriber (its child died, or stopped reading and
        held the run's end past its deadline): kill the child, so that it does not
        outlive the run; a write still waiting on its pipe then fails and ends."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            log.error("%s: given up on: its process %d is killed", self.name, process.pid)
            process.kill()
        _wait(process, 5.0)
        if process.poll() is None:  # in uninterruptible I/O: it goes when that ends
            log.error(
                "%s: its process %d did not end within 5 s of SIGKILL", self.name, process.pid
            )

    def _close(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdin is not None
        process.stdin.close()  # every delivery was flushed: nothing is left here
        _wait(process, self.finish_timeout)
        if process.poll() is None:
            log.error(
                "%s: its process did not end within %.0f s of the run's end: killed",
                self.name,
                self.finish_timeout,
            )
            process.kill()
            process.wait()
        elif process.returncode:
            log.error("%s: its process %s", self.name, _status(process))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _wait(process: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


def _status(process: subprocess.Popen[bytes], wait: float = 0.0) -> str:
    _wait(process, wait)
    code = process.returncode
    if code is None:
        return "still running, not reading"
    if code < 0:
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


# -- the child process ------------------------------------------------------------------
def serve_stdin(ready: int) -> None:
    """The child's main: the subscriber from the first frame on standard input (then
    ``1`` written to the file descriptor ``ready``), every delivery to it, then
    ``finish()`` once the pipe is closed."""
    frames = sys.stdin.buffer
    setup = _read_frame(frames)
    if setup is None:
        return
    path, pickled = pickle.loads(setup)
    sys.path[:] = path
    subscriber: Subscriber = pickle.loads(pickled)
    os.write(ready, b"1")
    os.close(ready)
    anyio.run(_serve, frames, subscriber)


def _read_frame(frames: IO[bytes]) -> bytes | None:
    """The next frame, or None at the end of the stream."""
    head = frames.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    data = frames.read(size)
    if len(data) < size:
        raise EOFError(f"the stream ended inside a frame ({len(data)} of {size} bytes)")
    return data


async def _serve(frames: IO[bytes], subscriber: Subscriber) -> None:
    try:
        while True:
            data = await anyio.to_thread.run_sync(_read_frame, frames)
            if data is None:
                return
            for event in decode_msgpack_batch(data):
                await maybe_await(subscriber.handle(event))
            await maybe_await(subscriber.flush())
    finally:
        await maybe_await(subscriber.finish())
