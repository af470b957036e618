"""What a terminal shows: log lines and the progress bar under a real pseudo-terminal,
and the formatting of metrics."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from evloop.loggers.format import format_metrics, format_value

SCRIPT = textwrap.dedent(
    """
    import time, torch
    import evloop.callbacks as ecb
    from evloop import Recipe

    def forward(batch):
        time.sleep(0.01)
        return {"loss": torch.tensor(0.5)}

    recipe = Recipe(forward, range(60))
    recipe.callbacks.add_callbacks([
        ecb.Counter(), ecb.Log("loss", "loss"), ecb.Throughput(),
        ecb.ProgressBar(), ecb.StdoutLogger(log_every=5),
    ])
    recipe.run(2)
    """
)


LINE = (
    r"Ep\. \d/\d It \d+ \| loss=0\.5 forward_time=[\d.]+ms forward_throughput=[\d.]+/s"
    r"( iter_time=[\d.]+ms iter_throughput=[\d.]+/s)?"
)


def test_log_lines_and_the_bar_never_write_over_each_other(tmp_path):
    pty = pytest.importorskip("pty")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    import fcntl
    import struct
    import termios

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, str(script)], stdin=child, stdout=child, stderr=child, close_fds=True
    )
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert process.wait(60) == 0
    os.close(main)
    shown = b"".join(chunks).decode(errors="replace")
    assert "it/s" in shown and "epoch 2/2" in shown  # the bar was drawn
    lines = [segment.rstrip("\r").rsplit("\r", 1)[-1] for segment in shown.split("\n")]
    logged = [line for line in lines if "Ep. " in line]
    assert len(logged) >= 20  # every 5 iterations and at epoch ends, both epochs
    for line in logged:
        # whole lines, starting at the left edge, no bar in them
        assert re.fullmatch(LINE, line), line
        assert "it/s]" not in line and "|█" not in line


def test_numbers_get_adaptive_precision_and_units():
    assert format_value("loss", 190.0) == "190"
    assert format_value("loss", 0.43123456) == "0.4312"
    assert format_value("lr_0", 3e-5) == "3e-05"
    assert format_value("iters", 12) == "12"
    assert format_value("forward_time", 0.0087) == "8.7ms"
    assert format_value("forward_time", 2.5) == "2.5s"
    assert format_value("forward_throughput", 4429.7817) == "4.43k/s"
    shown = format_metrics({"loss": 0.5, "name": "a" * 30, "image": object()})
    assert shown == {"loss": "0.5", "name": "a" * 20}
