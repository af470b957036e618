"""Optimizer and LRSched: stepping the optimizer and its schedule at the right points."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch

from .. import context
from ..control import Setting
from ..distributed.saving import saving_shards
from ..events import SettingsRolledBack
from ..host import DeferredReads
from .averages import EpochMetricAvg
from .optimizer_settings import DEFAULT_MAX_LR, OptimizerSettings

__all__ = ["Optimizer", "LRSched"]

STEPPED = "_optimizer_stepped"  # state key: did an optimizer step at this batch?
log = logging.getLogger("evloop")


class Optimizer:
    """Zeroes gradients at the start of each accumulation window and steps at its end.

    ``accumulation`` micro-batches make a window; windows count within the epoch and a
    last, shorter window is stepped at epoch end, its
    gradients scaled by its true size. Gradients are multiplied by
    ``grad_multiplier / window size`` before the step, so ``backward()`` on each
    micro-batch's mean loss gives the window's mean gradient. ``centralize_grad``
    removes the mean of each output unit's weight gradient (gradient centralization).
    ``clip_grad_norm`` clips
    and posts the (device) norm as ``metrics['grad_norm']``. With a ``scaler``
    (``torch.amp.GradScaler``) call ``scaler.scale(loss).backward()`` in the forward
    function; gradients are unscaled before clipping.

    Controllers may change its hyper-parameters while it trains (:meth:`controls`),
    the learning rates up to ``max_lr``. When a step fails after such a change (a
    value the optimizer cannot use), the values before the change come back, that
    step is skipped and a :class:`~evloop.events.SettingsRolledBack` event says so.
    """

    def __init__(
        self,
        opt: torch.optim.Optimizer,
        accumulation: int = 1,
        clip_grad_norm: float | None = None,
        centralize_grad: bool = False,
        log_lr: bool = False,
        log_mom: bool = False,
        scaler: Any = None,
        grad_multiplier: float = 1.0,
        max_lr: float = DEFAULT_MAX_LR,
    ) -> None:
        if not (isinstance(max_lr, int | float) and math.isfinite(max_lr) and max_lr > 0):
            raise ValueError(f"max_lr must be a positive finite number, got {max_lr!r}")
        if accumulation < 1:
            raise ValueError(f"accumulation must be at least 1, got {accumulation}")
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            # torch scales the gradients by max_norm / norm: a negative one flips them
            raise ValueError(f"clip_grad_norm must be positive (or None), got {clip_grad_norm}")
        if not all(hasattr(opt, name) for name in ("step", "zero_grad", "param_groups")):
            raise TypeError(
                "Optimizer wraps a torch optimizer (step, zero_grad, param_groups), got "
                f"{type(opt).__name__}"
            )
        self.opt = opt
        self.accumulation = accumulation
        self.clip_grad_norm = clip_grad_norm
        self.centralize_grad = centralize_grad
        self.log_lr = log_lr
        self.log_mom = log_mom
        self.scaler = scaler
        self.grad_multiplier = grad_multiplier
        self.pending = 0  # micro-batches accumulated in the current window
        self.steps = 0
        self._checked = False  # whether the first step had gradients was looked at
        self._compiled_step: Callable[[], None] | None = None  # set by compile_step
        self.capture: Any = None
        """The captured whole step that does this callback's work in its graph (set by
        ``recipe.compile(whole_step=True)``; None: the work is done here)."""
        self._captured_now = False  # this batch's step ran inside the captured graph
        self._captured_norm: Any = None
        self.settings = OptimizerSettings(
            opt, max_lr, lambda: self.accumulation, self._set_accumulation
        )

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.opt.param_groups for p in group["params"]]

    def on_batch_start(self, state: dict[str, Any]) -> None:
        if self.pending == 0 and self.capture is None:  # a captured step zeroes in its graph
            self.opt.zero_grad(set_to_none=True)
        if self.log_lr or self.log_mom:
            self._log_hyperparameters(state["metrics"])

    def _log_hyperparameters(self, metrics: dict[str, Any]) -> None:
        for i, group in enumerate(self.opt.param_groups):
            if self.log_lr:
                metrics[f"lr_{i}"] = group["lr"]
            if self.log_mom:
                metrics[f"mom_{i}"] = (
                    group["momentum"] if "momentum" in group else group.get("betas", (0.0,))[0]
                )

    def on_batch_end(self, state: dict[str, Any]) -> None:
        self.pending += 1
        stepped = self.pending == self.accumulation
        if self._captured_now:
            self._captured_now = False
            if stepped:
                self._after_captured_step(state)
        elif stepped:
            self._step(state)
        state[STEPPED] = stepped

    def captured(self, norm: Any) -> None:
        """This batch's step ran in the captured graph (with the gradients' norm when
        clipping): :meth:`on_batch_end` only keeps count."""
        self._captured_now, self._captured_norm = True, norm

    def _after_captured_step(self, state: dict[str, Any]) -> None:
        self._checked = True
        if self._captured_norm is not None:
            state["metrics"]["grad_norm"] = self._captured_norm
            self._captured_norm = None
        self.settings.proven()
        self.steps += 1
        self.pending = 0

    def on_epoch_end(self, state: dict[str, Any]) -> None:
        if self.pending:
            self._step(state)

    def _step(self, state: dict[str, Any]) -> None:
        if not self._checked:
            self._checked = True
            self._warn_without_gradients()
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        multiplier = self.grad_multiplier / self.pending
        if multiplier != 1:
            grads = [p.grad for p in self._params() if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, multiplier)
        if self.centralize_grad:
            self._centralize()
        if self.clip_grad_norm is not None:
            params = [p for p in self._params() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
            state["metrics"]["grad_norm"] = norm
        try:
            self._step_optimizer()
        except Exception as error:
            changes = self.settings.roll_back()
            if changes is None:  # nothing steered since the last step: not ours to mend
                raise
            if self.scaler is not None:  # unscale_ ran: the scaler expects an update
                self.scaler.update()
            self._rolled_back(changes, error)
        else:
            self.settings.proven()
            self.steps += 1
        self.pending = 0

    def _step_optimizer(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        elif self._compiled_step is not None:
            self._compiled_step()
        else:  # looked up now: an LR scheduler made later wraps opt.step to watch it
            self.opt.step()

    def _rolled_back(self, changes: dict[str, list[Any]], error: Exception) -> None:
        """The step failed with steered values: say so, and keep the restored values
        as the run's (a resumed run must not apply the refused ones again)."""
        run = context.current()
        run.recipe.controls.applied.update({name: new for name, (_, new) in changes.items()})
        said = f"{type(error).__name__}: {error}"
        shown = ", ".join(f"{name} {old} → {new}" for name, (old, new) in changes.items())
        log.warning(
            "the optimizer's step failed at iteration %d (%s): step skipped, settings back: %s",
            run.progress.iters,
            said,
            shown,
        )
        run.publish(SettingsRolledBack(iters=run.progress.iters, changes=changes, error=said))

    def controls(self) -> list[Setting]:
        """Settings a controller may change while training, within their domains (see
        :mod:`evloop.callbacks.optimizer_settings`): ``lr`` (up to ``max_lr``),
        ``weight_decay``, ``momentum``, ``eps``, ``beta1``, ``beta2`` (every group;
        ``lr/1`` … one group) and ``accumulation`` (from the next window)."""
        return self.settings.offered()

    def _set_accumulation(self, value: int) -> None:
        self.accumulation = value

    def compile_step(self, **options: Any) -> None:
        """Run the optimizer's step compiled (``recipe.compile()`` calls this)."""
        opt = self.opt

        def step() -> None:
            opt.step()

        self._compiled_step = torch.compile(step, **options)

    def _centralize(self) -> None:
        """Gradient centralization: each output unit's gradient of a weight (a
        parameter of 2 or more dimensions) gets its mean removed."""
        for p in self._params():
            if p.grad is not None and p.dim() > 1:
                flat = p.grad.view(p.shape[0], -1)
                flat.sub_(flat.mean(1, keepdim=True))

    def _warn_without_gradients(self) -> None:
        """A step without any gradient changes nothing: say so once, with the usual
        cause (no device sync: only whether gradients exist is looked at)."""
        if any(p.grad is not None for p in self._params()):
            return
        warnings.warn(
            "Optimizer: no parameter had a gradient at the first optimizer step, so the "
            "weights did not change: the forward function must call loss.backward() "
            "itself (and return the loss), on parameters of this optimizer",
            RuntimeWarning,
            stacklevel=2,
        )

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state and the open accumulation window, its gradients too."""
        state: dict[str, Any] = {"steps": self.steps, "pending": self.pending}
        if not saving_shards():  # else the optimizer's state is saved shard by shard
            state["opt"] = self.opt.state_dict()
        if self.pending:
            state["grads"] = [p.grad for p in self._params()]
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "opt" in state:
            self.opt.load_state_dict(state["opt"])
        self.steps = state.get("steps", 0)
        self.pending = state.get("pending", 0)
        for param, grad in zip(self._params(), state.get("grads", []), strict=False):
            param.grad = None if grad is None else grad.to(param.device).clone()
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


class LRSched:
    """Steps a learning-rate scheduler.

    ``step_each_batch=True``: after every optimizer step (not every micro-batch when
    accumulating). Otherwise at epoch end. ``ReduceLROnPlateau`` receives the epoch
    mean of ``metrics[metric]``: the value an ``EpochMetricAvg`` of that name posts at
    the epoch's end, else the mean of the values seen at each batch (or that batch's
    value when stepping each batch);
    other schedulers are stepped without argument. A device value is read without a
    host sync: the scheduler steps once its copy has landed, a few steps later.
    """

    def __init__(self, sched: Any, metric: str | None = "loss", step_each_batch: bool = False):
        if not callable(getattr(sched, "step", None)):
            raise TypeError(f"LRSched steps a learning-rate scheduler, got {sched!r}")
        self.sched = sched
        self.metric = metric
        self.step_each_batch = step_each_batch
        self.total: Any = None
        self.count = 0
        self._reads = DeferredReads()
        self._warned = False
        self._posted_as_epoch_mean = False  # an EpochMetricAvg posts metrics[metric]

    @property
    def _wants_metric(self) -> bool:
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
        return self.metric is not None and isinstance(self.sched, plateau)

    def on_run_start(self, state: dict[str, Any]) -> None:
        run = context.current_or_none()
        callbacks = run.recipe.callbacks.callbacks() if run is not None else ()
        self._posted_as_epoch_mean = any(
            type(cb) is EpochMetricAvg and cb.name == self.metric for cb in callbacks
        )

    def on_epoch_start(self, state: dict[str, Any]) -> None:
        self.total, self.count = None, 0

    def on_batch_end(self, state: dict[str, Any]) -> None:
        self._reads.poll()
        if self.step_each_batch:
            if not state.get(STEPPED, True):
                return
            if not self._wants_metric:
                self._step(None)
            elif self.metric in state["metrics"]:
                self._step(state["metrics"][self.metric])
        elif self._posted_as_epoch_mean:
            return  # read at the epoch's end: averaging running means would skew it
        elif self._wants_metric and self.metric in state["metrics"]:
            value = state["metrics"][self.metric]
            value = value.detach() if isinstance(value, torch.Tensor) else value
            self.total = value if self.total is None else self.total + value
            self.count += 1

    def on_epoch_end(self, state: dict[str, Any]) -> None:
        if self.step_each_batch:
            return
        if not self._wants_metric:
            self._step(None)
        elif self._posted_as_epoch_mean and self.metric in state["metrics"]:
            self._step(state["metrics"][self.metric])
        elif self.count:
            self._step(self.total / self.count)
        elif self.metric in state["metrics"]:  # posted at epoch ends only
            self._step(state["metrics"][self.metric])
        elif not self._warned:
            self._warned = True
            warnings.warn(
                f"LRSched did not step {type(self.sched).__name__}: metrics has no "
                f"{self.metric!r} this epoch; it holds {sorted(state['metrics'])} (a typo?)",
                RuntimeWarning,
                stacklevel=2,
            )

    def _step(self, value: Any) -> None:
        if value is None:
            self.sched.step()
        else:
            self._reads.read(value, self.sched.step)

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.sched.state_dict(), "total": self.total, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sched.load_state_dict(state["scheduler"])
        self.total, self.count = state.get("total"), state.get("count", 0)
