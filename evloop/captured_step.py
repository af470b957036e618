"""``recipe.compile(whole_step=True)``: each training step as one captured graph.

The forward function as written (it calls ``loss.backward()`` itself) is traced
below autograd with ``make_fx``, so that its backward pass lands in the same graph
as its forward pass; the ``Optimizer`` callback's work follows in that graph as it
is configured: gradients accumulated over the window, multiplied by
``grad_multiplier / window``, centralized, clipped (the norm is an output), the
optimizer's update (:mod:`evloop._captured_updates`) and the zeroing of the next
window (a fresh window's graph writes its gradients over the old ones). The graph
is compiled once by ``torch.compile`` (inductor) and then called with the step's
tensors: the parameters, buffers, gradients, the optimizer's state and
hyper-parameters, and the batch.

Steps that run eagerly: those before the optimizer's first step (it creates its
state), a batch of a shape beyond the first ``shapes`` (said once), and every step
once something could not be captured (one warning naming the reason). Tracing runs
the step once for real; every tensor it changed is put back before the graph runs.
"""

from __future__ import annotations

import inspect
import logging
import time
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from ._captured_averages import CapturedAverages
from ._captured_updates import CapturedUpdate, captured_update

if TYPE_CHECKING:
    from .callbacks.optimizer import Optimizer
    from .recipe import Recipe

__all__ = ["WholeStep", "CaptureError"]

log = logging.getLogger("evloop")


class CaptureError(RuntimeError):
    """The step cannot be captured; the message says why."""


class _Graph:
    """One compiled step: its callable and how to rebuild the outputs."""

    def __init__(self, fn: Callable[..., Any], spec: Any, constants: list[Any], clip: bool):
        self.fn, self.spec, self.constants, self.clip = fn, spec, constants, clip
        self.averaged = 0  # the last outputs: the averagers' new means
        self.called = False
        self.keys: list[Any] | None = None
        """The output dict's keys when every value is a tensor."""


