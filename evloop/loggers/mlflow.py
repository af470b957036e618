"""MLflowLogger: metrics and the run's status in an MLflow tracking store.

Needs ``pip install 'evloop[mlflow]'``.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from ..events import RunStarted
from ..figures import figure_png
from ..kinds import Kind
from .tracking import TrackingLogger

__all__ = ["MLflowLogger"]

STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}


class MLflowLogger(TrackingLogger):
    """Logs to an MLflow run in ``experiment`` at ``tracking_uri`` (None: MLflow's own
    default, e.g. ``$MLFLOW_TRACKING_URI``): scalars batched per delivery, ``params``
    at the start, reports and text as artifacts; the run ends ``FINISHED``,
    ``KILLED`` (stopped early) or ``FAILED``."""

    def __init__(
        self,
        experiment: str = "evloop",
        tracking_uri: str | None = None,
        params: dict[str, Any] | None = None,
        run_name: str | None = None,
        log_every: int = 10,
    ) -> None:
        from mlflow.tracking import MlflowClient  # fails here without the extra

        super().__init__(log_every)
        self.client = MlflowClient(tracking_uri)
        self.experiment, self.params, self.run_name = experiment, dict(params or {}), run_name
        self.run_id: str | None = None
        self._pending: list[Any] = []

    @property
    def name(self) -> str:
        return f"MLflowLogger[{self.experiment}]"

    def open(self, event: RunStarted) -> None:
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = (
            found.experiment_id if found else self.client.create_experiment(self.experiment)
        )
        run = self.client.create_run(experiment_id, run_name=self.run_name)
        self.run_id = run.info.run_id
        for key, value in {**event.hparams, **self.params}.items():
            self.client.log_param(self.run_id, key, value)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(name, value, now, step) for name, value in values.items()]

    def media(self, step: int, name: str, kind: Kind, value: Any) -> None:
        if self.run_id is None:
            return
        if kind in (Kind.HTML, Kind.TEXT):
            suffix = "html" if kind is Kind.HTML else "txt"
            self.client.log_text(self.run_id, str(value), f"{name}/{step}.{suffix}")
        elif kind is Kind.FIGURE:
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, f"{step}.png")
                with open(path, "wb") as file:
                    file.write(figure_png(value))
                self.client.log_artifact(self.run_id, path, name)

    def write(self) -> None:
        if self.run_id is not None and self._pending:
            for start in range(0, len(self._pending), 1000):  # MLflow's batch limit
                self.client.log_batch(self.run_id, metrics=self._pending[start : start + 1000])
        self._pending = []

    def close(self, status: str) -> None:
        if self.run_id is not None:
            self.write()
            self.client.set_terminated(self.run_id, STATUS[status])
