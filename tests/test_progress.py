"""ProgressBar: what a terminal shows, and silence when there is no terminal."""

import io
import time

import torch

import evloop.callbacks as ecb
from evloop import Recipe


def _recipe(bar, step_s=0.0):
    def forward(batch):
        time.sleep(step_s)
        return {"loss": torch.tensor(0.5), "other": torch.tensor(1.0)}

    recipe = Recipe(forward, range(30))
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Log("loss", "loss"), bar])
    return recipe


def test_one_bar_shows_the_run_its_epochs_and_chosen_metrics_then_goes():
    stream = io.StringIO()
    recipe = _recipe(ecb.ProgressBar(stream=stream, force=True), step_s=0.01)
    recipe.callbacks.add_callback(ecb.Log("other", "other"))
    recipe.run(2)
    shown = stream.getvalue()
    assert "epoch 1/2" in shown and "epoch 2/2" in shown
    assert "/60 [" in shown and "/30 [" not in shown  # the run's ETA, not an epoch's
    assert "loss=0.5" in shown and "other=" not in shown  # the chosen metrics only
    assert "it/s" in shown
    last = shown.rsplit("\r", 2)[-2]
    assert last.strip() == ""  # removed at the end: no bar left per epoch


def test_no_terminal_no_bar():
    stream = io.StringIO()  # not a tty
    _recipe(ecb.ProgressBar(stream=stream)).run(1)
    assert stream.getvalue() == ""


def test_in_a_notebook_without_ipywidgets_a_text_bar_and_one_line_saying_what_to_install(
    monkeypatch, caplog
):
    import warnings

    from evloop.loggers import progress

    monkeypatch.setattr(progress, "_in_notebook", lambda: True)
    monkeypatch.setattr(progress, "_has_widgets", lambda: False)
    monkeypatch.setattr(progress, "_said_widgets", False)
    stream = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tqdm's "IProgress not found" would fail here
        _recipe(ecb.ProgressBar(stream=stream)).run(1)
        _recipe(ecb.ProgressBar(stream=stream)).run(1)
    assert "epoch 1/1:" in stream.getvalue()  # the text bar was drawn
    said = [r.message for r in caplog.records if "ipywidgets" in r.message]
    assert said == [
        "ProgressBar: a text bar here; install ipywidgets for the notebook's own bar "
        "(pip install 'evloop[notebook]')"
    ]
