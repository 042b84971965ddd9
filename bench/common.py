"""Shared helpers for the benchmarks: timing, a results table in bench/results.md."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.md")


def best_of(fn, repeats: int = 3) -> float:
    """The fastest of `repeats` wall times of `fn()` (the least disturbed run)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def times_of_each(fns: dict, repeats: int = 5) -> dict[str, list[float]]:
    """name -> the `repeats` wall times of `fns[name]()`, round by round, the functions
    taking turns, so a slow spell of this shared machine hits all of them alike."""
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """The median over rounds of one round's time ratio: two contenders timed back to back
    share the machine's state of that moment, which the best of each does not pair."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))


def machine() -> str:
    import keras

    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"Keras {keras.__version__}, backend {keras.backend.backend()}")


def report(name: str, rows: list[tuple[str, str, str]], notes: str = "") -> str:
    """Print a table and replace this benchmark's section of bench/results.md."""
    import keras

    backend = keras.backend.backend()
    header = f"## {name} ({backend})"
    lines = [header, "", f"{datetime.date.today().isoformat()}; {machine()}; command: "
             f"`KERAS_BACKEND={backend} python bench/{name}.py`", "",
             "| measure | value | target |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    if notes:
        lines += ["", notes]
    section = "\n".join(lines) + "\n"
    print(section)
    existing = open(RESULTS).read() if os.path.exists(RESULTS) else "# Benchmark results\n\n"
    parts = existing.split("\n## ")
    head, sections = parts[0], ["## " + p for p in parts[1:]]
    sections = [s for s in sections if not s.startswith(header + "\n")]
    sections.append(section)
    sections.sort()
    with open(RESULTS, "w") as handle:
        handle.write(head.rstrip() + "\n\n" + "\n".join(s.rstrip() + "\n" for s in sections))
    return section
