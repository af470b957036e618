"""SyncCheck names what made the training thread wait for the device."""

import io
import warnings

import pytest
import torch

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.callbacks.sync_check import SYNC_WARNING
from evloop.events import SyncDetected


class SyncsEachStep:
    """Stands for a callback calling .item() on a CUDA tensor: torch's sync debug mode
    warns at the op, from inside the callback."""

    def on_batch_end(self, state):
        warnings.warn(f"{SYNC_WARNING}", UserWarning, stacklevel=1)


def test_a_planted_sync_is_reported_with_its_callback_and_printed():
    recipe = Recipe(lambda b: None, range(10))
    check = ecb.SyncCheck(after=3)
    printed = io.StringIO()
    seen = []
    recipe.bus.subscribe(seen.append, types=[SyncDetected])
    recipe.callbacks.add_callbacks(
        [ecb.Counter(), check, SyncsEachStep(), ecb.StdoutLogger(log_every=-1, stream=printed)]
    )
    recipe.run(1)
    assert [e.culprit for e in seen] == ["SyncsEachStep.on_batch_end"]  # once per site
    assert seen[0].iters == 3 and "on_batch_end" in seen[0].stack  # after the first steps
    assert "sync at iteration 3 in SyncsEachStep.on_batch_end" in printed.getvalue()
    assert warnings.showwarning is not check._seen  # put back at the run's end


def test_a_sync_in_the_forward_function_names_it():
    def forward_pass(batch):
        if batch >= 5:
            warnings.warn(SYNC_WARNING, UserWarning, stacklevel=1)

    recipe = Recipe(forward_pass, range(8))
    check = ecb.SyncCheck(after=2)
    recipe.callbacks.add_callbacks([ecb.Counter(), check])
    recipe.run(1)
    assert [e.culprit for e in check.detected] == ["the forward function forward_pass"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_real_sync_on_cuda_is_named():
    class Item:
        def on_batch_end(self, state):
            state["value"] = state["loss"].item()  # a host sync

    recipe = Recipe(lambda b: {"loss": torch.ones(1, device="cuda") * b}, range(10))
    check = ecb.SyncCheck(after=2)
    recipe.callbacks.add_callbacks([ecb.Counter(), check, Item()])
    recipe.to("cuda").run(1)
    assert any(e.culprit == "Item.on_batch_end" for e in check.detected)
