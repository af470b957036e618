"""The loggers of other tools, each against the real library writing real files, and
torchmetrics through TorchMetric."""

import json
import struct
import threading
import time

import pytest
import torch
from helpers import wait_for

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.reports import Report


def _recipe(*loggers, n=30, step_s=0.0):
    def forward(batch):
        time.sleep(step_s)
        return {"loss": torch.tensor(1.0 / (1 + batch))}

    class Media:
        def on_epoch_end(self, state):
            state["metrics"]["grid"] = torch.rand(4, 3, 8, 8)
            state["metrics"]["report"] = Report(lambda: "<b>report</b>")

    test_loop = Recipe(lambda b: {"acc": torch.tensor(0.75)}, range(2))
    test_loop.callbacks.add_callback(ecb.Log("acc", "acc"))
    recipe = Recipe(forward, range(n))
    recipe.hparams["seed"] = 3
    recipe.callbacks.add_callbacks(
        [ecb.Counter(), ecb.Log("loss", "loss"), Media(), ecb.CallRecipe(test_loop, 10), *loggers]
    )
    return recipe


def test_tensorboard_writes_event_files_tensorboard_reads(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    _recipe(ecb.TensorBoardLogger(tmp_path, log_every=5)).run(2)
    events = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses][:3] == [0, 5, 10]
    assert losses[1].value == pytest.approx(1 / 6)
    assert [e.step for e in events.Scalars("test/acc")] == [0, 10, 20, 30, 40, 50, 59]
    assert "train/grid" in events.Tags()["images"]
    assert "train/report/text_summary" in events.Tags()["tensors"]
    assert "hparams/text_summary" in events.Tags()["tensors"]  # the run's hyper-parameters


