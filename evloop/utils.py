"""Small helpers shared by the recipe and the callbacks."""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = [
    "send_to_device",
    "dict_by_key",
    "detached",
    "unwrap_module",
    "freeze",
    "unfreeze",
    "load_state_dict_forgiving",
    "parallel_run",
]

log = logging.getLogger("evloop")


def send_to_device(x: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """Move every tensor inside ``x`` to ``device``, keeping container types.

    Pass a :class:`torch.device` (not a string) in hot loops: tensors already there are
    then returned without a call into torch, and a list or tuple of tensors that are
    all there already is returned as is.

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
        for item in x:
            if type(item) is not torch.Tensor or item.device != device:
                return cls([send_to_device(v, device, non_blocking) for v in x])
        return x  # every tensor is there already
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


ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def freeze(net: ModuleT) -> ModuleT:
    """No gradient for any parameter of ``net`` (``requires_grad_(False)``)."""
    return net.requires_grad_(False)


def unfreeze(net: ModuleT) -> ModuleT:
    """Gradients again for every parameter of ``net``."""
    return net.requires_grad_(True)


def load_state_dict_forgiving(
    dst: torch.nn.Module,
    state_dict: dict[str, Any],
    silent: bool = False,
    fit_dst_size: bool = False,
) -> dict[str, set[str]]:
    """Load into ``dst`` every tensor of ``state_dict`` whose name and shape match;
    return (and, unless ``silent``, log) what did not: ``dst_only`` (names the state
    dict lacks), ``state_only`` (names ``dst`` lacks), ``failed`` (shapes that differ).

    With ``fit_dst_size`` (Torchélie's), a tensor of another shape but as many
    dimensions loads the part both shapes share — the first rows and columns, the rest
    of ``dst`` left as it is (a classifier with more classes, a wider layer); only a
    different number of dimensions fails.
    """
    own = dst.state_dict()
    failed = set()
    with torch.no_grad():
        for name, value in state_dict.items():
            if name not in own:
                continue
            target = own[name]
            if target.shape == value.shape:
                target.copy_(value)
            elif fit_dst_size and target.ndim == value.ndim:
                sizes = zip(value.shape, target.shape, strict=True)
                shared = tuple(slice(0, min(a, b)) for a, b in sizes)
                target[shared].copy_(value[shared])
                if not silent:
                    log.warning(
                        "fitted %s: %s in the state dict, %s in the module (the shared part "
                        "loaded)",
                        name,
                        tuple(value.shape),
                        tuple(target.shape),
                    )
            else:
                failed.add(name)
                if not silent:
                    log.warning(
                        "not loaded: %s is %s in the state dict, %s in the module",
                        name,
                        tuple(value.shape),
                        tuple(target.shape),
                    )
    report = {
        "dst_only": set(own) - set(state_dict),
        "state_only": set(state_dict) - set(own),
        "failed": failed,
    }
    if not silent and (report["dst_only"] or report["state_only"]):
        log.warning(
            "load_state_dict_forgiving: %d names only in the module, %d only in the state dict",
            len(report["dst_only"]),
            len(report["state_only"]),
        )
    return report


def parallel_run(
    fun: Callable[..., Any], *args: Any, n_gpus: int | None = None, **kwargs: Any
) -> Any:
    """Torchélie's launcher: ``fun(*args, **kwargs, rank=r, world_size=n)`` in ``n``
    processes (``torch.multiprocessing.spawn``) joined in one process group (NCCL on
    GPUs, one each, else gloo); returns what rank 0's call returned. ``n_gpus``
    defaults to the number of GPUs (2 processes on a CPU-only machine). Prefer
    ``torchrun`` with :meth:`evloop.Recipe.distributed` for new scripts."""
    from .distributed.spawn import spawn

    return spawn(fun, args, kwargs, n_gpus)


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compiled_step(eager: Callable[..., Any], options: dict[str, Any]) -> Callable[..., Any]:
    """``torch.compile(eager, **options)``, with the same signature. In the modes that
    replay CUDA graphs, each call starts a new graph step and hands back copies of the
    output tensors: the next replay reuses the graph's output memory, and callbacks
    keep what a step returned (the averagers' running means, the events)."""
    compiled = torch.compile(eager, **options)
    if options.get("mode") not in CUDA_GRAPH_MODES:
        return compiled

    @functools.wraps(eager)
    def step(*args: Any, **kwargs: Any) -> Any:
        torch.compiler.cudagraph_mark_step_begin()
        out = compiled(*args, **kwargs)
        if isinstance(out, dict):
            return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
        return out

    step._torchdynamo_orig_callable = eager  # type: ignore[attr-defined]
    return step
