"""The runs page (`evloop serve`) in real headless Chromium: list, overlay, view options."""

import pytest
from browser import needs_chromium, watch_errors
from helpers import loss_run

from evloop.codec import encode_json
from evloop.events import BatchEnded, RunFinished, RunStarted
from evloop.remote.runs import RunsServer

pytestmark = needs_chromium
BLUE, RED = (30, 136, 229), (229, 57, 53)  # the first two runs' colours


def _timed_run(folder, steps=300, step_s=0.01):
    """A recorded run of exactly 1 / step_s steps a second."""
    folder.mkdir(parents=True)
    events = [RunStarted(time=1000.0, epochs=1, epoch=-1, iters=-1, batches_per_epoch=steps)]
    for i in range(steps):
        events.append(
            BatchEnded(
                time=1000.0 + step_s * (i + 1),
                epoch=0,
                iters=i,
                epoch_batch=i + 1,
                metrics={"loss": 1.0},
                kinds={"loss": "scalar"},
            )
        )
    events.append(RunFinished(time=1000.0 + step_s * steps, epoch=0, iters=steps - 1))
    (folder / "events.jsonl").write_bytes(b"".join(encode_json(e) + b"\n" for e in events))


@pytest.fixture
def served(tmp_path):
    runs = tmp_path / "runs"
    for name, scale in (("small", 1.0), ("large", 2.0)):
        loss_run(runs / name, scale).run(1)
    _timed_run(runs / "timed")
    with RunsServer([runs], token="t0k").start() as server:
        yield server


def _rows(page):
    return page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.dataset.run)")


def _colour_pixels(page, metric, rgb):
    """How many pixels of the chart's canvas are (nearly) this colour."""
    return page.evaluate(
        """([metric, rgb]) => {
            const canvas = document.querySelector(`.chart[data-metric="${metric}"] canvas`);
            const context = canvas.getContext("2d");
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0;
            for (let i = 0; i < data.length; i += 4) {
                if (Math.abs(data[i] - rgb[0]) + Math.abs(data[i + 1] - rgb[1])
                    + Math.abs(data[i + 2] - rgb[2]) < 40 && data[i + 3] > 200) n++;
            }
            return n;
        }""",
        [metric, list(rgb)],
    )


def test_two_runs_overlaid_with_smoothing_log_scale_axes_and_zoom(served, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = watch_errors(page)
    page.goto(served.url)
    page.wait_for_function("() => document.querySelectorAll('#runs tbody tr').length === 3")
    assert "3 of 3 runs" in page.text_content("#run-count")

    page.fill("#filter", "scale=2")  # hyper-parameters are searchable
    assert _rows(page) == ["large"]
    page.fill("#filter", "")
    page.click("#runs th[data-key='name']")  # sort by name, then the other way
    assert _rows(page) == ["large", "small", "timed"]
    page.click("#runs th[data-key='name']")
    assert _rows(page) == ["timed", "small", "large"]

    page.check("tr[data-run='small'] input")
    page.check("tr[data-run='large'] input")
    loss = ".chart[data-metric='train/loss']"
    page.wait_for_selector(loss + " canvas")
    page.evaluate("() => loaded")
    legend = page.text_content(loss + " .u-legend")
    assert "small" in legend and "large" in legend
    shown = page.evaluate(  # long runs come as buckets: a band per run, one legend row
        """() => {
            const answer = {bucketed: true, x: [0, 1], runs: {
                small: {mean: [1, 2], min: [0, 1], max: [2, 3]},
                large: {mean: [2, 3], min: [1, 2], max: [3, 4]}}};
            const el = document.createElement("div");
            document.body.appendChild(el);
            const u = new uPlot(plotOptions("train/loss", charts.get("train/loss"), answer),
                                plotData(answer), el);
            const rows = [...el.querySelectorAll(".u-legend .u-series")];
            const names = rows.filter((r) => r.style.display !== "none").map((r) => r.textContent);
            u.destroy(); el.remove();
            return names;
        }"""
    )
    assert len(shown) == 3 and not [n for n in shown if "max" in n or "min" in n]
    assert _colour_pixels(page, "train/loss", BLUE) > 50  # small: picked first
    assert _colour_pixels(page, "train/loss", RED) > 50
    order = page.eval_on_selector_all("#charts .chart", "els => els.map(e => e.dataset.metric)")
    assert order.index("train/loss") < order.index("test/loss")  # losses lead

    drawn = "() => charts.get('train/loss').plot.data"
    data = page.evaluate(drawn)
    assert data[0] == list(range(30))
    assert data[1] == pytest.approx([1 / (1 + b) for b in range(30)])  # small's raw points
    assert data[2] == pytest.approx([2 / (1 + b) for b in range(30)])

    page.fill("#smoothing", "0.9")
    page.dispatch_event("#smoothing", "input")
    last, expected = 0.0, []
    for n, y in enumerate(data[1], start=1):  # the debiased EMA of the raw points
        last = 0.9 * last + 0.1 * y
        expected.append(last / (1 - 0.9**n))
    assert page.evaluate(drawn)[1] == pytest.approx(expected, rel=1e-9)

    page.check("#log-scale")
    assert page.evaluate("() => charts.get('train/loss').plot.scales.y.distr") == 3

    page.select_option("#axis", "time")
    page.wait_for_function("() => charts.get('train/loss').data.axis === 'time'")
    page.evaluate("() => loaded")
    seconds = page.evaluate(drawn)[0]
    assert 0 <= seconds[0] < seconds[-1] < 60  # seconds since each run started

    page.select_option("#axis", "step")
    page.wait_for_function("() => charts.get('train/loss').data.axis === 'step'")
    page.evaluate("() => { zoomTo('train/loss', [5, 10]); return loaded; }")
    assert page.evaluate(drawn)[0] == [5, 6, 7, 8, 9, 10]
    page.evaluate(
        "() => document.querySelector(`.chart[data-metric='train/loss'] .reset-zoom`)"
        ".hidden = false"  # as a drag-select shows it
    )
    page.click(loss + " .reset-zoom")
    page.wait_for_function("() => charts.get('train/loss').plot.data[0].length === 30")
    page.screenshot(path=str(served.index.paths[0] / "runs-page.png"))

    shared = page.url  # the comparison, bookmarked or sent to a colleague
    assert "runs=small%2Clarge" in shared and "log=1" in shared and "smoothing=0.9" in shared
    again = browser.new_page()
    again.goto(shared)
    again.wait_for_function("() => charts.has('train/loss') && charts.get('train/loss').data")
    assert again.evaluate("() => selected") == ["small", "large"]
    assert again.is_checked("#log-scale") and again.input_value("#smoothing") == "0.9"
    assert errors == []


def test_a_run_opens_on_its_own_page_with_its_true_throughput(served, browser):
    page = browser.new_page()
    errors = watch_errors(page)
    page.goto(served.url)
    page.click("tr[data-run='timed'] a")
    page.wait_for_function("() => /^finished/.test(document.querySelector('#state').textContent)")
    assert page.text_content("#state") == "finished in 3s"
    assert page.text_content("#throughput") == "100.0 it/s"  # from the events' own times
    assert page.title() == "evloop — finished run timed"  # not "live run"
    assert "normal" in page.text_content("#health thead")  # passed-over events alarm no one
    assert errors == []
