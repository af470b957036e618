"""A forked run on the runs page (`evloop serve`) in real headless Chromium: its parent
and fork point in the list, both drawn on the same step axis, the fork point marked."""

import os

from browser import needs_chromium, watch_errors
from helpers import forkable_run

from evloop.fork import fork
from evloop.remote.runs import RunsServer

pytestmark = needs_chromium


def test_a_fork_is_listed_with_its_parent_and_drawn_from_its_fork_point(tmp_path, browser):
    runs = tmp_path / "runs"
    forkable_run(str(runs / "base"), 3)
    made = fork(
        runs / "base", {"lr": 1e-3}, checkpoint=runs / "base" / "checkpoints" / "epoch_1.pth"
    )
    forkable_run(made.run_dir, 5)
    with RunsServer([runs], token="t0k").start() as server:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = watch_errors(page)
        page.goto(server.url)
        page.wait_for_function("() => document.querySelectorAll('#runs tbody tr').length === 2")
        cell = page.text_content("tr[data-run='base-fork7'] .fork-of")
        assert cell == "base @ 7 · lr=0.001"
        title = page.get_attribute("tr[data-run='base-fork7'] .fork-of", "title")
        assert title.startswith("forked from base at step 7, with lr=0.001")
        page.fill("#filter", "fork base")  # a fork is found by its parent's name
        assert page.eval_on_selector_all("#runs tbody tr", "r => r.map(x => x.dataset.run)") == [
            "base-fork7"
        ]
        page.fill("#filter", "")
        assert page.query_selector("tr[data-run='base'] .fork-of") is None

        page.click("tr[data-run='base-fork7'] .fork-of")  # draws the parent beside it
        page.wait_for_function(
            "() => document.querySelector('.chart[data-metric=\"train/loss\"]')?.dataset.forks"
            " === 'base-fork7@7'"
        )
        assert "2 selected" in page.text_content("#run-count")
        legend = page.text_content('.chart[data-metric="train/loss"] .u-legend')
        assert "base--" in legend and "base-fork7--" in legend  # no point under the cursor
        series = page.evaluate(
            """async () => {
                const q = new URLSearchParams({runs: 'base,base-fork7', metric: 'train/loss',
                                               axis: 'step', token: 't0k'});
                return (await fetch('/api/series?' + q)).json(); }"""
        )
        base, child = series["runs"]["base"]["mean"], series["runs"]["base-fork7"]["mean"]
        steps = series["x"]
        # the parent's steps 0-11 and the fork's 8-19, on one axis
        assert [s for s, v in zip(steps, base, strict=True) if v is not None][-1] == 11
        assert [s for s, v in zip(steps, child, strict=True) if v is not None][0] == 8
        assert [s for s, v in zip(steps, child, strict=True) if v is not None][-1] == 19
        page.screenshot(path=os.environ.get("EVLOOP_SCREENSHOT", str(tmp_path / "fork.png")))
        page.select_option("#axis", "epoch")  # the fork point is drawn on the step axis
        page.wait_for_function(
            "() => document.querySelector('.chart[data-metric=\"train/loss\"]')"
            "?.dataset.forks === ''"
        )
        assert errors == []
