"""What a newcomer sees in the first hour: terminal lines that agree with the progress
bar, keep their order and say what they are."""

import io
import re

import torch
from torch import nn

import evloop.callbacks as ecb
import evloop.recipes as erp
from evloop import Recipe


def _batches(n=8):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, generator=g), torch.randint(0, 2, (4,), generator=g))] * n


def _lines(stream):
    return [line for line in stream.getvalue().splitlines() if "Ep." in line]


def test_log_lines_count_epochs_as_the_bar_does():
    printed, bar = io.StringIO(), io.StringIO()
    recipe = Recipe(lambda b: {"loss": torch.tensor(0.5)}, range(4))
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.EpochMetricAvg("loss"),
            ecb.StdoutLogger(log_every=-1, stream=printed),
            ecb.ProgressBar(stream=bar, force=True),
        ]
    )
    recipe.run(3)
    heads = [line.split(" | ")[0] for line in _lines(printed)]
    assert heads == ["Ep. 1/3 It 4", "Ep. 2/3 It 4", "Ep. 3/3 It 4"]
    assert "epoch 3/3" in bar.getvalue()
    recipe.run(total_epochs=4)  # resumed: the count goes on
    assert _lines(printed)[-1].startswith("Ep. 4/4 It 4 |")


def test_one_learning_rate_for_every_group_prints_once_and_metrics_keep_their_places():
    model = nn.Linear(3, 2)
    groups = [{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0}]
    opt = torch.optim.AdamW(groups, lr=1e-3)

    def step(batch):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss, "pred": model(x)}

    printed = io.StringIO()
    recipe = Recipe(step, _batches())
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Optimizer(opt, log_lr=True),
            ecb.AccAvg(),  # deletes its metric at each epoch start and posts it again later
            ecb.EpochMetricAvg("loss"),
            ecb.StdoutLogger(log_every=3, stream=printed),
        ]
    )
    recipe.run(2)
    lines = _lines(printed)
    assert all("lr=0.001 " in line and "lr_0" not in line for line in lines)
    orders = {tuple(re.findall(r"(\w+)=", line.split(" | ", 1)[1])) for line in lines}
    assert orders == {("lr", "acc", "loss")}  # the same places on every line

    opt.param_groups[1]["lr"] = 1e-2  # different rates are each shown
    recipe.run(1)
    assert "lr_0=0.001 lr_1=0.01" in _lines(printed)[-1]


def test_a_concurrent_evaluations_line_says_it_ran_beside_training():
    model = nn.Linear(3, 2)

    def test_step(batch, model):
        return {"loss": nn.functional.cross_entropy(model(batch[0]), batch[1])}

    printed = io.StringIO()
    recipe = erp.TrainAndTest(
        model, lambda b: {}, test_step, _batches(), _batches(2), checkpoint=None
    )
    recipe.test_loop.callbacks.add_callback(ecb.StdoutLogger(-1, "Eval", stream=printed))
    inline = erp.TrainAndTest(
        model,
        lambda b: {},
        test_step,
        _batches(),
        _batches(2),
        checkpoint=None,
        test_mode="inline",
    )
    inline_printed = io.StringIO()
    inline.test_loop.callbacks.add_callback(ecb.StdoutLogger(-1, "Eval", stream=inline_printed))
    recipe.run(1)
    inline.run(1)
    assert _lines(printed) and all(
        "(evaluated beside training) |" in line for line in _lines(printed)
    )
    assert _lines(inline_printed) and not any("beside" in line for line in _lines(inline_printed))


def test_evloop_help_names_every_command_in_plain_text(capsys):
    import pytest

    from evloop.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    shown = capsys.readouterr().out
    assert "``" not in shown
    for command in ("evloop demo", "evloop serve runs/", "evloop attach", "evloop ctl"):
        assert command in shown


def test_a_run_with_nothing_left_to_train_warns_of_no_typo(recwarn):
    recipe = Recipe(lambda b: {"loss": torch.tensor(1.0)}, range(3))
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Log("loss", "loss")])
    recipe.run(total_epochs=2)
    recipe.run(total_epochs=2)  # already there: no step, nothing read, nothing to say
    recipe.callbacks.add_callback(ecb.Log("loss_typo", "x"))
    recipe.run(total_epochs=2)
    assert not [w for w in recwarn if "typo" in str(w.message)]
    recipe.run(1)  # a step ran: the misspelt key is named
    assert [w for w in recwarn if "'loss_typo' never appeared" in str(w.message)]


def test_checkpoints_and_summaries_get_the_mode_of_any_new_file(tmp_path):
    import os
    import stat

    recipe = Recipe(lambda b: {"loss": torch.tensor(1.0)}, range(2))
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.JsonlWriter(tmp_path / "run" / "events.jsonl"),
            ecb.Checkpoint(str(tmp_path / "run" / "ck_{epoch}.pth"), recipe),
        ]
    )
    previous = os.umask(0o022)
    try:
        recipe.run(1)
    finally:
        os.umask(previous)
    for name in ("ck_0.pth", "summary.json", "events.jsonl"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o644, name


def test_the_protocol_reference_names_every_message_field_and_event():
    import pathlib

    import msgspec

    from evloop import events
    from evloop.remote import protocol

    docs = pathlib.Path(__file__).parent.parent / "docs"
    reference = (docs / "protocol.md").read_text()
    for message in (*protocol.SERVER_MESSAGE.__args__, *protocol.CLIENT_MESSAGE.__args__):
        tag = message.__struct_config__.tag
        assert f"`{tag}`" in reference, tag
        for field in msgspec.structs.fields(message):
            if field.name not in ("time", "source"):
                assert f"`{field.name}`" in reference, (tag, field.name)
    listed = (docs / "reference.md").read_text().split("## Events", 1)[1].split("##", 1)[0]
    for event in events.ANY_EVENT.__args__:
        assert f"`{event.__name__}`" in listed, event.__name__
