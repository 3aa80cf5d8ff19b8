#!/usr/bin/env python3
"""Per-request self cost by function of two callgrind runs of lb/perf/callgrind.sh, largest differences first.

    lb/perf/cgdiff.py target/perf/lb target/perf/minimal [N]
"""
import re
import subprocess
import sys


def load(base):
    requests = int(open(base + ".requests").read())
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no", base + ".callgrind"],
        capture_output=True, text=True, check=True).stdout
    costs = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(.*)", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        name = re.sub(r" \[[^\]]*\]$", "", m.group(2)).split(":", 1)[-1]
        costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", "")) / requests
    return costs


a, b = load(sys.argv[1]), load(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 40
skip = ("clone", "start_thread", "thread_start", "call_once{{vtable.shim}}")
rows = [(a.get(k, 0) - b.get(k, 0), a.get(k, 0), b.get(k, 0), k) for k in set(a) | set(b)
        if not k.endswith(skip)]
rows.sort(key=lambda r: -abs(r[0]))
print(f"{'diff':>8} {'A':>8} {'B':>8}  function (instructions per request)")
for d, x, y, k in rows[:n]:
    print(f"{d:8.0f} {x:8.0f} {y:8.0f}  {k[:150]}")
