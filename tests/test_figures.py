"""Matplotlib figures as metrics: Torchélie's TensorBoard test as written, and every
logger and the dashboard showing a figure rendered off the training thread."""

import asyncio
import json
import threading
import time

import pytest
import torch

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.kinds import Kind, kind_of

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.figure  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

rendered_in: set[str] = set()  # the threads that rendered a figure (by name: idents are reused)


class Figure(matplotlib.figure.Figure):
    def savefig(self, *args, **kwargs):
        rendered_in.add(threading.current_thread().name)
        return super().savefig(*args, **kwargs)


def _figure(step):
    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot([0, step])
    return figure


def _recipe(*loggers, n=6):
    training_threads = set()

    def forward(batch):
        training_threads.add(threading.current_thread().name)
        return {"loss": torch.tensor(float(batch)), "curve": _figure(batch)}

    recipe = Recipe(forward, range(n))
    recipe.callbacks.add_callbacks(
        [ecb.Counter(), ecb.Log("loss", "loss"), ecb.Log("curve", "curve"), *loggers]
    )
    return recipe, training_threads


def test_a_figure_is_a_kind_of_its_own():
    assert kind_of(_figure(1)) is Kind.FIGURE
    figure = plt.figure()
    assert kind_of(figure) is Kind.FIGURE
    plt.close(figure)


def test_torchelies_tensorboard_test_runs_as_written(tmp_path, monkeypatch):
    """Torchélie's tests/test_tensorboard_callback.py with `torchelie` renamed, on
    made-up images instead of FashionMNIST (no download)."""
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    import evloop.callbacks as tcb
    from evloop.recipes import Recipe

    monkeypatch.chdir(tmp_path)
    classes = ["zero", "one", "two", "three"]
    images = [(torch.randint(0, 255, (3, 8, 8), dtype=torch.uint8), i % 4) for i in range(16)]

    def train(b):
        x, y = b
        fig = plt.figure()
        plt.plot([0, int(y[0])])
        return {
            "letter_number_int": int(y[0]),
            "letter_number_tensor": y[0],
            "letter_text": classes[int(y[0])],
            "test_html": "<b>test HTML</b>",
            "letter_gray_img_HW": x[0, 0],
            "letter_gray_img_CHW": x[0, :1],
            "letter_gray_imgs_NCHW": x[:, :1],
            "letter_color_img_CHW": x[0],
            "letter_color_imgs_NCHW": x,
            "test_matplotlib": fig,
        }

    r = Recipe(train, torch.utils.data.DataLoader(images, 4))
    r.callbacks.add_callbacks(
        [
            tcb.Counter(),
            tcb.TensorboardLogger(log_every=1),
            *(tcb.Log(key, key) for key in train(next(iter(r.loader)))),
        ]
    )
    plt.close("all")
    r.run(1)
    assert plt.get_fignums() == []  # each figure closed once rendered, as add_figure does
    (log_dir,) = (tmp_path / "runs").iterdir()  # TensorBoard's default runs/<time>_<host>
    events = event_accumulator.EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("letter_number_int")][:4] == [0, 1, 2, 3]
    for image in ("test_matplotlib", "letter_gray_img_HW", "letter_color_imgs_NCHW"):
        assert image in tags["images"], image
    assert "letter_text/text_summary" in tags["tensors"]


def test_torchelies_tensorboard_logger_off_and_prefixed(tmp_path):
    off = ecb.TensorboardLogger(None)
    assert off.types == ()  # it receives nothing, as in Torchélie
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    test_loop = Recipe(lambda b: {"acc": torch.tensor(0.5)}, range(2))
    test_loop.callbacks.add_callback(ecb.Log("acc", "acc"))
    logger = ecb.TensorboardLogger(tmp_path, log_every=-1, prefix="run1_")
    recipe, _ = _recipe(ecb.CallRecipe(test_loop, "epoch"), logger, off)
    recipe.run(1)
    events = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert "run1_loss" in events.Tags()["scalars"] and "run1_test_acc" in events.Tags()["scalars"]
    assert "run1_curve" in events.Tags()["images"]


def test_every_logger_shows_a_figure_rendered_off_the_training_thread(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file://{tmp_path / 'mlflow'}"
    mlflow = ecb.MLflowLogger("figures", tracking_uri=uri, log_every=-1)
    jsonl = ecb.JsonlWriter(tmp_path / "run" / "events.jsonl")
    board = ecb.TensorBoardLogger(tmp_path / "tb", log_every=-1)
    rendered_in.clear()
    recipe, training = _recipe(jsonl, board, mlflow)
    recipe.run(1)

    assert rendered_in and not rendered_in & training  # never in the training thread
    assert len(rendered_in) <= 3  # at most once per logger's thread: shared renderings
    last = json.loads((tmp_path / "run" / "events.jsonl").read_text().splitlines()[-2])
    media = tmp_path / "run" / last["metrics"]["curve"]["$media"]
    assert media.read_bytes().startswith(b"\x89PNG")
    artifacts = MlflowClient(uri).list_artifacts(mlflow.run_id, "train/curve")
    assert [a.path for a in artifacts] == ["train/curve/5.png"]
    assert list((tmp_path / "tb").iterdir())


def test_the_dashboard_shows_a_figure_as_an_image(tmp_path):
    import evloop.remote

    recipe, training = _recipe(n=40)
    server = recipe.serve(quiet=True, every=1)
    got: list = []

    async def watch():
        async for event in evloop.remote.subscribe(server.url, types=["batch_ended"]):
            got.append(event)
            if event.iters >= 39:
                return

    def run_when_watched():
        deadline = time.monotonic() + 30
        while not server.clients and time.monotonic() < deadline:
            time.sleep(0.02)  # polls the condition, with a deadline
        recipe.run(1)

    try:
        rendered_in.clear()
        trainer = threading.Thread(target=run_when_watched)
        trainer.start()
        asyncio.run(asyncio.wait_for(watch(), 60))
        trainer.join(60)
    finally:
        server.close()
    shown = [e for e in got if "curve" in e.metrics]
    assert shown and shown[-1].kinds["curve"] == "html"
    assert shown[-1].metrics["curve"].startswith('<img src="data:image/png;base64,')
    assert rendered_in and not rendered_in & training


@pytest.mark.slow
def test_visdom_shows_a_figure_as_an_image(tmp_path):
    visdom = pytest.importorskip("visdom")
    from visdom_server import free_port, visdom_server

    port = free_port()
    with visdom_server(port, str(tmp_path)):
        logger = ecb.VisdomLogger("figures", log_every=-1, port=port, server="http://127.0.0.1")
        recipe, training = _recipe(logger)
        rendered_in.clear()
        recipe.run(1)
        vis = visdom.Visdom(server="http://127.0.0.1", port=port, env="figures")
        deadline = time.monotonic() + 30  # the server files what it got in its own time
        window = json.loads(vis.get_window_data("curve", "figures") or "{}")
        while window.get("type") != "image" and time.monotonic() < deadline:
            time.sleep(0.05)
            window = json.loads(vis.get_window_data("curve", "figures") or "{}")
    assert window.get("type") == "image", window
    assert rendered_in and not rendered_in & training
