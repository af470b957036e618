"""What ``Recipe(call_fun, loader)`` is given, checked when it is built: a model, a
data set or swapped arguments fail there, with the fix named, instead of inside the
first step ("cannot unpack non-iterable Linear object"); and what ``run()`` is given."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_recipe_arguments", "epochs_to_run"]

USAGE = "Recipe(forward_function, loader)"


def _name(value: Any) -> str:
    return type(value).__name__


def check_recipe_arguments(call_fun: Any, loader: Any, name: Any) -> None:
    """Raise a TypeError naming the fix when the arguments cannot be what they stand for."""
    if not callable(call_fun):
        swapped = " (the arguments are swapped?)" if callable(loader) else ""
        raise TypeError(
            f"a recipe's forward function must be callable, got {call_fun!r}{swapped}: "
            f"{USAGE}, where forward_function(batch) returns a dict of outputs"
        )
    _check_loader(loader)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"a recipe's name is a str, got {_name(name)} {name!r}")


def _check_loader(loader: Any) -> None:
    if isinstance(loader, torch.nn.Module):
        raise TypeError(
            f"a recipe's loader gives the batches, got a model ({_name(loader)}): pass the "
            f"data, e.g. {USAGE} with loader=DataLoader(dataset, batch_size=64), and give "
            "the model with recipe.register('model', model)"
        )
    if isinstance(loader, torch.optim.Optimizer):
        raise TypeError(
            f"a recipe's loader gives the batches, got an optimizer ({_name(loader)}): "
            "pass the data as the loader, and the optimizer to the Optimizer callback "
            "(recipe.callbacks.add_callback(Optimizer(opt)))"
        )
    if isinstance(loader, str | bytes):
        raise TypeError(
            f"a recipe's loader gives the batches, got the {_name(loader)} {loader!r}: "
            "load the data first, e.g. DataLoader(ImageFolder(path), batch_size=64)"
        )
    if not hasattr(loader, "__iter__"):
        if hasattr(loader, "__getitem__") and hasattr(loader, "__len__"):
            raise TypeError(
                f"a recipe's loader must be iterable, got the data set {_name(loader)}: "
                "wrap it in a DataLoader, e.g. "
                "torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True)"
            )
        raise TypeError(
            f"a recipe's loader must be iterable, got {loader!r}: a DataLoader, a list "
            "of batches or any iterable of batches"
        )


def epochs_to_run(epochs: Any, total_epochs: Any, completed: int) -> int:
    """How many epochs ``run(epochs)`` / ``run(total_epochs=...)`` trains, ``completed``
    being done already; a TypeError or ValueError for what cannot be a count."""
    if (epochs is None) == (total_epochs is None):
        if epochs is None:
            return 1
        raise TypeError("pass either epochs (more epochs) or total_epochs, not both")
    count = epochs if epochs is not None else total_epochs
    if not isinstance(count, int) or isinstance(count, bool):
        name = "epochs" if epochs is not None else "total_epochs"
        raise TypeError(f"{name} must be an int, got {count!r}")
    if epochs is not None:
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        return int(epochs)
    return max(0, count - completed)


def check_resume(resume: Any, epochs: Any) -> None:
    """``run(resume=...)``: None, or ``'auto'`` with ``total_epochs`` (a restarted job
    runs the same command: "n more epochs" would train n more after every restart)."""
    if resume is None:
        return
    if resume != "auto":
        raise ValueError(f"resume must be 'auto' or None, got {resume!r}")
    if epochs is not None:
        raise ValueError(
            "resume='auto' continues a run to its end: give total_epochs= (how many "
            "epochs in all), not epochs= (how many more), or each restart trains longer"
        )
