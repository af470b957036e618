"""The JSONL event log: compact, media stored once beside it, per-step noise left out."""

import json

import torch

import evloop.callbacks as ecb
from evloop import Recipe
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
