"""VisdomLogger against a real visdom server (and a dead one, and a hung one)."""

import json
import logging
import time

import pytest
import torch
from visdom_server import free_port, silent_server, visdom_server

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.reports import Report

# one worker runs this module: its module-scoped fixture is made once
pytestmark = pytest.mark.xdist_group("visdom")

visdom = pytest.importorskip("visdom")


def _client(port, env):
    return visdom.Visdom(
        server="http://127.0.0.1",
        port=port,
        env=env,
        use_incoming_socket=False,
        raise_exceptions=True,
    )


def _window(vis, win, env):
    data = json.loads(vis.get_window_data(win, env))
    return data


def _recipe(n, step_s=0.0):
    def forward(batch):
        if step_s:
            time.sleep(step_s)
        return {
            "loss": torch.tensor(float(batch)),
            "note": f"<b>step</b> {batch}",
            "heat": torch.eye(3) * batch,
            "img": torch.full((3, 4, 4), 0.5),
            "grid": torch.rand(2, 1, 4, 4),
            "weird": {"a": 1},
        }

    recipe = Recipe(forward, range(n))
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Log("loss", "loss"),
            ecb.Log("note", "note"),
            ecb.Log("heat", "heat"),
            ecb.Log("img", "img"),
            ecb.Log("grid", "grid"),
            ecb.Log("weird", "weird"),
        ]
    )
    return recipe


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    with visdom_server(port, str(tmp_path_factory.mktemp("visdom"))):
        yield port


@pytest.mark.slow
def test_windows_hold_what_the_run_logged(server, caplog):
    env = "evloop_test_content"
    vis = _client(server, env)
    vis.text("keep me", win="user_window", env=env)
    recipe = _recipe(30)
    report = Report(lambda: "<table><tr><td>report</td></tr></table>")

    class PostReport:
        def on_batch_end(self, state):
            state["metrics"]["table"] = report

    recipe.callbacks.add_callbacks(
        [
            PostReport(),
            ecb.VisdomLogger(
                env, log_every=10, prefix="train_", port=server, server="http://127.0.0.1"
            ),
        ]
    )
    with caplog.at_level(logging.WARNING, logger="evloop"):
        recipe.run(1)

    line = _window(vis, "train_loss", env)
    xs = [x for trace in line["content"]["data"] for x in trace["x"]]
    ys = [y for trace in line["content"]["data"] for y in trace["y"]]
    assert xs == [0, 10, 20, 29] and ys == [0.0, 10.0, 20.0, 29.0]
    text = _window(vis, "train_note", env)
    assert "<b>step</b> 29" in json.dumps(text["content"])
    assert "report" in json.dumps(_window(vis, "train_table", env)["content"])
    heat = _window(vis, "train_heat", env)["content"]["data"][0]
    assert heat["type"] == "heatmap" and heat["z"][1][1] == 29.0
    assert _window(vis, "train_img", env)["type"] == "image"
    assert _window(vis, "train_grid", env)["type"] == "image"
    # the user's window survived; the unknown type was skipped with one warning
    assert "keep me" in json.dumps(_window(vis, "user_window", env)["content"])
    warnings = [r.message for r in caplog.records if "weird" in r.message]
    assert len(warnings) == 1 and "no logger can show" in warnings[0]


@pytest.mark.slow
def test_evaluation_results_are_logged_with_the_training_x_axis(server):
    env = "evloop_test_eval"
    vis = _client(server, env)
    test_loop = Recipe(lambda b: {"acc": torch.tensor(0.5)}, range(2))
    test_loop.callbacks.add_callback(ecb.Log("acc", "acc"))
    recipe = Recipe(lambda b: {}, range(25))
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.CallRecipe(test_loop, run_every=10),
            ecb.VisdomLogger(env, log_every=-1, port=server, server="http://127.0.0.1"),
        ]
    )
    recipe.run(1)
    line = _window(vis, "test_acc", env)
    assert [x for trace in line["content"]["data"] for x in trace["x"]] == [0, 10, 20, 24]


@pytest.mark.slow
def test_a_server_that_is_down_warns_once_and_training_goes_on(caplog):
    port = free_port()  # nothing listens there
    recipe = _recipe(200, step_s=0.002)
    recipe.callbacks.add_callback(
        ecb.VisdomLogger("down", log_every=5, port=port, server="http://127.0.0.1", timeout=1.0)
    )
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="evloop"):
        recipe.run(1)
    took = time.perf_counter() - started
    assert took < 200 * 0.002 + 2.0
    down = [r for r in caplog.records if "does not answer" in r.message]
    assert len(down) == 1


@pytest.mark.slow
def test_a_hung_server_cannot_block_training(caplog):
    port = free_port()
    with silent_server(port):
        recipe = _recipe(200, step_s=0.002)
        recipe.callbacks.add_callback(
            ecb.VisdomLogger("hung", log_every=5, port=port, server="http://127.0.0.1", timeout=0.5)
        )
        started = time.perf_counter()
        with caplog.at_level(logging.WARNING, logger="evloop"):
            recipe.run(1)
        took = time.perf_counter() - started
    # training itself took ~0.4 s; the end of the run waits at most `timeout` more
    assert took < 200 * 0.002 + 0.5 + 1.0
    assert len([r for r in caplog.records if "does not answer" in r.message]) == 1


@pytest.mark.slow
def test_logging_resumes_when_the_server_comes_back(tmp_path, caplog):
    port = free_port()
    env = "evloop_test_back"
    recipe = Recipe(lambda b: {"v": torch.tensor(float(b))}, range(10_000))

    class Pace:
        def on_batch_start(self, state):
            time.sleep(0.001)
            if state["iters"] == 1500:
                state["_server"] = visdom_server(port, str(tmp_path))
                state["_server"].__enter__()

    logger = ecb.VisdomLogger(
        env, log_every=100, port=port, server="http://127.0.0.1", timeout=1.0, retry_every=0.2
    )
    recipe.callbacks.add_callbacks([ecb.Counter(), Pace(), ecb.Log("v", "v"), logger])
    try:
        with caplog.at_level(logging.WARNING, logger="evloop"):
            recipe.run(1)
        assert any("is back, logging resumed" in r.message for r in caplog.records)
        # the points logged while the server was down were kept and sent once it was back
        line = _window(_client(port, env), "v", env)
        xs = [x for trace in line["content"]["data"] for x in trace["x"]]
        assert xs == list(range(0, 10_000, 100)) + [9999]
    finally:
        recipe.state["_server"].__exit__(None, None, None)
