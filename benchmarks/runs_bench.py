"""The runs page at scale, in real headless Chromium: many runs of many points each.

1. ``--runs`` run folders of ``--points`` steps each (two metrics per step, as a
   JsonlWriter writes them, with a summary.json), in a temporary folder.
2. ``RunsServer`` on them: the time to read every log (its warm-up), and the memory.
3. Rounds of: open the page until the list shows every run; select all; until every
   chart has drawn every run. Medians and spreads over the rounds.
4. A live run at about 1,000 steps a second served to its own page (websocket): the
   page's time spent redrawing per second and how far its iteration count trails the
   run's.

Needs Debian's ``chromium`` and playwright (the dev extra).
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import msgspec
import torch

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.remote.runs import RunsServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def write_runs(root: Path, runs: int, points: int) -> float:
    """The run folders; how many MB they take."""
    size = 0
    for r in range(runs):
        folder = root / f"run-{r:03d}"
        folder.mkdir(parents=True)
        rng = random.Random(r)
        lr = 10 ** rng.uniform(-4, -2)
        start = 1_800_000_000.0 + r * 10_000
        hparams = {"optimizer.lr": lr, "batch_size": 64, "seed": r}
        lines = [
            msgspec.json.encode(
                {
                    "type": "run_started",
                    "time": start,
                    "source": "",
                    "epochs": 10,
                    "epoch": -1,
                    "iters": -1,
                    "batches_per_epoch": points // 10,
                    "hparams": hparams,
                }
            ).decode()
        ]
        decay = 1e-4 * (1 + 10 * lr)
        for i in range(points):
            loss = 2.0 * (1 + i * decay) ** -1 + rng.random() * 0.05
            lines.append(
                f'{{"type":"batch_ended","time":{start + i * 0.001:.4f},"source":"","epoch":'
                f'{i * 10 // points},"iters":{i},"epoch_batch":{i % (points // 10) + 1},'
                f'"metrics":{{"loss":{loss:.6f},"acc":{1 - loss / 2:.6f}}},'
                f'"kinds":{{"loss":"scalar","acc":"scalar"}}}}'
            )
        end = {
            "type": "run_finished",
            "time": start + points * 0.001,
            "source": "",
            "epoch": 9,
            "iters": points - 1,
            "metrics": {},
            "kinds": {},
        }
        lines.append(msgspec.json.encode(end).decode())
        log = folder / "events.jsonl"
        log.write_text("\n".join(lines) + "\n")
        summary = {
            "name": folder.name,
            "status": "finished",
            "start": start,
            "end": start + points * 0.001,
            "duration": points * 0.001,
            "hparams": hparams,
        }
        (folder / "summary.json").write_bytes(msgspec.json.encode(summary))
        size += log.stat().st_size
    return size / 1e6


def overlay_round(browser, url: str, runs: int) -> tuple[float, float]:
    """Seconds to a list of every run, then to every chart drawing every run."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_function(
        f"() => document.querySelectorAll('#runs tbody tr').length === {runs}", timeout=120_000
    )
    listed = time.perf_counter() - start
    page.check("#select-shown")
    page.wait_for_function(
        f"""() => charts.size >= 2 && Array.from(charts.values()).every(
            c => c.plot && c.data && Object.keys(c.data.runs).length === {runs})""",
        timeout=300_000,
    )
    drawn = time.perf_counter() - start - listed
    page.close()
    return listed, drawn


# Animation frames the page managed, and the longest gap between two: a page busy
# drawing skips frames.
FRAME_WATCH = """() => {
    window.frameWatch = {count: 0, longest: 0, last: performance.now()};
    const tick = (now) => {
        frameWatch.count++;
        frameWatch.longest = Math.max(frameWatch.longest, now - frameWatch.last);
        frameWatch.last = now;
        requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
}"""


def live_round(browser, seconds: float) -> tuple[float, float, float, int]:
    """A run at ~1,000 steps/s on its live page: (steps/s achieved, the page's frames
    per second, its longest frame in ms, the page's iteration behind the run's)."""
    steps = int(seconds * 1000) + 2000
    iters = {"now": 0}

    def forward(batch):
        iters["now"] = batch
        time.sleep(0.0008)  # about 1,000 steps a second with the engine's own cost
        return {"loss": torch.tensor(1.0 / (1 + batch))}

    recipe = Recipe(forward, range(steps))
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Log("loss", "loss")])
    server = recipe.serve(quiet=True)
    page = browser.new_page()
    page.goto(server.url)
    page.evaluate(FRAME_WATCH)
    thread = threading.Thread(target=recipe.run, args=(1,))
    began = time.perf_counter()
    thread.start()
    time.sleep(seconds)
    shown = int(page.text_content("#iters") or 0)
    behind = iters["now"] - shown
    frames, longest_ms = page.evaluate("() => [frameWatch.count, frameWatch.longest]")
    rate = iters["now"] / (time.perf_counter() - began)
    recipe.stop()
    thread.join(60)
    page.close()
    server.close()
    return rate, frames / seconds, longest_ms, behind


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s [{min(values):.2f}–{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--live-seconds", type=float, default=10.0)
    parser.add_argument(
        "--keep", type=Path, default=None, help="write the runs here (reused when there)"
    )
    args = parser.parse_args()
    if CHROMIUM is None:
        raise SystemExit("runs_bench needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="evloop-runs-") as tmp:
        root = args.keep or Path(tmp)
        if not (root.is_dir() and any(root.iterdir())):
            began = time.perf_counter()
            megabytes = write_runs(root, args.runs, args.points)
            print(
                f"{args.runs} runs × {args.points:,} steps × 2 metrics: {megabytes:,.0f} MB "
                f"of event logs written in {time.perf_counter() - began:.1f} s"
            )
        began = time.perf_counter()
        server = RunsServer([root]).start()
        if not server.warmed.wait(1800):
            raise SystemExit("the server had not read every log after 30 minutes")
        indexed = time.perf_counter() - began
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"server read every log in {indexed:.1f} s "
            f"({indexed / args.runs / args.points * 1e6:.2f} µs a step); peak RSS {rss:,.0f} MB"
        )
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            rounds = [overlay_round(browser, server.url, args.runs) for _ in range(args.rounds)]
            print(f"open, list of {args.runs} runs:        {spread([r[0] for r in rounds])}")
            print(f"select all, every chart overlaid: {spread([r[1] for r in rounds])}")
            print(f"open and overlay in all:          {spread([r[0] + r[1] for r in rounds])}")
            rate, fps, longest, behind = live_round(browser, args.live_seconds)
            print(
                f"live page at {rate:,.0f} steps/s for {args.live_seconds:.0f} s: "
                f"{fps:.0f} frames/s, longest frame {longest:.0f} ms, "
                f"{behind} steps behind the run at the end"
            )
            browser.close()
        server.close()


if __name__ == "__main__":
    main()
