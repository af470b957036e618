"""The optimizer updates a captured training step applies inside its graph.

They do what torch's ``SGD``, ``Adam`` and ``AdamW`` do (to float rounding), on the
torch optimizer's own state tensors (``momentum_buffer``; ``step``, ``exp_avg``,
``exp_avg_sq``), so that its ``state_dict`` stays the checkpoint and an eager step can
follow a captured one. The hyper-parameters are 0-d tensors refreshed from
``param_groups`` before each step: a scheduler or a steered value takes effect at the
next step without tracing again. What changes the graph's shape (momentum switched on
or off, ``nesterov``, ``maximize``, weight decay on or off) is part of its key.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["CapturedUpdate", "captured_update"]

_SGD_KEYS = ("lr", "momentum", "dampening", "weight_decay")
_ADAM_KEYS = ("lr", "beta1", "beta2", "eps", "weight_decay")


def captured_update(opt: torch.optim.Optimizer) -> CapturedUpdate | str:
    """The update of ``opt`` as graph code, or why it cannot be captured."""
    kind = type(opt)
    if kind is torch.optim.SGD:
        family = "sgd"
    elif kind is torch.optim.Adam or kind is torch.optim.AdamW:
        family = "adam"
    else:
        return f"no captured update for {kind.__name__} (SGD, Adam and AdamW have one)"
    for group in opt.param_groups:
        if group.get("amsgrad"):
            return f"{kind.__name__}(amsgrad=True) has no captured update"
        if group.get("differentiable"):
            return f"{kind.__name__}(differentiable=True) has no captured update"
        if isinstance(group["lr"], torch.Tensor):
            return "a tensor learning rate in param_groups (a float is refreshed each step)"
    return CapturedUpdate(opt, family)


class CapturedUpdate:
    """``update.structure()`` keys the graph; ``update.ready()`` says whether the
    optimizer's state exists (after its first, eager, step); ``update.tensors()`` are
    the graph's inputs it owns; ``update.apply()`` is called while tracing."""

    def __init__(self, opt: torch.optim.Optimizer, family: str) -> None:
        self.opt, self.family = opt, family
        keys = _SGD_KEYS if family == "sgd" else _ADAM_KEYS
        self.keys = keys
        self.hyper = [
            {key: torch.zeros((), dtype=torch.float64) for key in keys} for _ in opt.param_groups
        ]
        self._seen: list[list[float]] = [[] for _ in opt.param_groups]
        self.shape: tuple[Any, ...] = ()
        """:meth:`structure` as of the last :meth:`refresh`."""
        self._tensors: list[torch.Tensor] | None = None
        self._state_seen: tuple[int, int] = (0, 0)  # the state dict they were found in

    def _values(self, group: dict[str, Any]) -> list[float]:
        if self.family == "sgd":
            return [float(group[k]) for k in _SGD_KEYS]
        beta1, beta2 = group["betas"]
        return [float(group["lr"]), float(beta1), float(beta2), float(group["eps"])] + [
            float(group["weight_decay"])
        ]

    def structure(self) -> tuple[Any, ...]:
        """What the graph's code depends on, beyond the values of its tensors."""
        shape: list[Any] = [self.family, len(self.opt.param_groups)]
        for group in self.opt.param_groups:
            shape.append(
                (
                    len(group["params"]),
                    group.get("momentum", 0) != 0,
                    bool(group.get("nesterov", False)),
                    bool(group.get("maximize", False)),
                    group["weight_decay"] != 0,
                    bool(group.get("decoupled_weight_decay", type(self.opt) is torch.optim.AdamW)),
                )
            )
        return tuple(shape)

    def ready(self) -> bool:
        """Whether every parameter's state the update reads exists."""
        state = self.opt.state
        for group in self.opt.param_groups:
            for p in group["params"]:
                if self.family == "sgd":
                    if group["momentum"] != 0 and state[p].get("momentum_buffer") is None:
                        return False
                elif "exp_avg" not in state[p]:
                    return False
        return True

    def refresh(self) -> None:
        """Copy the groups' hyper-parameters into the tensors, those that changed."""
        changed = False
        for group, tensors, seen in zip(self.opt.param_groups, self.hyper, self._seen, strict=True):
            values = self._values(group)
            if values != seen:
                with torch.no_grad():
                    for key, value in zip(self.keys, values, strict=True):
                        tensors[key].fill_(value)
                seen[:] = values
                changed = True
        if changed or not self.shape:
            self.shape = self.structure()

    def forget(self) -> None:
        """Find the state tensors again at the next step (an eager step ran)."""
        self._tensors = None

    def tensors(self) -> list[torch.Tensor]:
        """The hyper-parameter tensors, then the optimizer's state tensors (found
        again when the optimizer's state was replaced, by a load, or :meth:`forget`)."""
        state = self.opt.state
        now = (id(state), len(state))
        if self._tensors is not None and self._state_seen == now:
            return self._tensors
        found = [t for tensors in self.hyper for t in tensors.values()]
        state = self.opt.state
        for group in self.opt.param_groups:
            for p in group["params"]:
                found.extend(v for v in state[p].values() if isinstance(v, torch.Tensor))
        self._tensors, self._state_seen = found, now
        return found

    def apply(self) -> None:
        """The update of every parameter with a gradient, in place (while tracing)."""
        for group, hyper in zip(self.opt.param_groups, self.hyper, strict=True):
            with torch.no_grad():
                if self.family == "sgd":
                    self._sgd(group, hyper)
                else:
                    self._adam(group, hyper)

    def _sgd(self, group: dict[str, Any], hyper: dict[str, torch.Tensor]) -> None:
        momentum_on = group["momentum"] != 0
        for p in group["params"]:
            if p.grad is None:
                continue
            d_p = -p.grad if group.get("maximize", False) else p.grad
            if group["weight_decay"] != 0:
                d_p = d_p + hyper["weight_decay"] * p
            if momentum_on:
                buf = self.opt.state[p]["momentum_buffer"]
                buf.mul_(hyper["momentum"]).add_(d_p * (1 - hyper["dampening"]))
                d_p = d_p + hyper["momentum"] * buf if group.get("nesterov", False) else buf
            p.add_(d_p * -hyper["lr"])

    def _adam(self, group: dict[str, Any], hyper: dict[str, torch.Tensor]) -> None:
        lr, wd = hyper["lr"], hyper["weight_decay"]
        beta1, beta2 = hyper["beta1"], hyper["beta2"]
        decoupled = group.get("decoupled_weight_decay", type(self.opt) is torch.optim.AdamW)
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.opt.state[p]
            grad = -p.grad if group.get("maximize", False) else p.grad
            step_t, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
            step_t.add_(1)
            if group["weight_decay"] != 0:
                if decoupled:
                    p.mul_(1 - lr * wd)
                else:
                    grad = grad + wd * p
            exp_avg.lerp_(grad, (1 - beta1).to(p.dtype))
            exp_avg_sq.mul_(beta2).add_(grad * grad * (1 - beta2))
            step = step_t.to(torch.float64)
            step_size = lr / (1 - beta1**step)
            bias_correction2_sqrt = (1 - beta2**step).sqrt()
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt) + hyper["eps"]
            p.add_(exp_avg / denom * -step_size)
