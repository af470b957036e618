"""A run's hyper-parameters, recorded at its start: what the user set in
``recipe.hparams`` and what the recipe knows of itself — its models (class, parameter
count), optimizers (class, learning rate, weight decay, momentum, betas), schedulers,
the epochs asked, the loader's batch size and length, mixed precision and how it is
spread over ranks.

Values are the configured ones: a learning rate is the one the optimizer was given
(``initial_lr``, which torch's schedulers keep) even when a scheduler or a warm-up
changed it before the first step. Later changes are shown where they happen: a
scheduler's as a metric (``Optimizer(log_lr=True)``), a controller's as a
``command_applied`` event."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .distributed.saving import optimizers_of
from .resume import loader_length

if TYPE_CHECKING:
    from .recipe import Recipe

__all__ = ["hparams_of"]

Scalar = str | int | float | bool | None
OPTIMIZER_KEYS = ("lr", "weight_decay", "momentum", "betas", "eps")


def hparams_of(recipe: Recipe, epochs: int | None = None) -> dict[str, Scalar]:
    """Flat, JSON-ready: the recipe's own facts first, the user's ``hparams`` over them;
    ``epochs``: how many this run was asked for."""
    found: dict[str, Scalar] = {}
    for name in recipe.module_names():
        module = getattr(recipe, name)
        found[f"{name}.class"] = type(getattr(module, "module", module)).__name__
        found[f"{name}.parameters"] = sum(p.numel() for p in module.parameters())
    unnamed = 0
    for name, optimizer in optimizers_of(recipe).items():
        if name.startswith("callback"):  # held by an Optimizer callback only
            unnamed += 1
            name = "optimizer" if unnamed == 1 else f"optimizer{unnamed}"
        found[f"{name}.class"] = type(optimizer).__name__
        group = optimizer.param_groups[0]
        for key in OPTIMIZER_KEYS:
            if key in group:
                configured = group.get("initial_lr", group[key]) if key == "lr" else group[key]
                found.update(_flat(f"{name}.{key}", configured))
    schedulers = []
    for callback in recipe.callbacks.callbacks():
        scheduler = getattr(callback, "sched", None)
        if scheduler is not None:
            schedulers.append(type(scheduler).__name__)
        if getattr(callback, "scaler", None) is not None:
            found["amp"] = True
    if schedulers:
        found["schedulers"] = ", ".join(schedulers)
    if epochs is not None:
        found["epochs"] = epochs
        found["total_epochs"] = recipe.progress.completed_epochs + epochs
    batch_size = getattr(recipe.loader, "batch_size", None)
    if isinstance(batch_size, int):
        found["batch_size"] = batch_size
    length = loader_length(recipe.loader)
    if length is not None:
        found["batches_per_epoch"] = length
    if recipe.strategy is not None:
        found["strategy"] = recipe.strategy
    configured = recipe.progress.configured
    if configured:  # a resumed run: the values first configured, not steered ones
        found.update({k: v for k, v in configured.items() if k in found})
    else:
        configured.update({k: v for k, v in found.items() if _optimizer_key(k)})
    for key, value in recipe.hparams.items():
        found.update(_flat(key, value))
    return found


def _optimizer_key(key: str) -> bool:
    """``optimizer.lr``, ``opt.betas.0``: an optimizer's hyper-parameter."""
    parts = key.split(".")
    return len(parts) >= 2 and parts[1] in OPTIMIZER_KEYS


def _flat(key: str, value: Any) -> dict[str, Scalar]:
    """``value`` as scalars: tuples and lists by index, tensors by value, the rest by
    their text."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, tuple | list):
        return {f"{key}.{i}": v for i, item in enumerate(value) for v in _flat(key, item).values()}
    if value is None or isinstance(value, str | int | float | bool):
        return {key: value}
    return {key: str(value)}
