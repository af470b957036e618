"""The JSONL event log: compact, media stored once beside it, per-step noise left out."""

import json

import torch

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.checkpoint_io import load
from evloop.events import RunStarted
from evloop.reports import Report


def test_media_are_files_named_by_content_and_per_step_noise_is_left_out(tmp_path):
    class Media:
        def on_batch_end(self, state):
            state["metrics"]["report"] = Report(lambda: "<table><tr><td>same</td></tr></table>")
            grid = torch.zeros(4, 1, 8, 8)
            grid[..., state["iters"] // 10] = 1.0  # a picture per ten steps
            state["metrics"]["grid"] = grid

    recipe = Recipe(lambda b: {"loss": torch.tensor(float(b))}, range(40))
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Log("loss", "loss"),
            Media(),
            ecb.StdoutLogger(log_every=1, stream=open(tmp_path / "out.txt", "w")),  # noqa: SIM115
            ecb.JsonlWriter(tmp_path / "events.jsonl"),
        ]
    )
    recipe.run(1)
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    types = {line["type"] for line in lines}
    assert "batch_started" not in types and "subscriber_dropped" not in types
    batches = [line for line in lines if line["type"] == "batch_ended"]
    assert [b["iters"] for b in batches] == list(range(40))
    assert batches[0]["kinds"] == {"loss": "scalar", "report": "html", "grid": "images"}
    reports = {b["metrics"]["report"]["$media"] for b in batches}
    assert len(reports) == 1  # the same report, stored once
    grids = {b["metrics"]["grid"]["$media"] for b in batches}
    assert len(grids) == 4  # one picture per distinct content (iters // 10)
    media = sorted(p.name for p in (tmp_path / "media").iterdir())
    assert len(media) == 5 and all(not name.endswith(".partial") for name in media)
    (report,) = reports
    assert "same" in (tmp_path / report).read_text()
    png = (tmp_path / sorted(grids)[0]).read_bytes()
    assert png.startswith(b"\x89PNG")
    assert (tmp_path / "events.jsonl").stat().st_size < 40 * 600


def test_batch_starts_and_drops_when_asked(tmp_path):
    recipe = Recipe(lambda b: None, range(5))
    recipe.callbacks.add_callback(
        ecb.JsonlWriter(tmp_path / "events.jsonl", batch_starts=True, drops=True)
    )
    recipe.run(1)
    types = [json.loads(x)["type"] for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert types.count("batch_started") == 5


def _summary_run(run_dir, fail_at=None, stop_at=None):
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def forward(batch):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    class Trouble:
        def on_batch_end(self, state):
            if state["iters"] == fail_at:
                raise RuntimeError("planted failure")
            if state["iters"] == stop_at:
                recipe.stop()

    def evaluate(batch):
        x, y = batch
        return {"accuracy": (model(x).argmax(1) == y).float().mean()}

    test = Recipe(evaluate, DataLoader(data, batch_size=16))
    test.callbacks.add_callbacks([ecb.EpochMetricAvg("accuracy")])
    recipe = Recipe(forward, DataLoader(data, batch_size=8))
    recipe.register("model", model)
    recipe.hparams.update(seed=0, augment="none")
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Optimizer(opt),
            ecb.EpochMetricAvg("loss"),
            ecb.CallRecipe(test, run_every="epoch", prefix="test", mode="inline"),
            Trouble(),
            ecb.JsonlWriter(run_dir / "events.jsonl"),
        ]
    )
    recipe.run(2)


def test_recorded_hyper_parameters_are_the_configured_ones_before_any_warm_up():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: (step + 1) / 100)
    assert opt.param_groups[0]["lr"] < 1e-4  # the scheduler's first step already ran
    recipe = Recipe(lambda b: model(torch.ones(1, 2)).sum().backward(), range(5))
    recipe.register("model", model)
    recipe.register("opt", opt)
    recipe.callbacks.add_callbacks(
        [ecb.Counter(), ecb.Optimizer(opt), ecb.LRSched(warmup, metric=None, step_each_batch=True)]
    )
    started = []
    recipe.bus.subscribe(started.append, types=[RunStarted], policy="block")
    recipe.run(total_epochs=3)
    hparams = started[0].hparams
    assert hparams["opt.lr"] == 3e-3
    assert (hparams["epochs"], hparams["total_epochs"], hparams["batches_per_epoch"]) == (3, 3, 5)


def test_the_run_folder_holds_a_summary_with_hyper_parameters(tmp_path):
    _summary_run(tmp_path / "finished")
    summary = json.loads((tmp_path / "finished" / "summary.json").read_text())
    assert summary["name"] == "finished" and summary["status"] == "finished"
    assert summary["end"] > summary["start"] and summary["duration"] > 0
    assert summary["hparams"] == {
        "model.class": "Linear",
        "model.parameters": 10,
        "optimizer.class": "SGD",
        "optimizer.lr": 0.05,
        "optimizer.weight_decay": 0,
        "optimizer.momentum": 0.9,
        "epochs": 2,
        "total_epochs": 2,
        "batch_size": 8,
        "batches_per_epoch": 4,
        "seed": 0,
        "augment": "none",
    }
    assert summary["epoch"] == 1 and summary["iters"] == 7
    assert 0 < summary["metrics"]["loss"] < 2
    assert 0 <= summary["evaluation"]["test/accuracy"] <= 1
    log = [json.loads(line) for line in (tmp_path / "finished" / "events.jsonl").open()]
    assert log[0]["type"] == "run_started" and log[0]["hparams"] == summary["hparams"]


def test_a_failed_or_stopped_run_says_so_in_its_summary(tmp_path):
    try:
        _summary_run(tmp_path / "failed", fail_at=5)
    except RuntimeError:
        pass
    failed = json.loads((tmp_path / "failed" / "summary.json").read_text())
    assert failed["status"] == "failed" and "planted failure" in failed["error"]
    _summary_run(tmp_path / "stopped", stop_at=5)
    stopped = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert stopped["status"] == "stopped" and stopped["iters"] == 5


def test_a_resumed_steered_run_records_the_configured_rate_not_the_steered_one(tmp_path):
    from evloop.control import Command

    def build():
        model = torch.nn.Linear(2, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        recipe = Recipe(lambda b: model(torch.ones(1, 2)).sum().backward(), range(4))
        recipe.register("model", model)
        recipe.callbacks.add_callbacks(
            [ecb.Counter(), ecb.Optimizer(opt), ecb.Checkpoint(str(tmp_path / "c.pth"), recipe)]
        )
        started = []
        recipe.bus.subscribe(started.append, types=[RunStarted], policy="block")
        return recipe, opt, started

    first, opt, started = build()

    class Steer:
        def on_batch_end(self, state):
            if state["iters"] == 1:
                first.controls.submit(Command(op="set", values={"lr": 0.05}))

    first.callbacks.add_callback(Steer())
    first.run(1)
    assert opt.param_groups[0]["lr"] == 0.05 and started[0].hparams["optimizer.lr"] == 0.5
    resumed, opt, started = build()
    resumed.load_state_dict(load(str(tmp_path / "c.pth")))
    resumed.run(1)
    assert opt.param_groups[0]["lr"] == 0.05  # the steered value goes on
    assert started[0].hparams["optimizer.lr"] == 0.5  # what was configured is recorded
