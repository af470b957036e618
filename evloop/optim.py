"""Optimizers: Torchélie's names over torch's implementations."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

# ``from evloop.optim import *`` gives what ``from torchelie.optim import *`` gives,
# torch and Optimizer included (Torchélie's module has no __all__: its tests use torch
# after that line alone).
__all__ = ["RAdamW", "AdaBelief", "Lookahead", "AddSign", "DeepDreamOptim", "Optimizer", "torch"]

Optimizer = torch.optim.Optimizer


class RAdamW(torch.optim.RAdam):
    """RAdam with decoupled (AdamW-style) weight decay: torch's ``RAdam`` with
    ``decoupled_weight_decay=True`` and Torchélie's default ``weight_decay=1e-2``."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=True,
        )


class AdaBelief(torch.optim.Optimizer):
    """AdaBelief (Zhuang et al., 2020): Adam whose second moment tracks the belief
    ``(g - m)²`` instead of ``g²``, with decoupled weight decay (Torchélie's default
    ``1e-2``).

    Per step ``t``: ``m = β1 m + (1-β1) g``; ``s = β2 s + (1-β2)(g-m)² + ε``;
    ``p -= lr·wd·p``; ``p -= lr · (m / (1-β1ᵗ)) / (sqrt(s / (1-β2ᵗ)) + ε)``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid AdaBelief settings: lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_var"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, s = state["exp_avg"], state["exp_avg_var"]
                m.lerp_(p.grad, 1 - beta1)
                belief = p.grad - m
                s.mul_(beta2).addcmul_(belief, belief, value=1 - beta2).add_(eps)
                denominator = (s / (1 - beta2**t)).sqrt_().add_(eps)
                p.mul_(1 - lr * decay)
                p.addcdiv_(m, denominator, value=-lr / (1 - beta1**t))
        return loss


class Lookahead(torch.optim.Optimizer):
    """Lookahead (Zhang et al., 2019) around ``base_optimizer``: after every ``k``
    steps of the base optimizer (the fast weights), the slow weights move ``alpha`` of
    the way towards them and the fast weights restart from there.

    Torchélie's version synchronised after the first step, then every ``k``; this one
    after ``k`` steps, as the paper. ``zero_grad``, ``state_dict`` and
    ``load_state_dict`` cover both optimizers.
    """

    def __init__(self, base_optimizer: torch.optim.Optimizer, alpha: float = 0.5, k: int = 5):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        groups = [{"params": group["params"]} for group in base_optimizer.param_groups]
        super().__init__(groups, dict(la_alpha=alpha, la_k=k))
        self.optimizer = base_optimizer
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    self.state[p]["la_slow"] = p.detach().clone()
                    self.state[p]["la_steps"] = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = self.optimizer.step(closure)
        for group in self.param_groups:
            alpha, k = group["la_alpha"], group["la_k"]
            for p in group["params"]:
                state = self.state[p]
                state["la_steps"] += 1
                if state["la_steps"] % k == 0:
                    slow = state["la_slow"]
                    slow.lerp_(p, alpha)
                    p.copy_(slow)
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"lookahead": super().state_dict(), "opt": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict["lookahead"])
        self.optimizer.load_state_dict(state_dict["opt"])


class _PerParameter(torch.optim.Optimizer):
    """An optimizer whose step updates each parameter that has a gradient on its own."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        raise NotImplementedError


class AddSign(_PerParameter):
    """AddSign (Bello et al., 2017, "Neural Optimizer Search with Reinforcement
    Learning"), as Torchélie: per step ``m = β m + (1-β) g``;
    ``p -= lr · (1 + sign(g)·sign(m)) · g``; then ``p -= lr·wd·p``. A gradient that
    agrees with its momentum takes a double step, one that disagrees none."""

    def __init__(
        self, params: Iterable[Any], lr: float = 1e-3, beta: float = 0.9, weight_decay: float = 0
    ) -> None:
        if lr < 0 or not 0 <= beta < 1:
            raise ValueError(f"invalid AddSign settings: lr={lr}, beta={beta}")
        super().__init__(params, dict(lr=lr, beta=beta, weight_decay=weight_decay))

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        assert p.grad is not None
        lr, beta, decay = group["lr"], group["beta"], group["weight_decay"]
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["mom"] = torch.zeros_like(p)
        state["step"] += 1
        mom = state["mom"]
        mom.mul_(beta).add_(p.grad, alpha=1 - beta)
        agreement = torch.sign(p.grad).mul_(torch.sign(mom)).add_(1)
        p.addcmul_(agreement, p.grad, value=-lr)
        p.add_(p, alpha=-lr * decay)


class DeepDreamOptim(_PerParameter):
    """The optimizer of Torchélie's DeepDream: each parameter's gradient scaled by its
    mean magnitude, ``p -= lr · g / (ε + mean|g|)``, after a decoupled decay
    ``p *= 1 - lr·wd``."""

    def __init__(
        self, params: Iterable[Any], lr: float = 1e-3, eps: float = 1e-8, weight_decay: float = 0
    ) -> None:
        if lr < 0 or eps < 0:
            raise ValueError(f"invalid DeepDreamOptim settings: lr={lr}, eps={eps}")
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay))

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        assert p.grad is not None
        lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
        p.mul_(1 - lr * decay)
        p.add_(p.grad / (eps + p.grad.abs().mean()), alpha=-lr)
