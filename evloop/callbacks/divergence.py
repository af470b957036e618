"""DivergenceGuard: roll back to the last good weights when training diverges, without
syncing the device in steady state."""

from __future__ import annotations

import collections
import copy
import logging
from typing import Any

import torch

from .. import context
from ..context import RunContext
from ..events import DivergenceRolledBack
from ..host import HostCopy

__all__ = ["DivergenceGuard"]

log = logging.getLogger("evloop")


class DivergenceGuard:
    """Watches ``keys`` of the state (the loss) for values that are not finite, or a
    mean over ``check_every`` steps more than ``spike`` times the last one, and rolls
    the run back when one is.

    Each step adds the values into a device tensor (one op, no sync: a value that is
    not finite poisons the sum). Every ``check_every`` steps a flag is copied to the
    host without waiting, and every ``snapshot_every`` steps a snapshot of the
    registered modules and the optimizers' states is taken (on the device); a
    snapshot becomes the one to restore once the check taken with it comes back
    clean, a few steps later. When a check comes back dirty: the last good snapshot is restored, the
    learning rates are multiplied by ``lr_factor``, the batches since are skipped, and
    a :class:`~evloop.events.DivergenceRolledBack` event says so. After
    ``max_rollbacks`` rollbacks within ``window`` steps, the run stops with a clear
    message (a run that keeps diverging needs a person).
    """

    def __init__(
        self,
        keys: tuple[str, ...] = ("loss",),
        check_every: int = 10,
        snapshot_every: int = 50,
        lr_factor: float = 0.5,
        max_rollbacks: int = 3,
        window: int = 1000,
        spike: float | None = None,
    ) -> None:
        if check_every < 1:
            raise ValueError(f"check_every must be at least 1, got {check_every}")
        self.keys, self.check_every, self.lr_factor = keys, check_every, lr_factor
        self.snapshot_checks = max(1, snapshot_every // check_every)
        self.max_rollbacks, self.window, self.spike = max_rollbacks, window, spike
        self.rollbacks: collections.deque[int] = collections.deque()
        self._run: RunContext | None = None
        self._sum: torch.Tensor | None = None
        self._mean: torch.Tensor | None = None
        self._checks = 0
        self._pending: collections.deque[tuple[HostCopy | torch.Tensor, Any, int]] = (
            collections.deque()
        )
        self._good: tuple[Any, int] | None = None  # (snapshot, iteration)

    def on_run_start(self, state: dict[str, Any]) -> None:
        self._run = context.current()

    def on_batch_end(self, state: dict[str, Any]) -> None:
        run = self._run
        assert run is not None
        self._fold(state)
        iters = run.progress.iters
        if (iters + 1) % self.check_every == 0 and self._sum is not None:
            self._checks += 1
            snapshot = None
            if self._checks % self.snapshot_checks == 0 or self._good is None:
                snapshot = self._snapshot(run)
            flag = self._flag_of(self._sum)
            self._sum = None
            read = HostCopy(flag) if flag.is_cuda else flag
            self._pending.append((read, snapshot, iters))
        self._settle(run)

    def _fold(self, state: dict[str, Any]) -> None:
        """One device op a step: a sum, which a value that is not finite poisons."""
        for key in self.keys:
            value = state.get(key)
            if isinstance(value, torch.Tensor):
                total = value.detach().float().sum()
                self._sum = total if self._sum is None else self._sum + total

    def _flag_of(self, total: torch.Tensor) -> torch.Tensor:
        bad = ~torch.isfinite(total)
        if self.spike is not None:
            mean = total / self.check_every
            if self._mean is not None:
                bad = bad | (mean > self.spike * self._mean)
            self._mean = mean if self._mean is None else torch.where(bad, self._mean, mean)
        return bad

    def _snapshot(self, run: RunContext) -> Any:
        recipe = run.recipe
        modules = {n: copy.deepcopy(m.state_dict()) for n, m in _modules(recipe)}
        optimizers = [copy.deepcopy(opt.state_dict()) for opt in _optimizers(recipe)]
        return modules, optimizers

    def _settle(self, run: RunContext) -> None:
        """Read the checks whose copies landed, oldest first."""
        while self._pending:
            read, snapshot, iters = self._pending[0]
            if isinstance(read, HostCopy):
                if not read.done():
                    return
                flag = read.value
            else:
                flag = read
            self._pending.popleft()
            if not bool(flag):
                if snapshot is not None:
                    self._good = (snapshot, iters)
                continue
            self._roll_back(run, iters)
            return

    def _roll_back(self, run: RunContext, iters: int) -> None:
        self._pending.clear()
        self._sum, self._mean = None, None
        now = run.progress.iters
        self.rollbacks.append(now)
        while self.rollbacks and self.rollbacks[0] <= now - self.window:
            self.rollbacks.popleft()
        recipe = run.recipe
        if self._good is None or len(self.rollbacks) > self.max_rollbacks:
            why = (
                "no good weights to go back to yet"
                if self._good is None
                else f"{len(self.rollbacks)} rollbacks within {self.window} steps"
            )
            log.error(
                "DivergenceGuard: training diverged at iteration %d (%s): stopping", iters, why
            )
            run.publish(
                DivergenceRolledBack(
                    iters=now, restored_to=-1, lr_factor=1.0, stopped=True, reason=why
                )
            )
            run.stop(f"DivergenceGuard: training diverged ({why})")
            return
        (modules, optimizers), good_iters = self._good
        for name, module in _modules(recipe):
            module.load_state_dict(modules[name])
        for opt, saved in zip(_optimizers(recipe), optimizers, strict=True):
            opt.load_state_dict(saved)
            for group in opt.param_groups:
                group["lr"] *= self.lr_factor
        log.warning(
            "DivergenceGuard: not finite by iteration %d: back to iteration %d's weights, "
            "learning rates × %s",
            iters,
            good_iters,
            self.lr_factor,
        )
        run.publish(
            DivergenceRolledBack(
                iters=now,
                restored_to=good_iters,
                lr_factor=self.lr_factor,
                stopped=False,
                reason=f"not finite by iteration {iters}",
            )
        )


def _modules(recipe: Any) -> list[tuple[str, torch.nn.Module]]:
    return [(name, getattr(recipe, name)) for name in recipe.module_names()]


def _optimizers(recipe: Any) -> list[torch.optim.Optimizer]:
    return [
        cb.opt
        for cb in recipe.callbacks.callbacks()
        if isinstance(getattr(cb, "opt", None), torch.optim.Optimizer)
    ]