def test_mlflow_records_metrics_params_and_status(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file://{tmp_path}"
    logger = ecb.MLflowLogger("digits", tracking_uri=uri, params={"lr": 0.1}, log_every=5)
    _recipe(logger).run(1)
    client = MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    # the user's params, the seed, and the run's configured length
    assert run.data.params == {
        "lr": "0.1",
        "seed": "3",
        "epochs": "1",
        "total_epochs": "1",
        "batches_per_epoch": "30",
    }
    history = client.get_metric_history(logger.run_id, "train/loss")
    assert [m.step for m in history] == [0, 5, 10, 15, 20, 25, 29]
    assert history[-1].value == pytest.approx(1 / 30)
    assert [m.value for m in client.get_metric_history(logger.run_id, "test/acc")][0] == 0.75


def test_wandb_offline_writes_a_run_with_its_summary(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = ecb.WandbLogger("digits", mode="offline", dir=str(tmp_path), log_every=5)
    _recipe(logger).run(1)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (record,) = runs[0].glob("run-*.wandb")  # the run's record, for `wandb sync`
    # wandb's own writer process may still be writing it: wait for its exit record
    read = wait_for(
        lambda: (r := _read_wandb_record(record))[2] is not None and r,
        "the exit record of the wandb file",
        timeout=60,
    )
    rows, summary, exit_code, config, kinds = read
    assert config.get("seed") == 3, f"config {config} in records {kinds}"  # hyper-parameters
    losses = {row["iteration"]: row["train/loss"] for row in rows if "train/loss" in row}
    assert sorted(losses)[:3] == [0, 5, 10] and losses[5] == pytest.approx(1 / 6)
    assert sorted(row["iteration"] for row in rows if "test/acc" in row) == [0, 10, 20, 29]
    assert summary["status"] == "finished" and exit_code == 0
    assert list((runs[0] / "files" / "media" / "images").rglob("*.png"))


def _read_wandb_record(path):
    """History rows, summary, exit code, config and record kinds from a .wandb file
    (LevelDB log framing of wandb's protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    data, position, block = path.read_bytes(), 7, 32768  # after the file's header
    records, pending = [], b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(pending)
            pending = b""
    rows, summary, exit_code, config, kinds = [], {}, None, {}, []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        kinds.append(kind)
        if kind == "history":
            rows.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "exit":
            exit_code = record.exit.exit_code
        elif kind in ("run", "config"):  # wandb.init's config: in the run record, or after it
            updates = record.run.config.update if kind == "run" else record.config.update
            for item in updates:
                value = json.loads(item.value_json)
                config[_key(item)] = value.get("value", value) if isinstance(value, dict) else value
    return rows, summary, exit_code, config, kinds


def _key(item):
    return item.key or "/".join(item.nested_key)


def test_torchmetric_equals_its_definition_and_resumes_mid_epoch():
    torchmetrics = pytest.importorskip("torchmetrics")
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(16, 5, generator=g), torch.randint(0, 5, (16,), generator=g)) for _ in range(8)
    ]

    def forward(batch):
        return {"pred": batch[0]}

    def recipe_with(metric):
        recipe = Recipe(forward, batches)
        recipe.callbacks.add_callbacks([ecb.Counter(), metric])
        return recipe

    whole = recipe_with(
        ecb.TorchMetric(torchmetrics.classification.MulticlassAccuracy(5, average="micro"))
    )
    state = whole.run(1)
    expected = torch.cat([x.argmax(1) == y for x, y in batches]).float().mean()
    assert state["metrics"]["multiclass_accuracy"] == pytest.approx(expected.item())

    class StopAt:
        def on_batch_end(self, state):
            if state["iters"] == 3:
                import evloop.context

                evloop.context.current().stop()

    first = recipe_with(
        ecb.TorchMetric(torchmetrics.classification.MulticlassAccuracy(5, average="micro"))
    )
    first.callbacks.add_callback(StopAt())
    first.run(1)
    second = recipe_with(
        ecb.TorchMetric(torchmetrics.classification.MulticlassAccuracy(5, average="micro"))
    )
    second.load_state_dict(first.state_dict())
    resumed = second.run(1)
    assert resumed["metrics"]["multiclass_accuracy"] == pytest.approx(expected.item())


def _mlflow_logger(tmp_path, monkeypatch, write):
    """An MLflowLogger on a file store whose writes go through ``write(original)``."""
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    logger = ecb.MLflowLogger("digits", tracking_uri=f"file://{tmp_path}", log_every=5)
    original = logger.write
    monkeypatch.setattr(logger, "write", lambda: write(original))
    return logger


def _status(logger):
    return logger.client.get_run(logger.run_id).info.status


def test_a_tracking_logger_that_fails_mid_run_ends_its_tracker_run_as_failed(tmp_path, monkeypatch):
    writes = []

    def fail_on_the_third(original):
        writes.append(1)
        if len(writes) == 3:
            raise ConnectionError("tracking server went away")
        original()

    logger = _mlflow_logger(tmp_path, monkeypatch, fail_on_the_third)
    recipe = _recipe(logger, n=200, step_s=0.005)  # many deliveries: the third is mid-run
    recipe.run(1)
    deadline = time.monotonic() + 30
    while _status(logger) == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _status(logger) == "FAILED"  # not left RUNNING for ever
    assert logger.client.get_metric_history(logger.run_id, "train/loss")  # kept


def test_a_tracking_logger_stuck_past_the_run_ends_its_tracker_run_once_free(tmp_path, monkeypatch):
    release = threading.Event()

    def stuck_once(original):
        if not release.is_set():
            release.wait(60)  # a tracker call hanging on its network
        original()

    logger = _mlflow_logger(tmp_path, monkeypatch, stuck_once)
    recipe = _recipe(logger, n=50)
    recipe.drain_lossless_s = 1.0
    recipe.run(1)  # the run's end gives up on the logger after 1 s
    assert _status(logger) == "RUNNING"  # its call is still stuck: nothing may race it
    release.set()
    deadline = time.monotonic() + 30
    while _status(logger) == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _status(logger) == "FAILED"
