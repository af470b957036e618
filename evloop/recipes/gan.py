"""GANRecipe: Torchélie's GAN training loop, its generator step a nested run."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from .. import callbacks as ecb
from ..recipe import Recipe
from ..utils import freeze, unfreeze

__all__ = ["GANRecipe", "OneBatchAtATime"]


class OneBatchAtATime:
    """A loader whose every epoch is the next batch of ``loader`` (cycling): the
    generator and test steps draw from the discriminator's data, one batch a run."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self._batches: Iterator[Any] | None = None

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[Any]:
        if self._batches is None:
            self._batches = iter(self.loader)
        try:
            yield next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)
            yield next(self._batches)


def GANRecipe(  # noqa: N802 - a recipe factory named like Torchélie's
    G: nn.Module,  # noqa: N803 - Torchélie's argument names
    D: nn.Module,  # noqa: N803
    G_fun: Callable[[Any], dict[str, Any] | None],  # noqa: N803
    D_fun: Callable[[Any], dict[str, Any] | None],  # noqa: N803
    test_fun: Callable[[Any], dict[str, Any] | None],
    loader: Iterable[Any],
    *,
    visdom_env: str | None = None,
    checkpoint: str | None = "model",
    test_every: int = 1000,
    log_every: int = 10,
    g_every: int = 1,
) -> Recipe:
    """The discriminator's loop over ``loader`` (``D_fun(batch)``, with ``G`` frozen),
    a generator step every ``g_every`` iterations (``G_fun(batch)`` on the next batch,
    with ``D`` frozen; its metrics in ``state['G_metrics']``) and a test every
    ``test_every`` (``test_fun(batch)`` in eval mode under ``torch.no_grad()``; its
    metrics in ``state['Test_metrics']``; a checkpoint of the whole recipe in
    ``checkpoint/ckpt_<iters>.pth`` after each). Each function calls ``backward()``
    itself; add an ``Optimizer`` for D to the returned recipe and one for G to
    ``recipe.G_loop``. The generator and test steps are nested runs: plain calls in
    the training thread. ``visdom_env``: logs to visdom too (Torchélie's default
    ``'main'`` is None here).
    """

    def d_step(batch: Any) -> dict[str, Any] | None:
        freeze(G)
        unfreeze(D)
        return D_fun(batch)

    def g_step(batch: Any) -> dict[str, Any] | None:
        freeze(D)
        unfreeze(G)
        return G_fun(batch)

    def test_step(batch: Any) -> dict[str, Any] | None:
        freeze(G)
        freeze(D)
        D.eval()
        G.eval()
        with torch.no_grad():
            out = test_fun(batch)
        D.train()
        G.train()
        return out

    d_loop = Recipe(d_step, loader)
    d_loop.register("G", G)
    d_loop.register("D", D)
    g_loop = Recipe(g_step, OneBatchAtATime(loader))
    d_loop.register("G_loop", g_loop)
    test_loop = Recipe(test_step, OneBatchAtATime(loader))
    d_loop.register("test_loop", test_loop)

    d_loop.callbacks.add_prologue(ecb.Counter())
    d_loop.callbacks.add_epilogues(
        [
            ecb.Log("imgs", "G_imgs", optional=True),  # if the D step returns them
            ecb.CallRecipe(g_loop, g_every, prefix="G", mode="inline", at_end=False),
            ecb.StdoutLogger(log_every=log_every),
            ecb.CallRecipe(test_loop, test_every, prefix="Test", mode="inline"),
        ]
    )
    g_loop.callbacks.add_epilogue(ecb.WindowedMetricAvg("G_loss"))
    if visdom_env is not None:
        d_loop.callbacks.add_epilogue(ecb.VisdomLogger(visdom_env, log_every=log_every))
        g_loop.callbacks.add_epilogue(
            ecb.VisdomLogger(visdom_env, log_every=log_every, post_epoch_ends=False)
        )
        test_loop.callbacks.add_epilogue(ecb.VisdomLogger(visdom_env, log_every=-1))
    if checkpoint is not None:
        test_loop.callbacks.add_epilogue(ecb.Checkpoint(checkpoint + "/ckpt_{iters}.pth", d_loop))
    return d_loop