class WholeStep:
    """The recipe's ``call_fun`` in captured mode: ``step(batch, **bindings)``
    returns what the forward function returns, after the whole step ran."""

    def __init__(
        self, recipe: Recipe, eager: Callable[..., Any], options: dict[str, Any], shapes: int
    ) -> None:
        if shapes < 1:
            raise ValueError(f"shapes must be at least 1, got {shapes}")
        self.recipe, self.eager = recipe, eager
        self.options = {"fullgraph": True, "dynamic": False, **options}
        self.shapes = shapes
        self.reason: str | None = None
        """Why every step runs eagerly (None: steps are captured)."""
        self.graphs: dict[tuple[Any, ...], _Graph] = {}
        self.captured_steps = 0
        """How many steps ran as a captured graph."""
        self.compile_s = 0.0
        """Seconds spent tracing and compiling graphs (their first calls included)."""
        self._batch_keys: set[Any] = set()
        self._said_shapes = False
        self._optimizer: Optimizer | None = None
        self._update: CapturedUpdate | None = None
        self._grad_params: list[torch.Tensor] | None = None
        self._state: list[torch.Tensor] = []  # parameters and buffers, in the graph's order
        self._averages: CapturedAverages | None = None
        self._multiplier = torch.ones((), dtype=torch.float64)
        self._multiplier_value = 1.0
        self.__name__ = getattr(eager, "__name__", "step")
        self.__wrapped__ = eager

    @property
    def averaged(self) -> list[str]:
        """The metrics whose epoch means the graph updates (``EpochMetricAvg``'s)."""
        return [] if self._averages is None else self._averages.names()

    # -- each step ------------------------------------------------------------------
    def __call__(self, batch: Any, **bindings: Any) -> Any:
        optimizer = self._optimizer if self._optimizer is not None else self._adopt()
        if optimizer is None or self.reason is not None or not self._ready(optimizer):
            return self._eager(batch, bindings)
        tensors, batch_key = _batch_tensors(batch)
        fresh = optimizer.pending == 0
        steps = optimizer.pending + 1 == optimizer.accumulation
        multiplier = optimizer.grad_multiplier / (optimizer.pending + 1) if steps else 1.0
        assert self._update is not None
        self._update.refresh()
        key = (fresh, steps, multiplier != 1.0, self._update.shape, batch_key)
        graph = self.graphs.get(key)
        if graph is None:
            if batch_key not in self._batch_keys and len(self._batch_keys) >= self.shapes:
                self._say_shape(batch_key)
                return self._eager(batch, bindings)
            started = time.perf_counter()
            try:
                graph = self._build(key, batch, bindings, fresh, steps, multiplier != 1.0)
            except Exception as error:  # anything the tracer or compiler refused
                self._give_up(error)
                return self._eager(batch, bindings)
            finally:
                self.compile_s += time.perf_counter() - started
            self._batch_keys.add(batch_key)
        outputs = self._run(graph, optimizer, tensors, multiplier)
        return self._eager(batch, bindings) if outputs is _FAILED else outputs

    def _run(
        self, graph: _Graph, optimizer: Optimizer, batch: list[torch.Tensor], multiplier: float
    ) -> Any:
        assert self._update is not None
        if multiplier != self._multiplier_value:
            self._multiplier.fill_(multiplier)
            self._multiplier_value = multiplier
        inputs = [*self._state, *self._grads(), *self._update.tensors(), self._multiplier]
        assert self._averages is not None
        inputs += self._averages.tensors()
        inputs += batch
        started = time.perf_counter()
        try:
            with torch.no_grad():
                outputs = graph.fn(*inputs)
        except Exception as error:
            if graph.called:
                raise
            self._give_up(error)  # compiling failed before anything ran
            return _FAILED
        if not graph.called:
            graph.called = True
            self.compile_s += time.perf_counter() - started
        self.captured_steps += 1
        if graph.averaged:
            self._averages.adopt(outputs[-graph.averaged :])
            outputs = outputs[: -graph.averaged]
        optimizer.captured(outputs[-1] if graph.clip else None)
        if graph.keys is not None:  # a dict of tensors: no pytree walk
            return dict(zip(graph.keys, outputs, strict=False))
        outputs = list(outputs[:-1] if graph.clip else outputs)
        leaves = [outputs.pop(0) if c is _TENSOR else c for c in graph.constants]
        return pytree.tree_unflatten(leaves, graph.spec)

    def _eager(self, batch: Any, bindings: dict[str, Any]) -> Any:
        optimizer = self._optimizer
        if self._update is not None:
            self._update.forget()
        if optimizer is not None and optimizer.pending == 0:
            optimizer.opt.zero_grad(set_to_none=True)
        return self.eager(batch, **bindings) if bindings else self.eager(batch)

    def _grads(self) -> list[torch.Tensor]:
        assert self._grad_params is not None
        grads = []
        for p in self._grad_params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        return grads

    # -- when a step can be captured ------------------------------------------------
    def _adopt(self) -> Optimizer | None:
        from .callbacks.optimizer import Optimizer

        if self.reason is not None:
            return None
        found = [c for c in self.recipe.callbacks.callbacks() if isinstance(c, Optimizer)]
        if len(found) != 1:
            what = "no Optimizer callback" if not found else f"{len(found)} Optimizer callbacks"
            self._give_up(CaptureError(f"{what} (a captured step has exactly one)"))
            return None
        optimizer = found[0]
        if optimizer.scaler is not None:
            self._give_up(CaptureError("a GradScaler (its scale is not captured yet)"))
            return None
        update = captured_update(optimizer.opt)
        if isinstance(update, str):
            self._give_up(CaptureError(update))
            return None
        self._optimizer, self._update = optimizer, update
        optimizer.capture = self
        return optimizer

    def _ready(self, optimizer: Optimizer) -> bool:
        """Captured from the optimizer's first step on: it made its state (and the
        callback checked that gradients came)."""
        assert self._update is not None
        if optimizer.steps == 0 or not self._update.ready():
            return False
        if self._grad_params is None:
            params = [p for group in optimizer.opt.param_groups for p in group["params"]]
            with_grads = [p for p in params if p.grad is not None]
            if not with_grads:  # resumed at a window's end: one eager step shows which get one
                return False
            self._grad_params = with_grads
            self._state = _state_tensors(self.recipe, self.eager, params)
            runner = self.recipe.callbacks
            self._averages = CapturedAverages(list(runner.callbacks()), runner.output_keys)
        return True

    def _say_shape(self, batch_key: Any) -> None:
        if not self._said_shapes:
            self._said_shapes = True
            log.warning(
                "recipe.compile(whole_step=True): a batch of another shape %s runs "
                "eagerly (graphs are made for the first %d shapes only; this is said once)",
                batch_key,
                self.shapes,
            )

    def _give_up(self, error: BaseException) -> None:
        """Every step eager from now on, said once with the reason."""
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        self.reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
        if self._optimizer is not None:
            self._optimizer.capture = None
        warnings.warn(
            f"recipe.compile(whole_step=True): the training step runs eagerly: {self.reason}",
            RuntimeWarning,
            stacklevel=3,
        )

    # -- tracing and compiling ------------------------------------------------------
    def _build(
        self,
        key: tuple[Any, ...],
        batch: Any,
        bindings: dict[str, Any],
        fresh: bool,
        steps: bool,
        scaled: bool,
    ) -> _Graph:
        optimizer, update, averages = self._optimizer, self._update, self._averages
        assert optimizer is not None and update is not None and self._grad_params is not None
        assert averages is not None
        grad_params = self._grad_params
        all_params = [p for group in optimizer.opt.param_groups for p in group["params"]]
        tensors, _ = _batch_tensors(batch)
        update.refresh()
        inputs = [*self._state, *self._grads(), *update.tensors(), self._multiplier]
        averaged = averages.tensors()
        inputs += averaged + tensors
        grads = inputs[len(self._state) : len(self._state) + len(grad_params)]
        shape: dict[str, Any] = {}

        def step(*_: torch.Tensor) -> list[torch.Tensor]:
            if fresh:
                for p in all_params:
                    p.grad = None
            with torch.enable_grad():
                out = self.eager(batch, **bindings) if bindings else self.eager(batch)
            with torch.no_grad():
                for p, buffer in zip(grad_params, grads, strict=True):
                    if p.grad is None:
                        raise CaptureError("a parameter got no gradient in this step")
                    if p.grad is not buffer:
                        buffer.copy_(p.grad)
                        p.grad = buffer
                clipped = self._optimizer_work(optimizer, grads, steps, scaled)
            if type(out) is dict and all(type(v) is torch.Tensor for v in out.values()):
                shape["keys"] = list(out)
            leaves, shape["spec"] = pytree.tree_flatten(out)
            shape["constants"] = [_TENSOR if isinstance(v, torch.Tensor) else v for v in leaves]
            found = [v for v in leaves if isinstance(v, torch.Tensor)]
            shape["clip"] = clipped is not None
            means = averages.trace(out, averaged) if len(averages) else []
            return found + ([clipped] if clipped is not None else []) + means

        saved = [t.detach().clone() for t in inputs]
        grads_before = [p.grad for p in all_params]
        try:
            traced = make_fx(step, tracing_mode="real")(*inputs)
        finally:  # the step ran once for real: nothing of it may stay
            with torch.no_grad():
                for t, before in zip(inputs, saved, strict=True):
                    t.copy_(before)
            for p, grad in zip(all_params, grads_before, strict=True):
                p.grad = grad
            for p, buffer in zip(grad_params, grads, strict=True):
                p.grad = buffer
        _check_mutations(traced)
        fn = self._compile(traced, inputs)
        graph = _Graph(fn, shape["spec"], shape["constants"], shape["clip"])
        graph.keys, graph.averaged = shape.get("keys"), len(averages)
        self.graphs[key] = graph
        return graph

    def _compile(self, traced: torch.fx.GraphModule, inputs: list[Any]) -> Any:
        """Inductor straight on the traced graph (no frame evaluation and guards at each
        call: half the cost of a small step), or ``torch.compile`` with the options
        given (another backend, a mode)."""
        options = dict(self.options)
        inductor = options.pop("options", None)
        options.pop("fullgraph"), options.pop("dynamic")
        if options.get("backend", "inductor") == "inductor" and options.get("mode") is None:
            from torch import _inductor

            with torch.no_grad():
                return _inductor.compile(traced, inputs, options=inductor)
        return torch.compile(traced, **self.options)

    def _optimizer_work(
        self, optimizer: Optimizer, grads: list[torch.Tensor], steps: bool, scaled: bool
    ) -> torch.Tensor | None:
        """What the Optimizer callback does at a window's end, while tracing."""
        if not steps:
            return None
        assert self._update is not None and self._grad_params is not None
        if scaled:
            torch._foreach_mul_(grads, self._multiplier)
        if optimizer.centralize_grad:
            optimizer._centralize()
        norm = None
        if optimizer.clip_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self._grad_params, optimizer.clip_grad_norm)
        self._update.apply()
        return norm


