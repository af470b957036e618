"""RecipeBase: a recipe's registered objects, their saving, loading and device moves."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import torch

from .utils import unwrap_module

__all__ = ["RecipeBase", "check_is_state_dict"]


class RecipeBase:
    """Registered objects: ``recipe.<name>``, saved by :meth:`state_dict`, moved by
    :meth:`to`."""

    def __init__(self) -> None:
        self._modules: dict[str, None] = {}  # ordered sets of names
        self._savable: dict[str, None] = {}
        self._unsaved: dict[str, None] = {}
        self.device = torch.device("cpu")
        self._placed = False  # every registered object is on self.device
        self._registrations = 0  # counts register() calls (caches key on it)

    def register(self, name: str, value: Any, *, saved: bool = True) -> None:
        """Make ``value`` part of the recipe: ``recipe.<name>``, saving and device moves.

        Modules (and objects with ``state_dict``) are saved through their state dict,
        plain values as they are; ``saved=False`` registers an object that another
        recipe already saves (a test loop's model). Registering a name again replaces
        the object; so does registering an object already set as that plain attribute
        (``recipe.G_loop = G_loop`` then ``recipe.register('G_loop', G_loop)``).
        """
        if not isinstance(name, str):
            raise TypeError(f"a registered name is a str, got {name!r}")
        if not name.isidentifier() or name.startswith("_"):
            raise ValueError(f"cannot register {name!r}: use an identifier not starting with _")
        known = name in self._modules or name in self._savable or name in self._unsaved
        same_attribute = self.__dict__.get(name, _MISSING) is value
        if not known and not same_attribute and hasattr(self, name):
            raise ValueError(f"cannot register {name!r}: it would hide Recipe.{name}")
        for names in (self._modules, self._savable, self._unsaved):
            names.pop(name, None)
        self._adopt(name, value)
        if not saved:
            self._unsaved[name] = None
        elif isinstance(value, torch.nn.Module):
            self._modules[name] = None
        else:
            self._savable[name] = None
        self.__dict__[name] = value
        self._placed = False
        self._registrations += 1

    def _adopt(self, name: str, value: Any) -> None:
        """Hook for subclasses: ``value`` becomes part of this recipe as ``name``."""

    def replace(self, name: str, value: Any) -> None:
        """Swap a registered object for another one (a wrapper of it), keeping how it is
        saved."""
        if name not in self.__dict__:
            raise KeyError(f"{name!r} is not registered")
        self.__dict__[name] = value

    def module_names(self) -> list[str]:
        """Names of the registered (saved) modules."""
        return list(self._modules)

    def savable_names(self) -> list[str]:
        """Names of the registered objects saved by their ``state_dict`` (optimizers,
        schedulers…) or as they are."""
        return list(self._savable)

    def modules(self) -> Iterable[torch.nn.Module]:
        """Registered modules, saved or not."""
        for name in [*self._modules, *self._unsaved]:
            value = self.__dict__[name]
            if isinstance(value, torch.nn.Module):
                yield value

    def state_dict(self, *, leave_out: Collection[str] = ()) -> dict[str, Any]:
        """Each registered (saved) object's state dict, or value, by name; the names in
        ``leave_out`` are not asked (a checkpoint puts their state in later)."""
        state: dict[str, Any] = {}
        for name in self._modules:
            state[name] = unwrap_module(self.__dict__[name]).state_dict()
        for name in self._savable:
            if name in leave_out:
                continue
            value = self.__dict__[name]
            state[name] = value.state_dict() if hasattr(value, "state_dict") else value
        return state

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> RecipeBase:
        """Load what :meth:`state_dict` saved, plain values included.

        With ``strict``, a key this recipe has not registered, or a registered module
        the state dict lacks, raises a KeyError that names it (nothing is loaded);
        otherwise such keys are skipped and such modules keep their weights.
        """
        check_is_state_dict(state_dict)
        unknown = [k for k in state_dict if k not in self._modules and k not in self._savable]
        missing = [k for k in self._modules if k not in state_dict]
        if unknown and strict:
            known = sorted([*self._modules, *self._savable])
            raise KeyError(
                f"state dict has keys this recipe did not register: {unknown}; "
                f"registered: {known} (pass strict=False to skip them)"
            )
        if missing and strict:
            raise KeyError(
                f"state dict has no {missing}: their weights would stay as they are "
                "(pass strict=False to load the rest)"
            )
        problems = self.state_dict_problems(state_dict)
        if problems:
            raise ValueError(
                "the state dict does not fit this recipe, so nothing was loaded: "
                + "; ".join(problems)
            )
        for key, value in state_dict.items():
            if key in self._modules:
                unwrap_module(self.__dict__[key]).load_state_dict(value)
            elif key in self._savable:
                current = self.__dict__[key]
                if hasattr(current, "load_state_dict"):
                    current.load_state_dict(value)
                else:
                    self.__dict__[key] = value
        return self

    def state_dict_problems(self, state_dict: dict[str, Any]) -> list[str]:
        """What would make loading ``state_dict`` fail half-way: modules' missing,
        unexpected or differently shaped tensors, optimizers' parameter counts,
        nested recipes' own problems (each named ``object: key``)."""
        problems: list[str] = []
        for key, value in state_dict.items():
            if key in self._modules:
                module = unwrap_module(self.__dict__[key])
                problems += [f"{key}: {p}" for p in _module_problems(module, value)]
            elif key in self._savable:
                current = self.__dict__[key]
                if isinstance(current, torch.optim.Optimizer):
                    problems += [f"{key}: {p}" for p in _optimizer_problems(current, value)]
                elif isinstance(current, RecipeBase) and isinstance(value, dict):
                    known = {k: v for k, v in value.items() if k in current.__dict__}
                    problems += [f"{key}.{p}" for p in current.state_dict_problems(known)]
        return problems

    def to(self, device: torch.device | str) -> RecipeBase:
        """Move registered modules, tensors, optimizer states and nested recipes."""
        self.device = torch.device(device)
        for module in self.modules():
            module.to(self.device)
        for name in [*self._savable, *self._unsaved]:
            value = self.__dict__[name]
            if isinstance(value, torch.optim.Optimizer):
                _move_optimizer_state(value, self.device)
            elif isinstance(value, torch.nn.Module):
                continue
            elif callable(getattr(value, "to", None)) and not isinstance(value, type):
                self.__dict__[name] = value.to(self.device)
        self._placed = True
        return self

    def place(self) -> None:
        """Move what was registered since the last :meth:`to` to the recipe's device
        (at the start of a run; nothing to do on later runs)."""
        if not self._placed:
            self.to(self.device)

    def cuda(self) -> RecipeBase:
        """``to("cuda")``: every registered module and tensor moved; returns the recipe."""
        return self.to("cuda")

    def cpu(self) -> RecipeBase:
        """``to("cpu")``: every registered module and tensor moved; returns the recipe."""
        return self.to("cpu")

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}(device={self.device})", "Modules:"]
        lines += [f"  {n}: {type(self.__dict__[n]).__name__}" for n in self._modules]
        lines.append("Savables:")
        lines += [f"  {n}: {type(self.__dict__[n]).__name__}" for n in self._savable]
        return "\n".join(lines)


