"""CrossEntropyClassification's choices, and the demo end to end."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import evloop.recipes as erp
from evloop.checkpoint_io import load
from evloop.recipes.classification import StepOnEval, warmup_cosine


def _data(n=6, batch=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 4, generator=g), torch.randint(0, classes, (batch,), generator=g))
        for _ in range(n)
    ]


def _callback(recipe, kind):
    return next(cb for cb in recipe.callbacks.callbacks() if isinstance(cb, kind))


def test_cross_entropy_classification_trains_with_real_cross_entropy(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    recipe = erp.CrossEntropyClassification(
        model,
        _data(),
        _data(2, seed=1),
        ["a", "b", "c"],
        lr=0.0,
        label_smoothing=0.1,
        test_every=3,
        checkpoint=str(tmp_path / "ck"),
        log_every=1000,
    )
    losses = []

    class Check:
        def on_batch_end(self, state):
            x, y = state["batch"]
            expected = nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
            losses.append((float(state["loss"].detach()), float(expected.detach())))

    recipe.callbacks.add_callback(Check())
    state = recipe.run(1)
    for got, expected in losses:
        assert got == pytest.approx(expected, rel=1e-6)
    groups = recipe.opt.param_groups
    assert type(recipe.opt).__name__ == "RAdamW" and groups[0]["decoupled_weight_decay"]
    assert [p.dim() for p in groups[0]["params"]] == [2, 2] and groups[0]["weight_decay"] == 0.01
    assert {p.dim() for p in groups[1]["params"]} == {1} and groups[1]["weight_decay"] == 0.0
    assert 0.0 <= float(state["test_metrics"]["acc"]) <= 1.0
    assert isinstance(
        _callback(recipe, StepOnEval).sched, torch.optim.lr_scheduler.ReduceLROnPlateau
    )
    best = [p for p in os.listdir(tmp_path / "ck") if p.endswith("_best.pth")]
    assert len(best) == 1
    saved = load(str(tmp_path / "ck" / best[0]))
    assert "acc" in saved["test_loop"]["callbacks"]["state"]["metrics"]


def test_warmup_then_cosine_to_zero():
    schedule = warmup_cosine(100)
    assert schedule(0) == pytest.approx(0.2) and schedule(4) == pytest.approx(1.0)
    assert schedule(52) == pytest.approx(0.5, abs=0.02) and schedule(100) == pytest.approx(0)
    model = nn.Linear(4, 3)
    recipe = erp.CrossEntropyClassification(
        model, _data(), _data(1), ["a", "b", "c"], n_iters=12, lr=1.0, checkpoint=None
    )
    recipe.run(2)
    assert recipe.opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ValueError, match="optimizer must be"):
        erp.CrossEntropyClassification(nn.Linear(4, 3), [], [], ["a"], optimizer="lamb")


@pytest.mark.slow
def test_demo_reaches_its_accuracy_with_logs_and_checkpoints(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "evloop.cli",
            "demo",
            "--epochs",
            "3",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(ln for ln in result.stdout.splitlines() if "test accuracy" in ln)
    accuracy = float(line.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.9
    assert (tmp_path / "run" / "events.jsonl").stat().st_size > 0
    assert any(p.endswith("_best.pth") for p in os.listdir(tmp_path / "run" / "checkpoints"))


@pytest.mark.slow
def test_demo_on_missing_cifar10_says_what_to_do(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "evloop.cli",
            "demo",
            "--dataset",
            "cifar10",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "CIFAR-10 is not in" in result.stderr and "cifar-10-python.tar.gz" in result.stderr
