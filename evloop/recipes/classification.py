"""Classification and CrossEntropyClassification: TrainAndTest with reports, and a
ready-made training pass, optimizer and schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .. import callbacks as ecb
from ..callbacks.accuracy import BatchKey
from ..host import DeferredReads
from ..optim import RAdamW
from ..recipe import Recipe
from .train_and_test import TrainAndTest

__all__ = ["Classification", "CrossEntropyClassification", "test_accuracy", "warmup_cosine"]

MAX_CM_CLASSES = 50


def test_accuracy(saved: dict[str, Any]) -> float:
    """``key_best`` for checkpoints: the test accuracy in a saved state."""
    return float(saved["test_loop"]["callbacks"]["state"]["metrics"]["acc"])


def Classification(  # noqa: N802 - a recipe factory named like Torchélie's
    model: nn.Module,
    train_fun: Callable[..., dict[str, Any] | None],
    test_fun: Callable[..., dict[str, Any] | None],
    train_loader: Iterable[Any],
    test_loader: Iterable[Any],
    classes: Sequence[str],
    *,
    visdom_env: str | None = None,
    checkpoint: str | None = None,
    test_every: int | str = 1000,
    log_every: int = 100,
    test_mode: str | None = None,
    key_best: Callable[[Any], float] | None = test_accuracy,
    input: BatchKey = 0,
    target: BatchKey = 1,
) -> Recipe:
    """:func:`TrainAndTest` for classifiers: both functions return ``{'loss', 'pred'}``
    (``pred``: logits), batches are ``(images, labels)`` — or anything indexable, with
    ``input`` and ``target`` the keys of the inputs and labels (``target='labels'`` for
    dict batches).

    Adds accuracy (train: window of 100 batches; test: over the test set), the loss
    (train: per batch; test: mean), a confusion matrix for up to 50 classes (else top-5
    accuracy) on the test set, and the classification inspector and metrics table on
    the test set. With ``visdom_env`` both loops log to visdom, and the training loop
    also shows its confusion matrix, inspector, input-gradient visualisation and
    metrics table. No optimizer is added: add ``Optimizer(opt)``. The best checkpoint
    is by test accuracy.
    """
    recipe = TrainAndTest(
        model,
        train_fun,
        test_fun,
        train_loader,
        test_loader,
        test_every=test_every,
        visdom_env=visdom_env,
        log_every=log_every,
        checkpoint=checkpoint,
        key_best=key_best,
        test_mode=test_mode,
    )
    recipe.register("classes", list(classes))
    test_loop: Recipe = recipe.test_loop  # type: ignore[attr-defined]
    few_classes = len(classes) <= MAX_CM_CLASSES

    recipe.callbacks.add_callbacks([ecb.AccAvg(target=target), ecb.Log("loss", "loss")])
    test_loop.callbacks.add_callbacks(
        [
            ecb.AccAvg(post_each_batch=False, avg_type="running", target=target),
            ecb.EpochMetricAvg("loss", post_each_batch=False),
        ]
    )
    if few_classes:
        test_loop.callbacks.add_callback(ecb.ConfusionMatrix(classes, target=target))
    else:
        recipe.callbacks.add_callback(ecb.TopkAccAvg(k=5, target=target))
        test_loop.callbacks.add_callback(
            ecb.TopkAccAvg(k=5, post_each_batch=False, avg_type="running", target=target)
        )
    test_loop.callbacks.add_callbacks(
        [
            ecb.ClassificationInspector(
                30, classes, post_each_batch=False, input=input, target=target
            ),
            ecb.MetricsTable(post_each_batch=False),
        ]
    )
    if visdom_env is not None:
        if few_classes:
            recipe.callbacks.add_callback(ecb.ConfusionMatrix(classes, target=target))
        recipe.callbacks.add_callbacks(
            [
                ecb.ClassificationInspector(30, classes, input=input, target=target),
                ecb.ImageGradientVis(input),
                ecb.MetricsTable(),
            ]
        )
    return recipe


def warmup_cosine(n_iters: int, warmup_ratio: float = 0.05) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup_ratio`` of the steps, then cosine to 0."""
    warmup = max(1, int(n_iters * warmup_ratio))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, n_iters - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def _param_groups(model: nn.Module, wd: float) -> list[dict[str, Any]]:
    """No weight decay on biases and normalisation weights (tensors of one dimension)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.dim() <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def _make_optimizer(
    name: str, model: nn.Module, lr: float, beta1: float, beta2: float, wd: float
) -> torch.optim.Optimizer:
    groups = _param_groups(model, wd)
    if name == "radamw":
        return RAdamW(groups, lr=lr, betas=(beta1, beta2))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=beta1)
    raise ValueError(f"optimizer must be 'radamw', 'adamw' or 'sgd', got {name!r}")


class Autocast:
    """Mixed precision on CUDA: bf16 where supported, else fp16 with a GradScaler
    (created on the first fp16 step and handed to the Optimizer callback)."""

    def __init__(self, amp: bool | None, optimizer: ecb.Optimizer) -> None:
        self.amp = amp
        self.optimizer = optimizer

    def dtype(self, x: torch.Tensor) -> torch.dtype | None:
        if self.amp is False or not x.is_cuda:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def context(self, x: torch.Tensor) -> Any:
        dtype = self.dtype(x)
        if dtype is None:
            return torch.autocast("cpu", enabled=False)
        if dtype is torch.float16 and self.optimizer.scaler is None:
            self.optimizer.scaler = torch.amp.GradScaler("cuda")
        return torch.autocast("cuda", dtype=dtype)


class StepOnEval:
    """Steps ``ReduceLROnPlateau`` with the test loss each time an evaluation lands."""

    def __init__(self, sched: Any, prefix: str = "test", metric: str = "loss") -> None:
        self.sched, self.key, self.metric = sched, f"{prefix}_metrics", metric
        self._seen: Any = None
        self._reads = DeferredReads()  # an inline evaluation's loss is on the device

    def on_batch_end(self, state: dict[str, Any]) -> None:
        self._reads.poll()
        result = state.get(self.key)
        if result is not None and result is not self._seen and self.metric in result:
            self._seen = result
            self._reads.read(result[self.metric], self.sched.step)

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.sched.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sched.load_state_dict(state["scheduler"])


def CrossEntropyClassification(  # noqa: N802 - a recipe factory named like Torchélie's
    model: nn.Module,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any],
    classes: Sequence[str],
    *,
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    wd: float = 1e-2,
    optimizer: str = "radamw",
    n_iters: int | None = None,
    label_smoothing: float = 0.0,
    amp: bool | None = None,
    visdom_env: str | None = None,
    test_every: int | str = 1000,
    log_every: int = 100,
    checkpoint: str | None = "model",
    test_mode: str | None = None,
    input: BatchKey = 0,
    target: BatchKey = 1,
) -> Recipe:
    """A complete classifier training: give it a model, data and hyper-parameters.

    Cross entropy (``label_smoothing``), ``RAdamW`` (or ``'adamw'``/``'sgd'``) without
    weight decay on biases and norms, warm-up + cosine schedule per step when
    ``n_iters`` is given, else ``ReduceLROnPlateau`` on the test loss; mixed precision
    on CUDA unless ``amp=False`` (bf16 where supported, else fp16 with a GradScaler);
    the evaluation runs on a snapshot of the weights, concurrently; checkpoints in
    ``checkpoint/`` with the best by test accuracy. See :func:`Classification`.
    """
    opt = _make_optimizer(optimizer, model, lr, beta1, beta2, wd)
    optimizer_cb = ecb.Optimizer(opt, log_lr=True)
    autocast = Autocast(amp, optimizer_cb)

    def train_step(batch: Any) -> dict[str, Any]:
        x, y = batch[input], batch[target]
        with autocast.context(x):
            pred = model(x).float()
        loss = nn.functional.cross_entropy(pred, y, label_smoothing=label_smoothing)
        scaler = optimizer_cb.scaler
        (scaler.scale(loss) if scaler is not None else loss).backward()
        return {"loss": loss, "pred": pred}

    def test_step(batch: Any, model: nn.Module) -> dict[str, Any]:
        x, y = batch[input], batch[target]
        with autocast.context(x):
            pred = model(x).float()
        return {"loss": nn.functional.cross_entropy(pred, y), "pred": pred}

    recipe = Classification(
        model,
        train_step,
        test_step,
        train_loader,
        test_loader,
        classes,
        visdom_env=visdom_env,
        checkpoint=checkpoint,
        test_every=test_every,
        log_every=log_every,
        test_mode=test_mode,
        input=input,
        target=target,
    )
    recipe.register("opt", opt, saved=False)  # saved inside the Optimizer callback
    recipe.callbacks.add_callbacks([optimizer_cb, ecb.Throughput()])
    if n_iters is not None:
        sched: Any = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(n_iters))
        recipe.callbacks.add_callback(ecb.LRSched(sched, metric=None, step_each_batch=True))
    else:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
        recipe.callbacks.add_callback(StepOnEval(sched))
    recipe.register("sched", sched, saved=False)  # saved inside its callback
    return recipe
