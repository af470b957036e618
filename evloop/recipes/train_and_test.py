"""TrainAndTest and TrainAndCall: a training loop with a periodic evaluation."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..callbacks import CallRecipe, Checkpoint, Counter, StdoutLogger
from ..recipe import Recipe

__all__ = ["TrainAndTest", "TrainAndCall", "EvalMode"]


class EvalMode:
    """Puts the modules an evaluation uses in eval mode for its run, then restores them."""

    def __init__(self, loop: Recipe, fallback: torch.nn.Module) -> None:
        self.loop = loop
        self.fallback = fallback
        self._was_training: list[tuple[torch.nn.Module, bool]] = []

    def on_run_start(self, state: dict[str, Any]) -> None:
        modules = [
            m for m in self.loop.current_run.bindings.values() if isinstance(m, torch.nn.Module)
        ]
        self._was_training = [(m, m.training) for m in modules or [self.fallback]]
        for module, _ in self._was_training:
            module.eval()

    def on_run_end(self, state: dict[str, Any]) -> None:
        for module, training in self._was_training:
            module.train(training)
        self._was_training = []


def TrainAndTest(  # noqa: N802 - a recipe factory named like Torchélie's
    model: torch.nn.Module,
    train_fun: Callable[..., dict[str, Any] | None],
    test_fun: Callable[..., dict[str, Any] | None],
    train_loader: Iterable[Any],
    test_loader: Iterable[Any],
    *,
    test_every: int | str = 100,
    visdom_env: str | None = None,
    log_every: int = 10,
    checkpoint: str | None = "model",
    key_best: Callable[[Any], float] | None = None,
    test_mode: str | None = None,
) -> Recipe:
    """Train on ``train_loader``; every ``test_every`` iterations run ``test_fun`` over
    ``test_loader`` in eval mode under ``torch.no_grad()`` (set once per evaluation).

    ``test_fun(batch)`` closing over the model runs inline (training waits);
    ``test_fun(batch, model)`` evaluates a snapshot concurrently (``test_mode``
    overrides, see :class:`~evloop.callbacks.CallRecipe`). The returned recipe has
    ``model`` and ``test_loop`` registered; both loops log to stdout (``Test`` prefix
    for the evaluation), to visdom with ``visdom_env`` (windows ``<key>`` and
    ``test_<key>``; each loop's ``callbacks.cbs[-1][0]``, as in Torchélie) and, with
    ``checkpoint``, the training loop writes ``<checkpoint>/ckpt_<iters>.pth`` after
    each evaluation, of the very weights it evaluated (iteration ``<iters>``'s), and at
    the run's end (best file by ``key_best``, among the evaluated files).
    """
    if test_every != "epoch" and not (isinstance(test_every, int) and test_every >= 1):
        raise ValueError(f"test_every must be 'epoch' or at least 1, got {test_every!r}")
    train_loop = Recipe(train_fun, train_loader)
    train_loop.register("model", model)

    test_loop = Recipe(test_fun, test_loader)
    test_loop.register("model", model, saved=False)
    test_loop.grad_enabled = False
    test_loop.callbacks.add_prologue(EvalMode(test_loop, model))
    test_loop.callbacks.add_epilogue(StdoutLogger(log_every=-1, prefix="Test"))
    train_loop.register("test_loop", test_loop)

    train_loop.callbacks.add_prologue(Counter())
    train_loop.callbacks.add_epilogues(
        [
            StdoutLogger(log_every=log_every),
            CallRecipe(test_loop, test_every, mode=test_mode),
        ]
    )
    if visdom_env is not None:  # first in the epilogues, where Torchélie's scripts find it
        from ..loggers.visdom import VisdomLogger

        train_loop.callbacks.cbs[2].insert(0, VisdomLogger(visdom_env, log_every=log_every))
        test_logger = VisdomLogger(visdom_env, log_every=-1, prefix="test_")
        test_loop.callbacks.cbs[2].insert(0, test_logger)
    if checkpoint is not None:
        train_loop.callbacks.add_epilogue(
            Checkpoint(
                checkpoint + "/ckpt_{iters}.pth", train_loop, key_best=key_best, evaluation="test"
            )
        )
    return train_loop


def _without_batch(test_fun: Callable[..., Any]) -> Callable[..., Any]:
    """``test_fun(**modules)`` as a forward function ``(batch, **modules)``."""
    parameters = list(inspect.signature(test_fun).parameters.values())

    def call(batch: Any, **modules: Any) -> Any:
        return test_fun(**modules)

    batch = inspect.Parameter("batch", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    call.__signature__ = inspect.Signature([batch, *parameters])  # type: ignore[attr-defined]
    call.__name__ = getattr(test_fun, "__name__", "test_fun")
    return call


def TrainAndCall(  # noqa: N802 - a recipe factory named like Torchélie's
    model: torch.nn.Module,
    train_fun: Callable[..., dict[str, Any] | None],
    test_fun: Callable[..., dict[str, Any] | None],
    train_loader: Iterable[Any],
    test_every: int | str = 100,
    visdom_env: str | None = None,
    checkpoint: str | None = "model",
    log_every: int = 10,
    key_best: Callable[[Any], float] | None = None,
    test_mode: str | None = None,
) -> Recipe:
    """:func:`TrainAndTest` whose evaluation is one call of ``test_fun()`` (no data):
    sampling a generative model, for instance. ``test_fun(model)`` gets a snapshot.
    Arguments after ``train_loader`` may be positional, in Torchélie's order."""
    return TrainAndTest(
        model,
        train_fun,
        _without_batch(test_fun),
        train_loader,
        range(1),
        test_every=test_every,
        visdom_env=visdom_env,
        log_every=log_every,
        checkpoint=checkpoint,
        key_best=key_best,
        test_mode=test_mode,
    )
