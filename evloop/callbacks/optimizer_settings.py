"""The settings an ``Optimizer`` lets controllers change, their domains, and the way
back when the optimizer cannot use a value that passed its domain.

With a scheduler (``LRSched``), setting ``lr`` scales the schedule by as much (its
base rates and a one-cycle's ``max_lr``/``min_lr``): the value now, the schedule's
shape after, instead of the scheduler putting its own rate back at the next step.

Domains keep a run alive: learning rates from 0 to ``max_lr``, momentum and betas in
[0, 1), weight decay in [0, 1], eps in (0, 1], accumulation a whole number from 1.
Until a step succeeds with them, the values a controller set are unproven: the
hyper-parameters they replaced are kept, and :meth:`OptimizerSettings.roll_back`
puts them back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..control import Setting

__all__ = ["OptimizerSettings", "DEFAULT_MAX_LR"]

DEFAULT_MAX_LR = 10.0
UNIT = {"low": 0.0, "high": 1.0}
# key in a parameter group → the setting's domain (besides finite)
GROUP_DOMAINS: dict[str, dict[str, Any]] = {
    "weight_decay": UNIT,
    "momentum": {**UNIT, "high_open": True},
    "eps": {**UNIT, "low_open": True},
}


class OptimizerSettings:
    """``settings = OptimizerSettings(opt, max_lr, get_accumulation, set_accumulation)``:
    :meth:`offered` lists them; :meth:`proven` after each successful step,
    :meth:`roll_back` after a failed one."""

    def __init__(
        self,
        opt: Any,
        max_lr: float,
        get_accumulation: Callable[[], int],
        set_accumulation: Callable[[int], None],
    ) -> None:
        self.opt, self.max_lr = opt, max_lr
        self._accumulation = (get_accumulation, set_accumulation)
        self._before: tuple[list[dict[str, Any]], int] | None = None
        self._changed: dict[str, Callable[[], Any]] = {}  # unproven: name → its getter

    def offered(self) -> list[Setting]:
        """``lr``, ``weight_decay``, ``momentum``, ``eps``, ``beta1``, ``beta2`` (every
        group; ``lr/1`` … one group) and ``accumulation``, each within its domain."""
        groups = self.opt.param_groups
        get_acc, set_acc = self._accumulation
        # accumulation is the callback's own, not saved; the groups' keys are the
        # optimizer's, restored with its state
        offered = [self._setting("accumulation", get_acc, set_acc, kind=int, low=1)]
        domains = {"lr": {"low": 0.0, "high": self.max_lr}, **GROUP_DOMAINS}
        for key, domain in domains.items():
            if key not in groups[0]:
                continue
            targets = [("", groups)]
            if len(groups) > 1:
                targets += [(f"/{i}", [group]) for i, group in enumerate(groups)]
            for suffix, chosen in targets:
                get = _getter(chosen, key)
                put = _lr_setter(self.opt, chosen) if key == "lr" else _setter(chosen, key)
                offered.append(self._setting(key + suffix, get, put, restored=True, **domain))
        if "betas" in groups[0]:
            for i, name in enumerate(("beta1", "beta2")):
                get, put = _beta_getter(groups, i), _beta_setter(groups, i)
                offered.append(self._setting(name, get, put, **UNIT, high_open=True, restored=True))
        return offered

    def _setting(
        self, name: str, get: Callable[[], Any], put: Callable[[Any], None], **domain: Any
    ) -> Setting:
        def set_unproven(value: Any) -> None:
            if self._before is None:
                self._before = (_hyperparameters(self.opt), self._accumulation[0]())
            self._changed[name] = get
            put(value)

        hint = "Optimizer(max_lr=...) raises the maximum" if name.startswith("lr") else ""
        return Setting(name, get, set_unproven, hint=hint, **domain)

    def proven(self) -> None:
        """A step succeeded: the values set since are the run's."""
        if self._before is not None:
            self._before = None
            self._changed.clear()

    def roll_back(self) -> dict[str, list[Any]] | None:
        """Put back the hyper-parameters replaced since the last successful step;
        name → ``[refused, restored]``, or None when nothing was changed since."""
        if self._before is None:
            return None
        groups, accumulation = self._before
        refused = {name: get() for name, get in self._changed.items()}
        for group, saved in zip(self.opt.param_groups, groups, strict=False):
            group.update(saved)
        self._accumulation[1](accumulation)
        changes = {name: [value, self._changed[name]()] for name, value in refused.items()}
        self.proven()
        return changes


def _hyperparameters(opt: Any) -> list[dict[str, Any]]:
    return [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]


def _getter(groups: list[dict[str, Any]], key: str) -> Callable[[], Any]:
    return lambda: groups[0][key]


def _setter(groups: list[dict[str, Any]], key: str) -> Callable[[Any], None]:
    def set_all(value: Any) -> None:
        for group in groups:
            group[key] = value

    return set_all


# Per-group keys a scheduler derives the rates from (OneCycleLR's, torch's initial_lr).
SCHEDULE_KEYS = ("initial_lr", "max_lr", "min_lr")


def _lr_setter(opt: Any, groups: list[dict[str, Any]]) -> Callable[[Any], None]:
    """Set the rate, and scale the schedule that moves it by as much: a scheduler
    stepped each batch would otherwise put its own rate back at the next step."""

    def set_lr(value: Any) -> None:
        for group in groups:
            old = group["lr"]
            group["lr"] = value
            if not old:  # a schedule at 0 (a warm-up's start) has no scale to keep
                continue
            ratio = value / old
            for key in SCHEDULE_KEYS:
                if isinstance(group.get(key), int | float):
                    group[key] *= ratio
            index = _index(opt, group)
            for scheduler in _schedulers_of(opt):
                base = getattr(scheduler, "base_lrs", None)
                if isinstance(base, list) and index < len(base):
                    base[index] *= ratio

    return set_lr


def _index(opt: Any, group: dict[str, Any]) -> int:
    return next(i for i, g in enumerate(opt.param_groups) if g is group)


def _schedulers_of(opt: Any) -> list[Any]:
    """The schedulers of ``opt`` among the running recipe's callbacks (``LRSched``)."""
    from .. import context

    run = context.current_or_none()
    if run is None:
        return []
    found = []
    for callback in run.recipe.callbacks.callbacks():
        scheduler = getattr(callback, "sched", None)
        if getattr(scheduler, "optimizer", None) is opt:
            found.append(scheduler)
    return found


def _beta_getter(groups: list[dict[str, Any]], index: int) -> Callable[[], Any]:
    return lambda: groups[0]["betas"][index]


def _beta_setter(groups: list[dict[str, Any]], index: int) -> Callable[[Any], None]:
    def set_all(value: float) -> None:
        for group in groups:
            betas = list(group["betas"])
            betas[index] = value
            group["betas"] = tuple(betas)

    return set_all
