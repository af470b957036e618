"""Small helpers shared by the recipe and the callbacks."""

from __future__ import annotations

import collections
import copy
import dataclasses
from typing import Any

import torch

__all__ = ["send_to_device", "dict_by_key", "detached", "unwrap_module"]


def send_to_device(x: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """Move every tensor inside ``x`` to ``device``, keeping container types.

    Pass a :class:`torch.device` (not a string) in hot loops: tensors already there are
    then returned without a call into torch.

    Lists, tuples, namedtuples, dicts (``OrderedDict``, ``defaultdict`` …), sets and
    dataclasses are rebuilt with the same type; other objects are returned as is.
    """
    if isinstance(x, torch.Tensor):
        if x.device == device:  # a no-op .to() still costs a dispatch
            return x
        return x.to(device, non_blocking=non_blocking)
    cls = type(x)
    if cls in _ATOMS:
        return x
    if cls is tuple or cls is list:  # the common batch: a fast path
        return cls([send_to_device(v, device, non_blocking) for v in x])
    if isinstance(x, list):
        return type(x)(send_to_device(v, device, non_blocking) for v in x)
    if isinstance(x, tuple):
        items = [send_to_device(v, device, non_blocking) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)
    if isinstance(x, dict):
        moved = copy.copy(x)  # keeps OrderedDict order and defaultdict's factory
        for key, value in x.items():
            moved[key] = send_to_device(value, device, non_blocking)
        return moved
    if isinstance(x, set | frozenset):
        return type(x)(send_to_device(v, device, non_blocking) for v in x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        instance: Any = copy.copy(x)
        for field in dataclasses.fields(x):
            value = send_to_device(getattr(x, field.name), device, non_blocking)
            object.__setattr__(instance, field.name, value)  # works for frozen ones too
        return instance
    return x


_ATOMS = frozenset({int, float, bool, str, bytes, type(None)})


def dict_by_key(d: Any, path: str) -> Any:
    """``dict_by_key(state, 'batch.0')``: follow a dotted path; int parts index sequences."""
    for part in path.split("."):
        if isinstance(d, collections.abc.Sequence) and not isinstance(d, str):
            d = d[int(part)]
        else:
            d = d[part]
    return d


def detached(metrics: dict[str, Any]) -> dict[str, Any]:
    """A snapshot of a metrics dict whose tensors hold no autograd graph."""
    return {
        k: v.detach() if isinstance(v, torch.Tensor) and v.requires_grad else v
        for k, v in metrics.items()
    }


def unwrap_module(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DataParallel``/``DistributedDataParallel``, else the module."""
    wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    return module.module if isinstance(module, wrappers) else module