_TENSOR = object()  # where a tensor output goes among the constant ones
_FAILED = object()  # the first call of a graph failed: nothing ran


def _batch_tensors(batch: Any) -> tuple[list[torch.Tensor], tuple[Any, ...]]:
    """The batch's tensors, and what the graph depends on (structure, shapes, dtypes)."""
    kind = type(batch)
    if kind is tuple or kind is list:  # the common batch: no pytree walk
        key: list[Any] = [kind]
        for v in batch:
            if type(v) is not torch.Tensor:
                break
            key.append((v.shape, v.dtype, v.device))
        else:
            return list(batch), tuple(key)
    leaves, spec = pytree.tree_flatten(batch)
    tensors = [v for v in leaves if isinstance(v, torch.Tensor)]
    shapes = tuple(
        (v.shape, v.dtype, v.device) if isinstance(v, torch.Tensor) else _hashable(v)
        for v in leaves
    )
    return tensors, (str(spec), shapes)


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _state_tensors(
    recipe: Recipe, eager: Callable[..., Any], params: Iterable[torch.Tensor]
) -> list[torch.Tensor]:
    """The optimizer's parameters, then the parameters and buffers of the recipe's
    modules and of those the forward function reaches by closure or global name."""
    seen: dict[int, torch.Tensor] = {id(p): p for p in params}
    for module in _modules(recipe, eager):
        for t in [*module.parameters(), *module.buffers()]:
            seen.setdefault(id(t), t)
    return list(seen.values())


def _modules(recipe: Recipe, eager: Callable[..., Any]) -> list[torch.nn.Module]:
    found = [v for v in recipe.__dict__.values() if isinstance(v, torch.nn.Module)]
    found += [v for v in recipe.current_run.bindings.values() if isinstance(v, torch.nn.Module)]
    try:
        names = inspect.getclosurevars(eager)
    except (TypeError, AttributeError):
        return found
    for value in [*names.nonlocals.values(), *names.globals.values()]:
        if isinstance(value, torch.nn.Module):
            found.append(value)
    return found


def _check_mutations(traced: torch.fx.GraphModule) -> None:
    """A tensor the step changes in place must be one of the graph's inputs."""
    for node in traced.graph.nodes:
        target = node.target
        schema = getattr(target, "_schema", None)
        if node.op != "call_function" or schema is None or not schema.is_mutable:
            continue
        first = node.args[0] if node.args else None
        if isinstance(first, torch.fx.Node) and first.op == "get_attr":
            raise CaptureError(
                f"the step changes a tensor in place ({target}) that belongs to no module "
                "of the recipe or of the forward function's closure: register its module"
            )