_MISSING = object()


def _module_problems(module: torch.nn.Module, saved: dict[str, Any]) -> list[str]:
    own = module.state_dict()
    problems = [f"{name!r} missing from the state dict" for name in own if name not in saved]
    problems += [f"{name!r} is not in the module" for name in saved if name not in own]
    for name, value in saved.items():
        shape = getattr(value, "shape", None)
        if name in own and shape is not None and tuple(shape) != tuple(own[name].shape):
            problems.append(
                f"{name!r} is {tuple(shape)} in the state dict, {tuple(own[name].shape)} here"
            )
    return problems


def _optimizer_problems(optimizer: torch.optim.Optimizer, saved: Any) -> list[str]:
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if groups is None:
        return ["not an optimizer's state dict"]
    if len(groups) != len(optimizer.param_groups):
        return [
            f"{len(groups)} parameter groups in the state dict, {len(optimizer.param_groups)} here"
        ]
    return [
        f"group {i} has {len(g['params'])} parameters in the state dict, {len(own['params'])} here"
        for i, (g, own) in enumerate(zip(groups, optimizer.param_groups, strict=True))
        if len(g["params"]) != len(own["params"])
    ]


def _move_optimizer_state(opt: torch.optim.Optimizer, device: torch.device) -> None:
    for per_param in opt.state.values():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor) and key != "step":
                per_param[key] = value.to(device)


def check_is_state_dict(state_dict: Any) -> None:
    """A TypeError unless ``state_dict`` is a mapping (what ``state_dict()`` makes)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"load_state_dict takes what state_dict() made (a dict), got {state_dict!r}"
        )
