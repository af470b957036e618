"""Report callbacks: confusion matrix, classification inspector, gradient
visualisation, metrics table. They compute on the device; HTML is rendered by the
loggers that show it (:class:`~evloop.reports.Report`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import context
from ..codec import scalar
from ..events import BatchEnded
from ..reports import Report, escape, png_data_uri, unit_range
from .accuracy import BatchKey, as_multiclass_shape, batch_field, labels_of

__all__ = [
    "ConfusionMatrix",
    "ClassificationInspector",
    "ImageGradientVis",
    "MetricsTable",
    "will_log",
]


def will_log(state: dict[str, Any]) -> bool:
    """Whether a subscriber will receive this step's metrics (Torchélie's
    ``visdom_will_log``): expensive reports skip the other steps."""
    run = context.current_or_none()
    if run is None:
        return True
    return run.wants(BatchEnded, state.get("iters", run.progress.iters))


# -- confusion matrix ----------------------------------------------------------------
def _confusion_html(cm: torch.Tensor, labels: Sequence[str], normalize: bool = False) -> str:
    counts = cm.cpu().tolist()
    rows = []
    header = "".join(f"<th>{escape(label)}</th>" for label in labels)
    for pred, row in enumerate(counts):
        total = sum(row) or 1
        shown = [f"{n / total:.2f}" if normalize else str(n) for n in row]
        cells = "".join(
            f'<td style="background:rgba(66,133,244,{n / total:.3f})">{text}</td>'
            for n, text in zip(row, shown, strict=True)
        )
        rows.append(f"<tr><th>{escape(labels[pred])}</th>{cells}</tr>")
    return (
        '<table class="evloop-cm" style="border-collapse:collapse;text-align:center">'
        f"<tr><th>predicted ↓ / true →</th>{header}</tr>{''.join(rows)}</table>"
    )


class ConfusionMatrix:
    """Counts ``cm[pred][true]`` on the device for the epoch (an ``index_add_`` into a
    preallocated matrix per batch: no host sync, unlike ``bincount`` on CUDA).

    At epoch end: ``state['cm']`` (the counts, a device tensor), ``metrics['cm']`` (an
    HTML report shaded by row fraction, showing counts, or row fractions with
    ``normalize``) and, for 2 classes, ``metrics['f1']`` (class 1 positive).
    """

    def __init__(
        self, labels: Sequence[str], normalize: bool = False, target: BatchKey = 1
    ) -> None:
        self.labels = [str(label) for label in labels]
        if len(self.labels) < 2:
            raise ValueError(
                f"ConfusionMatrix needs the names of at least 2 classes, got {labels!r}"
            )
        self.normalize = normalize
        self.target = target
        self.cm: torch.Tensor | None = None

    def on_epoch_start(self, state: dict[str, Any]) -> None:
        self.cm = None

    def on_batch_end(self, state: dict[str, Any]) -> None:
        if state.get("pred") is None:
            return
        n = len(self.labels)
        scores = as_multiclass_shape(state["pred"].detach())
        pred = scores.argmax(1)
        true = labels_of(state, self.target).to(pred.device)
        if self.cm is None:  # a new matrix each epoch: events may hold the last one
            _check_classes(self.labels, scores.shape[1], state["pred"].shape)
            self.cm = torch.zeros(n, n, dtype=torch.long, device=pred.device)
        cells = pred * n + true
        self.cm.view(-1).index_add_(0, cells, torch.ones_like(cells))

    def on_epoch_end(self, state: dict[str, Any]) -> None:
        if self.cm is None:
            return
        state["cm"] = self.cm
        state["metrics"]["cm"] = Report(_confusion_html, self.cm, self.labels, self.normalize)
        if len(self.labels) == 2:
            tp, fp, fn = self.cm[1, 1], self.cm[1, 0], self.cm[0, 1]
            state["metrics"]["f1"] = 2 * tp / (2 * tp + fp + fn).clamp(min=1)


def _check_classes(labels: list[str], classes: int, shape: torch.Size) -> None:
    """The predictions' classes are the labels' (shapes only: no sync)."""
    if classes != len(labels):
        shown = labels if len(labels) <= 6 else [*labels[:5], "…"]
        raise ValueError(
            f"ConfusionMatrix has {len(labels)} class names {shown}, but the predictions "
            f"(state['pred'] of shape {tuple(shape)}) have {classes} classes"
        )


# -- inspector -----------------------------------------------------------------------
class _TopSamples:
    """The ``k`` samples with the largest (or smallest) score seen so far, on device."""

    def __init__(self, k: int, largest: bool) -> None:
        self.k, self.largest = k, largest
        self.score: torch.Tensor | None = None
        self.fields: dict[str, torch.Tensor] = {}

    def update(self, score: torch.Tensor, fields: dict[str, torch.Tensor]) -> None:
        if self.score is not None:
            score = torch.cat([self.score, score])
            fields = {k: torch.cat([self.fields[k], v]) for k, v in fields.items()}
        keep = score.topk(min(self.k, len(score)), largest=self.largest).indices
        self.score = score[keep]
        self.fields = {k: v[keep] for k, v in fields.items()}


def _inspector_html(
    groups: list[tuple[str, dict[str, torch.Tensor]]], classes: Sequence[str]
) -> str:
    sections = []
    for title, fields in groups:
        if not fields:
            continue
        cards = []
        for image, label, pred, prob in zip(
            fields["image"].cpu(),
            fields["label"].tolist(),
            fields["pred"].tolist(),
            fields["prob"].tolist(),
            strict=True,
        ):
            ok = label == pred
            cards.append(
                '<div style="display:inline-block;margin:4px;width:96px;font:11px sans-serif">'
                f'<img src="{png_data_uri(unit_range(image))}" width="96" height="96" '
                'style="image-rendering:pixelated">'
                f"<div>{'✓' if ok else '✗'} true: {escape(classes[label])}</div>"
                f"<div>pred: {escape(classes[pred])}</div>"
                f'<div style="background:#ddd"><div style="width:{prob * 100:.0f}%;'
                f'background:{"#4caf50" if ok else "#f44336"};height:6px"></div></div>'
                f"<div>p(true) = {prob:.3f}</div></div>"
            )
        sections.append(f"<h4>{escape(title)}</h4>{''.join(cards)}")
    return '<div class="evloop-inspector">' + "".join(sections) + "</div>"


class ClassificationInspector:
    """The ``nb_show`` best, worst and most confused samples of the epoch, by the
    probability the model gives their true class ("confused": closest to
    ``1 / len(classes)``), with thumbnails, true and predicted class and that
    probability, as ``metrics['report']``. Posted at batch ends that a logger will
    receive when ``post_each_batch``, and at each epoch end.
    """

    def __init__(
        self,
        nb_show: int,
        classes: Sequence[str],
        post_each_batch: bool = True,
        input: BatchKey = 0,
        target: BatchKey = 1,
    ) -> None:
        self.nb_show = nb_show
        self.input, self.target = input, target
        self.classes = [str(c) for c in classes]
        self.post_each_batch = post_each_batch
        self._reset()

    def _reset(self) -> None:
        self.best = _TopSamples(self.nb_show, largest=True)
        self.worst = _TopSamples(self.nb_show, largest=False)
        self.confused = _TopSamples(self.nb_show, largest=False)

    def on_epoch_start(self, state: dict[str, Any]) -> None:
        self._reset()

    def on_batch_end(self, state: dict[str, Any]) -> None:
        if state.get("pred") is None:
            return
        logits = as_multiclass_shape(state["pred"].detach()).float()
        labels = labels_of(state, self.target).to(logits.device)
        probs = logits.softmax(1)
        p_true = probs.gather(1, labels[:, None])[:, 0]
        fields = {
            "image": batch_field(state, self.input, "inputs").detach(),
            "label": labels,
            "pred": probs.argmax(1),
            "prob": p_true,
        }
        self.best.update(p_true, fields)
        self.worst.update(p_true, fields)
        self.confused.update((p_true - 1 / len(self.classes)).abs(), fields)
        if self.post_each_batch and will_log(state):
            state["metrics"]["report"] = self._report()

    def on_epoch_end(self, state: dict[str, Any]) -> None:
        if self.best.score is not None:
            state["metrics"]["report"] = self._report()

    def _report(self) -> Report:
        groups = [
            ("Best", self.best.fields),
            ("Worst", self.worst.fields),
            ("Most confused", self.confused.fields),
        ]
        return Report(_inspector_html, groups, self.classes)


# -- input gradients -----------------------------------------------------------------
class ImageGradientVis:
    """On steps a logger will receive, makes the input require grad before the forward
    pass and posts ``metrics['feature_vis']``: the input (min-max normalised) blended
    towards gray where the input gradient (clipped at its 99th percentile) is small.
    The input is ``batch[input]``.
    """

    def __init__(self, input: BatchKey = 0) -> None:
        self.input = input
        self._active = False

    def on_batch_start(self, state: dict[str, Any]) -> None:
        self._active = will_log(state)
        if self._active:
            batch_field(state, self.input, "inputs").requires_grad_(True)

    def on_batch_end(self, state: dict[str, Any]) -> None:
        if not self._active:
            return
        images = batch_field(state, self.input, "inputs")
        if images.grad is None:
            return
        grad = images.grad.detach().abs().sum(1, keepdim=True).flatten(1)
        top = torch.quantile(grad.float(), 0.99, dim=1, keepdim=True).clamp(min=1e-12)
        weight = (grad / top).clamp(max=1).view(-1, 1, *images.shape[2:])
        flat = images.detach().flatten(1)
        low, high = flat.min(1).values, flat.max(1).values
        shape = (-1,) + (1,) * (images.dim() - 1)
        normed = (images.detach() - low.view(shape)) / (high - low).clamp(min=1e-8).view(shape)
        state["metrics"]["feature_vis"] = 0.5 + (normed - 0.5) * weight


# -- metrics table -------------------------------------------------------------------
def _table_html(values: dict[str, Any]) -> str:
    rows = []
    for name, value in values.items():
        number = scalar(value)
        shown = "–" if number is None else round(float(number), 6)
        rows.append(f"<tr><td>{escape(name)}</td><td>{shown}</td></tr>")
    return (
        '<table class="evloop-metrics" style="border-collapse:collapse">'
        + "".join(rows)
        + "</table>"
    )


class MetricsTable:
    """``metrics['table']``: an HTML table of every scalar metric, at batch ends that a
    logger will receive (when ``post_each_batch``) and at each epoch end (when
    ``epoch_ends``)."""

    def __init__(self, post_each_batch: bool = True, epoch_ends: bool = True) -> None:
        self.post_each_batch = post_each_batch
        self.epoch_ends = epoch_ends

    def _post(self, state: dict[str, Any]) -> None:
        metrics = state["metrics"]
        values = {
            k: v
            for k, v in metrics.items()
            if isinstance(v, int | float) or (isinstance(v, torch.Tensor) and v.numel() == 1)
        }
        metrics["table"] = Report(_table_html, values)

    def on_batch_end(self, state: dict[str, Any]) -> None:
        if self.post_each_batch and will_log(state):
            self._post(state)

    def on_epoch_end(self, state: dict[str, Any]) -> None:
        if self.epoch_ends:
            self._post(state)
