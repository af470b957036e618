"""Training speed while hostile clients hammer the served recipe: a burst of 500
connections sending commands, and clients reconnecting as fast as they are closed
(``ws_attack.py``, in another process, from the same address).

One run: quiet phases interleaved with attack phases. Each attack phase's steps per
second is divided by the mean of its two quiet neighbours' (the first second of each
quiet phase, while the attack's connections wind down, is left out), and by its
decoy's: the same attack, right after, on a server in the attacker's process that
refuses every handshake. The attacker's own CPU slows training on a small shared
machine whatever it attacks; the ratio to the decoy is what the served recipe's work
for the attacker costs. With two cores or more the attacker gets a core of its own
and training the others, as with an attacker on another machine. The served recipe's
thread's CPU share in each phase is measured too.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import torch
from workload import Summary, make_data, tutorial_recipe

from evloop.events import CommandApplied

CONTROL = "bench-control"


class Endless:
    """The same batches over and over, for as long as the run is not stopped."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return 10**9

    def __iter__(self) -> Iterator:
        while True:
            yield from self.batches


class ThreadCPU:
    """Samples a thread's CPU time (Linux: /proc) ten times a second, from a thread of
    its own, until stopped; :meth:`share` is its CPU over a window, in cores."""

    def __init__(self, native_id: int | None) -> None:
        self.path = f"/proc/self/task/{native_id}/stat"
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if native_id is not None and os.path.exists(self.path):
            self._thread.start()

    def _sample(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.wait(0.1):
            try:
                fields = open(self.path).read().rsplit(")", 1)[1].split()
            except OSError:
                return
            self.samples.append((time.monotonic(), (int(fields[11]) + int(fields[12])) / tick))

    def stop(self) -> None:
        self._stop.set()

    def share(self, start: float, end: float) -> float:
        inside = [(t, cpu) for t, cpu in self.samples if start <= t <= end]
        if len(inside) < 2:
            return float("nan")
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


class StepClock:
    """When each step ended (``time.monotonic()``, the attacker's clock too)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_batch_end(self, state: dict) -> None:
        self.times.append(time.monotonic())


def attacked_run(phase_s: float, rounds: int) -> tuple[list[dict], list[float], int]:
    """The attacker's phases (each with the server thread's CPU share during it), the
    steps' times and the number of commands applied."""
    clock = StepClock()
    recipe = tutorial_recipe(Endless(make_data(256)), clock)
    applied: list[CommandApplied] = []
    recipe.bus.subscribe(applied.append, types=[CommandApplied])
    server = recipe.serve(quiet=True, control_token=CONTROL)
    server_cpu = ThreadCPU(server._thread.native_id if server._thread else None)
    script = os.path.join(os.path.dirname(__file__), "ws_attack.py")
    cores = sorted(os.sched_getaffinity(0))
    attacker = subprocess.Popen(
        [sys.executable, script, server.ws_url, CONTROL, str(phase_s), str(rounds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    if len(cores) > 1:
        os.sched_setaffinity(attacker.pid, cores[-1:])
        os.sched_setaffinity(0, cores[:-1])
    phases: list[dict] = []

    class UntilTheAttackerIsDone:
        def on_batch_end(self, state: dict) -> None:
            if attacker.poll() is not None:
                recipe.stop()

    recipe.callbacks.add_callback(UntilTheAttackerIsDone())
    try:
        recipe.run(1)
        assert attacker.stdout is not None
        for line in attacker.stdout:
            if line.startswith("{"):
                phases.append(json.loads(line))
    finally:
        attacker.kill()
        attacker.wait(30)
        server_cpu.stop()
        server.close()
        os.sched_setaffinity(0, cores)
    for phase in phases:
        phase["server CPU"] = server_cpu.share(phase["start"], phase["end"])
    return phases, clock.times, len(applied)


def _rate(times: list[float], start: float, end: float) -> float:
    steps = sum(1 for t in times if start <= t < end)
    return steps / (end - start)


def ratios(phases: list[dict], times: list[float], settle_s: float = 1.0) -> dict[str, dict]:
    """Per attack kind, each attack phase's steps/s over its quiet neighbours' mean
    (``quiet``) and over its decoy's (``decoy``)."""
    found: dict[str, dict[str, list[float]]] = {}
    rate = {i: _rate(times, p["start"], p["end"]) for i, p in enumerate(phases)}
    quiet = {
        i: _rate(times, p["start"] + settle_s, p["end"])
        for i, p in enumerate(phases)
        if p["phase"] == "quiet"
    }
    for i, phase in enumerate(phases):
        kind = phase["phase"]
        if kind == "quiet" or kind.startswith("decoy"):
            continue
        before = max((j for j in quiet if j < i), default=None)
        after = min((j for j in quiet if j > i), default=None)
        decoy = i + 1 if phases[i + 1]["phase"] == f"decoy {kind}" else None
        if before is None or after is None or decoy is None:
            continue
        shown = found.setdefault(kind, {"quiet": [], "decoy": []})
        shown["quiet"].append(rate[i] / statistics.mean([quiet[before], quiet[after]]))
        shown["decoy"].append(rate[i] / rate[decoy])
    return found


def report_attacks(summary: Summary, phase_s: float = 3.0, rounds: int = 6) -> None:
    torch.set_num_threads(1)
    phases, times, applied = attacked_run(phase_s, rounds)
    found = ratios(phases, times)
    print(
        f"\nTraining under hostile clients (tutorial set, served with a control token; "
        f"{phase_s:g} s phases, {rounds} rounds; the attacker in another process, on a "
        "core of its own); medians [ranges] over rounds"
    )
    print(f"{'phase':<7}{'× quiet neighbours':>24}{'× decoy':>24}{'server CPU':>12}")
    for kind in ("quiet", *found):
        cpu = statistics.median(p["server CPU"] for p in phases if p["phase"] == kind)
        if kind == "quiet":
            print(f"{kind:<7}{'1':>24}{'':>24}{cpu:>11.1%}")
            continue
        shown = [_spread(found[kind][key]) for key in ("quiet", "decoy")]
        print(f"{kind:<7}{shown[0]:>24}{shown[1]:>24}{cpu:>11.1%}")
        print(f"        the attacker saw: {_counted(phases, kind)}")
        label = "500-connection command burst" if kind == "burst" else "reconnect flood"
        median = statistics.median(found[kind]["decoy"])
        shown_cpu = f"server CPU {cpu:.1%}"
        summary.append((f"hostile clients, {label}", shown_cpu, f"{median:.3f}× its decoy"))
    print(f"commands applied in all: {applied}")


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}–{max(values):.3f}]"


def _counted(phases: list[dict], kind: str) -> str:
    """What the attacker counted over its phases of ``kind``, summed."""
    total: dict[str, int] = {}
    for phase in phases:
        if phase["phase"] == kind:
            for key, value in phase.items():
                if key not in ("phase", "start", "end", "server CPU"):
                    total[key] = total.get(key, 0) + value
    return ", ".join(f"{key} {value}" for key, value in sorted(total.items()))


if __name__ == "__main__":
    report_attacks([])
