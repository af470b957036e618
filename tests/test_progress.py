"""ProgressBar: what a terminal shows, and silence when there is no terminal."""

import io

import torch

import evloop.callbacks as ecb
from evloop import Recipe


def _recipe(bar):
    recipe = Recipe(lambda b: {"loss": torch.tensor(0.5)}, range(30))
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Log("loss", "loss"), bar])
    return recipe


def test_the_bar_shows_epochs_iterations_and_metrics():
    stream = io.StringIO()
    _recipe(ecb.ProgressBar(stream=stream, force=True)).run(2)
    shown = stream.getvalue()
    assert "epoch 0" in shown and "epoch 1" in shown
    assert "30/30" in shown and "loss=0.5000" in shown
    assert "it/s" in shown


def test_no_terminal_no_bar():
    stream = io.StringIO()  # not a tty
    _recipe(ecb.ProgressBar(stream=stream)).run(1)
    assert stream.getvalue() == ""
