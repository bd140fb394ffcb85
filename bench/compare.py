"""Before/after in one run: bench.throughput in two checkouts, alternated, compared by the server's CPU per task.

    python -m bench.compare BEFORE [AFTER] [--rounds 3] -- [bench.throughput options]
    python -m bench.compare /work/wt-before -- --only enqueue_batch,drain --tasks 200000

BEFORE and AFTER are checkouts of runq (AFTER defaults to this one; ``git worktree add --detach DIR COMMIT``
makes one). Each round runs ``python -m bench.throughput OPTIONS`` once in each, in turns (the order flips every
round), with this Python: the bench puts its own checkout first on ``PYTHONPATH`` for the server it starts.

Why the CPU per task: on a shared machine the rates move by 20-40% from one run to the next with what else runs,
while the CPU time the server spends per task (its CPU share over the window divided by the rate) moves far
less: it is what a change of code changes. For each measurement line (``NAME: RATE tasks/s ... CPU: server P%``)
this prints every run's rate and the server's microseconds of CPU per task, then the medians and AFTER / BEFORE.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict

from .common import ROOT

LINE = re.compile(r"^(\w+): ([\d,]+) tasks/s .*CPU: server ([\d.]+)%", re.MULTILINE)


def run(checkout: str, options: list[str]) -> dict[str, tuple[float, float]]:
    """Run the bench in ``checkout``; per measurement, (tasks/s, server us of CPU per task)."""
    out = subprocess.run([sys.executable, "-m", "bench.throughput", *options], cwd=checkout, capture_output=True,
                         text=True, check=False)
    found = {m[1]: (float(m[2].replace(",", "")), float(m[3])) for m in LINE.finditer(out.stdout)}
    if out.returncode != 0 or not found:
        raise SystemExit(f"bench.throughput in {checkout} exited with {out.returncode}:\n{out.stdout}{out.stderr}")
    return {name: (rate, cpu / 100 / rate * 1e6) for name, (rate, cpu) in found.items()}


def main() -> None:
    argv = sys.argv[1:]
    options: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, options = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("before", help="the checkout to compare against")
    p.add_argument("after", nargs="?", default=ROOT, help="the checkout measured (default: this one)")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    trees = {"before": os.path.abspath(a.before), "after": os.path.abspath(a.after)}
    got: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in range(a.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for which in order:
            for name, figures in run(trees[which], options).items():
                got[name][which].append(figures)
                print(f"round {r + 1} {which:6} {name}: {figures[0]:,.0f} tasks/s, "
                      f"server {figures[1]:.2f} us CPU/task", flush=True)
    for name, by in got.items():
        med = {which: statistics.median(us for _, us in runs) for which, runs in by.items()}
        rate = {which: statistics.median(r for r, _ in runs) for which, runs in by.items()}
        if len(med) == 2:
            print(f"{name}: server CPU per task, median of {a.rounds}: before {med['before']:.2f} us, after "
                  f"{med['after']:.2f} us ({100 * (med['after'] / med['before'] - 1):+.1f}%); rates "
                  f"{rate['before']:,.0f} vs {rate['after']:,.0f} tasks/s")


if __name__ == "__main__":
    main()
